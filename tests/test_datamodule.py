import json

import numpy as np
import pytest
import torch

import gptmini.core.tokens as data_mod
import gptmini.train.datamodule as dm_mod
from gptmini.core.sources import resolve_sources
from gptmini.core.tokenizer import load_tokenizer
from gptmini.core.tokens import EOT, TokenWindows
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


def test_tokens_decode_back_to_the_corpus(tmp_path, corpus_file, monkeypatch):
    # Tiny pieces and batches force many encode batches: chunking must not lose or reorder text.
    monkeypatch.setattr(data_mod, "PIECE_CHARS", 500)
    monkeypatch.setattr(data_mod, "PIECES_PER_BATCH", 3)
    dm = GPTMiniData(data=str(corpus_file), cache_dir=str(tmp_path), vocab_size=300, block_size=32)
    dm.prepare_data()
    tok = load_tokenizer(dm.tokenizer_path)
    ids = np.concatenate([np.fromfile(dm.cache_path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert ids.max() < 300
    eot = tok.token_to_id(EOT)
    assert ids[-1] == eot
    text = tok.decode(ids[:-1].tolist(), skip_special_tokens=False)
    assert text == corpus_file.read_text(encoding="utf-8")


def test_windows_are_deterministic_and_shifted(tiny_data):
    tiny_data.setup("fit")
    ds = tiny_data.train_set
    tokens = np.fromfile(tiny_data.cache_path / "train.bin", dtype=np.uint16).astype(np.int64)
    B = tiny_data.block_size
    for i in (0, 5, len(ds) - 1):
        x, y = ds[i]
        assert x.shape == y.shape == (B,) and x.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(tokens[i * B : i * B + B]))
        assert torch.equal(y, torch.from_numpy(tokens[i * B + 1 : i * B + B + 1]))
        assert torch.equal(ds[i][0], x)
        # (window, offset): the grid shifted by offset, as window_offset=random_per_epoch samples it
        x, y = ds[(i, B - 1)]
        assert torch.equal(y, torch.from_numpy(tokens[i * B + B : i * B + 2 * B]))
    assert tiny_data.window_offset == "fixed"  # the default
    assert len(ds) == (len(tokens) - 1) // B
    shifted = TokenWindows(tiny_data.cache_path / "train.bin", B, shifted=True)
    assert len(shifted) == (len(tokens) - B) // B  # one block kept for the offsets


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


def test_default_corpus_is_shipped():
    (src,) = resolve_sources(None)
    assert src.kind == "text" and src.path.is_file() and src.path.name == "shakespeare_plays.txt.gz"
    assert (src.path.parent / "NOTICE").is_file()


def test_folder_source_collects_txt_files(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "c.md").write_text("c")
    assert [p.path.name for p in resolve_sources(str(tmp_path))] == ["a.txt", "b.txt"]


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


def test_token_windows_reads_uint16(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    ds = TokenWindows(path, 10)
    assert len(ds) == 9
    x, y = ds[8]
    assert x.tolist() == list(range(80, 90)) and y.tolist() == list(range(81, 91))
