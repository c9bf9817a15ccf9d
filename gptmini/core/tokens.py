"""Text streams -> pieces -> uint16 token files -> fixed windows of block_size + 1 tokens. No Lightning.

Streams come from ``gptmini.core.sources`` (``str`` chunks, ``None`` after each record). Pieces are
strings of about ``PIECE_CHARS`` cut at a line end or before a space, so memory stays bounded
whatever the line layout, and ``encode_batch`` (multi-threaded in tokenizers) encodes them a batch
at a time straight into the token file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gptmini.core.config import ConfigError
from gptmini.core.formats import TOKEN_DTYPE
from gptmini.core.sources import Stream

EOT = "<|endoftext|>"
# Encode in ~1 MB batches of ~16 KB pieces: bounded memory, and encode_batch uses every core.
PIECE_CHARS = 16_384
PIECES_PER_BATCH = 64


def _cut(text: str, start: int, limit: int) -> int:
    """End of a piece of ``text`` from ``start``, at most ``limit`` characters: after the last line
    end of its second half, else before its last space (BPE words start with their space), else at
    the limit (a run of text without spaces), never inside an end-of-text marker."""
    end = start + limit
    lo = start + limit // 2
    i = text.rfind("\n", lo, end)
    if i >= 0:
        return i + 1
    i = text.rfind(" ", lo, end)
    if i > start:
        return i
    j = text.rfind(EOT, max(start, end - len(EOT) + 1), end + len(EOT) - 1)
    return j if start < j < end else end


def pieces(stream: Stream, sep: str | None, piece_chars: int | None = None) -> Iterator[str]:
    """Strings of about ``piece_chars`` (default PIECE_CHARS) from a stream.

    ``sep`` is put after each record and records are packed together (encoding: ``sep`` = the
    end-of-text token); ``sep=None`` ends a piece at each record (tokenizer training, which must
    not see the marker as text). Memory: one piece plus the chunk being cut.
    """
    limit = piece_chars or PIECE_CHARS
    parts: list[str] = []  # joined only once a piece is full: small records cost no copies
    size = 0
    for chunk in stream:
        if chunk is None:
            if sep is None:
                if parts:
                    yield "".join(parts)
                parts, size = [], 0
            else:
                parts.append(sep)
                size += len(sep)
            continue
        parts.append(chunk)
        size += len(chunk)
        if size < limit:
            continue
        buf, pos = "".join(parts), 0
        while len(buf) - pos >= limit:
            cut = _cut(buf, pos, limit)
            yield buf[pos:cut]
            pos = cut
        parts = [buf[pos:]] if pos < len(buf) else []
        size = len(buf) - pos
    if parts:
        yield "".join(parts)


def take_chars(stream: Stream, max_chars: int) -> Stream:
    """The first ``max_chars`` characters of a stream (the tokenizer's training sample)."""
    left = max_chars
    for chunk in stream:
        if chunk is None:
            yield None
            continue
        if left <= 0:
            return
        yield chunk[:left]
        left -= len(chunk)
    return


class TextSeen:
    """Passes a stream through, noting whether any record held more than whitespace, and counting
    its UTF-8 bytes (the denominator of bits per byte; end-of-text markers are not text)."""

    def __init__(self) -> None:
        self.any = False
        self.bytes = 0

    def watch(self, stream: Stream) -> Stream:
        for chunk in stream:
            if chunk:
                self.bytes += len(chunk.encode("utf-8"))
                if not self.any and not chunk.isspace():
                    self.any = True
            yield chunk


def bytes_of_tokens(path: Path, table: np.ndarray, chunk: int = 1 << 22) -> int:
    """UTF-8 bytes the tokens of a token file decode to, by a per-id byte-length table
    (``gptmini.core.tokenizer.token_byte_lengths``)."""
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r") if Path(path).stat().st_size else []
    return int(sum(int(table[tokens[i : i + chunk]].sum()) for i in range(0, len(tokens), chunk)))


def _encode_batch(tok) -> Callable[[list[str]], list]:
    # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we never read.
    return getattr(tok, "encode_batch_fast", tok.encode_batch)


def record_separator(tok) -> str:
    """What ends each record: the end-of-text token's text, when the tokenizer reads it as that token."""
    eot = tok.token_to_id(EOT)
    if eot is None:
        return ""  # a given tokenizer without one: records are simply concatenated
    if tok.encode(EOT).ids != [eot]:
        raise ConfigError(
            f"data.tokenizer has {EOT} as an ordinary token, not a special one; add it as a special "
            f"token (tokenizer.add_special_tokens) or give another tokenizer."
        )
    return EOT


def _write_ids(f, encodings) -> int:
    count = sum(len(e.ids) for e in encodings)
    np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), TOKEN_DTYPE, count).tofile(f)
    return count


