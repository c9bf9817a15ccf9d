"""Search the tiny CPU preset for the lowest val/bpb at the CPU cost of the original quickstart.

    python scripts/search_quickstart.py --points v1 lr4e-3 b16 --seeds 1337 7 --jobs 2 --out /tmp/qs

The budget is CPU time, not wall time (a shared machine makes wall time noise): the training steps
of the original tiny preset (``v1``: d128 L4 H4, context 128, batch 32, lr 2e-3, 600 steps). Each
point's per-step CPU cost is measured first, all points in one process, interleaved, with one torch
thread (``--calibrate``); a point then gets the steps that fit the budget: round(600 x cost(v1) /
cost(point)), warmup 5% of them. Each (point, seed) trains in its own process with one torch thread
(``--jobs`` at once) through the recipe's plain loop (``gptmini.core.plainloop.train_plain``: the
same AdamW groups, warmup + cosine and clipping as the Lightning module, on the datamodule's batches),
then scores its final model on the whole validation split: every val token after the first is a
target exactly once (windows of the point's own context, stride = context), so every point is scored
on the same bytes whatever its context. val/bpb = summed nats / ln 2 / UTF-8 bytes of those tokens.

Prints a Markdown table (point | settings | steps | val/bpb per seed | mean | spread | the CPU seconds
each run's training really took, to check the calibration) and writes
``results.json`` under ``--out``; finished (point, seed) results there are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_POINT = "v1"  # the preset the budget is measured on: the quickstart as it was before this search
BUDGET_STEPS = 600


@dataclass(frozen=True)
class Point:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 32
    lr: float = 2e-3

    def label(self) -> str:
        return (
            f"d{self.n_embd} L{self.n_layer} H{self.n_head}, ctx {self.block_size}, "
            f"batch {self.batch_size}, lr {self.lr:g}"
        )


V1 = Point()
POINTS: dict[str, Point] = {
    "v1": V1,  # configs/tiny.yaml before the search
    "lr4e-3": replace(V1, lr=4e-3),
    "lr1e-3": replace(V1, lr=1e-3),
    "b16": replace(V1, batch_size=16),
    "b16-lr3e-3": replace(V1, batch_size=16, lr=3e-3),
    "ctx64": replace(V1, block_size=64, batch_size=32),
    "ctx64-b64": replace(V1, block_size=64, batch_size=64),
    "d96": replace(V1, n_embd=96, n_head=4),
    "d96-b16": replace(V1, n_embd=96, n_head=4, batch_size=16),
    "L3": replace(V1, n_layer=3),
    "L2-d192": replace(V1, n_layer=2, n_embd=192, n_head=4),
    "L3-d160": replace(V1, n_layer=3, n_embd=160, n_head=4),
    "L6-d96": replace(V1, n_layer=6, n_embd=96, n_head=4),
}


def _setup(point: Point, cache_dir: Path, seed: int):
    import torch

    os.environ["PL_GLOBAL_SEED"] = str(seed)  # the training sampler's seed, as seed_everything sets it
    torch.manual_seed(seed)
    from gptmini.core.model import GPTMini, ModelConfig
    from gptmini.train.datamodule import GPTMiniData

    dm = GPTMiniData(
        data=None, cache_dir=str(cache_dir), vocab_size=2048, block_size=point.block_size,
        batch_size=point.batch_size,
    )
    dm.prepare_data()
    dm.setup("fit")
    cfg = ModelConfig(
        vocab_size=2048, block_size=point.block_size, n_layer=point.n_layer, n_head=point.n_head,
        n_embd=point.n_embd,
    )
    return dm, GPTMini(cfg)


def calibrate(names: list[str], cache_dir: Path, steps: int, rounds: int) -> dict[str, float]:
    """CPU seconds per optimizer step of each point: min over ``rounds`` interleaved timings."""
    import torch

    from gptmini.core.optim import OptimConfig, build_adamw
    from gptmini.core.step import train_step
    from gptmini.core.tokens import inputs_and_targets

    torch.set_num_threads(1)
    states = {}
    for name in names:
        dm, model = _setup(POINTS[name], cache_dir, 0)
        opt = build_adamw(model, OptimConfig(lr=POINTS[name].lr))
        params = [p for g in opt.param_groups for p in g["params"]]
        batch = inputs_and_targets(next(iter(dm.train_dataloader())))
        states[name] = (model, opt, params, batch)
    best = {name: math.inf for name in names}
    for _ in range(rounds):
        for name in names:
            model, opt, params, (x, y) = states[name]
            loss = lambda m=model, x=x, y=y: m(x, y)[1]  # noqa: E731
            for _ in range(2):  # warm the allocator and caches
                train_step(loss, opt, params, clip=1.0)
            t0 = time.process_time()
            for _ in range(steps):
                train_step(loss, opt, params, clip=1.0)
            best[name] = min(best[name], (time.process_time() - t0) / steps)
    return best


def val_bytes(cache_dir: Path) -> tuple[int, int]:
    """(target tokens, their UTF-8 bytes) of the val split: every token after the first."""
    import numpy as np

    from gptmini.core.formats import TOKEN_DTYPE, split_file

    dm, _ = _setup(V1, cache_dir, 0)
    tokens = np.memmap(dm.cache_path / split_file("val"), dtype=TOKEN_DTYPE, mode="r")
    table = dm.token_byte_table()  # the same per-token byte counts fit's val/bpb uses
    return len(tokens) - 1, int(table[np.asarray(tokens[1:], dtype=np.int64)].sum())


def evaluate(model, val_path: Path, block_size: int, batch: int = 32) -> tuple[float, int]:
    """(summed nats, targets) over every val token after the first, windows of block_size, stride
    block_size: gptmini.core.evaluate.score_tokens, the scorer of `gptmini eval` (fit's val windows)."""
    import numpy as np

    from gptmini.core.evaluate import score_tokens
    from gptmini.core.formats import TOKEN_DTYPE

    assert block_size == model.cfg.block_size, (block_size, model.cfg.block_size)
    model.eval()
    score = score_tokens(model, np.fromfile(val_path, dtype=TOKEN_DTYPE), batch_size=batch)
    return score.nats, score.tokens


def run_one(name: str, seed: int, steps: int, cache_dir: Path, out: Path) -> dict:
    """Train one (point, seed) in this process (one thread) and score it; writes out/<name>-s<seed>.json."""
    import torch

    from gptmini.core.formats import split_file
    from gptmini.core.optim import OptimConfig
    from gptmini.core.plainloop import train_plain
    from gptmini.core.recipe import WARMUP_FRACTION
    from gptmini.core.schedule import ScheduleConfig

    torch.set_num_threads(1)
    point = POINTS[name]
    dm, model = _setup(point, cache_dir, seed)
    warmup = max(1, round(WARMUP_FRACTION[1] * steps))  # the recipe's upper end: v1's 30 of 600
    t0, c0 = time.perf_counter(), time.process_time()
    losses = train_plain(
        model, dm.train_dataloader(), OptimConfig(lr=point.lr), ScheduleConfig(warmup_steps=warmup),
        steps, gradient_clip_val=1.0,
    )
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - t0
    nats, targets = evaluate(model, dm.cache_path / split_file("val"), point.block_size)
    n_tok, n_bytes = val_bytes(cache_dir)
    assert n_tok == targets
    result = {
        "point": name, "seed": seed, "steps": steps, "warmup": warmup, **asdict(point),
        "params": model.num_params(), "train_loss_last": float(torch.stack(losses[-20:]).mean()),
        "val_loss": nats / targets, "val_bpb": nats / math.log(2) / n_bytes,
        "val_targets": targets, "val_bytes": n_bytes, "train_cpu_s": train_cpu, "train_wall_s": train_wall,
    }
    (out / f"{name}-s{seed}.json").write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict], seeds: list[int], names: list[str]) -> str:
    head = (
        "| point | settings | steps | " + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | spread | train CPU s |"
    )
    lines = [head, "|" + "---|" * (6 + len(seeds))]
    for name in names:
        rows = {r["seed"]: r for r in results if r["point"] == name}
        if not rows:
            continue
        vals = [rows[s]["val_bpb"] for s in seeds if s in rows]
        cells = [f"{rows[s]['val_bpb']:.4f}" if s in rows else "-" for s in seeds]
        steps = next(iter(rows.values()))["steps"]
        cpu = [round(r["train_cpu_s"]) for r in rows.values()]  # what each run really used (1 thread)
        lines.append(
            f"| {name} | {POINTS[name].label()} | {steps} | " + " | ".join(cells)
            + f" | {sum(vals) / len(vals):.4f} | {max(vals) - min(vals):.4f} | {', '.join(map(str, cpu))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS), metavar="POINT",
                   help=f"points to run (default: all): {', '.join(POINTS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[1337, 7], help="seeds per point (default: 1337 7)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each (default: 2)")
    p.add_argument("--out", type=Path, default=Path("search_quickstart"), help="results folder")
    p.add_argument("--calibrate", action="store_true", help="only measure CPU s/step of the points, print, exit")
    p.add_argument("--calib-steps", type=int, default=8, help="timed steps per point per round (default: 8)")
    p.add_argument("--calib-rounds", type=int, default=2, help="interleaved timing rounds; the min is kept")
    p.add_argument("--run", nargs=3, metavar=("POINT", "SEED", "STEPS"), help=argparse.SUPPRESS)  # worker
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "data_cache"

    if args.run:
        r = run_one(args.run[0], int(args.run[1]), int(args.run[2]), cache_dir, out)
        print(json.dumps(r))
        return 0

    names = list(dict.fromkeys([BUDGET_POINT, *args.points]))
    calib_file = out / "calibration.json"
    calib = json.loads(calib_file.read_text()) if calib_file.is_file() else {}
    for n in names:  # the lr does not change a step's cost: a point with a calibrated shape shares it
        twin = next((m for m in calib if m in POINTS and replace(POINTS[m], lr=0) == replace(POINTS[n], lr=0)), None)
        if n not in calib and twin is not None:
            calib[n] = calib[twin]
    missing = [n for n in names if n not in calib]
    if missing:
        # v1 timed again with the new ones: costs are only compared within one process.
        todo = list(dict.fromkeys([BUDGET_POINT, *missing]))
        fresh = calibrate(todo, cache_dir, args.calib_steps, args.calib_rounds)
        if BUDGET_POINT in calib:  # rescale to the stored v1 cost: ratios are what carries over
            scale = calib[BUDGET_POINT] / fresh[BUDGET_POINT]
            fresh = {n: c * scale for n, c in fresh.items() if n != BUDGET_POINT}
        calib.update(fresh)
        calib_file.write_text(json.dumps(calib, indent=1))
    budget = calib[BUDGET_POINT] * BUDGET_STEPS
    steps = {n: round(budget / calib[n]) for n in names}
    print(f"budget: {BUDGET_STEPS} steps of {BUDGET_POINT} = {budget:.0f} CPU s (1 thread)")
    for n in names:
        print(f"  {n:12s} {calib[n] * 1000:7.1f} ms/step  -> {steps[n]} steps   {POINTS[n].label()}")
    if args.calibrate:
        return 0

    def work(job: tuple[str, int]) -> dict:
        name, seed = job
        done = out / f"{name}-s{seed}.json"
        if done.is_file() and json.loads(done.read_text())["steps"] == steps[name]:
            return json.loads(done.read_text())
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, __file__, "--out", str(out), "--run", name, str(seed), str(steps[name])]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} seed {seed} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(done.read_text())
        print(f"  done {name} seed {seed}: val/bpb {r['val_bpb']:.4f} (val/loss {r['val_loss']:.4f}), "
              f"{r['train_cpu_s']:.0f} CPU s, {r['train_wall_s']:.0f} s wall", flush=True)
        return r

    jobs = [(n, s) for s in args.seeds for n in names]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(work, jobs))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(table(results, args.seeds, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
