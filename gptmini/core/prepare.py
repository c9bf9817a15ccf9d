"""One-time data preparation: sources -> tokenizer (BPE on a bounded sample) -> train/val token files. No Lightning.

Memory is bounded (streams of pieces, a batch of ~1 MB encoded at a time, token files written as
they come) and time is linear in the corpus: the only pass that is not is the BPE training, on at
most ``bpe_sample_chars`` characters taken from the start of every source in proportion to its size.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gptmini.core.config import ConfigError
from gptmini.core.formats import (
    CACHE_ALL_TOKENS,
    CACHE_TOKENIZER,
    META_VERSION,
    META_VOCAB_SIZE,
    TOKEN_DTYPE,
    meta_bytes,
    meta_tokens,
    split_file,
)
from gptmini.core.sources import VAL_SPLIT, BadRecords, ReadOptions, Source, Stream, hf_splits, stream
from gptmini.core.tokenizer import load_tokenizer, token_byte_lengths, train_tokenizer
from gptmini.core.tokens import (
    EOT,
    TextSeen,
    bytes_of_tokens,
    encode_to_file,
    pieces,
    record_separator,
    split_tail,
    take_chars,
)


@contextmanager
def _bar(desc: str, total: int | None, show: bool) -> Iterator:
    """A tqdm bar on stderr in bytes (MB/s, ETA when the total is known); nothing when ``show`` is off."""
    from tqdm.auto import tqdm

    with tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not show, mininterval=1.0
    ) as bar:
        yield bar.update


def encode_sources(
    tok,
    sources: list[Source],
    opts: ReadOptions,
    split: str | None,
    path: Path,
    desc: str,
    show: bool,
    seen: TextSeen,
    bad: BadRecords | None = None,
    limit: int | None = None,
) -> int:
    """The sources' text (``split``; None: all of it) -> a token file at ``path``, each record ending
    with the end-of-text token, under a progress bar: the one encoding of preparation and of
    ``gptmini eval``. ``seen`` counts the text; with ``limit``, reading stops at that many tokens."""
    with _bar(desc, _total(sources) if split is None else None, show) as up:
        texts = itertools.chain.from_iterable(stream(s, opts, split, up, bad) for s in sources)
        return encode_to_file(tok, pieces(seen.watch(texts), record_separator(tok)), path, limit)


def has_val_split(sources: list[Source], opts: ReadOptions) -> bool:
    """A single Hugging Face dataset with a ``validation`` split: that split is the validation set."""
    if len(sources) != 1 or sources[0].kind not in ("hf", "hf_disk") or opts.hf_split == VAL_SPLIT:
        return False
    return VAL_SPLIT in hf_splits(sources[0], opts)


def _total(sources: list[Source]) -> int | None:
    """Bytes on disk of file sources (the bar's total); None (no ETA) for a dataset."""
    return sum(s.size() or 0 for s in sources) if all(s.is_file for s in sources) else None


def sample_stream(sources: list[Source], opts: ReadOptions, max_chars: int, progress) -> Stream:
    """At most ``max_chars`` characters for the tokenizer: the start of each source, in proportion to
    its size on disk (of the stream, first come first served, when a size is unknown)."""
    sizes = [s.size() for s in sources]
    if None in sizes or not sum(sizes):  # type: ignore[arg-type]
        yield from take_chars(
            itertools.chain.from_iterable(stream(s, opts, progress=progress) for s in sources), max_chars
        )
        return
    total = sum(sizes)  # type: ignore[arg-type]
    for src, size in zip(sources, sizes):
        yield from take_chars(stream(src, opts, progress=progress), max(1, max_chars * size // total))


def prepare_tokens(
    sources: list[Source],
    opts: ReadOptions,
    out: Path,
    *,
    tokenizer_file: Path | None,
    vocab_size: int,
    val_fraction: float,
    block_size: int,
    bpe_sample_chars: int,
    show_progress: bool = True,
) -> dict:
    """Write tokenizer.json, train.bin, val.bin into ``out``; return the metadata (also meta.json's)."""
    tok = _tokenizer(sources, opts, tokenizer_file, vocab_size, bpe_sample_chars, show_progress)
    tok.save(str(out / CACHE_TOKENIZER))
    separate_val = has_val_split(sources, opts)
    seen = TextSeen()
    bad = BadRecords(opts.skip_bad_records, opts.names)
    n_train, n_val, text_bytes = _encode(tok, sources, opts, out, separate_val, val_fraction, show_progress, seen, bad)
    _check_enough_text(sources, opts, seen, bad, n_train, n_val, block_size, separate_val)
    train_path, val_path = out / split_file("train"), out / split_file("val")
    if not separate_val:
        split_tail(out / CACHE_ALL_TOKENS, n_val, train_path, val_path)
    train_bytes, val_bytes = split_bytes(tok, train_path, val_path, text_bytes)
    if bad.count and show_progress:
        print(bad.report(), file=sys.stderr, flush=True)
    return {
        "version": META_VERSION,
        META_VOCAB_SIZE: tok.get_vocab_size(),
        "eot_id": tok.token_to_id(EOT),
        meta_tokens("train"): n_train,
        meta_tokens("val"): n_val,
        "token_bytes": TOKEN_DTYPE().itemsize,
        # UTF-8 bytes of the text each split's tokens decode to (val/bpb); null: not byte-level.
        meta_bytes("train"): train_bytes,
        meta_bytes("val"): val_bytes,
        "val_from": f"{VAL_SPLIT} split" if separate_val else f"last {val_fraction} of the tokens",
        "sources": [{"source": str(s), "bytes": s.size()} for s in sources],
        "tokenizer": str(tokenizer_file) if tokenizer_file else f"trained BPE {vocab_size}",
        "skipped_records": bad.count,  # null/non-string text skipped under data.skip_bad_records
    }


def _tokenizer(
    sources: list[Source], opts: ReadOptions, tokenizer_file: Path | None, vocab_size: int, sample_chars: int,
    show: bool,
):
    """The given tokenizer file's tokenizer, else a byte-level BPE trained on a bounded sample of the sources."""
    if tokenizer_file is not None:
        return load_tokenizer(tokenizer_file)
    total = _total(sources)
    with _bar("gptmini: tokenizer sample", min(total, sample_chars) if total else None, show) as up:
        return train_tokenizer(pieces(sample_stream(sources, opts, sample_chars, up), sep=None), vocab_size)


def _encode(
    tok, sources: list[Source], opts: ReadOptions, out: Path, separate_val: bool, val_fraction: float,
    show: bool, seen: TextSeen, bad: BadRecords,
) -> tuple[int, int, list[int]]:
    """Encodes the sources into ``out`` (the train and val splits, or one stream to split later); returns
    (train tokens, val tokens, UTF-8 bytes of the text of each file written)."""
    text_bytes: list[int] = []  # of each encode() call: one stream, or the train and val splits

    def encode(split: str | None, path: Path, desc: str) -> int:
        before = seen.bytes
        n = encode_sources(tok, sources, opts, split, path, desc, show, seen, bad)
        text_bytes.append(seen.bytes - before)
        return n

    if separate_val:
        n_train = encode(opts.hf_split, out / split_file("train"), f"gptmini: encoding {opts.hf_split}")
        n_val = encode(VAL_SPLIT, out / split_file("val"), f"gptmini: encoding {VAL_SPLIT}")
    else:
        n = encode(None, out / CACHE_ALL_TOKENS, "gptmini: encoding")
        n_val = int(n * val_fraction)
        n_train = n - n_val
    return n_train, n_val, text_bytes


def _check_enough_text(
    sources: list[Source], opts: ReadOptions, seen: TextSeen, bad: BadRecords, n_train: int, n_val: int,
    block_size: int, separate_val: bool,
) -> None:
    """Raises a ConfigError when the corpus held no text, or too few tokens for one window in a split."""
    if not seen.any:
        names = opts.names
        field = (
            f" under {names.text_field}={opts.text_field!r}" if any(s.kind != "text" for s in sources) else ""
        )
        skipped = f" ({bad.count} record(s) skipped by {names.skip_bad_records})" if bad.count else ""
        raise ConfigError(
            f"corpus is empty: {names.data} ({', '.join(map(str, sources))}) holds no text{field}{skipped}; "
            f"point {names.data} at files with text (or null for the embedded corpus)."
        )
    need = block_size + 1
    if n_train < need or n_val < need:
        where = f"the {VAL_SPLIT} split" if separate_val else "data.val_fraction of the stream"
        raise ConfigError(
            f"corpus too short: {n_train} train / {n_val} val tokens (val = {where}), but one window "
            f"needs data.block_size + 1 = {need} in each. Add text or lower data.block_size."
        )


def split_bytes(tok, train_path: Path, val_path: Path, text_bytes: list[int]) -> tuple[int | None, int | None]:
    """The UTF-8 bytes of the train and val splits by the tokenizer's per-token byte table, checked
    against the bytes of the text that was encoded (the table's sum must give them back exactly:
    a normalizer or a non-byte-level tokenizer would not); (None, None) when they differ."""
    table = token_byte_lengths(tok)
    if table is None:
        return None, None
    train, val = bytes_of_tokens(train_path, table), bytes_of_tokens(val_path, table)
    counted = [train, val] if len(text_bytes) == 2 else [train + val]
    return (train, val) if counted == text_bytes else (None, None)
