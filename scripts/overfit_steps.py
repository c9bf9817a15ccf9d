"""Steps the one-batch overfit check needs, against the budget the rule gives it, per shape and precision.

    python scripts/overfit_steps.py --data ../shared/data/pd_english.txt.gz --batch 32 --block 512 \\
        --precision bf16-mixed 32-true --accelerator cuda          # the 10m fit's check on a GPU
    python scripts/overfit_steps.py --batch 2 --block 512 --precision 32-true bf16-mixed   # CPU

Runs the real :class:`gptmini.callbacks.first_batch.OverfitCheck` (budget from
``gptmini.core.recipe.overfit_budget``) in a Lightning fit of the config's model and optimizer on the
first batch of ``--data``, once per precision, and prints one JSON line each: tokens, parameters,
budget, steps needed (first loss below the threshold), margin (budget / needed), seconds. The docs'
table of margins per preset (docs/training.md, "How long the overfit check trains") comes from it and
from the checklist line of the presets' own fits; the GPU row is the one it has not measured yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptmini.callbacks.first_batch import OverfitCheck  # noqa: E402
from gptmini.core.model import ModelConfig  # noqa: E402
from gptmini.core.optim import OptimConfig  # noqa: E402
from gptmini.core.schedule import ScheduleConfig  # noqa: E402
from gptmini.core.step import use_tf32_matmuls  # noqa: E402
from gptmini.train.datamodule import GPTMiniData  # noqa: E402
from gptmini.train.module import GPTMiniModule  # noqa: E402


def measure(args: argparse.Namespace, data: GPTMiniData, precision: str) -> dict:
    model = yaml.safe_load(args.config.read_text())["model"]
    arch = ModelConfig(**{**model["arch"], "vocab_size": data.vocab_size, "block_size": args.block})
    pl.seed_everything(args.seed, verbose=False)
    # warmup 1 and 2 steps: the check trains before step 0; the run itself is only its carrier.
    module = GPTMiniModule(arch=arch, optim=OptimConfig(**model["optim"]), schedule=ScheduleConfig(1))
    check = OverfitCheck(log_every=10**9)
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, precision=precision, max_steps=2, gradient_clip_val=1.0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[check],
    )  # fmt: skip
    use_tf32_matmuls(trainer.strategy.root_device)  # as a fit does: TF32 on CUDA only
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data)
        passed = True
    except RuntimeError:  # SanityCheckError: the budget ran out
        passed = False
    needed = next((k + 1 for k, v in enumerate(check.losses) if v < check.threshold), None)
    return {
        "precision": precision,
        "device": str(trainer.strategy.root_device),
        "tokens": args.batch * args.block,
        "shape": f"{args.batch}x{args.block}",
        "params": sum(p.numel() for p in module.parameters()),
        "budget": check.budget,
        "needed": needed,
        "margin": round(check.budget / needed, 2) if needed else None,
        "first_loss": round(check.losses[0], 4),
        "last_loss": round(check.losses[-1], 4),
        "passed": passed,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "10m.yaml", help="model and optim from it")
    p.add_argument("--data", default=None, help="corpus (data.data); default: the embedded one")
    p.add_argument("--vocab", type=int, default=None, help="BPE vocabulary (default: the config's)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--precision", nargs="+", default=["32-true"])
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--cache", default=None, help="token cache folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also append the lines to this file")
    args = p.parse_args(argv)
    vocab = args.vocab or yaml.safe_load(args.config.read_text())["data"]["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        data = GPTMiniData(
            data=args.data, cache_dir=args.cache or tmp, vocab_size=vocab, block_size=args.block,
            batch_size=args.batch,
        )  # fmt: skip
        data.prepare_data()
        for precision in args.precision:
            line = json.dumps(measure(args, data, precision))
            print(line, flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
