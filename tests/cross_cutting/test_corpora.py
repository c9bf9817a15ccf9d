"""Corpus inputs: JSONL/Parquet/Hugging Face datasets, bounded pieces, the BPE sample, the cache key."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

import gptmini.core.prepare as prep_mod
import gptmini.core.tokens as tokens_mod
from gptmini.core.sources import READ_CHARS, resolve_sources
from gptmini.core.tokenizer import load_tokenizer
from gptmini.core.tokens import EOT, pieces
from gptmini.train.datamodule import GPTMiniData

RECORDS = [f"Record {i}: the cat sat on mat {i % 7}.\nAnd then it slept.\n" * (1 + i % 3) for i in range(240)]


def all_text(dm: GPTMiniData) -> str:
    tok = load_tokenizer(dm.tokenizer_path)
    ids = np.concatenate([np.fromfile(dm.cache_path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    return tok.decode(ids.tolist(), skip_special_tokens=False)


def write_jsonl(path: Path, records: list, field: str = "text") -> Path:
    lines = "".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(records))
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return path


def write_parquet(path: Path, records: list, field: str = "text") -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({field: records, "n": list(range(len(records)))}), path)
    return path


def make(data, tmp_path: Path, **kw) -> GPTMiniData:
    kw = {"cache_dir": str(tmp_path / "cache"), "vocab_size": 300, "block_size": 16, **kw}
    return GPTMiniData(data=data, **kw)


def test_folder_of_jsonl_parquet_and_text_ends_each_record_with_eot(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", RECORDS[:80])
    write_jsonl(folder / "sub" / "b.jsonl.gz", RECORDS[80:160])
    write_parquet(folder / "c.parquet", RECORDS[160:])
    (folder / "d.txt").write_text("A plain text file is one document.\n")
    (folder / "notes.md").write_text("ignored")
    dm = make(str(folder), tmp_path)
    assert [s.kind for s in dm.sources] == ["jsonl", "parquet", "text", "jsonl"]  # sorted paths
    dm.prepare_data()
    records = RECORDS[:80] + RECORDS[160:] + ["A plain text file is one document.\n"] + RECORDS[80:160]
    assert all_text(dm) == "".join(r + EOT for r in records)


@pytest.mark.parametrize(
    "kind, build",
    [
        ("jsonl", lambda p: write_jsonl(p / "x.jsonl", RECORDS, field="body")),
        ("parquet", lambda p: write_parquet(p / "x.parquet", RECORDS, field="body")),
    ],
)
def test_wrong_text_field_is_a_clear_error(tmp_path, kind, build):
    dm = make(str(build(tmp_path)), tmp_path)
    with pytest.raises(ValueError, match=r"data\.text_field='text'.*body"):
        dm.prepare_data()
    make(str(build(tmp_path)), tmp_path, text_field="body").prepare_data()  # the named fix works


def test_record_without_the_field_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", RECORDS[:5])
    path.write_text(path.read_text() + '{"title": "no text here"}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:6 has no text under data\.text_field='text'"):
        make(str(path), tmp_path).prepare_data()


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_null_text_is_an_error_naming_its_row(tmp_path, kind):
    # A record whose text is null is an error naming the record (never silently skipped), and no
    # cache is written. The row is 137 counted from 0, 138 from 1 (a JSONL line number).
    records = RECORDS[:137] + [None] + RECORDS[138:200]
    path = (write_jsonl if kind == "jsonl" else write_parquet)(tmp_path / f"x.{kind}", records)
    with pytest.raises(ValueError) as info:
        make(str(path), tmp_path).prepare_data()
    message = str(info.value)
    assert path.name in message and re.search(r"\b13[78]\b", message), message
    assert "text" in message, message  # the field
    assert not list((tmp_path / "cache").glob("*/meta.json"))


def test_empty_jsonl_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [])
    with pytest.raises(ValueError, match=r"corpus is empty: .*under data\.text_field='text'"):
        make(str(path), tmp_path).prepare_data()
    assert not list((tmp_path / "cache").glob("*/meta.json"))


def test_one_long_line_is_cut_into_bounded_pieces_and_decodes_back(tmp_path, monkeypatch):
    # One 300k-character line (words, then a run without spaces): pieces stay <= PIECE_CHARS.
    monkeypatch.setattr(tokens_mod, "PIECE_CHARS", 2000)
    text = " ".join(f"word{i}" for i in range(40_000)) + "x" * 20_000
    assert len(text) > READ_CHARS // 4
    path = tmp_path / "line.txt"
    path.write_text(text)
    (src,) = resolve_sources(str(path))
    from gptmini.core.sources import ReadOptions, stream

    got = list(pieces(stream(src, ReadOptions()), sep=EOT))
    assert max(map(len, got)) <= 2000 and "".join(got) == text + EOT
    assert sum(p.startswith(" ") for p in got) > len(got) // 2  # cut before spaces, not inside words
    dm = make(str(path), tmp_path)
    dm.prepare_data()
    assert all_text(dm) == text + EOT


@pytest.mark.parametrize("name", ["one_line.txt", "one_line.txt.gz", "lines.txt"])
def test_text_is_read_in_bounded_blocks_whatever_the_line_length(tmp_path, monkeypatch, name):
    # What is read, not only the pieces cut afterwards: with 4096-character blocks, reading a 2 MB
    # file (one line, or many) never holds more than a few blocks; reading it whole (or a whole
    # line) would hold the 2 MB at once. Measured as the peak of Python allocations.
    import tracemalloc

    import gptmini.core.sources as sources_mod

    block = 4096
    monkeypatch.setattr(sources_mod, "READ_CHARS", block)
    words = " ".join(f"word{i}" for i in range(250_000))  # ~2.2 MB
    text = words.replace(" ", "\n") if name == "lines.txt" else words
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    (src,) = resolve_sources(str(path))
    chunks, total = sources_mod.stream(src, sources_mod.ReadOptions()), 0
    tracemalloc.start()
    try:
        for chunk in chunks:
            assert chunk is None or len(chunk) <= block
            total += len(chunk or "")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == len(text)
    assert peak < 512 * 1024, f"{peak} bytes held while reading {len(text)} characters"


def test_eot_marker_never_split(monkeypatch):
    text = "y" * 1990 + EOT + "z" * 3000
    got = list(pieces(iter([text, None]), sep=EOT, piece_chars=2000))
    assert "".join(got) == text + EOT and all(EOT in p or "<|" not in p for p in got)


def test_bpe_trains_on_a_bounded_sample(tmp_path, monkeypatch):
    seen = []
    real = prep_mod.train_tokenizer

    def spy(texts, vocab_size):
        texts = list(texts)
        seen.append(sum(map(len, texts)))
        return real(texts, vocab_size)

    monkeypatch.setattr(prep_mod, "train_tokenizer", spy)
    a = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    b = tmp_path / "b.txt"
    b.write_text("".join(RECORDS))
    dm = make([str(a), str(b)], tmp_path, bpe_sample_chars=5000)
    dm.prepare_data()
    assert 4000 < seen[0] <= 5000  # both sources contribute, in proportion to their size
    assert dm.meta()["train_tokens"] + dm.meta()["val_tokens"] > 5000  # yet all of it is encoded


def test_bpe_sample_takes_each_source_in_proportion_to_its_size(tmp_path, monkeypatch):
    # data.md: "the start of every source in proportion to its size" (not the first sources only).
    texts = []
    real = prep_mod.train_tokenizer

    def spy(pieces, vocab_size):
        texts.extend(pieces)
        return real(texts, vocab_size)

    monkeypatch.setattr(prep_mod, "train_tokenizer", spy)
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_text("alpha " * 3000)  # 18,000 bytes: 3/4 of the corpus
    small.write_text("omega " * 1000)  # 6,000 bytes: 1/4
    make([str(big), str(small)], tmp_path, bpe_sample_chars=4000).prepare_data()
    chars = {w: sum(len(t) for t in texts if w in t) for w in ("alpha", "omega")}
    assert chars == {"alpha": 3000, "omega": 1000}, chars


def test_cache_key_follows_a_file_rewritten_to_the_same_size(tmp_path):
    # README: path, size and modification time: a changed file is prepared again, even at equal size.
    import os

    path = tmp_path / "x.txt"
    path.write_text("the cat sat\n" * 100)
    key = make(str(path), tmp_path).cache_key()
    before = path.stat()
    path.write_text("the dog ran\n" * 100)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # coarse clocks: 1 s later
    assert path.stat().st_size == before.st_size
    assert make(str(path), tmp_path).cache_key() != key


def test_a_source_rewritten_to_the_same_size_during_preparation_is_caught(tmp_path, monkeypatch):
    # The check after preparation compares the content key (size and mtime), not the size alone.
    import os

    import gptmini.train.datamodule as dm_mod
    from gptmini.core.config import ConfigError

    path = tmp_path / "x.txt"
    path.write_text("the cat sat\n" * 400)
    real = dm_mod.prepare_tokens

    def prepare_while_rewriting(*args, **kwargs):
        meta = real(*args, **kwargs)
        before = path.stat()
        path.write_text("the dog ran\n" * 400)  # another process rewrites it: same size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # coarse clocks: 1 s later
        assert path.stat().st_size == before.st_size
        return meta

    monkeypatch.setattr(dm_mod, "prepare_tokens", prepare_while_rewriting)
    with pytest.raises(ConfigError, match=f"changed while it was being prepared: {re.escape(str(path))} "
                       r"\(modified, same size\)"):
        make(str(path), tmp_path).prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing kept


def test_cache_key_follows_content_and_settings(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", RECORDS)
    key = make(str(path), tmp_path).cache_key()
    assert make(str(path), tmp_path).cache_key() == key
    assert make(str(path), tmp_path, text_field="body").cache_key() != key
    assert make(str(path), tmp_path, bpe_sample_chars=10**6).cache_key() != key
    write_jsonl(path, RECORDS[:-1])
    assert make(str(path), tmp_path).cache_key() != key


def _tokenizer_file(path: Path, vocab_size: int) -> str:
    from gptmini.core.tokenizer import train_tokenizer

    train_tokenizer(RECORDS, vocab_size).save(str(path))
    return str(path)


# Each setting that changes the tokens, with a value that changes them (the base: make()'s), for
# the sources it applies to.
TOKEN_SETTINGS = [
    (source, setting, value)
    for setting, value, sources in [
        ("vocab_size", 280, ("text", "jsonl", "hf")),
        ("bpe_sample_chars", 10**6, ("text", "jsonl", "hf")),
        ("val_fraction", 0.2, ("text", "jsonl", "hf")),
        ("text_field", "body", ("jsonl", "hf")),
        ("hf_config", "small", ("hf",)),
        ("hf_split", "other", ("hf",)),
        ("skip_bad_records", True, ("jsonl", "hf")),  # skipped records change the tokens
    ]
    for source in sources
]


@pytest.mark.parametrize("source, setting, value", TOKEN_SETTINGS)
def test_cache_key_follows_every_setting_that_changes_the_tokens(tmp_path, source, setting, value):
    if source == "hf":
        data = "hf:someone/stories"
    elif source == "jsonl":
        data = str(write_jsonl(tmp_path / "x.jsonl", RECORDS))
    else:
        (tmp_path / "x.txt").write_text("".join(RECORDS))
        data = str(tmp_path / "x.txt")
    assert make(data, tmp_path, **{setting: value}).cache_key() != make(data, tmp_path).cache_key()


def test_cache_key_follows_the_tokenizer_file_not_the_settings_that_keep_the_tokens(tmp_path):
    path = str(write_jsonl(tmp_path / "x.jsonl", RECORDS))
    key = make(path, tmp_path).cache_key()
    # Windows, batches and workers read the same tokens: the prepared cache is reused.
    same = {"block_size": 64, "batch_size": 4, "num_workers": 1, "window_offset": "random"}
    assert make(path, tmp_path, **same).cache_key() == key
    tok = _tokenizer_file(tmp_path / "tok.json", 280)
    with_tok = make(path, tmp_path, tokenizer=tok).cache_key()
    assert with_tok != key
    _tokenizer_file(tmp_path / "tok.json", 290)  # the same path, another tokenizer
    assert make(path, tmp_path, tokenizer=tok).cache_key() != with_tok


def test_progress_bar_on_stderr(tmp_path, capsys):
    make(str(write_jsonl(tmp_path / "x.jsonl", RECORDS)), tmp_path).prepare_data()
    err = capsys.readouterr().err
    assert "gptmini: tokenizer sample" in err and "gptmini: encoding" in err and "B/s" in err


# -- Hugging Face datasets: built locally, through the same code path as the Hub ---------------------
def saved_dataset(tmp_path: Path, validation: bool) -> Path:
    datasets = pytest.importorskip("datasets")
    splits = {"train": datasets.Dataset.from_dict({"text": RECORDS, "n": list(range(len(RECORDS)))})}
    if validation:
        splits["validation"] = datasets.Dataset.from_dict({"text": RECORDS[:40], "n": list(range(40))})
    path = tmp_path / "ds"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_saved_dataset_uses_its_validation_split(tmp_path):
    dm = make(str(saved_dataset(tmp_path, validation=True)), tmp_path)
    assert [s.kind for s in dm.sources] == ["hf_disk"]
    dm.prepare_data()
    tok = load_tokenizer(dm.tokenizer_path)
    val = np.fromfile(dm.cache_path / "val.bin", dtype=np.uint16).tolist()
    assert tok.decode(val, skip_special_tokens=False) == "".join(r + EOT for r in RECORDS[:40])
    assert dm.meta()["val_from"] == "validation split"


def test_saved_dataset_without_validation_holds_out_the_tail(tmp_path):
    dm = make(str(saved_dataset(tmp_path, validation=False)), tmp_path)
    dm.prepare_data()
    assert all_text(dm) == "".join(r + EOT for r in RECORDS)
    assert dm.meta()["val_from"].startswith("last 0.1")


def test_hub_name_goes_through_load_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    local = datasets.load_from_disk(str(saved_dataset(tmp_path, validation=True)))
    calls = []

    def fake_load_dataset(name, config=None, streaming=False, **kw):
        calls.append((name, config, streaming))
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in local.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = make("hf:someone/stories", tmp_path, hf_config="small", text_field="text")
    dm.prepare_data()
    assert calls and set(calls) == {("someone/stories", "small", True)}
    assert all_text(dm) == "".join(r + EOT for r in RECORDS) + "".join(r + EOT for r in RECORDS[:40])
    with pytest.raises(ValueError, match=r"no split 'dev'.*data\.hf_split"):
        make("hf:someone/stories", tmp_path, hf_split="dev").prepare_data()


def test_cli_fit_on_a_saved_dataset(tmp_path, corpus_file, capfd, no_attribute_docstrings):
    # The user's path: `gptmini.cli fit --data.data=<saved dataset>`, prepared with bars on stderr.
    from conftest import tiny_cli_args

    from gptmini.cli import main

    datasets = pytest.importorskip("datasets")
    text = corpus_file.read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"story": paragraphs[40:]}),
            "validation": datasets.Dataset.from_dict({"story": paragraphs[:40]}),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    cache = tmp_path / "cache"
    args = tiny_cli_args(tmp_path, corpus_file, cache, max_steps=4)
    main(
        [a for a in args if not a.startswith("--data.data=")]
        + [f"--data.data={tmp_path / 'ds'}", "--data.text_field=story"]
    )
    assert "gptmini: encoding validation" in capfd.readouterr().err
    (meta,) = cache.glob("*/meta.json")
    assert json.loads(meta.read_text())["val_from"] == "validation split"
    assert list((tmp_path / "runs").glob("tiny/version_0/checkpoints/last.ckpt"))


# -- a damaged compressed corpus: one rule for every format and command ---------------------------
def damaged(path: Path, damage: str) -> Path:
    """``path`` (a .txt.gz, .jsonl.gz or .parquet) holding RECORDS, damaged as a failed download or
    a bad disk does."""
    if path.suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": RECORDS}), path, row_group_size=60)
        data = bytearray(path.read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 3 : len(data) // 3 + 200] = bytes(200)
        path.write_bytes(bytes(data))
        return path
    body = "".join(json.dumps({"text": r}) + "\n" for r in RECORDS) if ".jsonl" in path.name else "".join(RECORDS)
    data = bytearray(gzip.compress(body.encode()))
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "not gzip":
        data = bytearray(body.encode())
    else:  # corrupt: the deflate stream's first bytes flipped
        data[12] ^= 0xFF
        data[13] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


WHY = {"truncated": "is truncated (the compressed data ends", "not gzip": "is not a valid gzip file", "corrupt": "is corrupt ("}
DAMAGED = [(n, d) for n in ("x.jsonl.gz", "x.txt.gz") for d in WHY] + [("x.parquet", "truncated"), ("x.parquet", "corrupt")]


@pytest.mark.parametrize("name, damage", DAMAGED)
def test_damaged_compressed_corpus_is_one_error_naming_the_file_and_how_far(tmp_path, name, damage):
    from gptmini.core.config import ConfigError

    path = damaged(tmp_path / name, damage)
    with pytest.raises(ConfigError) as info:
        make(str(path), tmp_path).prepare_data()
    msg = str(info.value)
    if name.endswith(".parquet"):  # pyarrow names no truncation: the footer or a page is unreadable
        assert msg.startswith(f"corpus file {path} is corrupt ("), msg
        assert "its footer (the table of contents) cannot be read" in msg or re.search(r"after [\d,]+ of its 240 rows", msg)
    else:
        assert msg.startswith(f"corpus file {path} {WHY[damage]}"), msg
        far = int(re.search(r"reading stopped after ([\d,]+) bytes of text", msg).group(1).replace(",", ""))
        assert (far > 0) == (damage == "truncated"), msg  # a truncated file gave part of its text
    assert msg.endswith("or drop it from data.data.")
    assert list((tmp_path / "cache").iterdir()) == []  # no cache entry, no temp folder


def test_fit_on_a_truncated_jsonl_gz_is_one_line_exit_2(tmp_path, corpus_file, capsys, no_attribute_docstrings):
    from conftest import tiny_cli_args

    from gptmini.cli import main

    path = damaged(tmp_path / "x.jsonl.gz", "truncated")
    cache = tmp_path / "cache"
    args = [a for a in tiny_cli_args(tmp_path, corpus_file, cache) if not a.startswith("--data.data=")]
    with pytest.raises(SystemExit) as info:
        main([*args, f"--data.data={path}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x.lower()]
    assert line.startswith(f"error: corpus file {path} is truncated") and line.endswith("data.data."), err
    assert not cache.exists() or list(cache.iterdir()) == []