def encode_to_file(tok, texts: Iterable[str], out: Path, limit: int | None = None) -> int:
    """Encode pieces into uint16 ids written to ``out``; returns the token count.

    One batch is encoded (tokenizers releases the GIL and uses every core) while this thread reads
    the next one and writes the previous one: reading and writing cost almost no encoding time.
    With ``limit``, reading stops once at least ``limit`` ids are written (one batch more is read
    at most); the file then holds the same first ids as without it.
    """
    encode = _encode_batch(tok)
    n = 0
    it = iter(texts)
    with open(out, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        running = None
        while True:
            batch = list(itertools.islice(it, PIECES_PER_BATCH))
            nxt = pool.submit(encode, batch) if batch else None
            if running is not None:
                n += _write_ids(f, running.result())
            if nxt is None:
                return n
            if limit is not None and n >= limit:
                nxt.cancel()
                close = getattr(it, "close", None)
                if close is not None:  # a generator: its files are closed now, not at collection
                    close()
                return n
            running = nxt


def split_tail(all_path: Path, n_tail: int, train_path: Path, tail_path: Path, chunk: int = 1 << 22) -> None:
    """``all_path`` -> ``train_path`` (its head, renamed in place) + ``tail_path`` (its last n_tail ids)."""
    itemsize = np.dtype(TOKEN_DTYPE).itemsize
    n = all_path.stat().st_size // itemsize
    tokens = np.memmap(all_path, dtype=TOKEN_DTYPE, mode="r")
    with open(tail_path, "wb") as f:
        for i in range(n - n_tail, n, chunk):
            np.asarray(tokens[i : min(i + chunk, n)]).tofile(f)
    del tokens
    os.truncate(all_path, (n - n_tail) * itemsize)
    os.replace(all_path, train_path)


class TokenWindows(Dataset):
    """Window i = tokens[i*block : i*block + block + 1]: one uint16 tensor of block_size + 1 ids.

    A batch is one uint16 (B, T+1) tensor (``__getitems__``: one gather from the memmap, no
    collate): a quarter of the bytes of two int64 (B, T) tensors to pin and copy to the device,
    where :func:`inputs_and_targets` splits it into x and y shifted by one. Deterministic by index
    (shuffling is the sampler's job), so ``overfit_batches=1`` always sees the same batch. An index
    may also be ``(i, offset)``: the window starting at ``i*block + offset`` (how the sampler shifts
    the grid); ``shifted=True`` keeps one block in reserve so every offset in [0, block) fits. The
    memmap is opened lazily so each DataLoader worker opens its own.
    """

    def __init__(self, path: Path, block_size: int, shifted: bool = False) -> None:
        self.path = Path(path)
        self.block_size = block_size
        n_tokens = self.path.stat().st_size // np.dtype(TOKEN_DTYPE).itemsize
        self.max_start = max(n_tokens - block_size - 1, 0)  # last start with a full window + target
        self.n_windows = (n_tokens - 1 - (block_size - 1 if shifted else 0)) // block_size
        self._tokens: np.ndarray | None = None
        self._span = np.arange(block_size + 1)

    def __len__(self) -> int:
        return self.n_windows

    def _start(self, i: int | tuple[int, int]) -> int:
        i, offset = i if isinstance(i, tuple) else (i, 0)
        return i * self.block_size + offset

    def _memmap(self) -> np.ndarray:
        if self._tokens is None:
            # A plain ndarray over the mapping: indexing a np.memmap costs twice as much (subclass wrapping).
            self._tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r").view(np.ndarray)
        return self._tokens

    def __getitem__(self, i: int | tuple[int, int]) -> torch.Tensor:
        start = self._start(i)
        return torch.from_numpy(np.array(self._memmap()[start : start + self.block_size + 1]))  # (T+1,)

    def __getitems__(self, indices: list) -> torch.Tensor:
        """The batch of ``indices`` as one (B, T+1) uint16 tensor (the DataLoader calls this instead
        of B ``__getitem__`` calls and a collate when the dataset has it)."""
        starts = np.fromiter(map(self._start, indices), dtype=np.int64, count=len(indices))
        return torch.from_numpy(self._memmap()[starts[:, None] + self._span])  # fancy index: a copy


def collate_windows(batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """DataLoader ``collate_fn`` for :class:`TokenWindows`: its ``__getitems__`` batch as it is (a
    list of single windows, from another caller, is stacked)."""
    return batch if isinstance(batch, torch.Tensor) else torch.stack(batch)


def is_window_batch(batch: object) -> bool:
    """A batch as :class:`TokenWindows` gives it: one (B, T+1) uint16 tensor of token ids."""
    return isinstance(batch, torch.Tensor) and batch.dtype == torch.uint16 and batch.dim() == 2


def inputs_and_targets(
    batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), int64 (B, T) each, from a window batch (converted where it is, i.e. on the device
    after the copy) or from an (x, y) pair, returned as given. x and y are views of one int64 copy."""
    if not is_window_batch(batch):
        x, y = batch
        return x, y
    ids = batch.long()  # embedding indices and cross_entropy targets: int64
    return ids[:, :-1], ids[:, 1:]
