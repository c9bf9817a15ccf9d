"""Where a training step's host time goes, by component: gptmini's Lightning path vs the plain loop.

    python scripts/profile_step.py                       # the micro shape (d32 L1, B1 T16), CPU
    python scripts/profile_step.py --steps 400 --json /tmp/profile.json -- --set trainer.log_every_n_steps=50

Both paths are built as ``scripts/bench.py`` builds them (its arguments go after ``--``; default:
``--preset micro``) and sampled with pyinstrument (``pip install pyinstrument``; without it, a
stdlib sampler thread reading the main thread's stack, coarser: ``--sampler``) over the steps
after the warm-up, in alternating rounds. On CUDA it times the host: ms per step are where the
host's time goes, while kernels run behind it (``scripts/bench.py`` gives the step time). Why not cProfile: its per-call cost inflates Python-heavy
Lightning code far more than the C++ kernels, so its split would mislead. Each sample's stack is
walked from the outside in and charged to the innermost frame a rule below names: the model,
backward, AdamW, clipping, scheduler and data loading are the work both paths share; the rest is
what each path adds (Lightning's loop, ``self.log`` and the logger connector, each callback by
name, the progress bar, the precision/strategy wrappers, our own hooks). Figures are wall ms per
step (pyinstrument samples wall time): run on a quiet machine or compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (first: it imports torch and Lightning with the collector paused)
from lightning.pytorch import Callback  # noqa: E402

from gptmini.core.startup import freeze_imported  # noqa: E402

SHARED = "shared: "
# (component, substring of the frame's file path, function name or None for any), innermost match wins.
RULES: list[tuple[str, str, str | None]] = [
    ("bench clock", "scripts/bench.py", None),
    ("plain loop's own code", "gptmini/core/plainloop.py", None),
    ("Lightning loop internals", "lightning/pytorch/loops/", None),
    ("Lightning loop internals", "lightning/pytorch/trainer/trainer.py", None),
    ("Lightning hook dispatch", "lightning/pytorch/trainer/call.py", None),
    ("Lightning profiler stubs", "lightning/pytorch/profilers/", None),
    ("strategy / precision plugin", "lightning/pytorch/strategies/", None),
    ("strategy / precision plugin", "lightning/pytorch/plugins/", None),
    ("strategy / precision plugin", "lightning/fabric/", None),
    ("Lightning optimizer/scheduler wrappers", "lightning/pytorch/core/optimizer.py", None),
    ("our module hooks (GPTMiniModule)", "gptmini/train/module.py", None),
    ("self.log", "lightning/pytorch/core/module.py", "log"),
    ("self.log", "lightning/pytorch/core/module.py", "__to_tensor"),
    ("logger connector / result collection", "lightning/pytorch/trainer/connectors/logger_connector/", None),
    ("logger writes (TensorBoard)", "lightning/pytorch/loggers/", None),
    ("logger writes (TensorBoard)", "lightning/fabric/loggers/", None),
    ("logger writes (TensorBoard)", "tensorboard", None),
    ("progress bar", "lightning/pytorch/callbacks/progress/", None),
    ("progress bar", "gptmini/callbacks/progress.py", None),
    ("progress bar", "/tqdm/", None),
    ("callback: LearningRateMonitor", "lightning/pytorch/callbacks/lr_monitor.py", None),
    ("callback: ModelCheckpoint", "lightning/pytorch/callbacks/model_checkpoint.py", None),
    ("callback: ThroughputLogger", "gptmini/callbacks/throughput.py", None),
    ("callback: FaultGuard", "gptmini/callbacks/fault_guard.py", None),
    ("callback: TextSamples", "gptmini/callbacks/samples.py", None),
    (SHARED + "data loading", "torch/utils/data/", None),
    (SHARED + "data loading", "gptmini/train/loader.py", None),
    (SHARED + "data loading", "gptmini/core/tokens.py", None),
    (SHARED + "model forward", "gptmini/core/model.py", None),
    (SHARED + "backward", "torch/_tensor.py", "backward"),
    (SHARED + "backward", "torch/autograd/", None),
    (SHARED + "zero_grad", "torch/optim/optimizer.py", "zero_grad"),
    (SHARED + "AdamW step", "torch/optim/adam", None),  # AdamW subclasses Adam (adam.py) in recent torch
    (SHARED + "AdamW step", "torch/optim/optimizer.py", None),
    (SHARED + "AdamW step", "torch/optim/_functional", None),
    (SHARED + "lr scheduler", "torch/optim/lr_scheduler.py", None),
    (SHARED + "grad clipping", "torch/nn/utils/clip_grad.py", None),
]


def component_of(stack: list[str]) -> str:
    """The component of the innermost frame in ``stack`` (outermost first) that a rule names."""
    for frame in reversed(stack):
        ident = frame.split("\x01", 1)[0]
        func, _, rest = ident.partition("\x00")
        path = rest.partition("\x00")[0].replace("\\", "/")
        for name, where, fn in RULES:
            if where in path and (fn is None or fn == func):
                return name
    return "other"


class _Sampler(Callback):
    """Starts pyinstrument after the warm-up steps; the run's end stops it."""

    def __init__(self, profiler, warmup: int) -> None:
        self.profiler, self.warmup, self.step = profiler, warmup, 0

    def tick(self, *_: object) -> None:
        self.step += 1
        if self.step == self.warmup:
            self.profiler.start()

    def on_train_batch_end(self, *_: object) -> None:
        self.tick()


