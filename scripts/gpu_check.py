"""One prepared, unattended GPU check (issues 13, 22): speed against the targets, the levers, a real fit,
generation, evaluation, the host-time profile and the GPU tests, in one call.

    python scripts/gpu_check.py OUT --data CORPUS --bundle DIR   # CUDA: <= 9.6 minutes on one H200
    python scripts/gpu_check.py OUT --cpu-smoke                   # the same code path on CPU at toy sizes

Parts, in order, each a subprocess with its own time limit (a hung part is killed and the next one
runs); each leaves its files in OUT as it finishes, and ``OUT/summary.md`` is rewritten after every
part, so a timeout or a kill still leaves the evidence gathered so far:

1. ``prepare``: tokenizer + token cache of the corpus (``--data``, default ``../shared/data/pd_english.txt.gz``)
   in ``OUT/data_cache``, shared by the next parts.
2. ``bench``: ``scripts/bench.py`` on the 10m shape (configs/10m.yaml: B32 T512 bf16), Lightning vs
   the plain loop alternating, 2 rounds: ``default`` (as configured: the captured step) and
   ``nocapture`` (``model.capture=false``, the path issue 22 measured). ``OUT/bench.json``.
3. ``fit``: ``gptmini.cli fit --config configs/10m.yaml`` for a few hundred steps on the corpus, with
   the configs' callbacks (step-0 checks, ThroughputLogger, samples); its run folder under ``OUT/runs``
   and ``OUT/fit.png`` (loss, lr, grad norm, tokens/s, drawn from the event file).
4. ``generate``: ``scripts/bench_generate.py`` on the fit's checkpoint, batch 1, 512 new tokens: the
   KV cache on the captured decode step (the default), compiled then captured, the eager cached
   forward and no cache. ``OUT/generate.json``.
5. ``eval``: ``gptmini eval``'s function on the fit's checkpoint and validation tokens, timed after a
   warm-up call. ``OUT/eval.json``.
6. ``profile``: ``scripts/profile_step.py --config-shape`` at the 10m shape: where the host's time per
   step goes, by component, Lightning vs plain. ``OUT/profile.json``.
7. ``levers``: the bench, Lightning path only, one round, one variant per lever against ``default``:
   CUDA graphs by compile (reduce-overhead), the chunked linear + cross-entropy head, each SDPA
   backend, ``max-autotune-no-cudagraphs`` (last: its autotuning is the slowest compile); a lever
   the device refuses is listed as failed and the others still run. ``OUT/levers.json``.
8. ``gpu_tests``: the ``gpu``-marked tests (resume exactness on CUDA, cached = uncached generation, the
   captured step, ...); ``gpu_tests.xml`` (JUnit), ``gpu_tests.log`` (-v: outcomes even if cut).
9. summary: device, versions, each figure against its target; printed last.

``--bundle DIR`` also leaves at most 8 files in DIR (what a device machine may send back):
summary.md, status.json, bench.json, levers.json, fit.png and evidence.tar.gz (every log, JSON
and XML, the fit's event file and config; no checkpoints, no token cache), rewritten after each part.

Only torch, Lightning, TensorBoard, tokenizers and safetensors need be installed with it (jsonargparse
& co. as wheels); gptmini itself is imported from this checkout (no install). ``--cpu-smoke`` shrinks
every size and gives no verdicts (toy CPU figures say nothing about the targets);
``tests/scripts/test_gpu_check.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# gptmini from this checkout, installed or not (the summary reads event files with gptmini.tools).
sys.path.insert(0, str(REPO))
TARGET_TOKENS_PER_SEC = 2.6e6  # issue 22: ahead of nanoGPT's best raw loop (2.51M) on the same H200
GOAL_TOKENS_PER_SEC = 4.0e6  # the project's headline (about 50% MFU), docs/performance.md
TARGET_RATIO = 0.97
TARGET_MEM_SLACK = 0.10
TARGET_GENERATE = 2000.0  # new tokens/s, 10m, batch 1, KV cache
# Most wanted first: a part past the budget is cut, and each part keeps a reserve (Plan.reserves).
PARTS = ["prepare", "bench", "fit", "generate", "eval", "profile", "levers", "gpu_tests"]
BUNDLE_FILES = ["summary.md", "status.json", "bench.json", "levers.json", "fit.png"]
DATA_CANDIDATES = [
    REPO.parent / "shared" / "data" / "pd_english.txt.gz",
    REPO / "shared" / "data" / "pd_english.txt.gz",
]
VARIANTS = [
    "default",  # as shipped: the captured step where it applies (model.capture), compiled
    "nocapture:model.capture=false",  # issue 22's "before" path: compiled, step not captured
]


@dataclass
class Plan:
    """What each part runs, by mode: the same commands, different sizes and limits."""

    accelerator: str
    shape: list[str]  # CLI overrides (KEY=VALUE, no leading --) shared by bench and fit
    bench: list[str]  # bench.py timing arguments
    fit_steps: int
    fit: list[str]  # extra fit overrides
    levers: list[str]  # bench.py --variant values for the levers part
    generate: list[str]  # bench_generate.py arguments
    eval_tokens: int  # tokens scored by the timed eval call
    profile: list[str]  # profile_step.py's own arguments
    limits: dict[str, float]  # most seconds per part (bench: whatever the later parts' reserves leave)
    reserves: dict[str, float]  # seconds kept back for each part while the parts before it run
    budget: int  # seconds for everything
    env: dict[str, str] = field(default_factory=dict)


def plan_for(smoke: bool) -> Plan:
    """The CPU smoke's toy plan, or the CUDA plan (the 10m shape, issue 22's figures)."""
    return _smoke_plan() if smoke else _cuda_plan()


def _cuda_plan() -> Plan:
    """One H200, <= 575 s: the 10m shape as configured, every lever."""
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
        levers=[
            "default",
            "cudagraphs:model.compile_mode=reduce-overhead",  # issue 22's 1.90M row
            "chunked_ce:model.kernels.loss_chunk_tokens=4096",
            "sdpa_flash:model.kernels.attention=flash",
            "sdpa_efficient:model.kernels.attention=efficient",
            "sdpa_cudnn:model.kernels.attention=cudnn",
            "autotune:model.compile_mode=max-autotune-no-cudagraphs",
        ],
        generate=["--device=cuda", "--new-tokens", "512", "--repeats=3", "--decode", "dynamic", "compiled-graph"],
        eval_tokens=2_000_000,
        profile=["--rounds=1", "--warmup=15", "--steps=60", "--interval=0.0002"],
        limits={
            "prepare": 90, "bench": float("inf"), "fit": 150, "generate": 90,
            "eval": 45, "profile": 70, "levers": 160, "gpu_tests": 220,
        },
        reserves={
            "prepare": 20, "bench": 100, "fit": 100, "generate": 40,
            "eval": 20, "profile": 40, "levers": 90, "gpu_tests": 100,
        },
        budget=575,  # the device call's limit is 600 s: pip install and the summary fit in the rest
    )


def _smoke_plan() -> Plan:
    """CPU at toy sizes: the same commands, sizes that finish in seconds."""
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
        bench=["--rounds=1", "--warmup=2", "--steps=4", "--window=2", "--no-mem", "--threads=1", "--ceiling-seconds=0.05"],
        fit_steps=12,
        fit=[
            "trainer.log_every_n_steps=3",
            "trainer.val_check_interval=12",
            "trainer.limit_val_batches=2",
            "trainer.num_sanity_val_steps=0",
            "model.schedule.warmup_steps=3",
        ],
        levers=[
            "default",
            "chunked_ce:model.kernels.loss_chunk_tokens=64",  # proves model.kernels.* through the CLI
            "sdpa_efficient:model.kernels.attention=efficient",  # CUDA-only: a refused lever loses only itself
        ],
        generate=["--device=cpu", "--new-tokens", "16", "--repeats=1", "--decode", "static"],
        eval_tokens=2048,
        profile=["--rounds=1", "--warmup=2", "--steps=4", "--interval=0.001"],
        # Generous: on a shared 2-core machine each part's wall time is mostly other people's load.
        limits={
            "prepare": 60, "bench": float("inf"), "levers": 120, "fit": 120,
            "generate": 60, "eval": 60, "profile": 90, "gpu_tests": 90,
        },
        reserves={
            "prepare": 10, "bench": 40, "levers": 40, "fit": 40,
            "generate": 20, "eval": 20, "profile": 30, "gpu_tests": 30,
        },
        budget=600,
        env={"OMP_NUM_THREADS": "1"},
    )


class Check:
    """Runs the parts as subprocesses with time limits; records status.json, summary.md and the bundle."""

    def __init__(
        self, out: Path, plan: Plan, data: Path | None, smoke: bool, bundle: Path | None = None
    ) -> None:
        self.out, self.plan, self.data, self.smoke, self.bundle_dir = out, plan, data, smoke, bundle
        self.order = list(PARTS)  # the parts this call runs (main sets it from --parts)
        self.start = time.monotonic()
        self.parts: dict[str, dict] = {}
        self.active: tuple[str, subprocess.Popen, float] | None = None  # the part running now
        self.status_path = out / "status.json"
        # Shares self.parts (mutated in place, never rebound): the summary sees each part as it lands.
        self.summary = Summary(out, plan, data, smoke, self.parts, self.start)

    # -- running ------------------------------------------------------------------------------
    def remaining(self) -> float:
        """Seconds left of the plan's budget."""
        return self.plan.budget - (time.monotonic() - self.start)

    def limit(self, name: str, later: list[str]) -> float:
        """This part's limit: its own, and never eating the time reserved for the parts after it."""
        reserve = sum(self.plan.reserves[p] for p in later)
        return max(1.0, min(self.plan.limits[name], self.remaining() - reserve))

    def later(self, name: str) -> list[str]:
        """The parts this call runs after `name`."""
        return self.order[self.order.index(name) + 1 :] if name in self.order else []

    def run(self, name: str, cmd: list[str], later: list[str] | None = None) -> dict:
        """Run one part in its own session under its limit, record it, save; its status dict."""
        timeout = self.limit(name, self.later(name) if later is None else later)
        log = self.out / f"{name}.log"
        env = {
            **os.environ,
            **self.plan.env,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        t0 = time.monotonic()
        cpu0 = _children_cpu()
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
        part = {
            "rc": rc,
            "timed_out": timed_out,
            "seconds": round(time.monotonic() - t0, 1),
            "cpu_seconds": round(_children_cpu() - cpu0, 1),  # host CPU of the part's processes
            "log": log.name,
        }
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
        print(self.summary.text(), flush=True)
        sys.exit(128 + signum)

    def save(self) -> None:
        """Rewrite status.json and summary.md, and the bundle if asked for."""
        self.status_path.write_text(json.dumps({"parts": self.parts, "smoke": self.smoke}, indent=2))
        (self.out / "summary.md").write_text(self.summary.text())
        if self.bundle_dir is not None:
            self.bundle()

    def bundle(self) -> None:
        """At most 8 files in the bundle folder: the headline files and one tarball of the rest."""
        self.bundle_dir.mkdir(parents=True, exist_ok=True)
        for name in BUNDLE_FILES:
            if (self.out / name).is_file():
                (self.bundle_dir / name).write_bytes((self.out / name).read_bytes())
        tmp = self.bundle_dir / "evidence.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(self.out.rglob("*")):
                rel = path.relative_to(self.out)
                if not path.is_file() or rel.parts[0] == "data_cache" or path.suffix == ".ckpt":
                    continue
                if self.bundle_dir in path.parents or path.name.startswith("smoke_corpus"):
                    continue
                tar.add(path, arcname=str(rel))
        tmp.replace(self.bundle_dir / "evidence.tar.gz")

    def skip(self, name: str, why: str) -> None:
        """Record a part that could not start (rc 1, with the reason) and save."""
        self.parts[name] = {"rc": 1, "timed_out": False, "seconds": 0.0, "log": None, "skipped": why}
        print(f"[gpu_check] {name}: skipped ({why})", flush=True)
        self.save()

    # -- parts --------------------------------------------------------------------------------
    def sets(self) -> list[str]:
        """KEY=VALUE overrides every part shares: the corpus, the token cache, the plan's shape."""
        data = self.data if self.data is not None else "null"
        return [f"data.data={data}", f"data.cache_dir={self.out / 'data_cache'}", *self.plan.shape]

    def prepare(self) -> None:
        """Tokenizer and token cache of the corpus, through the CLI's own datamodule."""
        code = (
            "import sys; from gptmini.cli import make_cli; "
            "cli = make_cli(args=sys.argv[1:], run=False); cli.datamodule.prepare_data()"
        )
        cmd = [sys.executable, "-c", code, *self.fit_args(prepare_only=True)]
        self.run("prepare", cmd)

    def bench_cmd(self, json_name: str, variants: list[str], extra: list[str]) -> list[str]:
        """scripts/bench.py's command line on the 10m config for these variants."""
        return [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--config",
            str(REPO / "configs" / "10m.yaml"),
            f"--accelerator={self.plan.accelerator}",
            f"--json={self.out / json_name}",
            *self.plan.bench,
            *extra,
            *(f"--set={kv}" for kv in self.sets()),
            *(f"--variant={v}" for v in variants),
        ]

    def bench(self) -> None:
        """Lightning vs the plain loop, alternating: the default and nocapture variants."""
        self.run("bench", self.bench_cmd("bench.json", VARIANTS, []))

    def levers(self) -> None:
        """Each GPU-side lever against default, Lightning path only (the lever acts on both paths)."""
        self.run("levers", self.bench_cmd("levers.json", self.plan.levers, ["--paths=lightning", "--rounds=1"]))

    def gpu_tests(self) -> None:
        """The gpu-marked tests, -v into the log and JUnit into gpu_tests.xml."""
        files = sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "tests").rglob("test_*.py")
            if "mark.gpu" in p.read_text()
        )
        # -v: each test's outcome is in the log as it ends, in case a kill leaves no JUnit file.
        # -o addopts: not the suite's `-n 2` workers (one GPU; pytest-xdist may be absent there).
        cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=-ra", "-m", "gpu",
               f"--junitxml={self.out / 'gpu_tests.xml'}", *files]  # fmt: skip
        self.run("gpu_tests", cmd)

    def fit_args(self, prepare_only: bool = False) -> list[str]:
        """gptmini.cli's arguments for the fit (or, prepare_only, for building its datamodule)."""
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
        """gptmini.cli fit on the corpus, then fit.png drawn from its event file."""
        part = self.run("fit", [sys.executable, "-m", "gptmini.cli", *self.fit_args()])
        run_dir = fit_run_dir(self.out)
        if run_dir is None:
            return
        part["run_dir"] = str(run_dir.relative_to(self.out))
        try:
            from gptmini.tools.curves import plot_run

            plot_run(run_dir, self.out / "fit.png", title=f"gpu_check fit ({self.summary.device_name()})")
            part["png"] = "fit.png"
        except Exception as e:  # evidence first: a failed plot must not lose the summary
            part["png_error"] = f"{type(e).__name__}: {e}"
        self.save()

    def checkpoint(self) -> Path | None:
        """The fit's last.ckpt, if it wrote one."""
        run_dir = fit_run_dir(self.out)
        ckpt = run_dir / "checkpoints" / "last.ckpt" if run_dir else None
        return ckpt if ckpt is not None and ckpt.is_file() else None

    def generate(self) -> None:
        """bench_generate.py on the fit's model (10m shape), batch 1: cached (captured), eager, none."""
        ckpt = self.checkpoint()
        if ckpt is None:
            return self.skip("generate", "no checkpoint from the fit")
        cmd = [sys.executable, str(REPO / "scripts" / "bench_generate.py"), f"--checkpoint={ckpt}",
               f"--json={self.out / 'generate.json'}", *self.plan.generate]  # fmt: skip
        self.run("generate", cmd)

    def eval(self) -> None:
        """``gptmini eval``'s own function on the fit's checkpoint and validation tokens, timed after a
        warm-up call (CUDA context, kernels): tokens/s of the scoring, model loading included."""
        ckpt = self.checkpoint()
        val = sorted((self.out / "data_cache").glob("*/val.bin"))
        if ckpt is None or not val:
            return self.skip("eval", "no checkpoint from the fit" if ckpt is None else "no val.bin in data_cache")
        code = (
            "import json, sys, time, torch; from gptmini.commands.eval import evaluate; "
            "ckpt, data, out, n = sys.argv[1:5]; "
            "evaluate(ckpt, data=data, max_tokens=1024, progress=False); "
            "torch.cuda.synchronize() if torch.cuda.is_available() else None; "
            "t0 = time.perf_counter(); "
            "r = evaluate(ckpt, data=data, max_tokens=int(n), progress=False); "
            "torch.cuda.synchronize() if torch.cuda.is_available() else None; "
            "r['seconds'] = time.perf_counter() - t0; r['tokens_per_sec'] = r['tokens'] / r['seconds']; "
            "open(out, 'w').write(json.dumps(r, indent=2)); print(json.dumps(r))"
        )
        cmd = [sys.executable, "-c", code, str(ckpt), str(val[0]), str(self.out / "eval.json"),
               str(self.plan.eval_tokens)]  # fmt: skip
        self.run("eval", cmd)

    def profile(self) -> None:
        """Where the host's time per step goes at the 10m shape, by component (profile_step.py)."""
        cmd = [
            sys.executable,
            str(REPO / "scripts" / "profile_step.py"),
            "--config-shape",
            f"--json={self.out / 'profile.json'}",
            *self.plan.profile,
            "--",
            "--config",
            str(REPO / "configs" / "10m.yaml"),
            f"--accelerator={self.plan.accelerator}",
            *(["--threads=1"] if self.smoke else []),
            *(f"--set={kv}" for kv in self.sets()),
        ]
        self.run("profile", cmd)


