"""The hand-written optimizer steps, and the device defaults every gptmini training path shares.

:func:`guarded_step` is the step gptmini captures in a CUDA graph (``gptmini.core.captured``): zero
grads in place, forward, backward, one grad norm for the non-finite verdict and clipping
(``gptmini.core.guard``), the optimizer step; no host read anywhere. ``GPTMiniModule.optimizer_step``
runs it (captured on CUDA, see docs/performance.md), and so does
:func:`gptmini.core.plainloop.train_plain` (the baseline ``scripts/bench.py`` holds the Lightning
path to), so the comparison stays fair. :func:`train_step` is the variant with an fp16 grad scaler
that :class:`gptmini.callbacks.first_batch.OverfitCheck` trains with. :func:`compile_by_default` is
the one home of "compile on CUDA, not on CPU", :func:`use_tf32_matmuls` the one of "fp32 matmul
precision high on CUDA"; the fused
AdamW rule lives with the optimizer (:func:`gptmini.core.optim.use_fused`). Lightning-free on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from gptmini.core.guard import NonFiniteGuard

# Lightning precision names the plain loop reproduces (fp16 would need a GradScaler: not a GPTMini recipe).
PRECISIONS = ("32-true", "32", "bf16-mixed")


class NoGradientError(RuntimeError):
    """The loss does not depend on any trainable parameter, so a step cannot change the model."""


def autocast_for(
    precision: str, device: torch.device, cache_enabled: bool = True
) -> contextlib.AbstractContextManager:
    """The autocast context Lightning's precision plugin uses for ``precision`` on ``device``
    (``cache_enabled=False`` inside a CUDA graph: cached casts would outlive the capture)."""
    if str(precision) not in PRECISIONS:
        raise ValueError(
            f"precision {precision!r} is not supported by the plain loop; use one of {PRECISIONS}."
        )
    if str(precision) == "bf16-mixed":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def compile_by_default(setting: bool | None, device: torch.device | str) -> bool:
    """``model.compile``: an explicit setting wins; null = on for CUDA, off for CPU, where minutes of
    compilation outweigh a ~20% faster step on short runs (docs/performance.md)."""
    if setting is not None:
        return bool(setting)
    return torch.device(device).type == "cuda"


def use_tf32_matmuls(device: torch.device | str) -> bool:
    """fp32 matmul precision ``high`` (TF32 tensor cores, fp32 accumulation) when training on CUDA:
    fp32 matmuls (all of ``32-true``'s, any outside autocast under ``bf16-mixed``) run several times
    faster for a 10-bit mantissa on the products, as nanoGPT and litgpt set it. Not on CPU, where
    ``high`` may let oneDNN use bf16 and change results; a precision the user already set is kept.
    Called before the Trainer sets up its device (which otherwise prints its advice to set it);
    returns whether it changed the setting."""
    if torch.device(device).type != "cuda" or torch.get_float32_matmul_precision() != "highest":
        return False
    torch.set_float32_matmul_precision("high")
    return True


def train_step(
    loss_fn: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    *,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimizer step: forward under ``forward_context()``, backward (scaled when ``scaler``),
    unscale, clip the global grad norm to ``clip`` (None or 0: no clipping), step.

    Returns the loss, detached and still on the device (no host sync here). Raises
    :class:`NoGradientError` when the loss has no gradient path to the parameters.
    """
    with forward_context():
        loss = loss_fn()  # the caller drops the logits: 4 B x T x V bytes less held through backward
    if not loss.requires_grad:
        raise NoGradientError("the loss does not depend on any trainable parameter")
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip true gradients, not scaled ones
    if clip:
        nn.utils.clip_grad_norm_(params, float(clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


def guarded_step(
    loss_fn: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    guard: NonFiniteGuard,
    *,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    clip: float | None = None,
) -> torch.Tensor:
    """One optimizer step with no host read, so that a CUDA graph can hold it whole.

    Grads are zeroed in place (never set to None: a graph replays into the same tensors), the loss
    is computed under ``forward_context()`` and back-propagated, ``guard`` measures the global grad
    norm once and writes the non-finite verdict (fused AdamW then drops a bad update on the device),
    the grads are clipped to ``clip`` with that norm (None or 0: no clipping) and the optimizer steps.
    Returns the loss, detached, on the device. Raises :class:`NoGradientError` when the loss has no
    gradient path to the parameters.
    """
    optimizer.zero_grad(set_to_none=False)
    try:
        with forward_context():
            loss = loss_fn()
        if not loss.requires_grad:
            raise NoGradientError("the loss does not depend on any trainable parameter")
        loss.backward()
        guard.measure(loss)
        if clip:
            guard.clip(float(clip))
        optimizer.step()
    finally:
        guard.done()  # also after a failed capture: the next step measures anew
    return loss.detach()
