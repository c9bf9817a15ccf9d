"""Does shifting the training-window grid lower the final val loss? Multi-epoch runs, each data.window_offset.

    python scripts/compare_window_offset.py --steps 400 --seeds 1337 7 --out /tmp/window_offset

Runs ``gptmini.cli fit`` on the tiny config (reduced: 2 layers of width 64, no pre-training checks, no
checkpoints) once per (mode, seed), one after the other, and prints the final val/loss of each and
the mean per mode. The embedded corpus gives ~2,400 windows of 128 tokens, i.e. ~75 steps per epoch
at batch 32, so 400 steps is ~5 epochs: enough for a fixed grid to be seen again and again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from gptmini.tools.curves import read_scalars

REPO = Path(__file__).resolve().parent.parent
MODES = ["fixed", "random_per_epoch", "random"]


def run(out: Path, mode: str, seed: int, steps: int, layers: int, embd: int, data: str | None) -> float:
    root = out / f"{mode}-s{seed}"
    root.mkdir(parents=True, exist_ok=True)
    extra = root / "no_callbacks.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": []}}))
    args = [
        sys.executable,
        "-m",
        "gptmini.cli",
        "fit",
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--config",
        str(extra),
        f"--seed_everything={seed}",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps // 4}",
        "--trainer.limit_val_batches=1.0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        f"--model.arch.n_layer={layers}",
        f"--model.arch.n_embd={embd}",
        f"--data.cache_dir={out / 'data_cache'}",
        f"--data.window_offset={mode}",
    ]
    if data:
        args.append(f"--data.data={data}")
    subprocess.run(
        args, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    )
    (logdir,) = (root / "runs" / "tiny").glob("version_*")
    steps_vals = read_scalars(logdir)["val/loss"]
    return float(steps_vals[1][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--data", default=None, help="a smaller corpus: more epochs in the same steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--modes", nargs="+", default=MODES)
    p.add_argument("--out", type=Path, default=Path("/tmp/window_offset"))
    a = p.parse_args()
    results: dict[str, dict[int, float]] = {m: {} for m in a.modes}
    for seed in a.seeds:
        for mode in a.modes:
            results[mode][seed] = run(a.out, mode, seed, a.steps, a.layers, a.embd, a.data)
            print(f"{mode:>17} seed {seed}: final val/loss {results[mode][seed]:.4f}", flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    for mode, by_seed in results.items():
        vals = list(by_seed.values())
        print(f"{mode:>17}: mean final val/loss {sum(vals) / len(vals):.4f} over seeds {list(by_seed)}")


if __name__ == "__main__":
    main()
