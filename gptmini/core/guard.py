"""The non-finite guard's device state: one gradient norm per step, shared by clipping and the check.

:class:`NonFiniteGuard` computes the global gradient norm once per optimizer step; clipping
(:meth:`NonFiniteGuard.clip`) and the verdict "this step's loss or gradients are not finite" both use
it. The verdict lands in tensors allocated once and updated in place (a CUDA graph replays the same
addresses): ``found_inf``, which fused AdamW honours by leaving weights, moments and step count
alone, a running count of bad steps and the first bad step since the last read. Nothing here reads
a tensor on the host; ``gptmini.callbacks.fault_guard.FaultGuard`` reads the counters every
``check_every_n_steps`` and stops or warns. Lightning-free on purpose.
"""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteGuard:
    """Per-run device state of the guarded step for one optimizer (its parameter list built once)."""

    def __init__(self, optimizer: torch.optim.Optimizer, skipped: int = 0, step: int = 0) -> None:
        """Args:
        optimizer: Its parameters are listed once here; with ``fused`` AdamW a bad step is dropped
            on the device (``found_inf``), otherwise the caller must act on the verdict.
        skipped: Bad steps counted before (a resumed run's count).
        step: The optimizer step the next :meth:`measure` belongs to (0-based).
        """
        self.optimizer = optimizer
        self.params: list[nn.Parameter] = [p for g in optimizer.param_groups for p in g["params"]]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.skips_on_device = bool(optimizer.defaults.get("fused"))
        self.norm = torch.zeros((), dtype=torch.float32, device=device)  # this step's pre-clip norm
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)  # 1.0: drop this update
        self.bad_total = torch.full((), skipped, dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # since the last read
        self.step = torch.full((), step, dtype=torch.long, device=device)
        self._measured = False

    def reset_counts(self, skipped: int, step: int) -> None:
        """Start counting from a resumed run's ``skipped`` and ``step`` (in place: a graph may hold them)."""
        self.bad_total.fill_(skipped)
        self.first_bad.fill_(-1)
        self.step.fill_(step)

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def measure(self, loss: torch.Tensor | None) -> torch.Tensor:
        """This step's global grad norm (computed on the first call of the step), with the verdict
        written in place. Call after backward, before clipping and the optimizer step."""
        if self._measured:
            return self.norm
        self._measured = True
        grads = self.grads()
        if not grads:
            return self.norm
        # The same norm clip_grad_norm_ computes (2-norm of all grads, foreach where it can).
        self.norm.copy_(nn.utils.get_total_norm(grads))
        bad = ~torch.isfinite(self.norm)
        if loss is not None:
            bad = bad | ~torch.isfinite(loss.detach()).all()
        self.found_inf.copy_(bad)
        self.bad_total.add_(bad)
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.step, self.first_bad))
        self.step.add_(1)
        if self.skips_on_device:
            # The same tensor every step: fused AdamW drops the update when it is 1 (GradScaler's hook).
            self.optimizer.found_inf = self.found_inf
        return self.norm

    def clip(self, max_norm: float) -> None:
        """Scale the grads so their global norm is at most ``max_norm``, with the measured norm."""
        nn.utils.clip_grads_with_norm_(self.params, max_norm, self.measure(None))

    def done(self) -> None:
        """End of the optimizer step: the next :meth:`measure` computes a new norm, and an optimizer
        step without one never reads this step's verdict."""
        self._measured = False
        if getattr(self.optimizer, "found_inf", None) is self.found_inf:
            del self.optimizer.found_inf

    def read(self) -> tuple[int, int]:
        """(bad steps in all, first bad step since the last read or -1): one host sync. Resets the latter."""
        total, first = torch.stack([self.bad_total, self.first_bad]).tolist()
        self.first_bad.fill_(-1)
        return int(total), int(first)
