"""Clear messages on the data path: bad records (null / not a string), data.skip_bad_records, a
source that changes while it is prepared, and no advertisement in a real fit's output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import callbacks_args, cli_env, tiny_cli_args

import gptmini.train.datamodule as dm_mod
from gptmini.core.config import ConfigError
from gptmini.train.datamodule import GPTMiniData

RECORDS = [f"Record {i}: the cat sat on the mat.\nAnd then it slept {i % 5} hours.\n" for i in range(200)]
BAD_ROW = 57  # counted from 0; line 58 of a JSONL file


def write(kind: str, path: Path, texts: list) -> Path:
    if kind == "jsonl":
        path = path / "x.jsonl"
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    elif kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        path = path / "x.parquet"
        # one column of one type: a Parquet column is either strings (null allowed) or not
        pq.write_table(pa.table({"text": pa.array(texts, pa.string()), "id": list(range(len(texts)))}), path)
    else:
        datasets = pytest.importorskip("datasets")
        path = path / "saved"
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return path


def make(data: Path, tmp_path: Path, **kw) -> GPTMiniData:
    return GPTMiniData(data=str(data), cache_dir=str(tmp_path / "cache"), vocab_size=300, block_size=16, **kw)


CASES = [("jsonl", None, "null"), ("jsonl", 42, "int 42"), ("jsonl", ["a", "b"], "list ['a', 'b']"),
         ("parquet", None, "null"), ("dataset", None, "null")]


@pytest.mark.parametrize("kind, value, found", CASES)
def test_a_bad_record_names_the_record_the_field_and_what_it_holds(tmp_path, kind, value, found):
    data = write(kind, tmp_path, RECORDS[:BAD_ROW] + [value] + RECORDS[BAD_ROW + 1 :])
    with pytest.raises(ConfigError) as info:
        make(data, tmp_path).prepare_data()
    msg = str(info.value)
    where = f"x.jsonl:{BAD_ROW + 1}" if kind == "jsonl" else f"row {BAD_ROW} (counted from 0)"
    assert where in msg and f"data.text_field='text' holds {found}, not a string" in msg, msg
    assert "data.skip_bad_records=true" in msg
    assert not list((tmp_path / "cache").glob("*/meta.json"))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "dataset"])
def test_skip_bad_records_skips_them_exactly_and_says_how_many(tmp_path, kind, capsys):
    bad_rows = {3, BAD_ROW, 150}
    texts = [None if i in bad_rows else t for i, t in enumerate(RECORDS)]
    if kind == "jsonl":
        texts[150] = 7  # not a string
    dm = make(write(kind, tmp_path, texts), tmp_path, skip_bad_records=True)
    dm.prepare_data()
    assert dm.meta()["skipped_records"] == 3
    err = capsys.readouterr().err
    first = "x.jsonl:4 (null)" if kind == "jsonl" else "row 3 (counted from 0) (null)"
    assert "skipped 3 record(s)" in err and "data.skip_bad_records=true" in err and first in err, err
    # the same tokens as a corpus without those records (same tokenizer settings, own cache)
    good = [t for i, t in enumerate(RECORDS) if i not in bad_rows]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = make(write(kind, ref_dir, good), ref_dir)
    ref.prepare_data()
    for split in ("train", "val"):
        assert (dm.cache_path / f"{split}.bin").read_bytes() == (ref.cache_path / f"{split}.bin").read_bytes()
    # the setting changes the tokens, so it is part of the cache key
    assert make(write(kind, tmp_path, texts), tmp_path).cache_key() != dm.cache_key()


def test_a_source_that_grows_during_preparation_is_named_and_nothing_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "growing.txt"
    path.write_text("".join(RECORDS))
    size = path.stat().st_size
    real = dm_mod.prepare_tokens

    def prepare_while_appending(*args, **kwargs):
        meta = real(*args, **kwargs)
        with path.open("a") as f:  # another process appends while we prepare
            f.write("more text\n")
        return meta

    monkeypatch.setattr(dm_mod, "prepare_tokens", prepare_while_appending)
    dm = make(path, tmp_path)
    with pytest.raises(ConfigError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert f"data.data changed while it was being prepared: {path} (size {size:,} -> {size + 10:,} bytes)" in msg
    assert "prepare_data()" not in msg
    assert list((tmp_path / "cache").iterdir()) == []  # no cache entry, no temp folder
    monkeypatch.setattr(dm_mod, "prepare_tokens", real)
    make(path, tmp_path).prepare_data()  # once it stops changing, it prepares


def test_a_real_fit_prints_no_litlogger_advert(tmp_path, corpus_file, data_cache):
    args = tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=4) + callbacks_args(tmp_path / "cb", [])
    exe = Path(sys.executable).with_name("gptmini")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=cli_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "GPU available" in out  # Lightning's other lines still print
    assert "litlogger" not in out and "litmodels" not in out and "Tip:" not in out
