"""gptmini.core.formats: what a real run writes is what the readers read (checkpoint and data cache)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import attribute_docstrings_off, tiny_cli_args

import gptmini.core.checkpoint as checkpoint_mod
from gptmini.core import formats
from gptmini.core.checkpoint import (
    CheckpointError,
    load_model_and_tokenizer,
    model_state_dict,
    read_checkpoint,
)
from gptmini.core.model import GPTMini


class Recording(dict):
    """A dict that records every key read from it (``[]``, ``get``, ``in``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory, corpus_file, data_cache):
    """last.ckpt of a real one-step run through the CLI."""
    root = tmp_path_factory.mktemp("formats")
    from gptmini.cli import main

    with attribute_docstrings_off():
        main(tiny_cli_args(root, corpus_file, data_cache, 2) + ["--model.schedule.warmup_steps=1", "--trainer.limit_val_batches=1"])
    (last,) = root.glob(f"runs/*/*/{formats.CHECKPOINT_DIR}/last.ckpt")
    return last


def test_checkpoint_holds_the_keys_the_loaders_read(run_ckpt, monkeypatch):
    raw = torch.load(run_ckpt, map_location="cpu", weights_only=True)
    written = {k for k in raw if k.startswith("gptmini_")}
    assert written == set(formats.CKPT_GPTMINI_KEYS)  # every declared key, and no undeclared one
    assert raw[formats.CKPT_FORMAT] == formats.CKPT_FORMAT_VERSION

    seen, real_load = [], torch.load

    def load(*args, **kwargs):
        seen.append(Recording(real_load(*args, **kwargs)))
        return seen[-1]

    monkeypatch.setattr(checkpoint_mod.torch, "load", load)
    from gptmini.core.config import ConfigError
    from gptmini.train.resume import check_init_from, load_weights, read_resume_checkpoint

    model, tok = load_model_and_tokenizer(run_ckpt)  # generate / export
    ckpt = read_resume_checkpoint(str(run_ckpt), max_steps=None)  # --ckpt_path
    with pytest.raises(ConfigError, match="both given"):  # --ckpt_path with another --init_from
        check_init_from(str(run_ckpt), ckpt, "other.ckpt")
    load_weights(GPTMini(model.cfg), str(run_ckpt))  # --init_from
    from gptmini.train.checkpoint_contents import CheckpointContents

    CheckpointContents().on_load_checkpoint(None, None, seen[-1])  # the run record, on resume
    read = set().union(*(r.read for r in seen))
    assert read <= set(raw), f"read but never written: {read - set(raw)}"
    unread = set(formats.CKPT_GPTMINI_KEYS) - read
    assert not unread, f"written but read by no loader: {unread}"
    assert tok.get_vocab_size() == model.cfg.vocab_size


def test_state_dict_prefix_is_the_module_attribute(tiny_model_cfg):
    from gptmini.train.module import GPTMiniModule

    module = GPTMiniModule(arch=tiny_model_cfg)
    (name,) = [n for n, child in module.named_children() if isinstance(child, GPTMini)]
    assert name == formats.MODEL_ATTR
    ckpt = {formats.CKPT_STATE_DICT: module.state_dict()}
    assert model_state_dict(ckpt).keys() == GPTMini(tiny_model_cfg).state_dict().keys()


def test_newer_checkpoint_format_is_refused(tmp_path, run_ckpt):
    raw = torch.load(run_ckpt, map_location="cpu", weights_only=True)
    raw[formats.CKPT_FORMAT] = formats.CKPT_FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match="newer than this gptmini reads"):
        read_checkpoint(tmp_path / "new.ckpt")
    del raw[formats.CKPT_FORMAT]  # written before the key existed: version 0, still read
    torch.save(raw, tmp_path / "old.ckpt")
    assert read_checkpoint(tmp_path / "old.ckpt")[formats.CKPT_STEP] == 2


def test_cache_holds_the_files_and_meta_keys_the_datamodule_reads(tiny_data, monkeypatch):
    names = {p.name for p in tiny_data.cache_path.iterdir()}
    expected = {formats.CACHE_TOKENIZER, formats.CACHE_META} | {formats.split_file(s) for s in formats.SPLITS}
    assert names == expected
    meta = json.loads((tiny_data.cache_path / formats.CACHE_META).read_text())
    recording = Recording(meta)
    monkeypatch.setattr(type(tiny_data), "meta", lambda self: recording)
    tiny_data.setup("fit")
    assert recording.read <= set(meta)
    assert {formats.META_VOCAB_SIZE, *(formats.meta_tokens(s) for s in formats.SPLITS)} <= recording.read
    assert tiny_data.tokenizer_path == tiny_data.cache_path / formats.CACHE_TOKENIZER