class StackSampler:
    """A stdlib stand-in for pyinstrument's Profiler: a thread records the main thread's stack every
    ``interval`` seconds, each sample weighted by the time since the last. ``stop()`` returns an
    object whose ``frame_records`` are pyinstrument's (frame ids outermost first, seconds), so the
    rules above read both. Coarser: the sampler needs the GIL, which Python code holds for up to
    ``sys.getswitchinterval()`` (lowered to ``interval`` while sampling)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.frame_records: list[tuple[list[str], float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target = threading.main_thread().ident

    def start(self) -> None:
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(max(self.interval, 1e-5))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._target)
            now = time.perf_counter()
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{code.co_name}\x00{code.co_filename}\x00{frame.f_lineno}")
                frame = frame.f_back
            self.frame_records.append((stack[::-1], now - last))
            last = now

    def stop(self) -> StackSampler:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            sys.setswitchinterval(self._switch)
        return self


def make_profiler(interval: float, kind: str):
    """pyinstrument's Profiler when ``kind`` is pyinstrument, or auto and it is installed; else ours."""
    if kind != "stdlib":
        try:
            from pyinstrument import Profiler

            return Profiler(interval=interval)
        except ImportError:
            if kind == "pyinstrument":
                raise SystemExit("profile_step: --sampler pyinstrument needs `pip install pyinstrument`.") from None
    return StackSampler(interval)


def _where(frame: str) -> tuple[str, str]:
    func, _, rest = frame.split("\x01", 1)[0].partition("\x00")
    return func, rest.partition("\x00")[0].replace("\\", "/")


INCLUSIVE: dict[str, float] = defaultdict(float)  # --top: Lightning/gptmini function -> ms, all runs


def profile_run(b: bench.Bench, path: str, interval: float, sampler: str = "auto") -> dict[str, float]:
    """ms per timed step by component, for one run of ``path``."""
    profiler = make_profiler(interval, sampler)
    sampler = _Sampler(profiler, b.args.warmup)
    b.run(path, extra_callback=sampler, on_step_end=sampler.tick)
    session = profiler.stop()
    per: dict[str, float] = defaultdict(float)
    for stack, seconds in session.frame_records:
        per[component_of(stack)] += 1000.0 * seconds / b.args.steps
        if path == "lightning":
            seen = set()
            for frame in stack:
                func, file = _where(frame)
                key = f"{file.rpartition('site-packages/')[2].rpartition('gptmini/')[2]}:{func}"
                if ("lightning/" in file or "gptmini/" in file) and key not in seen:
                    seen.add(key)
                    INCLUSIVE[key] += 1000.0 * seconds / b.args.steps
    return dict(per)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """profile_step's own arguments (before ``--``) and the ones passed on to scripts/bench.py (after it)."""
    own, _, bench_argv = (
        (argv[: argv.index("--")], None, argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None, [])
    )
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--interval", type=float, default=1e-4, help="pyinstrument sampling interval (s)")
    p.add_argument("--json", help="write the per-component table here")
    p.add_argument(
        "--sampler",
        choices=("auto", "pyinstrument", "stdlib"),
        default="auto",
        help="auto: pyinstrument when installed, else the stdlib sampler thread",
    )
    p.add_argument(
        "--top",
        type=int,
        default=0,
        help="also list the N Lightning/gptmini functions with the most inclusive time",
    )
    p.add_argument(
        "--config-shape",
        action="store_true",
        help="profile the config's own shape (e.g. 10m on CUDA: where a host-bound step's time goes) "
        "instead of the micro preset",
    )
    return p.parse_args(own), bench_argv


