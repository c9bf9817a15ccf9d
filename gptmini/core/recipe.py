"""The recipe's reference numbers that more than one module needs: the config default and the check
that compares against it read the same constant. No Lightning.

The formulas live beside their configs (the lr curve: :func:`gptmini.core.schedule.lr_multiplier`);
these are the targets the step-0 checks and the messages quote.
"""

from __future__ import annotations

import math

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


# -- the one-batch overfit check's budget (gptmini.callbacks.first_batch.OverfitCheck) -----------------
# A healthy model memorises one batch in a number of steps that grows with the tokens in the batch
# (~tokens**0.3) and shrinks with the model (~params**-0.2); precision does not move it. Measured on
# CPU, fp32, to loss < 0.5 (docs/training.md): 10m width 37 steps on 1x512 tokens of pd_english, 44 on
# 2x512 (bf16 autocast: the same 37); tiny 47 on 4x128; exercises_cpu 78 on 4x64; on an H200, bf16,
# the 10m batch of 32x512 ~101. The old fixed 100 steps, sized on CPU batches of 512-1024 tokens,
# ran out at the GPU's 16k.
OVERFIT_THRESHOLD = 0.5
"""The check passes once the loss on its batch is below this (nats)."""
OVERFIT_BASE_STEPS = 90
"""Budget for a model of OVERFIT_REF_PARAMS or more on OVERFIT_REF_TOKENS or fewer tokens."""
OVERFIT_REF_TOKENS = 512
"""Batch size (tokens) up to which the budget does not grow."""
OVERFIT_TOKEN_EXPONENT = 0.3
"""The budget grows as (tokens / OVERFIT_REF_TOKENS) ** this."""
OVERFIT_REF_PARAMS = 10_000_000
"""Model size (parameters) from which the budget does not shrink."""
OVERFIT_PARAMS_EXPONENT = 0.2
"""Smaller models get (OVERFIT_REF_PARAMS / params) ** this times more steps."""


def overfit_budget(tokens: int, params: int) -> int:
    """Most optimizer steps the one-batch overfit check may take: ``tokens`` in its batch, a model of
    ``params`` trainable parameters. 2.1-3.1x what a healthy run needs, for every shipped preset.

    ``OVERFIT_BASE_STEPS * max(1, tokens / OVERFIT_REF_TOKENS) ** OVERFIT_TOKEN_EXPONENT
    * max(1, OVERFIT_REF_PARAMS / params) ** OVERFIT_PARAMS_EXPONENT``, rounded up: the 10m model gets
    90 steps up to 512 tokens, 111 at 1,024 and 255 on its GPU batch of 32 x 512; tiny (1.05M) 142 on
    its 4 x 128. Precision and vocabulary do not enter (bf16 autocast needs the same steps as fp32; the
    vocabulary counts in ``params``).
    """
    if tokens < 1 or params < 1:
        raise ValueError(f"tokens and params must be >= 1, got {tokens} and {params}")
    by_tokens = max(1.0, tokens / OVERFIT_REF_TOKENS) ** OVERFIT_TOKEN_EXPONENT
    by_size = max(1.0, OVERFIT_REF_PARAMS / params) ** OVERFIT_PARAMS_EXPONENT
    return math.ceil(OVERFIT_BASE_STEPS * by_tokens * by_size - 1e-9)
