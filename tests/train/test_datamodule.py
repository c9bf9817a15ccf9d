"""gptmini.train.datamodule: the cache it prepares (and reuses), its loaders, the tokenizer and
vocab it takes, and the bad paths and files it refuses."""

import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit_cli

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
    first = next(iter(tiny_data.train_dataloader()))  # one uint16 (B, T+1) window batch
    assert first.dtype == torch.uint16 and first.shape == (tiny_data.batch_size, tiny_data.block_size + 1)
    ds = tiny_data.train_set
    assert not torch.equal(first[0], ds[0]) or not torch.equal(first[1], ds[1])
    val = next(iter(tiny_data.val_dataloader()))
    assert torch.equal(val[0], tiny_data.val_set[0]) and torch.equal(val[1], tiny_data.val_set[1])


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


class _Batches(pl.Callback):
    """The batches the training and validation hooks see, in order (stage, batch)."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(("train", batch))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen.append(("val", batch))


def test_one_uint16_window_per_batch_crosses_to_the_device_then_x_y(cli_args, monkeypatch):
    # What crosses host -> device is one uint16 (B, T+1) tensor per batch (not two int64 (B, T)); the
    # module's steps and every callback get (x, y) cut from it on the device, shifted by one.
    moved: list = []
    move = GPTMiniData.transfer_batch_to_device

    def spy(self, batch, device, dataloader_idx):
        moved.append(batch)
        return move(self, batch, device, dataloader_idx)

    monkeypatch.setattr(GPTMiniData, "transfer_batch_to_device", spy)
    seen = _Batches()
    cli = fit_cli(cli_args(max_steps=2) + ["--model.schedule.warmup_steps=1", "--trainer.limit_val_batches=2"], seen)
    dm = cli.datamodule
    stages = [stage for stage, _ in seen.seen]
    assert stages == ["val"] * 2 + (["train"] + ["val"] * 2) * 2  # sanity check, 2 steps, each validated
    for window, (_, (x, y)) in zip(moved, seen.seen, strict=True):
        assert window.dtype == torch.uint16 and window.shape == (dm.batch_size, dm.block_size + 1)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (dm.batch_size, dm.block_size)
        assert torch.equal(x, window[:, :-1].long()) and torch.equal(y, window[:, 1:].long())


def test_the_window_is_copied_non_blocking_from_pinned_memory_on_cuda(tiny_data, monkeypatch):
    # No GPU here: the spy stands in for the copy, to see how Lightning's transfer hook asks for it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dm = GPTMiniData(data=[str(s) for s in tiny_data.sources], cache_dir=str(tiny_data.cache_root),
                     vocab_size=tiny_data.vocab_size, block_size=tiny_data.block_size, batch_size=4)
    dm.setup("fit")
    assert dm.pin_memory and dm.train_dataloader().pin_memory and dm.val_dataloader().pin_memory
    window = dm.train_set.__getitems__([0, 1, 2, 3])
    calls = []

    def to(self, *args, **kwargs):
        calls.append((self.dtype, args, kwargs))
        return self

    monkeypatch.setattr(torch.Tensor, "to", to)
    x, y = dm.on_after_batch_transfer(dm.transfer_batch_to_device(window, torch.device("cuda", 0), 0), 0)
    assert calls == [(torch.uint16, (torch.device("cuda", 0),), {"non_blocking": True})]  # one copy
    assert x.shape == y.shape == (4, dm.block_size)
