"""gptmini.core.checkpoint and core.export_folder: checkpoints and export folders -> a bare GPTMini, clear errors."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from gptmini.core.checkpoint import CheckpointError, load_model, read_checkpoint
from gptmini.core.model import GPTMini
from gptmini.train import compat


def _fake_ckpt(path, cfg, compiled: bool = False) -> GPTMini:
    """A checkpoint shaped like GPTMiniModule's: state_dict keys model.* plus the model config."""
    torch.manual_seed(0)
    model = GPTMini(cfg)
    prefix = "model._orig_mod." if compiled else "model."
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "gptmini_model_config": asdict(cfg)}, path)
    return model


@pytest.mark.parametrize("compiled", [False, True])
def test_load_model_matches_weights(tmp_path, tiny_model_cfg, compiled):
    path = tmp_path / "m.ckpt"
    ref = _fake_ckpt(path, tiny_model_cfg, compiled)
    model = load_model(path)
    assert not model.training
    idx = torch.randint(0, tiny_model_cfg.vocab_size, (2, 8))
    torch.testing.assert_close(model(idx)[0], ref(idx)[0])


def test_truncated_checkpoint_names_file(tmp_path, tiny_model_cfg):
    path = tmp_path / "m.ckpt"
    _fake_ckpt(path, tiny_model_cfg)
    data = path.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt cannot be read"):
        load_model(bad)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.ckpt cannot be read"):
        read_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        load_model(tmp_path / "missing.ckpt")


def test_compiled_module_keeps_clean_keys(tiny_model_cfg):
    from gptmini.train.module import GPTMiniModule

    module = GPTMiniModule(arch=tiny_model_cfg, compile=True)
    plain = set(module.state_dict())
    module.setup("fit")  # compiles self.model in place (lazily: no compilation happens here)
    assert compat.is_compiled(module.model)
    assert set(module.state_dict()) == plain
    assert not [k for k in plain if "_orig_mod." in k]


def test_resume_checkpoint_of_another_shape_is_refused(tmp_path, tiny_model_cfg):
    from dataclasses import replace

    from gptmini.train.resume import check_checkpoint

    path = tmp_path / "m.ckpt"
    _fake_ckpt(path, tiny_model_cfg)
    check_checkpoint(str(path), tiny_model_cfg)  # same shape: fine
    with pytest.raises(ValueError, match=r"model.arch.n_embd: checkpoint 32 vs config 64"):
        check_checkpoint(str(path), replace(tiny_model_cfg, n_embd=64))


def test_export_folder_round_trip(tmp_path, tiny_model_cfg, tiny_data):
    from safetensors import safe_open

    from gptmini.core.checkpoint import load_model_and_tokenizer
    from gptmini.core.export_folder import export_model

    ckpt = tmp_path / "m.ckpt"
    ref = _fake_ckpt(ckpt, tiny_model_cfg, compiled=True)  # _orig_mod. keys must not reach the export
    out = export_model(ckpt, tmp_path / "export", tokenizer=tiny_data.tokenizer_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "modeling_gptmini.py", "tokenizer.json"
    ]
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    tied = {"tok_emb.weight", "lm_head.weight"}
    assert len(keys & tied) == 1 and keys | tied == set(ref.state_dict())  # bare names; tied matrix once
    assert json.loads((out / "config.json").read_text()) == asdict(tiny_model_cfg)
    idx = torch.randint(0, tiny_model_cfg.vocab_size, (2, 8))
    for source in (out, ckpt):
        model = load_model(source)
        assert not model.training
        torch.testing.assert_close(model(idx)[0], ref(idx)[0], rtol=0, atol=0)
    model, tok = load_model_and_tokenizer(out)
    assert tok.get_vocab_size() == tiny_model_cfg.vocab_size


def test_export_refuses_to_mix_or_overwrite_silently(tmp_path, tiny_model_cfg, tiny_data):
    from gptmini.core.export_folder import export_model

    ckpt = tmp_path / "m.ckpt"
    _fake_ckpt(ckpt, tiny_model_cfg)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"busy already holds other files \(notes.txt\)"):
        export_model(ckpt, busy, tokenizer=tiny_data.tokenizer_path)
    out = export_model(ckpt, tmp_path / "out", tokenizer=tiny_data.tokenizer_path)
    with pytest.raises(ValueError, match="--overwrite=true"):
        export_model(ckpt, out, tokenizer=tiny_data.tokenizer_path)
    export_model(ckpt, out, tokenizer=tiny_data.tokenizer_path, overwrite=True)
    with pytest.raises(ValueError, match=r"m.ckpt holds no tokenizer.*--tokenizer"):
        export_model(ckpt, tmp_path / "other")  # the fake checkpoint stores none
    assert not (tmp_path / "other").exists()  # refused before writing anything


def test_bad_export_folder_names_the_file(tmp_path, tiny_model_cfg, tiny_data):
    from gptmini.core.export_folder import export_model

    ckpt = tmp_path / "m.ckpt"
    _fake_ckpt(ckpt, tiny_model_cfg)
    with pytest.raises(CheckpointError, match="without model.safetensors and config.json"):
        load_model(tmp_path)
    out = export_model(ckpt, tmp_path / "out", tokenizer=tiny_data.tokenizer_path)
    (out / "config.json").write_text(json.dumps({**asdict(tiny_model_cfg), "n_embd": 64}))
    with pytest.raises(CheckpointError, match="model.safetensors does not match config.json"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not a gptmini model config"):
        load_model(out)


def _count_loads(monkeypatch) -> list:
    """Every torch.load call from here on (gptmini's reads and Lightning's CheckpointIO alike)."""
    calls, real = [], torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return calls


def test_resume_and_export_read_the_checkpoint_once(fitted_run, tmp_path, monkeypatch):
    """validate --ckpt_path (the resume path: settings checked, then Lightning's restore) and export each
    read the file once, memory-mapped."""
    from gptmini.cli import make_cli
    from gptmini.core.export_folder import export_model
    from gptmini.train.compat import attribute_docstrings_off

    last = fitted_run / "checkpoints" / "last.ckpt"
    calls = _count_loads(monkeypatch)
    args = ["validate", "--config", str(fitted_run / "config.yaml"), "--ckpt_path", str(last),
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.limit_val_batches=1"]
    with attribute_docstrings_off():
        cli = make_cli(args)
    assert cli.trainer.callback_metrics["val/loss"] > 0  # the weights were restored and validated
    assert calls == [True]
    calls.clear()
    export_model(last, tmp_path / "export")
    assert calls == [True] and (tmp_path / "export" / "README.md").is_file()
