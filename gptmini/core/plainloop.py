"""A plain PyTorch training loop for GPTMini: the yardstick gptmini's Lightning path is held to.

It does the same work as ``GPTMiniModule`` in a ``Trainer``: the same two-group AdamW, fused as the
module decides (:func:`gptmini.core.optim.build_adamw`), the same per-step LambdaLR
(:func:`gptmini.core.schedule.build_scheduler`), and the same step
:func:`gptmini.core.step.guarded_step` (autocast for ``bf16-mixed``, one grad norm for clipping and
the non-finite guard), captured in a CUDA graph where the module's is (the same rule,
:func:`gptmini.core.captured.choose_step_path`). No host sync per step: losses stay on the device
until the caller reads them. ``scripts/bench.py`` times it
against the Lightning path; ``tests/core/test_plainloop.py`` checks that both train to the same losses.
Lightning-free on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from gptmini.core.captured import CapturedStep, capturable, choose_step_path, lr_tensors, lrs_on_device
from gptmini.core.guard import NonFiniteGuard
from gptmini.core.model import GPTMini
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, build_scheduler
from gptmini.core.step import autocast_for, guarded_step, use_tf32_matmuls
from gptmini.core.tokens import inputs_and_targets


def train_plain(
    model: GPTMini,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    optim: OptimConfig,
    schedule: ScheduleConfig,
    max_steps: int,
    *,
    precision: str = "32-true",
    gradient_clip_val: float | None = 1.0,
    device: torch.device | str | None = None,
    on_step_end: Callable[[int], None] | None = None,
    capture: bool | None = None,
    compile_mode: str | None = None,
) -> list[torch.Tensor]:
    """Train ``model`` for ``max_steps`` optimizer steps over ``batches`` (cycled if shorter).

    Args:
        model: The model, already initialised (and compiled, if wanted); it is moved to ``device``.
        batches: uint16 (B, T+1) windows (``GPTMiniData.train_dataloader()``) or (x, y) pairs of
            token ids, (B, T) each.
        optim: AdamW settings; groups as :func:`gptmini.core.optim.param_groups`.
        schedule: Warmup + cosine, horizon ``max_steps``, stepped after every optimizer step.
        max_steps: Optimizer steps to take.
        precision: ``32-true`` or ``bf16-mixed`` (autocast), as Lightning names them.
        gradient_clip_val: Clip the global grad norm to this (None or 0: no clipping).
        device: Where to train; default: where the model's parameters are.
        on_step_end: Called with the 0-based step index after each step (timing hooks).
        capture: ``model.capture``: null = replay the step from a CUDA graph where the module would.
        compile_mode: The model's torch.compile mode (one with its own CUDA graphs is not captured).

    Returns:
        The training loss of every step, detached and still on the device (no host sync here).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    model.train()
    autocast_for(precision, device)  # refuse an unsupported precision before the first batch
    use_tf32_matmuls(device)  # as the CLI sets it for the Lightning path
    optimizer = build_adamw(model, optim, device)
    scheduler = build_scheduler(optimizer, schedule, max_steps)
    fused = bool(optimizer.defaults.get("fused"))
    path = choose_step_path(capture, device=device, precision=precision, fused=fused, compile_mode=compile_mode)
    guard = NonFiniteGuard(optimizer)
    lrs = lr_tensors(optimizer)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        return guarded_step(
            lambda: model(x, y)[1],  # drop the logits now, as training_step does
            optimizer,
            guard,
            forward_context=lambda: autocast_for(precision, device, cache_enabled=not path.captured),
            clip=gradient_clip_val,
        )

    runner = CapturedStep(step, capture_context=lambda: capturable(optimizer)) if path.captured else None
    non_blocking = device.type == "cuda"
    losses: list[torch.Tensor] = []
    for i, batch in enumerate(_cycle(batches)):
        if i >= max_steps:
            break
        if torch.is_tensor(batch):  # one uint16 (B, T+1) window: copied, then split on the device
            x, y = inputs_and_targets(batch.to(device, non_blocking=non_blocking))  # (B, T) each
        else:
            x, y = (t.to(device, non_blocking=non_blocking) for t in batch)
        if runner is None:
            loss = step((x, y))
        else:
            runner.load_batch((x, y))
            with lrs_on_device(optimizer, lrs):
                loss = runner()
        scheduler.step()
        losses.append(loss.clone())  # clone: a CUDA-graph replay would overwrite it
        if on_step_end is not None:
            on_step_end(i)
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
