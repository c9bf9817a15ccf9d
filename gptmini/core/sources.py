"""Corpus sources -> streams of text: .txt/.jsonl/.parquet files, folders, Hugging Face datasets. No Lightning.

A stream is an iterator of ``str`` chunks with ``None`` after each record (a text file is one
record, a JSONL line or a dataset row is one); ``gptmini.core.tokens`` cuts it into pieces and
puts the end-of-text token at each ``None``. Memory is bounded by the largest record of a
JSONL/Parquet/dataset source and by ``READ_CHARS`` for text files, whatever their line layout.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gptmini.core.config import ConfigError

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
HF_PREFIX = "hf:"
# Files saved by datasets' save_to_disk (a Dataset, or a DatasetDict of splits).
HF_SAVED_MARKERS = ("dataset_dict.json", "state.json")
READ_CHARS = 1 << 20  # text files are read in blocks of this many characters, not by lines
ROWS_PER_BATCH = 1024  # Parquet / dataset rows read at once
VAL_SPLIT = "validation"  # a Hugging Face dataset's split used as the validation set when it exists
EXTRA_HINT = 'pip install "gptmini[hf]"'

Stream = Iterator["str | None"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class SettingNames:
    """How the command that reads the corpus spells its settings, for its error messages
    (``fit``: ``data.text_field``; ``gptmini eval``: ``--text_field``)."""

    data: str = "data.data"
    text_field: str = "data.text_field"
    skip_bad_records: str = "data.skip_bad_records"
    split: str = "data.hf_split"


FIT_NAMES = SettingNames()


@dataclass(frozen=True)
class ReadOptions:
    """The settings that decide which text a source yields (all part of the cache key)."""

    text_field: str = "text"
    hf_config: str | None = None
    hf_split: str = "train"
    hf_streaming: bool = True
    # Out of the repr, which is the cache key's: keys of caches prepared without it stay the same
    # (GPTMiniData.cache_key adds it when on).
    skip_bad_records: bool = field(default=False, repr=False)
    names: SettingNames = field(default=FIT_NAMES, repr=False, compare=False)  # messages only


class BadRecords:
    """Records whose text is null, not a string, or missing: an error naming the record, the field
    and what was found; with ``data.skip_bad_records`` skipped and counted instead."""

    def __init__(self, skip: bool, names: SettingNames = FIT_NAMES) -> None:
        self.skip = skip
        self.names = names
        self.count = 0
        self.first: str | None = None  # the first one skipped, for the report

    def found(self, where: str, field: str, value: Any, missing: bool = False) -> None:
        what = "no such field" if missing else _describe(value)
        if not self.skip:
            names = self.names
            fix = (
                f"set {names.text_field} to the name of the text field/column, or "
                if missing
                else "fix or drop that record, or "
            )
            raise ConfigError(
                f"{where}: {names.text_field}={field!r} holds {what}, not a string of text; "
                f"{fix}set {names.skip_bad_records}=true to skip such records (they are counted)."
            )
        self.count += 1
        if self.first is None:
            self.first = f"{where} ({what})"

    def report(self) -> str:
        """One line for the user, once preparation is done ("" when nothing was skipped)."""
        if not self.count:
            return ""
        return (
            f"gptmini: skipped {self.count} record(s) whose text was null, not a string or missing "
            f"({self.names.skip_bad_records}=true); the first: {self.first}."
        )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


@dataclass(frozen=True)
class Source:
    """One entry of data.data: ``kind`` is text, jsonl, parquet, hf_disk (a saved dataset) or hf (hub)."""

    kind: str
    where: str  # file path, saved-dataset folder or hub name

    @property
    def path(self) -> Path:
        return Path(self.where)

    @property
    def is_file(self) -> bool:
        return self.kind in ("text", "jsonl", "parquet")

    def size(self) -> int | None:
        """Bytes on disk (the progress total and the sample split), None for a hub dataset."""
        if self.is_file:
            return self.path.stat().st_size
        if self.kind == "hf_disk":
            return sum(p.stat().st_size for p in sorted(self.path.rglob("*")) if p.is_file())
        return None

    def key(self) -> str:
        """Cheap content key: path, size and mtime of every file (a hub dataset: its name)."""
        if self.kind == "hf":
            return f"hf|{self.where}"
        files = [self.path] if self.is_file else sorted(p for p in self.path.rglob("*") if p.is_file())
        return ";".join(f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files)

    def __str__(self) -> str:
        return HF_PREFIX + self.where if self.kind == "hf" else self.where


def default_corpus() -> Path:
    """The embedded public-domain corpus (nine Shakespeare plays, see gptmini/corpus/NOTICE)."""
    return Path(str(resources.files("gptmini.corpus") / "shakespeare_plays.txt.gz"))


def _kind_of(path: Path) -> str:
    name = path.name
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"  # an explicitly named file of any other name is read as text, as before


def resolve_sources(data: str | list[str] | None, names: SettingNames = FIT_NAMES) -> list[Source]:
    """Sources to read: the embedded corpus, files, folders (their .txt/.jsonl/.parquet files,
    recursively, or a saved Hugging Face dataset) and ``hf:NAME`` hub datasets."""
    if data is None:
        return [Source("text", str(default_corpus()))]
    entries = [data] if isinstance(data, str) else list(data)
    if not entries:
        raise ConfigError(
            f"{names.data} is an empty list; give files or folders, or null for the embedded corpus."
        )
    out: list[Source] = []
    for entry in entries:
        if entry.startswith(HF_PREFIX):
            name = entry[len(HF_PREFIX) :].strip()
            if not name:
                raise ConfigError(
                    f"{names.data} entry {entry!r} names no dataset; write e.g. hf:roneneldan/TinyStories."
                )
            out.append(Source("hf", name))
            continue
        path = Path(entry).expanduser()
        if path.is_dir() and any((path / m).is_file() for m in HF_SAVED_MARKERS):
            out.append(Source("hf_disk", str(path)))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name.endswith(SUFFIXES))
            if not found:
                raise ConfigError(
                    f"{names.data} folder {path} holds no {', '.join(SUFFIXES)} files (nor a dataset saved "
                    f"with datasets' save_to_disk)."
                )
            out.extend(Source(_kind_of(p), str(p)) for p in found)
        elif path.is_file():
            out.append(Source(_kind_of(path), str(path)))
        else:
            raise ConfigError(
                f"{names.data} path {path} does not exist; give existing files or folders, hf:NAME for a "
                f"Hugging Face dataset, or null for the embedded corpus."
            )
    return out


# -- reading ---------------------------------------------------------------------------------------
# What reading a file can raise once it is open: a truncated .gz (EOFError), a damaged or non-gzip
# one (gzip.BadGzipFile is an OSError; zlib.error), an I/O error of the disk.
READ_ERRORS = (OSError, EOFError, zlib.error)


def _open_binary(path: Path):
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller through the returned pair
    return raw, (gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw)


def _unreadable(path: Path, e: BaseException, read: str, names: SettingNames) -> ConfigError:
    """The one error line of a corpus file that breaks while it is read (every format, every
    command): the file, why, and how far reading got (``read``)."""
    gz = path.name.endswith(".gz")
    if isinstance(e, EOFError):
        why = "truncated (the compressed data ends before its end-of-stream marker)"
    elif isinstance(e, gzip.BadGzipFile):
        why = f"not a valid gzip file ({e})"
    elif isinstance(e, zlib.error) or not isinstance(e, OSError) or e.errno is None:
        why = f"corrupt ({str(e).strip().rstrip('.') or type(e).__name__})"  # zlib's, pyarrow's errors
    else:
        why = f"unreadable ({e.strerror or e})"
    check = f" (`gzip -t {path.name}` tests it)" if gz else ""
    return ConfigError(
        f"corpus file {path} is {why}: {read}. Nothing was kept from it; replace the file{check} "
        f"or drop it from {names.data}."
    )


def _how_far(path: Path, raw, binary) -> str:
    """How far a text or JSONL file was read: bytes of text (decompressed), and of the file."""
    try:
        read = f"reading stopped after {binary.tell():,} bytes of text"  # a GzipFile's: decompressed
        if binary is not raw:
            read += f" ({raw.tell():,} of the file's {path.stat().st_size:,} bytes read)"
        return read
    except (OSError, ValueError):
        return "reading stopped partway"


def _text_stream(path: Path, progress: Progress, names: SettingNames = FIT_NAMES) -> Stream:
    # Blocks of READ_CHARS, not lines: a file that is one 100 MB line costs no more memory than
    # any other. Strict decoding: non-UTF-8 bytes are an error, not silent mojibake.
    raw, binary = _open_binary(path)
    done = 0
    try:
        with raw, io.TextIOWrapper(binary, encoding="utf-8", errors="strict", newline="") as f:
            try:
                while chunk := f.read(READ_CHARS):
                    yield chunk
                    now = raw.tell()
                    progress(now - done)
                    done = now
            except READ_ERRORS as e:
                raise _unreadable(path, e, _how_far(path, raw, binary), names) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"corpus file {path} is not valid UTF-8 (byte offset ~{e.start} of a chunk: {e.reason}). "
            f"Convert it first, e.g. `iconv -f latin1 -t utf-8 {path.name}`, or drop it from {names.data}."
        ) from None
    yield None


def _field_error(where: str, field: str, found: Any, names: SettingNames) -> ConfigError:
    return ConfigError(
        f"{where} has no text under {names.text_field}={field!r} (found: {found}); set "
        f"{names.text_field} to the name of the text column."
    )


def _lines(path: Path, raw, binary, names: SettingNames) -> Iterator[bytes]:
    try:
        yield from binary
    except READ_ERRORS as e:
        raise _unreadable(path, e, _how_far(path, raw, binary), names) from None


def _jsonl_stream(path: Path, field: str, progress: Progress, bad: BadRecords) -> Stream:
    raw, binary = _open_binary(path)
    done = 0
    with raw, binary:
        lines = _lines(path, raw, binary, bad.names)
        for lineno, line in enumerate(lines, 1):  # one record per line: memory = the longest record
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # json's error
                raise ConfigError(
                    f"{path}:{lineno} is not valid JSON ({e}); a .jsonl file holds one JSON object per line."
                ) from None
            if not isinstance(record, dict):
                bad.found(f"{path}:{lineno}", field, record)  # a JSON list, number, ...: no fields
                continue
            text = record.get(field)
            if not isinstance(text, str):
                if field not in record and not bad.skip:
                    raise _field_error(f"{path}:{lineno}", field, sorted(record), bad.names)
                bad.found(f"{path}:{lineno}", field, text, missing=field not in record)
                continue
            yield text
            yield None
            if lineno % ROWS_PER_BATCH == 0:
                now = raw.tell()
                progress(now - done)
                done = now
        progress(raw.tell() - done)


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"reading .parquet files needs pyarrow: {EXTRA_HINT}.") from None
    return pq


def _parquet_stream(path: Path, field: str, progress: Progress, bad: BadRecords) -> Stream:
    pq = _pyarrow_parquet()
    from pyarrow import ArrowException  # pyarrow's own errors (ArrowInvalid) on damaged files

    seen = 0
    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=ROWS_PER_BATCH, columns=[field]) if field in pf.schema_arrow.names else None
    except (*READ_ERRORS, ArrowException) as e:
        raise _unreadable(path, e, "its footer (the table of contents) cannot be read", bad.names) from None
    if batches is None:
        raise _field_error(str(path), field, pf.schema_arrow.names, bad.names)
    rows, size, done = max(pf.metadata.num_rows, 1), path.stat().st_size, 0

    def batches_or_error():
        try:
            yield from batches
        except (*READ_ERRORS, ArrowException) as e:
            raise _unreadable(path, e, f"reading stopped after {seen:,} of its {rows:,} rows", bad.names) from None

    for batch in batches_or_error():
        for text in batch.column(0).to_pylist():
            seen += 1
            if not isinstance(text, str):
                bad.found(f"{path} row {seen - 1} (counted from 0)", field, text)
                continue
            yield text
            yield None
        now = size * seen // rows
        progress(now - done)
        done = now


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"Hugging Face datasets in data.data need the `datasets` library: {EXTRA_HINT}."
        ) from None
    return datasets


def hf_splits(source: Source, opts: ReadOptions) -> dict[str, Any]:
    """The splits of a saved or hub dataset, by name (hub: downloaded or streamed on demand)."""
    datasets = _datasets()
    if source.kind == "hf_disk":
        ds = datasets.load_from_disk(source.where)
    else:
        ds = datasets.load_dataset(source.where, opts.hf_config, streaming=opts.hf_streaming)
    return dict(ds) if isinstance(ds, dict) else {opts.hf_split: ds}  # a lone Dataset is the train split


def hf_split(source: Source, opts: ReadOptions, split: str) -> Any:
    splits = hf_splits(source, opts)
    if split not in splits:
        raise ConfigError(
            f"{source} has no split {split!r} (it has {', '.join(splits)}); set {opts.names.split} to one of them."
        )
    return splits[split]


def _dataset_stream(ds: Any, where: str, field: str, progress: Progress, bad: BadRecords) -> Stream:
    names = getattr(ds, "column_names", None)
    if names is not None and field not in names:
        raise _field_error(where, field, names, bad.names)
    if names is not None and len(names) > 1 and hasattr(ds, "select_columns"):
        ds = ds.select_columns([field])  # read only the text column
    seen = 0
    for batch in ds.iter(batch_size=ROWS_PER_BATCH):
        texts = batch.get(field)
        if texts is None:
            raise _field_error(where, field, sorted(batch), bad.names)
        chars = 0
        for text in texts:
            seen += 1
            if not isinstance(text, str):
                bad.found(f"{where} row {seen - 1} (counted from 0)", field, text)
                continue
            chars += len(text)
            yield text
            yield None
        progress(chars)  # datasets have no byte position: characters read stand in for bytes


def stream(
    source: Source,
    opts: ReadOptions,
    split: str | None = None,
    progress: Progress | None = None,
    bad: BadRecords | None = None,
) -> Stream:
    """The text of one source (of its ``split`` for a dataset; default ``opts.hf_split``).
    ``bad`` counts the records skipped under ``opts.skip_bad_records`` (pass one to read the count)."""
    progress = progress or (lambda n: None)
    bad = bad or BadRecords(opts.skip_bad_records, opts.names)
    if source.kind == "text":
        return _text_stream(source.path, progress, opts.names)
    if source.kind == "jsonl":
        return _jsonl_stream(source.path, opts.text_field, progress, bad)
    if source.kind == "parquet":
        return _parquet_stream(source.path, opts.text_field, progress, bad)
    split = split or opts.hf_split
    return _dataset_stream(hf_split(source, opts, split), f"{source} [{split}]", opts.text_field, progress, bad)
