"""Data preparation at scale: wall/CPU time and peak RSS of prepare_data per input shape, and the
encoding throughput of the full pipeline against raw tokenizers ``encode_batch`` on the same text.

    python scripts/bench_prepare.py --source ../shared/data/pd_english.txt.gz --repeat 1 10 \\
        --shapes lines one_line jsonl --rounds 3 --json /tmp/bench_prepare.json

Shapes, built once under ``--work`` from the source text:

- ``lines``: the source as is (a .txt.gz of ordinary lines); ``--repeat N`` makes a folder of N
  links to it, i.e. N times the text, read as N files.
- ``one_line``: the same text as one single line (newlines -> spaces), a .txt file.
- ``jsonl``: the text cut into records of ~4 KB, one JSON object per line, a .jsonl file.

Each (shape, repeat) runs ``GPTMiniData.prepare_data`` in a fresh process (so peak RSS is its own):
wall and CPU seconds, peak RSS, and its split into tokenizer training (on at most
``data.bpe_sample_chars`` characters) and encoding. Then, for ``lines`` x1, one process alternates
``--rounds`` times: the pipeline's encoding pass (read + cut + encode + write, as prepare_data does
it) and raw ``encode_batch`` / ``encode_batch_fast`` over the same pieces held in memory (no
reading, no writing); the ratio is pipeline MB/s over raw MB/s, medians over rounds. The machine
may be shared: CPU seconds are the steadier figure, ratios are measured in one process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_shape(src: Path, shape: str, repeat: int, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    if shape == "lines":
        if repeat == 1:
            return src
        folder = work / f"lines_x{repeat}"
        folder.mkdir(exist_ok=True)
        for i in range(repeat):
            link = folder / f"copy{i:03d}_{src.name}"
            if not link.exists():
                link.symlink_to(src.resolve())
        return folder
    assert repeat == 1, "only `lines` is repeated"
    with gzip.open(src, "rt", encoding="utf-8") as f:
        text = f.read()
    if shape == "one_line":
        out = work / "one_line.txt"
        if not out.exists():
            out.write_text(text.replace("\n", " "), encoding="utf-8")
        return out
    if shape == "jsonl":
        out = work / "records.jsonl"
        if not out.exists():
            with open(out, "w", encoding="utf-8") as f:
                for i in range(0, len(text), 4096):
                    f.write(json.dumps({"text": text[i : i + 4096]}) + "\n")
        return out
    raise ValueError(f"unknown shape {shape}")


def child_prepare(data: str, cache: str) -> dict:
    """One prepare_data in this process; the tokenizer-training share is timed by wrapping it."""
    import gptmini.core.prepare as prep
    from gptmini.train.datamodule import GPTMiniData

    rss0 = _rss_mb()
    spent = {}
    real = prep.train_tokenizer

    def timed(texts, vocab):
        t, c = time.perf_counter(), time.process_time()
        tok = real(texts, vocab)
        spent.update(bpe_wall=time.perf_counter() - t, bpe_cpu=time.process_time() - c)
        return tok

    prep.train_tokenizer = timed
    dm = GPTMiniData(data=data, cache_dir=cache, vocab_size=8000, block_size=512)
    t, c = time.perf_counter(), time.process_time()
    dm.prepare_data()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    meta = dm.meta()
    chars = 0
    from gptmini.core.sources import ReadOptions, stream

    for s in dm.sources:
        chars += sum(len(x) for x in stream(s, ReadOptions()) if x)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        **spent,
        "encode_wall_s": wall - spent.get("bpe_wall", 0.0),
        "encode_cpu_s": cpu - spent.get("bpe_cpu", 0.0),
        "peak_rss_mb": _rss_mb(),
        "rss_after_imports_mb": rss0,
        "chars": chars,
        "tokens": meta["train_tokens"] + meta["val_tokens"],
        "cache": str(dm.cache_path),
    }


def child_throughput(data: str, tokenizer: str, rounds: int) -> dict:
    """Pipeline encoding pass vs raw encode_batch(_fast) on the same pieces, alternating."""
    from gptmini.core.sources import ReadOptions, resolve_sources, stream
    from gptmini.core.tokenizer import load_tokenizer
    from gptmini.core.tokens import PIECES_PER_BATCH, encode_to_file, pieces, record_separator

    tok = load_tokenizer(tokenizer)
    sources = resolve_sources(data)
    sep = record_separator(tok)

    def all_pieces():
        for s in sources:
            yield from pieces(stream(s, ReadOptions()), sep)

    held = list(all_pieces())
    batches = [held[i : i + PIECES_PER_BATCH] for i in range(0, len(held), PIECES_PER_BATCH)]
    mb = sum(len(p.encode()) for p in held) / 1e6
    out = Path(tempfile.mkdtemp()) / "tokens.bin"
    runs: dict[str, list[float]] = {"pipeline": [], "raw_encode_batch": [], "raw_encode_batch_fast": []}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    variants = {
        "pipeline": lambda: encode_to_file(tok, all_pieces(), out),
        "raw_encode_batch": lambda: [tok.encode_batch(b) for b in batches],
        "raw_encode_batch_fast": lambda: [tok.encode_batch_fast(b) for b in batches],
    }
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            t, c = time.perf_counter(), time.process_time()
            variants[name]()
            runs[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out.unlink()
    return {
        "text_mb": mb,
        "threads": os.environ.get("RAYON_NUM_THREADS", f"default ({os.cpu_count()} cores)"),
        "wall_s": runs,
        "cpu_s": cpu,
        "mb_per_s": {k: mb / v for k, v in med.items()},
        "pipeline_vs_raw_encode_batch": med["raw_encode_batch"] / med["pipeline"],
        "pipeline_vs_raw_encode_batch_fast": med["raw_encode_batch_fast"] / med["pipeline"],
    }


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "pd_english.txt.gz")
    p.add_argument("--shapes", nargs="+", default=["lines", "one_line", "jsonl"])
    p.add_argument("--repeat", type=int, nargs="+", default=[1, 10])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gptmini_bench_prepare")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        result = (
            child_prepare(*rest) if kind == "prepare" else child_throughput(rest[0], rest[1], int(rest[2]))
        )
        print(json.dumps(result))
        return
    results: dict = {"source": str(a.source), "prepare": {}, "throughput": None}
    for shape in a.shapes:
        for repeat in a.repeat if shape == "lines" else [1]:
            data = build_shape(a.source, shape, repeat, a.work)
            cache = a.work / f"cache_{shape}_x{repeat}"
            shutil.rmtree(cache, ignore_errors=True)  # an earlier run's cache would make this a no-op
            r = run_child("--child", "prepare", str(data), str(cache))
            results["prepare"][f"{shape} x{repeat}"] = r
            print(
                f"{shape:>8} x{repeat:<3} {r['chars'] / 1e6:7.1f}M chars  wall {r['wall_s']:7.1f}s  "
                f"cpu {r['cpu_s']:7.1f}s (bpe {r.get('bpe_cpu', 0):5.1f}s)  "
                f"peak RSS {r['peak_rss_mb']:6.0f} MB (after imports {r['rss_after_imports_mb']:.0f})",
                flush=True,
            )
            if shape == "lines" and repeat == 1 and a.rounds:
                tokenizer = str(Path(r["cache"]) / "tokenizer.json")
                t = run_child("--child", "throughput", str(data), tokenizer, str(a.rounds))
                results["throughput"] = t
                print(
                    f"encoding {t['text_mb']:.1f} MB: pipeline {t['mb_per_s']['pipeline']:.2f} MB/s, raw "
                    f"encode_batch {t['mb_per_s']['raw_encode_batch']:.2f} MB/s "
                    f"(pipeline = {t['pipeline_vs_raw_encode_batch']:.0%}), raw encode_batch_fast "
                    f"{t['mb_per_s']['raw_encode_batch_fast']:.2f} MB/s "
                    f"(pipeline = {t['pipeline_vs_raw_encode_batch_fast']:.0%})",
                    flush=True,
                )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
