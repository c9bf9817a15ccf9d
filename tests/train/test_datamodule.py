"""gptmini.train.datamodule: the cache it prepares (and reuses), its loaders, the tokenizer and
vocab it takes, and the bad paths and files it refuses."""

import json

import pytest
import torch

import gptmini.train.datamodule as dm_mod
from gptmini.train.datamodule import GPTMiniData


def test_prepare_writes_cache_with_meta(tiny_data):
    cache = tiny_data.cache_path
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["vocab_size"] == tiny_data.vocab_size == 384
    for split in ("train", "val"):
        assert (cache / f"{split}.bin").stat().st_size == 2 * meta[f"{split}_tokens"]
    assert meta["val_tokens"] == int((meta["train_tokens"] + meta["val_tokens"]) * 0.1)
    assert (cache / "tokenizer.json").is_file()
    assert not list(cache.parent.glob(".tmp-*"))  # no half-built folders left behind


def test_second_run_reuses_cache(tiny_data, monkeypatch):
    before = (tiny_data.cache_path / "train.bin").stat().st_mtime_ns
    monkeypatch.setattr(dm_mod, "prepare_tokens", lambda *a, **k: pytest.fail("prepared the data again"))
    GPTMiniData(
        data=[str(s) for s in tiny_data.sources],
        cache_dir=str(tiny_data.cache_root),
        vocab_size=tiny_data.vocab_size,
        block_size=16,  # windows are cut at read time: a new block size reuses the same tokens
    ).prepare_data()
    assert (tiny_data.cache_path / "train.bin").stat().st_mtime_ns == before


def test_train_loader_shuffles_val_loader_does_not(tiny_data):
    tiny_data.setup("fit")
    torch.manual_seed(0)
    first = next(iter(tiny_data.train_dataloader()))[0]
    assert not torch.equal(first[0], tiny_data.train_set[0][0]) or not torch.equal(
        first[1], tiny_data.train_set[1][0]
    )
    val = next(iter(tiny_data.val_dataloader()))[0]
    assert torch.equal(val[0], tiny_data.val_set[0][0]) and torch.equal(val[1], tiny_data.val_set[1][0])


def test_given_tokenizer_decides_vocab(tmp_path, tiny_data, corpus_file):
    dm = GPTMiniData(
        data=str(corpus_file), cache_dir=str(tmp_path), tokenizer=str(tiny_data.tokenizer_path), vocab_size=99
    )
    assert dm.vocab_size == 384
    dm.prepare_data()
    dm.setup("fit")
    assert json.loads((dm.cache_path / "meta.json").read_text())["vocab_size"] == 384


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"data\.data path .*does not exist"):
        GPTMiniData(data=str(tmp_path / "nope.txt"), cache_dir=str(tmp_path))


def test_truncated_token_file_is_detected(tmp_path, corpus_file):
    dm = GPTMiniData(data=str(corpus_file), cache_dir=str(tmp_path), vocab_size=300, block_size=32)
    dm.prepare_data()
    train = dm.cache_path / "train.bin"
    train.write_bytes(train.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        dm.setup("fit")
