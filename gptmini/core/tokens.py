"""Text sources -> pieces -> uint16 token files -> fixed windows of block_size + 1 tokens. No Lightning."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gptmini.core.config import ConfigError

EOT = "<|endoftext|>"
TOKEN_DTYPE = np.uint16
META_VERSION = 1
# Encode in ~1 MB batches of ~16 KB pieces: bounded memory, and encode_batch uses every core.
PIECE_CHARS = 16_384
PIECES_PER_BATCH = 64


def default_corpus() -> Path:
    """The embedded public-domain corpus (nine Shakespeare plays, see gptmini/corpus/NOTICE)."""
    return Path(str(resources.files("gptmini.corpus") / "shakespeare_plays.txt.gz"))


def resolve_sources(data: str | list[str] | None) -> list[Path]:
    """Files to read: the embedded corpus, a folder (its *.txt / *.txt.gz, recursively) or a list."""
    if data is None:
        return [default_corpus()]
    entries = [data] if isinstance(data, str) else list(data)
    if not entries:
        raise ConfigError(
            "data.data is an empty list; give files or folders, or null for the embedded corpus."
        )
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name.endswith((".txt", ".txt.gz")))
            if not found:
                raise ConfigError(f"data.data folder {path} holds no .txt or .txt.gz files.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(
                f"data.data path {path} does not exist; give existing .txt files or folders "
                f"(or null for the embedded corpus)."
            )
    return files


def _open_text(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    # Strict decoding: a corpus with non-UTF-8 bytes is an error (see _read_pieces), not silently
    # replaced, so nobody trains on mojibake without knowing.
    return opener(path, "rt", encoding="utf-8", errors="strict", newline="")


def _read_pieces(path: Path, piece_chars: int | None = None) -> Iterator[str]:
    """Yield the file as strings of about piece_chars (default PIECE_CHARS), cut at line ends."""
    piece_chars = piece_chars or PIECE_CHARS
    buf: list[str] = []
    size = 0
    try:
        with _open_text(path) as f:
            for line in f:
                buf.append(line)
                size += len(line)
                if size >= piece_chars:
                    yield "".join(buf)
                    buf, size = [], 0
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"corpus file {path} is not valid UTF-8 (byte offset ~{e.start} of a chunk: {e.reason}). "
            f"Convert it first, e.g. `iconv -f latin1 -t utf-8 {path.name}`, or drop it from data.data."
        ) from None
    except (OSError, EOFError) as e:
        raise ConfigError(f"corpus file {path} cannot be read: {e}") from None
    if buf:
        yield "".join(buf)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _encode_to_file(tok, sources: list[Path], out: Path) -> int:
    """Encode sources into uint16 ids appended to ``out``; returns the token count."""
    eot = tok.token_to_id(EOT)
    n = 0
    with open(out, "wb") as f:
        for src in sources:
            batch: list[str] = []
            for piece in _read_pieces(src):
                batch.append(piece)
                if len(batch) == PIECES_PER_BATCH:
                    n += _write_ids(f, tok.encode_batch(batch))
                    batch = []
            if batch:
                n += _write_ids(f, tok.encode_batch(batch))
            if eot is not None:
                n += _write_ids(f, [[eot]])  # document separator
    return n


def _write_ids(f, encodings) -> int:
    ids = [i for enc in encodings for i in (enc if isinstance(enc, list) else enc.ids)]
    np.asarray(ids, dtype=TOKEN_DTYPE).tofile(f)
    return len(ids)


def _copy_tokens(src: np.ndarray, out: Path, chunk: int = 1 << 22) -> None:
    with open(out, "wb") as f:
        for i in range(0, len(src), chunk):
            np.asarray(src[i : i + chunk]).tofile(f)


class TokenWindows(Dataset):
    """Window i = tokens[i*block : i*block + block + 1] -> (x, y) shifted by one.

    Deterministic by index (shuffling is the sampler's job), so ``overfit_batches=1`` always sees
    the same batch. The memmap is opened lazily so each DataLoader worker opens its own.
    """

    def __init__(self, path: Path, block_size: int) -> None:
        self.path = Path(path)
        self.block_size = block_size
        n_tokens = self.path.stat().st_size // np.dtype(TOKEN_DTYPE).itemsize
        self.n_windows = (n_tokens - 1) // block_size
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r")
        start = i * self.block_size
        window = torch.from_numpy(self._tokens[start : start + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]  # (T,), (T,)
