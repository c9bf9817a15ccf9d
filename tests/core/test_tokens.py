"""gptmini.core.tokens: encoding in pieces loses nothing, windows of block_size + 1 tokens from uint16
files."""


import numpy as np
import torch

import gptmini.core.tokens as data_mod
from gptmini.core.tokenizer import load_tokenizer
from gptmini.core.tokens import EOT, TokenWindows, inputs_and_targets
from gptmini.train.datamodule import GPTMiniData


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
        w = ds[i]  # one uint16 window of B + 1 tokens: x and y are cut from it on the device
        assert w.shape == (B + 1,) and w.dtype == torch.uint16
        x, y = inputs_and_targets(w[None])
        assert x.shape == y.shape == (1, B) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[0], torch.from_numpy(tokens[i * B : i * B + B]))
        assert torch.equal(y[0], torch.from_numpy(tokens[i * B + 1 : i * B + B + 1]))
        assert torch.equal(ds[i], w)
        # (window, offset): the grid shifted by offset, as window_offset=random_per_epoch samples it
        w = ds[(i, B - 1)]
        assert torch.equal(w.long(), torch.from_numpy(tokens[i * B + B - 1 : i * B + 2 * B]))
    assert tiny_data.window_offset == "fixed"  # the default
    assert len(ds) == (len(tokens) - 1) // B
    shifted = TokenWindows(tiny_data.cache_path / "train.bin", B, shifted=True)
    assert len(shifted) == (len(tokens) - B) // B  # one block kept for the offsets


def test_token_windows_reads_uint16(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    ds = TokenWindows(path, 10)
    assert len(ds) == 9
    assert ds[8].tolist() == list(range(80, 91))


def test_a_batch_is_one_uint16_gather_split_on_the_device(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    ds = TokenWindows(path, 10, shifted=True)
    batch = ds.__getitems__([3, (0, 7), 1])  # what the DataLoader asks for a batch
    assert batch.dtype == torch.uint16 and batch.shape == (3, 11)
    assert torch.equal(batch, torch.stack([ds[3], ds[(0, 7)], ds[1]]))
    x, y = inputs_and_targets(batch)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 10)
    assert x[1].tolist() == list(range(7, 17)) and y[1].tolist() == list(range(8, 18))
    pair = (x, y)
    assert inputs_and_targets(pair) == pair  # an (x, y) batch passes through
