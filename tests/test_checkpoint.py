"""gptmini.core.checkpoint: Lightning checkpoints -> a bare GPTMini, and clear errors for bad files."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from gptmini.core.checkpoint import CheckpointError, load_model, read_checkpoint
from gptmini.core.model import GPTMini


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
    assert module.model._compiled_call_impl is not None
    assert set(module.state_dict()) == plain
    assert not [k for k in plain if "_orig_mod." in k]


def test_resume_checkpoint_of_another_shape_is_refused(tmp_path, tiny_model_cfg):
    from dataclasses import replace

    from gptmini.train.before_fit import check_checkpoint

    path = tmp_path / "m.ckpt"
    _fake_ckpt(path, tiny_model_cfg)
    check_checkpoint(str(path), tiny_model_cfg)  # same shape: fine
    with pytest.raises(ValueError, match=r"model.arch.n_embd: checkpoint 32 vs config 64"):
        check_checkpoint(str(path), replace(tiny_model_cfg, n_embd=64))