def make_bench(args: argparse.Namespace, bench_argv: list[str]) -> bench.Bench:
    """The Bench both paths run on: the micro preset (or the config's shape) with our step counts."""
    bargs = bench.parse_args(
        [
            *([] if args.config_shape else ["--preset=micro"]),
            "--no-mem",
            f"--warmup={args.warmup}",
            f"--steps={args.steps}",
            f"--window={args.steps}",
        ]
        + bench_argv
    )
    if bargs.threads:
        bench.torch.set_num_threads(bargs.threads)
    return bench.Bench(bargs)


def summarize(runs: dict[str, list[dict[str, float]]]) -> tuple[dict, dict[str, float], dict[str, float]]:
    """Medians over the rounds: (component -> path -> ms, path -> total ms, path -> ms not shared)."""
    names = sorted({c for rs in runs.values() for run in rs for c in run})
    table = {
        c: {path: statistics.median(run.get(c, 0.0) for run in rs) for path, rs in runs.items()}
        for c in names
    }
    total = {path: statistics.median(sum(run.values()) for run in rs) for path, rs in runs.items()}
    own_ms = {
        path: statistics.median(sum(v for c, v in run.items() if not c.startswith(SHARED)) for run in rs)
        for path, rs in runs.items()
    }
    return table, total, own_ms


def table_rows(table: dict, total: dict[str, float], own_ms: dict[str, float]) -> list[str]:
    """The printed table: each path's own components first (largest first), then the shared ones and totals."""
    rows = [f"{'component (wall ms/step, median of rounds)':<46} {'lightning':>10} {'plain':>8}"]
    for c in sorted(table, key=lambda c: (c.startswith(SHARED), -table[c]["lightning"])):
        rows.append(f"{c:<46} {table[c]['lightning']:>10.3f} {table[c]['plain']:>8.3f}")
    rows.append(f"{'not shared (each path own)':<46} {own_ms['lightning']:>10.3f} {own_ms['plain']:>8.3f}")
    rows.append(f"{'total':<46} {total['lightning']:>10.3f} {total['plain']:>8.3f}")
    return rows


def print_top(top: int, rounds: int) -> None:
    """Prints the ``top`` Lightning/gptmini functions with the most inclusive time (``--top``)."""
    print(f"top {top} Lightning/gptmini functions, inclusive wall ms/step summed over {rounds} rounds:")
    for key, ms in sorted(INCLUSIVE.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms / rounds:8.3f}  {key}")


def main(argv: list[str] | None = None) -> dict:
    """Profiles both paths in alternating rounds; prints the table and returns it (also to --json)."""
    args, bench_argv = parse_args(list(sys.argv[1:] if argv is None else argv))
    b = make_bench(args, bench_argv)
    runs: dict[str, list[dict[str, float]]] = {"lightning": [], "plain": []}
    for r in range(args.rounds):
        for path in ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning"):
            runs[path].append(profile_run(b, path, args.interval, args.sampler))
    table, total, own_ms = summarize(runs)
    rows = table_rows(table, total, own_ms)
    if args.top:
        print_top(args.top, args.rounds)
    print("\n".join(rows))
    sampler = "stdlib" if isinstance(make_profiler(args.interval, args.sampler), StackSampler) else "pyinstrument"
    print(f"(sampler: {sampler}; device: {b.device})")
    out = {
        "components": table,
        "total": total,
        "own": own_ms,
        "bench_args": bench_argv,
        "sampler": sampler,
        "device": str(b.device),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    freeze_imported()
    main()
