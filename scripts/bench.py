"""Time gptmini's Lightning path against a plain PyTorch loop of the same model doing the same work.

    python scripts/bench.py --config configs/tiny.yaml
    python scripts/bench.py --config configs/10m.yaml --accelerator cpu --batch-size 4 --block-size 256
    python scripts/bench.py --config configs/10m.yaml --accelerator cuda --json /tmp/bench-h100.json

Both paths are built from the same config, in one process, and run alternately (round r runs
every variant x path in order, round r+1 in reverse) so that a neighbour's load on a shared
machine hits both alike:

- ``lightning``: the real path. ``GPTMiniCLI`` parses the config exactly as ``gptmini.cli fit``
  does (trainer, callbacks, logger, datamodule, GPTMiniModule) and ``trainer.fit`` runs it; only
  validation is switched off, the horizon shortened, the logs sent to a temp folder and the
  pre-training checks (LRCurveCheck, InitialLossCheck, OverfitCheck, Checklist: work done before
  step 0) dropped (``--skip-callbacks``).
- ``plain``: :func:`gptmini.core.plainloop.train_plain` with the same model config and seed, the same
  DataLoader, precision, two-group AdamW (fused or not, as the module decides), clipping, LambdaLR
  and compile setting. It never syncs with the host inside the loop.

Timing: after ``--warmup`` steps, the clock reads (with a device sync) every ``--window`` steps;
each window gives a mean step time and the median over all windows of all rounds is reported,
with the host CPU time per step (the steadier figure on a shared CPU), tokens/s, MFU against a
matmul ceiling measured here on the same device and dtype (and the datasheet peak on
H100/H200/A100), peak memory (CUDA: max allocated; CPU: the peak RSS growth during one short run
in a separate probe process per path) and the ratio lightning/plain in tokens/s (> 1: Lightning is
faster). ``--variant NAME:KEY=VALUE,...`` adds lever settings to compare in the same alternation.
JSON goes to ``--json`` (rewritten after every run: ``complete`` is false until the end); a short
table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptmini.core.startup import collector_paused, freeze_imported  # noqa: E402

with collector_paused():  # ~1 s less CPU per start (gptmini.core.startup)
    import torch
    from lightning.pytorch import Callback, seed_everything

    from gptmini.cli import make_cli
    from gptmini.core.flops import device_peak_flops, flops_per_token, measure_matmul_flops
    from gptmini.core.model import GPTMini
    from gptmini.core.plainloop import train_plain
    from gptmini.core.step import compile_by_default
    from gptmini.train.compat import compute_dtype, raise_recompile_limit

PATHS = ("lightning", "plain")
# Named shapes (CLI overrides). micro: so small that a step is nearly all fixed host cost, which
# is what Lightning adds per step (scripts/profile_step.py splits it by component).
PRESETS = {
    "micro": [
        "model.arch.n_layer=1",
        "model.arch.n_head=2",
        "model.arch.n_embd=32",
        "data.block_size=16",
        "data.batch_size=1",
        "data.num_workers=0",
    ],
}
# The pre-training checks: work done once before step 0 (a 100-step overfit), not per step.
CHECKS = "LRCurveCheck,InitialLossCheck,OverfitCheck,Checklist"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"), help="gptmini fit config")
    p.add_argument("--accelerator", help="override trainer.accelerator (cpu, cuda, auto)")
    p.add_argument("--precision", help="override trainer.precision (32-true, bf16-mixed)")
    p.add_argument("--batch-size", type=int, help="override data.batch_size")
    p.add_argument("--block-size", type=int, help="override data.block_size")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named shape, applied before --set: "
        + "; ".join(f"{k}: {' '.join(v)}" for k, v in PRESETS.items()),
    )
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (each runs both paths)")
    p.add_argument("--warmup", type=int, default=5, help="steps per run before the clock starts")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (a multiple of --window)")
    p.add_argument("--window", type=int, default=5, help="steps per timing window")
    p.add_argument("--paths", default="lightning,plain", help="comma-separated subset of lightning,plain")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra gptmini CLI override for both paths, e.g. --set model.compile=true",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a lever setting to compare, e.g. bf16:trainer.precision=bf16-mixed (repeatable; all "
        "variants x paths alternate in one process; default: one variant 'base' with no extra settings); "
        "skip=A+B drops those callbacks (class names) from this variant's Lightning path",
    )
    p.add_argument(
        "--skip-callbacks",
        default=CHECKS,
        help="comma-separated callback class or module names dropped from the Lightning path; default: "
        "the pre-training checks, which only work before step 0 (a 100-step overfit each round); '' keeps all",
    )
    p.add_argument(
        "--ceiling-seconds",
        type=float,
        default=0.5,
        help="seconds each matmul-ceiling measurement runs, once before and once after the timed runs",
    )
    p.add_argument("--no-mem", action="store_true", help="CPU: skip the peak-RSS probe processes")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", help="write the results here (default: a temp file, path printed)")
    p.add_argument("--probe", choices=PATHS, help=argparse.SUPPRESS)  # internal: peak-RSS probe
    p.add_argument("--probe-variant", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps % args.window or args.steps <= 0 or args.window <= 0:
        raise SystemExit(f"--steps ({args.steps}) must be a positive multiple of --window ({args.window}).")
    if args.warmup < 1:
        raise SystemExit("--warmup must be >= 1 (the first step holds allocation and compilation).")
    bad = set(args.paths.split(",")) - set(PATHS)
    if bad:
        raise SystemExit(f"--paths: unknown {sorted(bad)}; choose from {PATHS}.")
    args.variants = [_parse_variant(v) for v in args.variant] or [("base", [])]
    names = [n for n, _ in args.variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"--variant names must differ, got {names}.")
    return args


def _parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: give NAME or NAME:KEY=VALUE,...")
    return name, [kv for kv in sets.split(",") if kv]


class Clock:
    """Reads the time (after a device sync) at the end of step warmup-1 and every window steps after."""

    def __init__(self, device: torch.device, warmup: int, window: int) -> None:
        self.device, self.warmup, self.window = device, warmup, window
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []  # this process's CPU time: what a busy neighbour cannot inflate
        self.step = 0

    def tick(self, *_: object) -> None:
        k = self.step - (self.warmup - 1)
        if k >= 0 and k % self.window == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stamps.append(time.perf_counter())
            self.cpu_stamps.append(time.process_time())
        self.step += 1

    def windows_ms(self, cpu: bool = False) -> list[float]:
        stamps = self.cpu_stamps if cpu else self.stamps
        return [1000.0 * (b - a) / self.window for a, b in zip(stamps, stamps[1:])]


class _ClockCallback(Callback):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # clone: under CUDA graphs (compile_mode=reduce-overhead) the next replay reuses the buffer
        self.losses.append(outputs["loss"].detach().clone())
        self.clock.tick()


class Bench:
    """One variant (config + overrides) and the state both of its paths share."""

    def __init__(self, args: argparse.Namespace, name: str = "base", sets: list[str] | None = None) -> None:
        self.args, self.name = args, name
        self.sets = [kv for kv in sets or [] if not kv.startswith("skip=")]
        self.skip = {c for kv in sets or [] if kv.startswith("skip=") for c in kv[5:].split("+") if c}
        self.max_steps = args.warmup + args.steps
        self.tmp = Path(tempfile.mkdtemp(prefix="gptmini-bench-"))
        # Parse once to learn what both paths run: device, precision, shapes, settings.
        cli = self._cli()
        self.trainer, module, self.dm = cli.trainer, cli.model, cli.datamodule
        self.device = self.trainer.strategy.root_device
        self.precision = str(self.trainer.precision)
        self.model_cfg, self.optim_cfg, self.schedule_cfg = (
            module.model_cfg,
            module.optim_cfg,
            module.schedule_cfg,
        )
        self.kernel_cfg = module.kernel_cfg  # model.kernels: attention backend, chunked loss head
        self.compile = compile_by_default(module.compile_setting, self.device)  # as the module decides
        self.compile_mode = module.compile_mode
        self.capture = module.capture_setting  # the plain loop captures where the module does
        self.clip = self.trainer.gradient_clip_val
        self.dm.prepare_data()
        self.dm.setup("fit")
        self.tokens_per_step = self.dm.batch_size * self.dm.block_size * self.trainer.accumulate_grad_batches
        self.seed = cli.config.get("seed_everything", 1337)
        if self.trainer.accumulate_grad_batches != 1:
            raise SystemExit("bench compares single-batch steps; set trainer.accumulate_grad_batches=1.")

    def _cli_args(self) -> list[str]:
        a = self.args
        warmup = min(self.max_steps // 10, 10)
        out = [
            "--config",
            a.config,
            f"--trainer.max_steps={self.max_steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={self.tmp}",
            f"--trainer.logger.init_args.save_dir={self.tmp / 'runs'}",  # never into the repo's runs/
            f"--model.schedule.warmup_steps={warmup}",
        ]
        if a.accelerator:
            out.append(f"--trainer.accelerator={a.accelerator}")
        if a.precision:
            out.append(f"--trainer.precision={a.precision}")
        if a.batch_size:
            out.append(f"--data.batch_size={a.batch_size}")
        if a.block_size:
            out.append(f"--data.block_size={a.block_size}")
        preset = PRESETS[a.preset] if a.preset else []
        out += [f"--{kv}" for kv in [*preset, *a.set, *self.sets]]
        return out

    def _cli(self):
        args = self._cli_args()
        cli = make_cli(args=args, run=False)
        skip = {s for s in self.args.skip_callbacks.split(",") if s} | self.skip
        if skip:
            cli.trainer.callbacks[:] = [
                c for c in cli.trainer.callbacks if not {type(c).__name__, type(c).__module__} & skip
            ]
        return cli

    def run(self, path: str, extra_callback: Callback | None = None, on_step_end=None) -> dict:
        """One run of ``path``: warmup + timed steps; returns window times, peak memory, last loss.

        ``extra_callback`` joins the Lightning path's callbacks, ``on_step_end(step)`` is called
        after each plain-loop step (scripts/profile_step.py starts its sampler there)."""
        clock = Clock(self.device, self.args.warmup, self.args.window)
        if self.device.type == "cuda":
            # Initialise CUDA first: in a process that has not touched it yet (profile_step.py)
            # reset_peak_memory_stats raises "Invalid device argument".
            torch.cuda.init()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        if path == "lightning":
            cli = self._cli()
            cb = _ClockCallback(clock)
            cli.trainer.callbacks.append(cb)
            if extra_callback is not None:
                cli.trainer.callbacks.append(extra_callback)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            losses = cb.losses
        else:
            seed_everything(self.seed, verbose=False)
            model = GPTMini(self.model_cfg, self.kernel_cfg)
            if self.compile:
                model.compile(mode=self.compile_mode)
            losses = train_plain(
                model,
                self.dm.train_dataloader(),
                self.optim_cfg,
                self.schedule_cfg,
                self.max_steps,
                precision=self.precision,
                gradient_clip_val=self.clip,
                device=self.device,
                capture=self.capture,
                compile_mode=self.compile_mode if self.compile else None,
                on_step_end=clock.tick if on_step_end is None else lambda i: (clock.tick(), on_step_end(i)),
            )
        out = {
            "windows_ms": clock.windows_ms(),
            "cpu_windows_ms": clock.windows_ms(cpu=True),
            "last_loss": float(losses[-1]),
        }
        if self.device.type == "cuda":
            out["peak_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def rss_growth_of(run) -> float:
    """Peak RSS (MiB) during ``run()`` above the RSS before it (Linux: VmHWM reset via clear_refs)."""
    gc.collect()
    before = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    except OSError:  # not Linux, or not allowed: the process-lifetime peak is the best we have
        run()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    run()
    return _status_mb("VmHWM") - before


def probe_rss(argv: list[str], path: str, variant: int) -> float | None:
    """Peak RSS growth (MiB) of a fresh process running one short round of ``path``."""
    cmd = [sys.executable, __file__, *argv, "--probe", path, f"--probe-variant={variant}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])["peak_rss_mb"]
    print(f"[bench] RSS probe for {path} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
    return None


def summarize(bench: Bench, results: dict[str, list[dict]], ceiling: float, mem: dict) -> dict:
    fpt = flops_per_token(bench.model_cfg, bench.dm.block_size)
    dtype = compute_dtype(bench.trainer)
    peak = device_peak_flops(bench.device, dtype)
    paths = {}
    for path, runs in results.items():
        windows = [w for r in runs for w in r["windows_ms"]]
        ms = statistics.median(windows)
        tps = bench.tokens_per_step / (ms / 1000.0)
        q = statistics.quantiles(windows, n=4) if len(windows) > 1 else [ms, ms, ms]
        paths[path] = {
            "ms_per_step": ms,
            "ms_per_step_iqr": [q[0], q[2]],
            "round_medians_ms": [statistics.median(r["windows_ms"]) for r in runs],
            # Host CPU time (all threads of this process): on a shared CPU it is far less noisy
            # than wall time; on CUDA it is the host's work per step, not the step time.
            "cpu_ms_per_step": statistics.median(w for r in runs for w in r["cpu_windows_ms"]),
            "tokens_per_sec": tps,
            "mfu_vs_measured_ceiling": tps * fpt / ceiling,
            "mfu_vs_datasheet": tps * fpt / peak if peak else None,
            "peak_mem_mb": max(r["peak_mem_mb"] for r in runs) if "peak_mem_mb" in runs[0] else mem.get(path),
            "peak_mem_kind": "cuda max_memory_allocated"
            if "peak_mem_mb" in runs[0]
            else "peak RSS above the pre-run RSS, separate process",
            "last_loss": [r["last_loss"] for r in runs],
        }
    out = {
        "variant": bench.name,
        "variant_settings": bench.sets,
        "device": _device_name(bench.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": bench.args.config,
        "overrides": bench._cli_args()[2:],
        "shape": {
            "n_layer": bench.model_cfg.n_layer,
            "n_head": bench.model_cfg.n_head,
            "n_embd": bench.model_cfg.n_embd,
            "vocab_size": bench.model_cfg.vocab_size,
            "batch_size": bench.dm.batch_size,
            "block_size": bench.dm.block_size,
        },
        "precision": bench.precision,
        "compile": bench.compile,
        "compile_mode": bench.compile_mode,
        "flops_per_token": fpt,
        "matmul_ceiling_flops": ceiling,
        "datasheet_peak_flops": peak,
        "rounds": bench.args.rounds,
        "warmup": bench.args.warmup,
        "steps": bench.args.steps,
        "window": bench.args.window,
        "paths": paths,
    }
    if "lightning" in paths and "plain" in paths:
        out["ratio_tokens_per_sec"] = paths["lightning"]["tokens_per_sec"] / paths["plain"]["tokens_per_sec"]
        pairs = zip(paths["plain"]["round_medians_ms"], paths["lightning"]["round_medians_ms"])
        out["ratio_paired_rounds_median"] = statistics.median(p / lt for p, lt in pairs)
        out["ratio_cpu_time"] = paths["plain"]["cpu_ms_per_step"] / paths["lightning"]["cpu_ms_per_step"]
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def table(s: dict) -> str:
    sh = s["shape"]
    head = (
        f"[{s['variant']}] {s['device']} | d{sh['n_embd']} L{sh['n_layer']} H{sh['n_head']} V{sh['vocab_size']} "
        f"B{sh['batch_size']} T{sh['block_size']} | {s['precision']} | compile={s['compile']} | "
        f"matmul ceiling {s['matmul_ceiling_flops'] / 1e12:.3f} TFLOP/s"
    )
    rows = [
        head,
        f"{'path':<10} {'ms/step':>9} {'cpu ms':>8} {'tokens/s':>11} {'MFU':>7} {'peak mem':>11} {'ratio':>6} {'vs 1st':>7}",
    ]
    for path, r in s["paths"].items():
        ratio = r["tokens_per_sec"] / s["paths"]["plain"]["tokens_per_sec"] if "plain" in s["paths"] else 1.0
        mem = f"{r['peak_mem_mb']:.0f} MiB" if r["peak_mem_mb"] else "-"
        rows.append(
            f"{path:<10} {r['ms_per_step']:>9.2f} {r['cpu_ms_per_step']:>8.2f} {r['tokens_per_sec']:>11.0f} "
            f"{100 * r['mfu_vs_measured_ceiling']:>6.1f}% {mem:>11} {ratio:>6.3f} "
            f"{r.get('speedup_vs_first_variant', 1.0):>6.2f}x"
        )
    if "ratio_tokens_per_sec" in s:
        rows.append(
            f"lightning/plain tokens/s: {s['ratio_tokens_per_sec']:.3f} (median of per-round ratios "
            f"{s['ratio_paired_rounds_median']:.3f}; in host CPU time {s['ratio_cpu_time']:.3f}); "
            f"MFU vs the measured matmul ceiling; "
            f"'vs 1st': tokens/s against the first --variant"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Every run compiles a fresh model instance: do not let Dynamo fall back to eager after its
    # default 8 recompiles of the same code within this one process.
    raise_recompile_limit(256)
    if args.probe:  # one short run in a fresh process, for its peak RSS
        args.steps = args.window
        bench = Bench(args, *args.variants[args.probe_variant])
        print("PROBE " + json.dumps({"peak_rss_mb": rss_growth_of(lambda: bench.run(args.probe))}))
        return None
    benches = [Bench(args, name, sets) for name, sets in args.variants]
    paths = args.paths.split(",")
    dtypes = {b.name: compute_dtype(b.trainer) for b in benches}
    ceilings: dict[torch.dtype, float] = {}

    def measure_ceilings() -> None:
        for dtype in set(dtypes.values()):
            best = measure_matmul_flops(benches[0].device, dtype, seconds=args.ceiling_seconds)
            ceilings[dtype] = max(ceilings.get(dtype, 0.0), best)

    measure_ceilings()
    combos = [(b, p) for b in benches for p in paths]
    results: dict[str, dict[str, list[dict]]] = {b.name: {p: [] for p in paths} for b in benches}
    out = Path(args.json) if args.json else benches[0].tmp / "bench.json"

    def write(mem: dict[str, dict[str, float | None]], final: bool) -> dict:
        # Mid-run (final=False) only the variants whose every path has run so far.
        done = [b for b in benches if all(results[b.name][p] for p in paths)]
        summaries = {
            b.name: summarize(b, results[b.name], ceilings[dtypes[b.name]], mem.get(b.name, {})) for b in done
        }
        first = summaries.get(benches[0].name)
        for s in summaries.values():  # each lever against the first variant, path by path
            for path, r in s["paths"].items():
                if first is not None:
                    r["speedup_vs_first_variant"] = (
                        r["tokens_per_sec"] / first["paths"][path]["tokens_per_sec"]
                    )
        out.write_text(json.dumps({"variants": summaries, "complete": final, "failed": failed}, indent=2))
        return summaries

    failed: dict[str, str] = {}  # variant -> error: a lever the device refuses loses only itself
    for r in range(args.rounds):
        for bench, path in combos if r % 2 == 0 else combos[::-1]:
            if bench.name in failed:
                continue
            try:
                res = bench.run(path)
            except Exception as e:  # e.g. an SDPA backend this GPU lacks ("No available kernel")
                if len(benches) == 1:
                    raise
                failed[bench.name] = f"{type(e).__name__}: {str(e)[:500]}"
                print(f"[bench] {bench.name}/{path} FAILED: {failed[bench.name]}", flush=True)
                write({}, final=False)
                continue
            results[bench.name][path].append(res)
            print(
                f"[bench] round {r} {bench.name}/{path:<9} median {statistics.median(res['windows_ms']):8.2f} "
                f"ms/step (windows {', '.join(f'{w:.1f}' for w in res['windows_ms'])})",
                flush=True,
            )
            # Evidence so far after every run, in case the caller's time runs out (gpu_check.py).
            write({}, final=False)
    measure_ceilings()  # the best of before and after: the machine may be shared
    mem = {
        b.name: {p: probe_rss(argv, p, i) for p in paths}
        for i, b in enumerate(benches)
        if b.device.type == "cpu" and not args.no_mem
    }
    summaries = write(mem, final=True)
    print(f"[bench] JSON: {out}")
    print("\n".join(table(s) for s in summaries.values()))
    return summaries


if __name__ == "__main__":
    freeze_imported()  # as `gptmini fit` does: both paths timed in the process a real fit has
    main()
