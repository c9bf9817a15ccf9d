"""gptmini.checkpoint: Lightning checkpoints -> a bare GPTMini, and clear errors for bad files."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from gptmini.checkpoint import CheckpointError, load_model, read_checkpoint
from gptmini.model import GPTMini


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
