"""Text files -> BPE tokenizer -> uint16 token files -> fixed windows of block_size + 1 tokens.

``prepare_data`` does the one-time work (tokenizer training, chunked encoding, train/val split) and
writes it atomically into ``cache_dir/<key>/``; a second run with the same sources and settings
finds it there and does nothing. Reading is through ``np.memmap``, so corpus size is bounded by
disk, not RAM.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

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
        raise ValueError(
            "data.data is an empty list; give files or folders, or null for the embedded corpus."
        )
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name.endswith((".txt", ".txt.gz")))
            if not found:
                raise ValueError(f"data.data folder {path} holds no .txt or .txt.gz files.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(
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
        raise ValueError(
            f"corpus file {path} is not valid UTF-8 (byte offset ~{e.start} of a chunk: {e.reason}). "
            f"Convert it first, e.g. `iconv -f latin1 -t utf-8 {path.name}`, or drop it from data.data."
        ) from None
    except (OSError, EOFError) as e:
        raise ValueError(f"corpus file {path} cannot be read: {e}") from None
    if buf:
        yield "".join(buf)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_tokenizer(sources: list[Path], vocab_size: int):
    """Byte-level BPE (GPT-2 style) trained on the sources, with one end-of-text special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((piece for src in sources for piece in _read_pieces(src)), trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.tokenizer file {path} does not exist; give a tokenizers JSON file or null.")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"data.tokenizer file {path} is not a valid tokenizers JSON file: {e}") from None


def vocab_of(vocab_size: int, tokenizer: str | None) -> int:
    """The vocab a run will have: the given tokenizer's size, else the BPE size to train."""
    return load_tokenizer(Path(tokenizer).expanduser()).get_vocab_size() if tokenizer else vocab_size


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


class ResumableSampler(DistributedSampler):
    """Seeded shuffle per epoch (``seed + epoch``), split across ranks, resumable mid-epoch.

    A ``DistributedSampler`` so that Lightning uses it as is under DDP (it only injects its own
    sampler into loaders that lack one); with one process it is a plain seeded permutation.
    ``skip`` drops the first indices of the next iteration only: that is how a resumed run
    continues the interrupted epoch instead of restarting it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in checkpoints.

    Lightning stores ``state_dict()`` of a train loader that has one in every checkpoint and
    calls ``load_state_dict()`` before iterating on resume, so the resumed run sees exactly the
    batches the interrupted run had not yet trained on. The count is of batches handed to the
    training loop (not the sampler's position, which worker prefetching runs ahead of).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = 0  # batches handed out in the current epoch
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from load_state_dict

    def __iter__(self) -> Iterator:
        # A generator: nothing below runs until the first batch is requested, which Lightning
        # does after its set_epoch(), even though it calls iter() before. So the sampler (and any
        # worker prefetch) starts with the right epoch, and the skip applies only if the loop
        # continues the interrupted epoch: a checkpoint from an epoch's last batch resumes at
        # the start of the next epoch, where nothing must be skipped.
        resume, self._resume = self._resume, None
        sampler = self.sampler
        start = resume[1] if resume and resume[0] == getattr(sampler, "epoch", None) else 0
        if isinstance(sampler, ResumableSampler):
            sampler.skip = start * self.batch_size
        self._batches_done = start
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        sampler = self.sampler
        return {
            "epoch": getattr(sampler, "epoch", 0),
            "seed": getattr(sampler, "seed", 0),
            "batches_done": self._batches_done,
            "batch_size": self.batch_size,
            "num_replicas": getattr(sampler, "num_replicas", 1),
        }

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # e.g. overfit_batches swapped it out
            return
        sampler.seed = state["seed"]
        sampler.set_epoch(state["epoch"])
        done = state["batches_done"]
        if (state["batch_size"], state["num_replicas"]) != (self.batch_size, sampler.num_replicas):
            # Another batch size or device count splits the permutation differently: keep the
            # number of windows already seen this epoch, which is the closest exact equivalent.
            seen = done * state["batch_size"] * state["num_replicas"]
            done = seen // (self.batch_size * sampler.num_replicas)
            rank_zero_warn(
                f"resuming with data.batch_size x devices = {self.batch_size} x {sampler.num_replicas}, "
                f"the checkpoint used {state['batch_size']} x {state['num_replicas']}: the data order "
                f"continues approximately (at window {seen} of epoch {state['epoch']}), not exactly."
            )
        self._resume = (state["epoch"], done)


class GPTMiniData(pl.LightningDataModule):
    def __init__(
        self,
        data: str | list[str] | None = None,
        cache_dir: str = "data_cache",
        tokenizer: str | None = None,
        vocab_size: int = 8000,
        block_size: int = 512,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        """Tokenized text for GPTMini.

        Args:
            data: A .txt file, a folder of .txt/.txt.gz files, or a list of them; null uses the
                embedded Shakespeare corpus shipped with the package.
            cache_dir: Folder for the tokenizer, token files and metadata (one subfolder per
                distinct sources + settings, reused on later runs).
            tokenizer: A tokenizers JSON file to use instead of training a byte-level BPE.
            vocab_size: Vocabulary of the BPE trained when no tokenizer is given (model.vocab_size
                is linked to the tokenizer's size).
            block_size: Tokens per training window (model.block_size is linked to it).
            batch_size: Windows per batch (per device).
            val_fraction: Share of the token stream (its end) held out for validation.
            num_workers: DataLoader worker processes.
            pin_memory: Pin host batches for faster GPU copies; null = on when CUDA is available.
        """
        super().__init__()
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"data.block_size must be a positive integer, got {block_size!r}.")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size!r}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}.")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}.")
        self.sources = resolve_sources(data)  # checks paths now, before any long work
        self.cache_root = Path(cache_dir).expanduser()
        self.tokenizer_file = Path(tokenizer).expanduser() if tokenizer else None
        vocab_size = vocab_of(vocab_size, tokenizer)
        if not 2 <= vocab_size <= 65536:
            raise ValueError(f"data.vocab_size must be in [2, 65536] (uint16 tokens), got {vocab_size}.")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    # -- cache -----------------------------------------------------------------------------
    def cache_key(self) -> str:
        h = hashlib.sha256()
        for src in self.sources:
            st = src.stat()
            h.update(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        tok = _sha256(self.tokenizer_file) if self.tokenizer_file else f"bpe{self.vocab_size}"
        h.update(f"{tok}|{self.val_fraction}|v{META_VERSION}".encode())
        return h.hexdigest()[:16]

    @property
    def cache_path(self) -> Path:
        return self.cache_root / self.cache_key()

    @property
    def tokenizer_path(self) -> Path:
        return self.cache_path / "tokenizer.json"

    def prepare_data(self) -> None:
        final = self.cache_path
        if (final / "meta.json").is_file():
            return
        self.cache_root.mkdir(parents=True, exist_ok=True)
        # Build in a temp folder and rename: an interrupted run never leaves a half cache behind.
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache_root))
        try:
            if self.tokenizer_file is not None:
                tok = load_tokenizer(self.tokenizer_file)
            else:
                self._check_not_empty()
                tok = train_tokenizer(self.sources, self.vocab_size)
            tok.save(str(tmp / "tokenizer.json"))
            n = _encode_to_file(tok, self.sources, tmp / "all.bin")
            n_val = int(n * self.val_fraction)
            need = self.block_size + 1
            if n - n_val < need or n_val < need:
                raise ValueError(
                    f"corpus too short: {n} tokens give {n - n_val} train / {n_val} val tokens, but one "
                    f"window needs data.block_size + 1 = {need} in each. Add text or lower data.block_size."
                )
            tokens = np.memmap(tmp / "all.bin", dtype=TOKEN_DTYPE, mode="r")
            _copy_tokens(tokens[: n - n_val], tmp / "train.bin")
            _copy_tokens(tokens[n - n_val :], tmp / "val.bin")
            del tokens
            (tmp / "all.bin").unlink()
            meta = {
                "version": META_VERSION,
                "vocab_size": tok.get_vocab_size(),
                "eot_id": tok.token_to_id(EOT),
                "train_tokens": n - n_val,
                "val_tokens": n_val,
                "sources": [{"path": str(s), "bytes": s.stat().st_size} for s in self.sources],
                "tokenizer": str(self.tokenizer_file)
                if self.tokenizer_file
                else f"trained BPE {self.vocab_size}",
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished first; its cache is as good as ours
                if not (final / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _check_not_empty(self) -> None:
        for src in self.sources:
            for piece in _read_pieces(src):
                if piece.strip():
                    return
        raise ValueError(
            f"corpus is empty: data.data ({', '.join(map(str, self.sources))}) holds no text; "
            f"point data.data at files with text (or null for the embedded corpus)."
        )

    def meta(self) -> dict:
        path = self.cache_path / "meta.json"
        if not path.is_file():
            raise ValueError(f"no prepared data at {self.cache_path}; run prepare_data() first.")
        return json.loads(path.read_text())

    def setup(self, stage: str | None = None) -> None:
        meta = self.meta()
        if meta["vocab_size"] != self.vocab_size:
            raise ValueError(
                f"the tokenizer in {self.cache_path} has {meta['vocab_size']} tokens but "
                f"data.vocab_size is {self.vocab_size} (the corpus is too small for that many BPE "
                f"merges, or the tokenizer changed). Set data.vocab_size: {meta['vocab_size']}."
            )
        for split in ("train", "val"):
            path = self.cache_path / f"{split}.bin"
            expected = meta[f"{split}_tokens"] * np.dtype(TOKEN_DTYPE).itemsize
            actual = path.stat().st_size if path.is_file() else -1
            if actual != expected:
                raise ValueError(
                    f"token file {path} is {actual} bytes, expected {expected} (truncated or "
                    f"corrupt). Delete the folder {self.cache_path} (under data.cache_dir) and run "
                    f"again to rebuild it."
                )
        self.train_set = TokenWindows(self.cache_path / "train.bin", self.block_size)
        self.val_set = TokenWindows(self.cache_path / "val.bin", self.block_size)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        if not train:
            sampler = None  # sequential; Lightning shards it under DDP
        else:
            # Our own distributed-aware sampler: resumable mid-epoch (see ResumableLoader). The
            # seed is the run's seed_everything (Lightning exports it), saved with the position.
            dist = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer else None
            sampler = ResumableSampler(
                dataset,
                num_replicas=(dist or {}).get("num_replicas", 1),
                rank=(dist or {}).get("rank", 0),
                seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            )
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() must run first"
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"only {len(self.train_set)} training windows of {self.block_size} tokens, fewer than "
                f"data.batch_size={self.batch_size}; add text or lower batch_size/block_size."
            )
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() must run first"
        return self._loader(self.val_set, train=False)
