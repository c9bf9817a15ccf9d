"""The recipe's reference numbers that more than one module needs: the config default and the check
that compares against it read the same constant. No Lightning.

The formulas live beside their configs (the lr curve: :func:`gptmini.core.schedule.lr_multiplier`);
these are the targets the step-0 checks and the messages quote.
"""

from __future__ import annotations

# AdamW (beta1, beta2): OptimConfig's default, and what the `betas` check ticks.
BETAS = (0.9, 0.95)
# Warmup as a fraction of trainer.max_steps that the `no_warmup` check ticks (and messages advise).
WARMUP_FRACTION = (0.01, 0.05)
# With a warmup, step 0's lr must be below this fraction of the peak (lr curve and checklist).
START_TOLERANCE = 0.1


def warmup_advice(max_steps: int | None = None) -> str:
    """The one wording of "how long a warmup": ``set model.schedule.warmup_steps to 1%-5% of ...``."""
    lo, hi = WARMUP_FRACTION
    steps = f" ({max_steps})" if max_steps is not None else ""
    return f"set model.schedule.warmup_steps to {lo:.0%}-{hi:.0%} of trainer.max_steps{steps}"
