"""Text files -> BPE tokenizer -> uint16 token files -> fixed windows of block_size + 1 tokens.

``prepare_data`` does the one-time work (tokenizer training, chunked encoding, train/val split) and
writes it atomically into ``cache_dir/<key>/``; a second run with the same sources and settings
finds it there and does nothing. Reading is through ``np.memmap``, so corpus size is bounded by
disk, not RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptmini.core.tokenizer import load_tokenizer, train_tokenizer, vocab_of
from gptmini.core.tokens import (
    EOT,
    META_VERSION,
    TOKEN_DTYPE,
    TokenWindows,
    _copy_tokens,
    _encode_to_file,
    _read_pieces,
    _sha256,
    resolve_sources,
)
from gptmini.train.loader import ResumableLoader, ResumableSampler, ignore_stop_signals


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
            worker_init_fn=ignore_stop_signals if self.num_workers > 0 else None,
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
