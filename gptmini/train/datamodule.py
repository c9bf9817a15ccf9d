"""Corpus sources -> BPE tokenizer -> uint16 token files -> windows of block_size + 1 tokens.

``prepare_data`` does the one-time work (``gptmini.core.prepare``: tokenizer training on a bounded
sample, streamed encoding, train/val split) and writes it atomically into ``cache_dir/<key>/``; a
second run with the same sources and settings finds it there and does nothing. Reading is through
``np.memmap``, so corpus size is bounded by disk, not RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gptmini.core import atomic
from gptmini.core.config import (
    ConfigError,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveInt,
    VocabSize,
    check_args,
    check_value,
)
from gptmini.core.formats import (
    CACHE_META,
    CACHE_TOKENIZER,
    META_VERSION,
    META_VOCAB_SIZE,
    SPLITS,
    TOKEN_DTYPE,
    meta_bytes,
    meta_tokens,
    split_file,
)
from gptmini.core.prepare import prepare_tokens
from gptmini.core.sources import ReadOptions, resolve_sources
from gptmini.core.tokenizer import load_tokenizer, token_byte_lengths, vocab_of
from gptmini.core.tokens import TokenWindows, collate_windows, inputs_and_targets, is_window_batch
from gptmini.train.loader import (
    WINDOW_OFFSETS,
    ResumableLoader,
    ResumableSampler,
    WindowOffset,
    ignore_stop_signals,
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_unchanged(before: dict) -> None:
    """A :class:`ConfigError` naming each source whose content key (size, mtime) moved since
    ``before`` = {source: (key, size)} was taken: it changed while it was being prepared."""
    changed = []
    for src, (key, size) in before.items():
        try:
            now_key, now_size = src.key(), src.size()
        except OSError:
            changed.append(f"{src} (deleted)")
            continue
        if now_key != key:
            how = f"size {size:,} -> {now_size:,} bytes" if size != now_size else "modified, same size"
            changed.append(f"{src} ({how})")
    if changed:
        raise ConfigError(
            f"data.data changed while it was being prepared: {'; '.join(changed)}. The half-made cache "
            f"entry was not kept. Run again once the corpus stops changing (or prepare a copy of it)."
        )


def _vocab_size(vocab_size: int, tokenizer: str | None) -> int:
    """The run's vocabulary: a given tokenizer file's (checked like data.vocab_size), else ``vocab_size``."""
    if not tokenizer:
        return vocab_size
    key = f"the vocabulary of data.tokenizer {tokenizer}"  # the file decides the vocabulary
    return check_value(key, VocabSize, vocab_of(vocab_size, tokenizer))


def _read_options(
    text_field: str, hf_config: str | None, hf_split: str, hf_streaming: bool, skip_bad_records: bool
) -> ReadOptions:
    """The settings that decide which text a source yields; a ConfigError for an empty text_field."""
    if not text_field:
        raise ConfigError("data.text_field is empty; give the name of the text field/column, e.g. text.")
    return ReadOptions(
        text_field=text_field,
        hf_config=hf_config,
        hf_split=hf_split,
        hf_streaming=hf_streaming,
        skip_bad_records=skip_bad_records,
    )


def _window_offset(window_offset: WindowOffset) -> WindowOffset:
    """``window_offset``, checked to be one of WINDOW_OFFSETS (a ConfigError naming them otherwise)."""
    if window_offset not in WINDOW_OFFSETS:  # the CLI checks the Literal; this is for Python callers
        raise ConfigError(
            f"data.window_offset must be one of {', '.join(WINDOW_OFFSETS)}, got {window_offset!r}."
        )
    return window_offset


class GPTMiniData(pl.LightningDataModule):
    def __init__(
        self,
        data: str | list[str] | None = None,
        cache_dir: str = "data_cache",
        tokenizer: str | None = None,
        vocab_size: VocabSize = 8000,
        block_size: PositiveInt = 512,
        batch_size: PositiveInt = 32,
        val_fraction: OpenUnitInterval = 0.1,
        num_workers: NonNegativeInt = 0,
        pin_memory: bool | None = None,
        window_offset: WindowOffset = "fixed",
        text_field: str = "text",
        bpe_sample_chars: PositiveInt = 100_000_000,
        hf_config: str | None = None,
        hf_split: str = "train",
        hf_streaming: bool = True,
        skip_bad_records: bool = False,
    ) -> None:
        """Tokenized text for GPTMini.

        Args:
            data: A file (.txt, .txt.gz, .jsonl, .jsonl.gz, .parquet), a folder of them (recursive), a
                dataset saved with datasets' save_to_disk, ``hf:NAME`` for a Hugging Face Hub dataset
                (needs ``pip install "gptmini[hf]"``), or a list of these; null uses the embedded
                Shakespeare corpus shipped with the package. A text file is one document, a JSONL
                line or a dataset row one record; each ends with the end-of-text token.
            cache_dir: Folder for the tokenizer, token files and metadata (one subfolder per
                distinct sources + settings, reused on later runs).
            tokenizer: A tokenizers JSON file to use instead of training a byte-level BPE.
            vocab_size: Vocabulary of the BPE trained when no tokenizer is given (model.arch.vocab_size
                is linked to the tokenizer's size).
            block_size: Tokens per training window (model.arch.block_size is linked to it).
            batch_size: Windows per batch (per device).
            val_fraction: Share of the token stream (its end) held out for validation.
            num_workers: DataLoader worker processes.
            pin_memory: Pin host batches for faster GPU copies; null = on when CUDA is available.
            window_offset: Where training windows start: ``fixed`` = the same grid of block_size
                windows every epoch, ``random_per_epoch`` = the grid shifted by a random offset each
                epoch, ``random`` = each window at a random token (nanoGPT). Drawn from seed + epoch:
                resume stays exact. Measured: docs/data.md.
            text_field: The field (JSONL) or column (Parquet, datasets) that holds the text.
            bpe_sample_chars: Characters the BPE tokenizer is trained on at most (the start of each
                source, in proportion to its size); the whole corpus is then encoded. Bounds the
                tokenizer's time and memory (timings: docs/data.md).
            hf_config: The Hugging Face dataset's configuration (subset) name, if it has several.
            hf_split: The split to train on; the dataset's ``validation`` split, when it has one, is
                the validation set (else the last data.val_fraction of the tokens).
            hf_streaming: Stream a Hub dataset (read once, no local Arrow copy); false downloads it
                into the Hugging Face cache first.
            skip_bad_records: Skip records (JSONL lines, Parquet or dataset rows) whose text is null,
                not a string or missing, and say how many were skipped; false stops at the first with
                an error naming the record, the field and what it holds.
        """
        super().__init__()
        checked = check_args(GPTMiniData.__init__, "data", locals())  # the range types above
        self.sources = resolve_sources(data)  # checks paths now, before any long work
        self.cache_root = Path(cache_dir).expanduser()
        self.tokenizer_file = Path(tokenizer).expanduser() if tokenizer else None
        self.vocab_size = _vocab_size(checked["vocab_size"], tokenizer)
        self.block_size, self.batch_size = checked["block_size"], checked["batch_size"]
        self.val_fraction, self.num_workers = checked["val_fraction"], checked["num_workers"]
        self.read_options = _read_options(text_field, hf_config, hf_split, hf_streaming, skip_bad_records)
        self.window_offset = _window_offset(window_offset)
        self.bpe_sample_chars = checked["bpe_sample_chars"]
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    # -- cache -----------------------------------------------------------------------------
    def cache_key(self) -> str:
        """Sources' content (path, size, mtime) and every setting that changes the tokens."""
        h = hashlib.sha256()
        for src in self.sources:
            h.update(f"{src.kind}|{src.key()}\n".encode())
        if self.tokenizer_file:
            tok = _sha256(self.tokenizer_file)
        else:
            tok = f"bpe{self.vocab_size}|{self.bpe_sample_chars}"
        h.update(f"{tok}|{self.val_fraction}|v{META_VERSION}".encode())
        if any(s.kind != "text" for s in self.sources):  # keeps the keys of plain-text caches as they were
            h.update(repr(self.read_options).encode())
            if self.read_options.skip_bad_records:  # out of the repr: older keys stay as they were
                h.update(b"|skip_bad_records")
        return h.hexdigest()[:16]

    @property
    def cache_path(self) -> Path:
        return self.cache_root / self.cache_key()

    @property
    def tokenizer_path(self) -> Path:
        return self.cache_path / CACHE_TOKENIZER

    def prepare_data(self) -> None:
        final = self.cache_path
        if (final / CACHE_META).is_file():
            return
        self.cache_root.mkdir(parents=True, exist_ok=True)
        before = {src: (src.key(), src.size()) for src in self.sources}
        # Build in a temp folder and rename: an interrupted run never leaves a half cache behind.
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache_root))
        try:
            # mkdtemp's 0700 would become the cache folder's mode on the rename: give it mkdir's.
            tmp.chmod(0o777 & ~atomic.current_umask())
            show = self.trainer is None or self.trainer.is_global_zero
            meta = prepare_tokens(
                self.sources,
                self.read_options,
                tmp,
                tokenizer_file=self.tokenizer_file,
                vocab_size=self.vocab_size,
                val_fraction=self.val_fraction,
                block_size=self.block_size,
                bpe_sample_chars=self.bpe_sample_chars,
                show_progress=show,
            )
            _check_unchanged(before)  # else the tokens belong to no cache key: nothing is kept
            # The token files durable before meta.json says "done".
            for name in (*(split_file(s) for s in SPLITS), CACHE_TOKENIZER):
                if (tmp / name).is_file():
                    with open(tmp / name, "rb+") as f:
                        os.fsync(f.fileno())
            atomic.write_text(tmp / CACHE_META, json.dumps(meta, indent=2))
            try:
                os.replace(tmp, final)
                atomic.fsync_dir(self.cache_root)
            except OSError:  # another process finished first; its cache is as good as ours
                if not (final / CACHE_META).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def meta(self) -> dict:
        path = self.cache_path / CACHE_META
        if not path.is_file():
            raise ConfigError(f"no prepared data at {self.cache_path}; run prepare_data() first.")
        return json.loads(path.read_text())

    def token_byte_table(self) -> np.ndarray | None:
        """UTF-8 bytes per token id of this cache's tokenizer (val/bpb), or None when preparation
        found the tokenizer not byte-exact (meta.json's val_bytes is null)."""
        meta = self.meta()
        if meta_bytes("val") in meta and meta[meta_bytes("val")] is None:
            return None
        # A cache written before val_bytes existed: the table alone decides (byte-level or not).
        return token_byte_lengths(load_tokenizer(self.tokenizer_path))

    def setup(self, stage: str | None = None) -> None:
        meta = self.meta()
        vocab = meta[META_VOCAB_SIZE]
        if vocab != self.vocab_size:
            raise ConfigError(
                f"the tokenizer in {self.cache_path} has {vocab} tokens but "
                f"data.vocab_size is {self.vocab_size} (the corpus is too small for that many BPE "
                f"merges, or the tokenizer changed). Set data.vocab_size: {vocab}."
            )
        for split in SPLITS:
            path = self.cache_path / split_file(split)
            expected = meta[meta_tokens(split)] * np.dtype(TOKEN_DTYPE).itemsize
            actual = path.stat().st_size if path.is_file() else -1
            if actual != expected:
                raise ConfigError(
                    f"token file {path} is {actual} bytes, expected {expected} (truncated or "
                    f"corrupt). Delete the folder {self.cache_path} (under data.cache_dir) and run "
                    f"again to rebuild it."
                )
        shifted = self.window_offset != "fixed"
        self.train_set = TokenWindows(self.cache_path / split_file("train"), self.block_size, shifted=shifted)
        self.val_set = TokenWindows(self.cache_path / split_file("val"), self.block_size)

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
                window_offset=self.window_offset,
            )
        return (ResumableLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train,
            collate_fn=collate_windows,  # one uint16 (B, T+1) tensor per batch (TokenWindows.__getitems__)
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=ignore_stop_signals if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() must run first"
        if len(self.train_set) < self.batch_size:
            raise ConfigError(
                f"only {len(self.train_set)} training windows of {self.block_size} tokens, fewer than "
                f"data.batch_size={self.batch_size}; add text or lower batch_size/block_size."
            )
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() must run first"
        return self._loader(self.val_set, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """(x, y) on the device from the one uint16 (B, T+1) window the loaders give per batch.

        Lightning's transfer_batch_to_device copies that window (``non_blocking`` from pinned
        memory on CUDA): a quarter of the bytes of two int64 (B, T) tensors, one copy instead of
        two. The module's steps and every callback hook after this see (x, y), int64 (B, T) each.
        Here, not in the LightningModule: the window is this datamodule's format (and Lightning
        warns when a module overrides a data hook while a datamodule is attached).
        """
        return inputs_and_targets(batch) if is_window_batch(batch) else batch