class Summary:
    """Writes summary.md's Markdown from the files in the output folder and the parts' status."""

    def __init__(
        self, out: Path, plan: Plan, data: Path | None, smoke: bool, parts: dict[str, dict], start: float
    ) -> None:
        self.out, self.plan, self.data, self.smoke = out, plan, data, smoke
        self.parts = parts  # the running Check's own dict: read, never written here
        self.start = start  # time.monotonic() when the check started (the elapsed line)

    def text(self) -> str:
        """The whole summary: header, the parts' table, then one section per part's files."""
        lines = [*self.header_lines(), *self.part_lines()]
        for section in (
            self.bench_lines, self.lever_lines, self.fit_lines, self.generate_lines,
            self.eval_lines, self.profile_lines, self.test_lines,
        ):  # fmt: skip
            try:
                lines += ["", *section()]
            except Exception as e:  # evidence first: one unreadable file must not lose the summary
                lines += ["", f"{section.__name__}: could not read ({type(e).__name__}: {e})"]
        return "\n".join(lines) + "\n"

    def header_lines(self) -> list[str]:
        """Title (mode), device and versions, corpus, elapsed time against the budget."""
        mode = "CPU SMOKE (toy sizes: no verdicts)" if self.smoke else "CUDA"
        return [
            f"## gptmini GPU check — {mode}",
            "",
            f"- device: {self.device_name()}; {versions()}; python {platform.python_version()}",
            f"- corpus: {self.data or 'the embedded Shakespeare (no pd_english.txt.gz found; give --data)'}",
            f"- elapsed: {time.monotonic() - self.start:.0f} s of a {self.plan.budget} s budget",
            "",
        ]

    def part_lines(self) -> list[str]:
        """One table row per part run so far: status, wall seconds, host CPU seconds."""
        lines = ["| part | status | seconds | host CPU s |", "|---|---|---|---|"]
        for name, p in self.parts.items():
            state = "timed out" if p["timed_out"] else ("ok" if p["rc"] == 0 else f"failed (rc {p['rc']})")
            if p.get("skipped"):
                state = f"skipped ({p['skipped']})"
            lines.append(f"| {name} | {state} | {p['seconds']} | {p.get('cpu_seconds', '-')} |")
        return lines

    def device_name(self) -> str:
        """From the bench's JSON or nvidia-smi: this process never initialises CUDA itself (a context
        here would hold GPU memory while the parts run)."""
        if self.plan.accelerator != "cuda":
            return f"cpu ({platform.processor() or platform.machine()})"
        try:  # a bench killed mid-write leaves no device to read: nvidia-smi then
            for v in json.loads((self.out / "bench.json").read_text())["variants"].values():
                return v["device"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
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

    def verdict(self, ok: bool) -> str:
        """PASS/FAIL, or a dash in the CPU smoke (toy figures say nothing about the targets)."""
        return "—" if self.smoke else ("PASS" if ok else "FAIL")

    def bench_lines(self) -> list[str]:
        """The Speed section: the default variant against the targets, then every variant's row."""
        path = self.out / "bench.json"
        if not path.is_file():
            return ["bench: no results (see bench.log)."]
        data = json.loads(path.read_text())
        lines = [
            f"### Speed (scripts/bench.py{'' if data.get('complete') else ', PARTIAL: rounds cut short'})",
            "",
            "| figure | value | target | verdict |",
            "|---|---|---|---|",
        ]
        d = data["variants"].get("default")
        if d and {"lightning", "plain"} <= d["paths"].keys():
            lines += self.target_lines(d)
        return lines + self.variant_lines(data["variants"])

    def target_lines(self, d: dict) -> list[str]:
        """The default variant's rows: tokens/s, the goal, Lightning/plain, peak memory."""
        lt, pl_ = d["paths"]["lightning"], d["paths"]["plain"]
        sh = d["shape"]
        shape = f"d{sh['n_embd']} L{sh['n_layer']} B{sh['batch_size']} T{sh['block_size']} {d['precision']}"
        tps, ratio = lt["tokens_per_sec"], d["ratio_tokens_per_sec"]
        lines = [
            f"| Lightning tokens/s ({shape}) | {tps / 1e6:.3f}M | >= {TARGET_TOKENS_PER_SEC / 1e6:.1f}M "
            f"| {self.verdict(tps >= TARGET_TOKENS_PER_SEC)} |",
            f"| Lightning tokens/s against the project's goal | {tps / 1e6:.3f}M | {GOAL_TOKENS_PER_SEC / 1e6:.1f}M "
            f"| {'—' if self.smoke else f'{100 * tps / GOAL_TOKENS_PER_SEC:.0f}% of it'} |",
            f"| Lightning / plain tokens/s (same run) | {ratio:.3f} | >= {TARGET_RATIO:.2f} "
            f"| {self.verdict(ratio >= TARGET_RATIO)} |",
        ]
        m_l, m_p = lt.get("peak_mem_mb"), pl_.get("peak_mem_mb")
        if m_l and m_p:
            lines.append(
                f"| peak memory Lightning / plain | {m_l:.0f} / {m_p:.0f} MiB ({m_l / m_p:.3f}) "
                f"| <= {1 + TARGET_MEM_SLACK:.2f} | {self.verdict(m_l <= m_p * (1 + TARGET_MEM_SLACK))} |"
            )
        else:
            lines.append("| peak memory Lightning / plain | not measured | <= 1.10 | — |")
        return lines

    def variant_lines(self, variants: dict) -> list[str]:
        """One row per bench variant: both paths' tokens/s, their ratio, host ms/step, MFU."""
        lines = [
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

    def lever_lines(self) -> list[str]:
        """The levers section: each lever's Lightning tokens/s against default, and the refused ones."""
        path = self.out / "levers.json"
        if not path.is_file():
            return ["### Levers", "", "no results (see levers.log)."]
        data = json.loads(path.read_text())
        lines = [
            f"### GPU-side levers (Lightning path, one round{'' if data.get('complete') else ', PARTIAL'})",
            "",
            "| variant | settings | tokens/s | vs default | ms/step | host ms/step | peak mem |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, error in data.get("failed", {}).items():
            lines.append(f"| {name} | failed: {error[:200]} | - | - | - | - | - |")
        for name, v in data["variants"].items():
            lt = v["paths"].get("lightning")
            if lt is None:
                continue
            mem = lt.get("peak_mem_mb")
            lines.append(
                f"| {name} | {', '.join(v['variant_settings']) or 'as configured'} | {_fmt(lt['tokens_per_sec'])} "
                f"| {lt.get('speedup_vs_first_variant', 1.0):.3f}x | {lt['ms_per_step']:.2f} "
                f"| {lt['cpu_ms_per_step']:.2f} | {'-' if not mem else f'{mem:.0f} MiB'} |"
            )
        return lines

    def generate_lines(self) -> list[str]:
        """The Generate section: new tokens/s per decode path against the target."""
        path = self.out / "generate.json"
        if not path.is_file():
            return ["### Generate", "", "no results (see generate.log)."]
        lines = [
            "### Generate (the fit's model, batch 1: scripts/bench_generate.py)",
            "",
            "| new tokens | cached (default path) tokens/s | compiled + captured | eager cached forward | no cache "
            "| target | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in json.loads(path.read_text()):
            tps = r["cached_tok_s_wall"]
            lines.append(
                f"| {r['new_tokens']} | {tps:,.0f} ({r['cached_path']}) | {_fmt(r.get('compiled-graph_tok_s_wall'))} "
                f"| {_fmt(r.get('dynamic_tok_s_wall'))} "
                f"| {r['uncached_tok_s_wall']:,.0f} | >= {TARGET_GENERATE:,.0f} | {self.verdict(tps >= TARGET_GENERATE)} |"
            )
        return lines

    def eval_lines(self) -> list[str]:
        """The Eval section: tokens/s of the timed call, its loss and bpb."""
        path = self.out / "eval.json"
        if not path.is_file():
            return ["### Eval", "", "no results (see eval.log)."]
        r = json.loads(path.read_text())
        return [
            "### Eval (gptmini eval's function on the fit's checkpoint and validation tokens)",
            "",
            f"- {r['tokens']:,} tokens in {r['seconds']:.2f} s: **{r['tokens_per_sec']:,.0f} tokens/s**; "
            f"loss {r.get('loss', float('nan')):.4f}, bpb {_fmt(r.get('bpb'), '.4f')}",
        ]

    def profile_lines(self) -> list[str]:
        """The host-time table: ms/step per component, Lightning vs plain, shared ones last."""
        path = self.out / "profile.json"
        if not path.is_file():
            return ["### Host time per step", "", "no results (see profile.log)."]
        r = json.loads(path.read_text())
        lines = [
            f"### Host time per step by component (scripts/profile_step.py, {r.get('sampler')} sampler, "
            f"{r.get('device')}; wall ms/step on the host thread)",
            "",
            "| component | Lightning | plain |",
            "|---|---|---|",
        ]
        comps = r["components"]
        for c in sorted(comps, key=lambda c: (c.startswith("shared: "), -comps[c].get("lightning", 0.0))):
            lt, pl_ = comps[c].get("lightning", 0.0), comps[c].get("plain", 0.0)
            if max(lt, pl_) >= 0.005:
                lines.append(f"| {c} | {lt:.3f} | {pl_:.3f} |")
        own, total = r["own"], r["total"]
        lines.append(f"| **not shared (each path's own)** | {own['lightning']:.3f} | {own['plain']:.3f} |")
        lines.append(f"| **total** | {total['lightning']:.3f} | {total['plain']:.3f} |")
        return lines

    def test_outcomes(self) -> dict[str, str]:
        """test name -> passed/failed/error/skipped, from the JUnit file or else the -v log."""
        xml = self.out / "gpu_tests.xml"
        out: dict[str, str] = {}
        if xml.is_file():
            for case in ET.parse(xml).getroot().iter("testcase"):
                kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
                out[case.get("name")] = kinds[0] if kinds else "passed"
            return out
        log = self.out / "gpu_tests.log"
        if log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
                    if "::" in line and f" {word}" in line:
                        out[line.split("::")[-1].split(" ")[0]] = word.lower()
        return out

    def test_lines(self) -> list[str]:
        """The GPU tests section: counts and verdict, the resume test, each test's outcome."""
        outcomes = self.test_outcomes()
        if not outcomes:
            return ["### GPU tests", "", "no results (see gpu_tests.log)."]
        n = {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failure", "failed", "error", "skipped")}
        bad = n["failure"] + n["failed"] + n["error"]
        ok = bad == 0 and (n["passed"] > 0 or self.smoke)
        resume = [v for k, v in outcomes.items() if k.startswith("test_resume_on_cuda")]
        lines = [
            "### GPU tests (pytest -m gpu)",
            "",
            f"{n['passed']} passed, {bad} failed or errors, {n['skipped']} skipped — {self.verdict(ok)}"
            + ("" if (self.out / "gpu_tests.xml").is_file() else " (from the log: the run was cut short)"),
            f"- resume exactness on CUDA (tests/cross_cutting/test_gpu.py): {resume[0] if resume else 'not run'}",
            "",
        ]
        lines += [f"- {name}: {v}" for name, v in outcomes.items()]
        return lines

    def fit_lines(self) -> list[str]:
        """The Fit section, from the run's event file and fit.log: loss, checks, throughput, curves."""
        run_dir = fit_run_dir(self.out)
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
        lines += self.fit_check_lines()
        if tps:
            lines += self.fit_throughput_lines(tps[1])
        if "throughput/mfu" in s:
            lines.append(f"- throughput/mfu: last {100 * s['throughput/mfu'][1][-1]:.1f}%")
        if (self.out / "fit.png").is_file():
            lines.append("- curves: fit.png")
        return lines

    def fit_check_lines(self) -> list[str]:
        """The step-0 checks' tally from fit.log, with the first failures."""
        log = self.out / "fit.log"
        checks = [ln.strip() for ln in log.read_text(errors="replace").splitlines()] if log.is_file() else []
        # The Checklist's lines (gptmini.callbacks.checks_shared.MARKS) and a check's stop message.
        items = [ln for ln in checks if ln.startswith(("ok ", "FAIL ", "WARN "))]
        failed = [ln for ln in items if ln.startswith("FAIL ")] + [ln for ln in checks if "check failed" in ln]
        if not (items or failed):
            return []
        return [
            f"- step-0 checks: {len(items) - len(failed)} ok, {len(failed)} failed "
            f"— {self.verdict(not failed)}" + "".join(f"\n  - {ln}" for ln in failed[:3])
        ]

    def fit_throughput_lines(self, values: list[float]) -> list[str]:
        """ThroughputLogger's median tokens/s (first point dropped), and against the bench's default."""
        steady = sorted(values[1:] or values)
        median = steady[len(steady) // 2]
        lines = [
            f"- throughput/tokens_per_sec (ThroughputLogger): median {median / 1e6:.3f}M "
            f"over {len(values)} log points"
        ]
        bench = self.out / "bench.json"
        default = json.loads(bench.read_text())["variants"].get("default") if bench.is_file() else None
        if default and "lightning" in default["paths"]:
            ratio = median / default["paths"]["lightning"]["tokens_per_sec"]
            lines.append(
                f"- fit / bench (default, Lightning) tokens/s: {ratio:.3f} (target within 10%) "
                f"— {self.verdict(abs(ratio - 1) <= 0.10)}"
            )
        return lines


def fit_run_dir(out: Path) -> Path | None:
    """The fit's newest run folder under OUT/runs/gpu_check that has an event file."""
    runs = sorted((out / "runs" / "gpu_check").glob("version_*"), key=lambda p: p.stat().st_mtime)
    runs = [r for r in runs if any(r.glob("events.out.tfevents.*"))]
    return runs[-1] if runs else None

def versions() -> str:
    """torch's (with its CUDA) and Lightning's versions from their installed files, not by importing
    them: this driver runs no model, and the imports would cost it ~2.5 s of CPU."""
    import importlib.metadata
    import importlib.util
    import re

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    spec = importlib.util.find_spec("torch")
    torch_file = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    found = re.search(r"^cuda\b.*=\s*'([^']*)'", torch_file.read_text(), re.M) if torch_file and torch_file.is_file() else None
    return f"torch {version('torch')} (CUDA {found.group(1) if found else None}); lightning {version('lightning')}"


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    """A figure in `spec`, or a dash when missing."""
    return "-" if x is None else format(x, spec)


def _tail(path: Path, n: int = 25) -> str:
    """The last n lines of a log, indented (printed after a failed part)."""
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
    """Parse the command line, run the chosen parts in order, print the summary last; 1 if any failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (created; results are written as each part finishes)")
    p.add_argument("--cpu-smoke", action="store_true", help="CPU, toy sizes: proves the path, no verdicts")
    p.add_argument(
        "--data", help="corpus for the bench and the fit (default: ../shared/data/pd_english.txt.gz)"
    )
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset, in this order")
    p.add_argument(
        "--bundle",
        help="also keep at most 8 files here, rewritten after each part: summary.md, status.json, "
        "bench.json, levers.json, fit.png, evidence.tar.gz (logs, JSON, the fit's event file)",
    )
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        raise SystemExit(f"gpu_check: --parts {unknown} unknown; choose from {','.join(PARTS)}.")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_for(args.cpu_smoke)
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device visible; use --cpu-smoke to check the path on CPU.")
    bundle = Path(args.bundle).resolve() if args.bundle else None
    check = Check(out, plan, find_data(args.data, args.cpu_smoke, out), args.cpu_smoke, bundle)
    check.order = parts
    signal.signal(signal.SIGTERM, check.stop)
    signal.signal(signal.SIGINT, check.stop)
    for part in parts:
        getattr(check, part)()
    check.save()
    print(check.summary.text(), flush=True)  # the last thing printed
    failed = [n for n, p in check.parts.items() if p["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
