"""`gptmini eval`: loss, perplexity and bits per byte of a checkpoint or export folder on a corpus."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BLOCK, TINY_VOCAB

from gptmini.commands.eval import evaluate
from gptmini.core.evaluate import score_tokens, window_plan
from gptmini.core.model import GPTMini
from gptmini.train.datamodule import GPTMiniData

VAL_BATCHES = 4  # tiny_cli_args' limit_val_batches


def val_bin(corpus_file, data_cache) -> Path:
    dm = GPTMiniData(data=str(corpus_file), cache_dir=str(data_cache), vocab_size=TINY_VOCAB, block_size=TINY_BLOCK)
    return dm.cache_path / "val.bin"


def test_eval_on_the_runs_val_split_reproduces_its_val_loss(fitted_run, corpus_file, data_cache, capsys):
    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    logged = torch.load(ckpt, map_location="cpu", weights_only=True)["gptmini_run"]["val"][-1]
    assert logged["step"] == 6
    scored = VAL_BATCHES * 8 * TINY_BLOCK  # limit_val_batches x batch_size x block_size
    result = evaluate(str(ckpt), data=str(val_bin(corpus_file, data_cache)), max_tokens=scored, device="cpu", progress=False)
    assert result["tokens"] == scored and result["windows"] == VAL_BATCHES * 8
    assert result["loss"] == pytest.approx(logged["val/loss"], rel=1e-5, abs=0)
    assert result["bpb"] == pytest.approx(logged["val/bpb"], rel=1e-5, abs=0)
    assert result["ppl"] == pytest.approx(math.exp(logged["val/loss"]), rel=1e-5)
    out = capsys.readouterr().out
    assert f"loss    {logged['val/loss']:.4f} nats/token" in out


def test_windows_score_every_token_once():
    for n, block, stride in [(10, 4, 4), (10, 4, 2), (10, 4, 1), (5, 4, 4), (2, 4, 4), (100, 8, 3)]:
        plan = list(window_plan(n, block, stride))
        targets = [t for _, end, scored in plan for t in range(end - scored + 1, end + 1)]
        assert targets == list(range(1, n)), (n, block, stride, plan)
        assert all(end - begin <= block for begin, end, _ in plan)
        # each later window has block - stride tokens of context before its scored ones (when full)
        assert all(end - begin - scored == block - stride for begin, end, scored in plan[1:-1])


def test_strided_scoring_matches_a_token_by_token_reference(tiny_model_cfg):
    torch.manual_seed(0)
    model = GPTMini(tiny_model_cfg).eval()
    tokens = np.random.default_rng(0).integers(0, TINY_VOCAB, 150).astype(np.uint16)
    table = np.arange(TINY_VOCAB) % 3 + 1  # any byte table: the sum is over the scored targets
    stride = 12
    score = score_tokens(model, tokens, stride=stride, batch_size=3, byte_table=table)
    # reference: each window on its own, its last `scored` targets
    nats, n_bytes = 0.0, 0
    t = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        for begin, end, scored in window_plan(len(tokens), TINY_BLOCK, stride):
            logits = model(t[begin:end][None])[0][0]
            ce = F.cross_entropy(logits, t[begin + 1 : end + 1], reduction="none")
            nats += ce[-scored:].double().sum().item()
            n_bytes += int(table[tokens[end - scored + 1 : end + 1]].sum())
    assert score.tokens == len(tokens) - 1 and score.bytes == n_bytes
    assert score.nats == pytest.approx(nats, rel=1e-6)
    assert score.bpb == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-6)
    # more context per token (stride < block) scores better than disjoint windows on real text only;
    # here it must at least score the same tokens
    assert score_tokens(model, tokens, batch_size=5).tokens == len(tokens) - 1


def test_eval_console_script_on_a_jsonl_corpus_writes_json(fitted_run, tmp_path, capsys):
    records = [{"id": i, "body": f"ROMEO: speak again, bright angel {i}. Café ☕"} for i in range(40)]
    corpus = tmp_path / "talk.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    exe = Path(sys.executable).with_name("gptmini")
    out_json = tmp_path / "score.json"
    args = [str(ckpt), f"--data={corpus}", "--text_field=body", "--stride=16", "--device=auto", f"--json={out_json}"]
    res = subprocess.run([str(exe), "eval", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads(out_json.read_text())
    assert result["stride"] == 16 and result["block_size"] == TINY_BLOCK
    n_bytes = sum(len(r["body"].encode("utf-8")) for r in records)
    assert 0 < result["bytes"] < n_bytes  # all the text but the first token (and EOTs are 0 bytes)
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2) * result["tokens"] / result["bytes"])
    assert f"bpb     {result['bpb']:.4f} bits/byte" in res.stdout
    assert "gptmini eval" in res.stderr  # the progress bar, on stderr
    # a field that is not there: one error line, exit 2 (in process: the same dispatch)
    from gptmini.commands import main

    with pytest.raises(SystemExit) as e:
        main(["eval", str(ckpt), f"--data={corpus}", "--progress=false"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "text_field='text'" in err


def test_eval_reads_a_saved_datasets_validation_split(fitted_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    train = ["ROMEO: a long train text that should not be scored. " * 20] * 4
    val = ["JULIET: short."] * 30
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": train}), "validation": datasets.Dataset.from_dict({"text": val})}
    ).save_to_disk(str(tmp_path / "ds"))
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    by_default = evaluate(ckpt, data=str(tmp_path / "ds"), device="cpu", progress=False)
    assert by_default["bytes"] < sum(len(t) for t in val)  # the validation split, not train's ~4 KB
    on_train = evaluate(ckpt, data=str(tmp_path / "ds"), split="train", device="cpu", progress=False)
    assert on_train["bytes"] > sum(len(t) for t in val)


# -- refusals: one line, exit 2, before any work; eval's own flag names ---------------------------
def test_eval_refuses_bad_settings_before_any_work(fitted_run, tmp_path, capsys, monkeypatch):
    import gptmini.commands.eval as eval_mod
    from gptmini.commands import main

    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    corpus = tmp_path / "x.jsonl"
    corpus.write_text(json.dumps({"text": "ROMEO: hello."}) + "\n")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "x.json").mkdir()  # a folder where the file should go
    real_load = eval_mod.load_model_and_tokenizer

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    def no_read(*a, **k):
        raise AssertionError("the corpus was read before the settings were checked")

    cases = [
        (["--stride=0"], no_load, "error: --stride must be >= 1"),
        (["--stride=-3"], no_load, "error: --stride must be >= 1"),
        (["--max_tokens=0"], no_load, "error: --max_tokens must be >= 1"),
        ([f"--json={tmp_path / 'missing' / 'x.json'}"], no_load, f"error: --json {tmp_path / 'missing' / 'x.json'} cannot be written"),
        ([f"--json={tmp_path / 'ro' / 'x.json'}"], no_load, f"error: --json {tmp_path / 'ro' / 'x.json'} is a folder"),
        ([f"--stride={TINY_BLOCK + 1}"], real_load, f"error: --stride must be between 1 and the model's block_size {TINY_BLOCK}"),
    ]
    monkeypatch.setattr(eval_mod, "_encode_corpus", no_read)
    for extra, load, expected in cases:
        monkeypatch.setattr(eval_mod, "load_model_and_tokenizer", load)
        with pytest.raises(SystemExit) as e:
            main(["eval", ckpt, f"--data={corpus}", "--progress=false", *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(expected) and err.count("\n") == 1, (extra, err)


def test_eval_messages_name_its_own_flags(fitted_run, tmp_path):
    from gptmini.core.config import ConfigError

    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    corpus = tmp_path / "x.jsonl"
    corpus.write_text(json.dumps({"body": "ROMEO: hello."}) + "\n")
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text(json.dumps({"text": "ROMEO: hello."}) + "\n" + json.dumps({"text": None}) + "\n")
    for kwargs, expected in [
        ({"data": str(tmp_path / "missing.txt")}, "--data path"),
        ({"data": str(corpus), "tokenizer": str(tmp_path / "nope.json")}, "--tokenizer file"),
        ({"data": str(corpus)}, "--text_field='text' (found: ['body']); set --text_field"),
        ({"data": str(nulls)}, "--text_field='text' holds null, not a string of text; fix or drop that record, or set --skip_bad_records=true"),
    ]:
        with pytest.raises(ConfigError) as info:
            evaluate(ckpt, device="cpu", progress=False, **kwargs)
        assert expected in str(info.value) and "data." not in str(info.value).replace(str(tmp_path), ""), str(info.value)


def test_eval_max_tokens_stops_reading_once_it_has_enough(fitted_run, tmp_path, monkeypatch):
    import gptmini.core.tokens as tokens_mod

    monkeypatch.setattr(tokens_mod, "PIECES_PER_BATCH", 1)  # ~16 KB read per batch
    lines = [json.dumps({"text": f"ROMEO: speak again, bright angel, line {i}."}) + "\n" for i in range(4000)]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(lines))  # ~220 KB
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(lines[:2000]) + "this line is not JSON\n" + "".join(lines[2000:]))
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="broken.jsonl:2001 is not valid JSON"):
        evaluate(ckpt, data=str(broken), device="cpu", progress=False)  # all of it: the bad line is read
    a = evaluate(ckpt, data=str(broken), max_tokens=300, device="cpu", progress=False)  # stops before it
    b = evaluate(ckpt, data=str(clean), max_tokens=300, device="cpu", progress=False)
    assert a["tokens"] == b["tokens"] == 300 and a["loss"] == b["loss"]


def test_eval_on_a_damaged_gz_is_one_line_naming_its_flag(fitted_run, tmp_path):
    from test_corpora import damaged

    path = damaged(tmp_path / "talk.jsonl.gz", "truncated")
    exe = Path(sys.executable).with_name("gptmini")
    ckpt = str(fitted_run / "checkpoints" / "last.ckpt")
    res = subprocess.run([str(exe), "eval", ckpt, f"--data={path}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if "error" in x.lower()]
    assert line.startswith(f"error: corpus file {path} is truncated") and line.endswith("or drop it from --data."), line
