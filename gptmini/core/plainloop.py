"""A plain PyTorch training loop for GPTMini: the yardstick gptmini's Lightning path is held to.

It does the same work as ``GPTMiniModule`` in a ``Trainer``: the same two-group AdamW
(:func:`gptmini.core.optim.build_adamw`), the same per-step LambdaLR (:func:`gptmini.core.schedule.build_scheduler`),
gradient clipping by norm, the same autocast for ``bf16-mixed``, and at most one host sync per step
(none, in fact: losses stay on the device until the caller reads them). ``scripts/bench.py`` times it
against the Lightning path and ``tests/test_plainloop.py`` checks that both train to the same losses.
Lightning-free on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from gptmini.core.model import GPTMini
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, build_scheduler

# Lightning precision names this loop reproduces (fp16 would need a GradScaler: not a GPTMini recipe).
PRECISIONS = ("32-true", "32", "bf16-mixed")


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context Lightning's precision plugin uses for ``precision`` on ``device``."""
    if str(precision) not in PRECISIONS:
        raise ValueError(
            f"precision {precision!r} is not supported by the plain loop; use one of {PRECISIONS}."
        )
    if str(precision) == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_plain(
    model: GPTMini,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optim: OptimConfig,
    schedule: ScheduleConfig,
    max_steps: int,
    *,
    precision: str = "32-true",
    gradient_clip_val: float | None = 1.0,
    fused: bool | None = None,
    device: torch.device | str | None = None,
    on_step_end: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Train ``model`` for ``max_steps`` optimizer steps over ``batches`` (cycled if shorter).

    Args:
        model: The model, already initialised (and compiled, if wanted); it is moved to ``device``.
        batches: (x, y) pairs of token ids, (B, T) each, e.g. ``GPTMiniData.train_dataloader()``.
        optim: AdamW settings; groups as :func:`gptmini.core.optim.param_groups`.
        schedule: Warmup + cosine, horizon ``max_steps``, stepped after every optimizer step.
        max_steps: Optimizer steps to take.
        precision: ``32-true`` or ``bf16-mixed`` (autocast), as Lightning names them.
        gradient_clip_val: Clip the global grad norm to this (None or 0: no clipping).
        fused: Fused AdamW; None follows ``optim.fused``, else on for CUDA.
        device: Where to train; default: where the model's parameters are.
        on_step_end: Called with the 0-based step index after each step (timing hooks).

    Returns:
        The training loss of every step, detached and still on the device (no host sync here).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    model.train()
    if fused is None:
        fused = optim.fused if optim.fused is not None else device.type == "cuda"
    optimizer = build_adamw(model, optim, fused=fused)
    scheduler = build_scheduler(optimizer, schedule, max_steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    non_blocking = device.type == "cuda"
    losses: list[torch.Tensor] = []
    for step, (x, y) in enumerate(_cycle(batches)):
        if step >= max_steps:
            break
        x = x.to(device, non_blocking=non_blocking)  # (B, T)
        y = y.to(device, non_blocking=non_blocking)  # (B, T)
        with autocast_for(precision, device):
            loss = model(x, y)[1]  # drop the logits now, as training_step does: 4 B x T x V
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if gradient_clip_val:
            nn.utils.clip_grad_norm_(params, gradient_clip_val)
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach().clone())  # clone: a CUDA-graph replay would overwrite it
        if on_step_end is not None:
            on_step_end(step)
    return losses


def _cycle(batches: Iterable) -> Iterator:
    """Epoch after epoch, re-iterating the loader like the Trainer, which also tells an epoch-seeded
    sampler (``set_epoch``) which epoch it is, so each pass shuffles anew."""
    epoch = 0
    while True:
        sampler = getattr(batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        epoch += 1
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yielded no batches; check data.batch_size and the corpus.")
