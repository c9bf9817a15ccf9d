"""One prepared, unattended GPU check (issue 13): speed against the targets, GPU tests, a short real fit.

    python scripts/gpu_check.py OUT                 # CUDA: <= 8 minutes on one H100
    python scripts/gpu_check.py OUT --cpu-smoke     # the same code path on CPU at toy sizes (< 2 min)

Parts, in order, each a subprocess with its own time limit (a hung part is killed and the next one
runs); each leaves its files in OUT as it finishes, and ``OUT/summary.md`` is rewritten after every
part, so a timeout or a kill still leaves the evidence gathered so far:

1. ``prepare``: tokenizer + token cache of the corpus (``--data``, default ``../shared/data/pd_english.txt.gz``)
   in ``OUT/data_cache``, shared by the next parts.
2. ``bench``: ``scripts/bench.py`` on the 10m shape (configs/10m.yaml: B32 T512 bf16), Lightning vs
   the plain loop alternating, with the levers as variants: ``default`` (as configured), ``cudagraphs``
   (``model.compile_mode=reduce-overhead``), ``eager`` (``model.compile=false``) and ``guard1``
   (``fault_guard.check_every_n_steps=1``). ``OUT/bench.json`` (rewritten after every run), ``bench.log``.
3. ``gpu_tests``: the ``gpu``-marked tests; ``gpu_tests.xml`` (JUnit) and ``gpu_tests.log``.
4. ``fit``: ``gptmini.cli fit --config configs/10m.yaml`` for a few hundred steps on the corpus, with
   the configs' callbacks (ThroughputLogger included); its run folder under ``OUT/runs`` and
   ``OUT/fit.png`` (loss, lr, grad norm, tokens/s, drawn from the event file).
5. summary: device, torch/lightning versions, each figure against its target; printed last.

Targets (10m shape on one H100): Lightning >= 4.0M tokens/s, >= 1.0x the plain loop in the same
run, peak memory <= the plain loop's + 10%. ``--cpu-smoke`` shrinks every size (and gives no
verdicts: toy CPU figures say nothing about the targets); ``tests/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_TOKENS_PER_SEC = 4.0e6
TARGET_RATIO = 1.0
TARGET_MEM_SLACK = 0.10
DATA_CANDIDATES = [
    REPO.parent / "shared" / "data" / "pd_english.txt.gz",
    REPO / "shared" / "data" / "pd_english.txt.gz",
]
VARIANTS = [
    "default",
    "cudagraphs:model.compile_mode=reduce-overhead",
    "eager:model.compile=false",
    "guard1:fault_guard.check_every_n_steps=1",
]


@dataclass
class Plan:
    """What each part runs, by mode: the same commands, different sizes and limits."""

    accelerator: str
    shape: list[str]  # CLI overrides (KEY=VALUE, no leading --) shared by bench and fit
    bench: list[str]  # bench.py timing arguments
    fit_steps: int
    fit: list[str]  # extra fit overrides
    limits: dict[str, float]  # most seconds per part (bench: whatever the later parts' reserves leave)
    reserves: dict[str, float]  # seconds kept back for each part while the parts before it run
    budget: int  # seconds for everything
    env: dict[str, str] = field(default_factory=dict)


def plan_for(smoke: bool) -> Plan:
    if not smoke:
        return Plan(
            accelerator="cuda",
            shape=[],
            bench=["--rounds=2", "--warmup=15", "--steps=60", "--window=20"],
            fit_steps=300,
            fit=[
                "trainer.log_every_n_steps=25",
                "trainer.val_check_interval=300",
                "trainer.limit_val_batches=20",
                "model.schedule.warmup_steps=30",
            ],
            limits={"prepare": 75, "bench": float("inf"), "gpu_tests": 75, "fit": 120},
            reserves={"prepare": 20, "bench": 120, "gpu_tests": 45, "fit": 90},
            budget=470,
        )
    return Plan(
        accelerator="cpu",
        shape=[
            "model.arch.n_layer=1",
            "model.arch.n_head=2",
            "model.arch.n_embd=64",
            "model.optim.lr=1e-2",  # the fit's one-batch overfit check passes in ~20 steps at this size
            "data.vocab_size=384",
            "data.block_size=32",
            "data.batch_size=4",
            "data.num_workers=0",
        ],
        bench=["--rounds=1", "--warmup=2", "--steps=4", "--window=2", "--no-mem", "--threads=1"],
        fit_steps=12,
        fit=[
            "trainer.log_every_n_steps=3",
            "trainer.val_check_interval=12",
            "trainer.limit_val_batches=2",
            "trainer.num_sanity_val_steps=0",
            "model.schedule.warmup_steps=3",
        ],
        limits={"prepare": 30, "bench": float("inf"), "gpu_tests": 40, "fit": 60},
        reserves={"prepare": 5, "bench": 20, "gpu_tests": 15, "fit": 30},
        budget=115,
        env={"OMP_NUM_THREADS": "1"},
    )


class Check:
    def __init__(self, out: Path, plan: Plan, data: Path | None, smoke: bool) -> None:
        self.out, self.plan, self.data, self.smoke = out, plan, data, smoke
        self.start = time.monotonic()
        self.parts: dict[str, dict] = {}
        self.active: tuple[str, subprocess.Popen, float] | None = None  # the part running now
        self.status_path = out / "status.json"

    # -- running ------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.plan.budget - (time.monotonic() - self.start)

    def limit(self, name: str, later: list[str]) -> float:
        """This part's limit: its own, and never eating the time reserved for the parts after it."""
        reserve = sum(self.plan.reserves[p] for p in later)
        return max(1.0, min(self.plan.limits[name], self.remaining() - reserve))

    def run(self, name: str, cmd: list[str], later: list[str]) -> dict:
        timeout = self.limit(name, later)
        log = self.out / f"{name}.log"
        env = {
            **os.environ,
            **self.plan.env,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        t0 = time.monotonic()
        print(f"[gpu_check] {name}: {' '.join(cmd)} (limit {timeout:.0f} s)", flush=True)
        with open(log, "w") as f:
            # Own session: a timeout kills the part's whole process group (DataLoader and compile workers too).
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.active = (name, proc, t0)
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc, timed_out = proc.wait(), True
            finally:
                self.active = None
        part = {"rc": rc, "timed_out": timed_out, "seconds": round(time.monotonic() - t0, 1), "log": log.name}
        self.parts[name] = part
        self.save()
        state = "TIMED OUT" if timed_out else ("ok" if rc == 0 else f"FAILED (rc {rc})")
        print(f"[gpu_check] {name}: {state} in {part['seconds']} s; log {log}", flush=True)
        if rc != 0:
            print(_tail(log), flush=True)
        return part

    def stop(self, signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT (the caller's own time limit): kill the running part's process group (it
        has its own session, so the signal did not reach it), record it, print the summary, exit."""
        if self.active is not None:
            name, proc, t0 = self.active
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.parts[name] = {
                "rc": proc.returncode,
                "timed_out": True,
                "seconds": round(time.monotonic() - t0, 1),
                "log": f"{name}.log",
            }
        self.save()
        print(self.summary(), flush=True)
        sys.exit(128 + signum)

    def save(self) -> None:
        self.status_path.write_text(json.dumps({"parts": self.parts, "smoke": self.smoke}, indent=2))
        (self.out / "summary.md").write_text(self.summary())

    # -- parts --------------------------------------------------------------------------------
    def sets(self) -> list[str]:
        data = self.data if self.data is not None else "null"
        return [f"data.data={data}", f"data.cache_dir={self.out / 'data_cache'}", *self.plan.shape]

    def prepare(self) -> None:
        code = (
            "import sys; from gptmini.cli import make_cli; "
            "cli = make_cli(args=sys.argv[1:], run=False); cli.datamodule.prepare_data()"
        )
        cmd = [sys.executable, "-c", code, *self.fit_args(prepare_only=True)]
        self.run("prepare", cmd, later=["bench", "gpu_tests", "fit"])

    def bench(self) -> None:
        cmd = [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--config",
            str(REPO / "configs" / "10m.yaml"),
            f"--accelerator={self.plan.accelerator}",
            f"--json={self.out / 'bench.json'}",
            *self.plan.bench,
            *(f"--set={kv}" for kv in self.sets()),
            *(f"--variant={v}" for v in VARIANTS),
        ]
        self.run("bench", cmd, later=["gpu_tests", "fit"])

    def gpu_tests(self) -> None:
        files = sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "tests").glob("test_*.py")
            if "mark.gpu" in p.read_text()
        )
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
               f"--junitxml={self.out / 'gpu_tests.xml'}", *files]  # fmt: skip
        self.run("gpu_tests", cmd, later=["fit"])

    def fit_args(self, prepare_only: bool = False) -> list[str]:
        args = [
            "--config",
            str(REPO / "configs" / "10m.yaml"),
            f"--trainer.accelerator={self.plan.accelerator}",
            f"--trainer.max_steps={self.plan.fit_steps}",
            f"--trainer.logger.init_args.save_dir={self.out / 'runs'}",
            "--trainer.logger.init_args.name=gpu_check",
            f"--trainer.default_root_dir={self.out}",
            *(f"--{kv}" for kv in self.sets()),
        ]
        return args if prepare_only else ["fit", *args, *(f"--{kv}" for kv in self.plan.fit)]

    def fit(self) -> None:
        part = self.run("fit", [sys.executable, "-m", "gptmini.cli", *self.fit_args()], later=[])
        run_dir = self.fit_run_dir()
        if run_dir is None:
            return
        part["run_dir"] = str(run_dir.relative_to(self.out))
        try:
            from gptmini.tools.curves import plot_run

            plot_run(run_dir, self.out / "fit.png", title=f"gpu_check fit ({self.device_name()})")
            part["png"] = "fit.png"
        except Exception as e:  # evidence first: a failed plot must not lose the summary
            part["png_error"] = f"{type(e).__name__}: {e}"
        self.save()

    def fit_run_dir(self) -> Path | None:
        runs = sorted((self.out / "runs" / "gpu_check").glob("version_*"), key=lambda p: p.stat().st_mtime)
        runs = [r for r in runs if any(r.glob("events.out.tfevents.*"))]
        return runs[-1] if runs else None

    # -- summary ------------------------------------------------------------------------------
    def device_name(self) -> str:
        """From the bench's JSON or nvidia-smi: this process never initialises CUDA itself (a context
        here would hold GPU memory while the parts run)."""
        if self.plan.accelerator != "cuda":
            return f"cpu ({platform.processor() or platform.machine()})"
        bench = self.out / "bench.json"
        if bench.is_file():
            for v in json.loads(bench.read_text())["variants"].values():
                return v["device"]
        try:
            res = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if res.returncode == 0 and res.stdout.strip():
                return res.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "cuda (name unknown)"

    def summary(self) -> str:
        import lightning
        import torch

        mode = "CPU SMOKE (toy sizes: no verdicts)" if self.smoke else "CUDA"
        lines = [
            f"## gptmini GPU check — {mode}",
            "",
            f"- device: {self.device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"lightning {lightning.__version__}; python {platform.python_version()}",
            f"- corpus: {self.data or 'the embedded Shakespeare (no pd_english.txt.gz found; give --data)'}",
            f"- elapsed: {time.monotonic() - self.start:.0f} s of a {self.plan.budget} s budget",
            "",
            "| part | status | seconds |",
            "|---|---|---|",
        ]
        for name, p in self.parts.items():
            state = "timed out" if p["timed_out"] else ("ok" if p["rc"] == 0 else f"failed (rc {p['rc']})")
            lines.append(f"| {name} | {state} | {p['seconds']} |")
        lines += ["", *self.bench_lines(), "", *self.test_lines(), "", *self.fit_lines()]
        return "\n".join(lines) + "\n"

    def verdict(self, ok: bool) -> str:
        return "—" if self.smoke else ("PASS" if ok else "FAIL")

    def bench_lines(self) -> list[str]:
        path = self.out / "bench.json"
        if not path.is_file():
            return ["bench: no results (see bench.log)."]
        data = json.loads(path.read_text())
        variants = data["variants"]
        lines = [
            f"### Speed (scripts/bench.py{'' if data.get('complete') else ', PARTIAL: rounds cut short'})",
            "",
            "| figure | value | target | verdict |",
            "|---|---|---|---|",
        ]
        d = variants.get("default")
        if d and {"lightning", "plain"} <= d["paths"].keys():
            lt, pl_ = d["paths"]["lightning"], d["paths"]["plain"]
            sh = d["shape"]
            shape = (
                f"d{sh['n_embd']} L{sh['n_layer']} B{sh['batch_size']} T{sh['block_size']} {d['precision']}"
            )
            tps, ratio = lt["tokens_per_sec"], d["ratio_tokens_per_sec"]
            lines.append(
                f"| Lightning tokens/s ({shape}) | {tps / 1e6:.3f}M | >= {TARGET_TOKENS_PER_SEC / 1e6:.1f}M "
                f"| {self.verdict(tps >= TARGET_TOKENS_PER_SEC)} |"
            )
            lines.append(
                f"| Lightning / plain tokens/s (same run) | {ratio:.3f} | >= {TARGET_RATIO:.1f} "
                f"| {self.verdict(ratio >= TARGET_RATIO)} |"
            )
            m_l, m_p = lt.get("peak_mem_mb"), pl_.get("peak_mem_mb")
            if m_l and m_p:
                lines.append(
                    f"| peak memory Lightning / plain | {m_l:.0f} / {m_p:.0f} MiB ({m_l / m_p:.3f}) "
                    f"| <= {1 + TARGET_MEM_SLACK:.2f} | {self.verdict(m_l <= m_p * (1 + TARGET_MEM_SLACK))} |"
                )
            else:
                lines.append("| peak memory Lightning / plain | not measured | <= 1.10 | — |")
        lines += [
            "",
            "| variant | settings | Lightning tokens/s | plain tokens/s | ratio | Lightning host ms/step | MFU (datasheet) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            p = v["paths"]
            lt, pl_ = p.get("lightning"), p.get("plain")
            mfu = lt.get("mfu_vs_datasheet") if lt else None
            lines.append(
                f"| {name} | {', '.join(v['variant_settings']) or 'as configured'} "
                f"| {_fmt(lt and lt['tokens_per_sec'])} | {_fmt(pl_ and pl_['tokens_per_sec'])} "
                f"| {v.get('ratio_tokens_per_sec', float('nan')):.3f} | {_fmt(lt and lt['cpu_ms_per_step'], '.2f')} "
                f"| {'-' if mfu is None else f'{100 * mfu:.1f}%'} |"
            )
        return lines

    def test_lines(self) -> list[str]:
        path = self.out / "gpu_tests.xml"
        if not path.is_file():
            return ["### GPU tests", "", "no results (see gpu_tests.log)."]
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
        ok = n["failures"] == 0 and n["errors"] == 0 and (passed > 0 or self.smoke)
        return [
            "### GPU tests (pytest -m gpu)",
            "",
            f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped "
            f"— {self.verdict(ok)}",
        ]

    def fit_lines(self) -> list[str]:
        run_dir = self.fit_run_dir()
        if run_dir is None:
            return ["### Fit", "", "no event file (see fit.log)."]
        from gptmini.tools.curves import read_scalars

        s = read_scalars(run_dir)
        loss, tps = s.get("train/loss"), s.get("throughput/tokens_per_sec")
        lines = ["### Fit (gptmini.cli fit, configs/10m.yaml)", "", f"- run folder: {run_dir}"]
        if loss:
            lines.append(
                f"- train/loss: {loss[1][0]:.3f} at step {loss[0][0]} -> {loss[1][-1]:.3f} at step {loss[0][-1]}"
            )
        if "val/loss" in s:
            lines.append(f"- val/loss: {s['val/loss'][1][-1]:.3f} at step {s['val/loss'][0][-1]}")
        if tps:
            steady = sorted(tps[1][1:] or tps[1])
            lines.append(
                f"- throughput/tokens_per_sec (ThroughputLogger): median {steady[len(steady) // 2] / 1e6:.3f}M "
                f"over {len(tps[1])} log points"
            )
        if "throughput/mfu" in s:
            lines.append(f"- throughput/mfu: last {100 * s['throughput/mfu'][1][-1]:.1f}%")
        if (self.out / "fit.png").is_file():
            lines.append("- curves: fit.png")
        return lines


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _tail(path: Path, n: int = 25) -> str:
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join("    " + ln for ln in lines[-n:])


def find_data(given: str | None, smoke: bool, out: Path) -> Path | None:
    """--data, else the toy slice (smoke), else pd_english.txt.gz where the checkout's shared/ data
    lies, else None: the embedded corpus (the summary says so; speed figures do not depend on it)."""
    if given:
        return Path(given).resolve()
    if smoke:  # a small slice of the embedded corpus: tokenizer and encoding in about a second
        import gzip

        from gptmini.core.sources import default_corpus

        path = out / "smoke_corpus.txt"
        with gzip.open(default_corpus(), "rt", encoding="utf-8") as f:
            path.write_text(f.read(120_000), encoding="utf-8")
        return path
    for cand in DATA_CANDIDATES:
        if cand.is_file():
            return cand.resolve()
    print(f"[gpu_check] no corpus at {' or '.join(map(str, DATA_CANDIDATES))}: using the embedded one.")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (created; results are written as each part finishes)")
    p.add_argument("--cpu-smoke", action="store_true", help="CPU, toy sizes: proves the path, no verdicts")
    p.add_argument(
        "--data", help="corpus for the bench and the fit (default: ../shared/data/pd_english.txt.gz)"
    )
    p.add_argument("--parts", default="prepare,bench,gpu_tests,fit", help="comma-separated subset, in order")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_for(args.cpu_smoke)
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device visible; use --cpu-smoke to check the path on CPU.")
    check = Check(out, plan, find_data(args.data, args.cpu_smoke, out), args.cpu_smoke)
    signal.signal(signal.SIGTERM, check.stop)
    signal.signal(signal.SIGINT, check.stop)
    for part in args.parts.split(","):
        getattr(check, part)()
    check.save()
    print(check.summary(), flush=True)  # the last thing printed
    failed = [n for n, p in check.parts.items() if p["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
