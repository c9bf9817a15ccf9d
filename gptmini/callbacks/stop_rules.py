"""When a stop (SIGTERM, Ctrl-C, SLURM's requeue signal) takes effect: at the end of a
gradient-accumulation window, and at the same batch on every process. Installed by ``FaultGuard``
at fit start (``install_stop_rules``); Lightning's internals are reached through
``gptmini.train.compat``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from gptmini.train.compat import (
    mix_into_signal_connector,
    route_sigterm_handler,
    several_processes,
    sigterm_notifier,
    skip_sigterm_broadcast,
    window_continues,
)


class StopConnector:
    """Mixed into the trainer's ``_SignalConnector``: when a stop (SIGTERM, Ctrl-C, SLURM's requeue
    signal) is acted on. Lightning has no option for either rule below; its flag
    ``received_sigterm`` is the one place all its checks read (after each training and validation
    batch, at each epoch's end: points every rank passes in the same order).

    - Not inside a gradient-accumulation window: the flag reads False until the window's optimizer
      step is done. Lightning stops after any micro-batch and saves no gradients: a resume from
      there would run a partial window, i.e. a different step.
    - Several processes decide together, every ``check_every_n_steps`` optimizer steps: at the first
      read after such a step, one all-reduce (stop when any rank was signalled), so all stop after
      the same step, and between those steps no collective and no host sync (the flag reads False
      until the agreed stop; a signal waits at most n - 1 steps). Lightning 2.6 instead broadcasts
      rank 0's flag from inside the signal handler, a collective at whatever point the signal lands:
      with another rank inside an all-reduce both wait until the launcher's SIGKILL (seen with
      torchrun, 2 nodes x 1 process: no last.ckpt); and its check before each batch (a collective
      per step) stops one batch later than a single process does, so a resumed run logged every
      step one too high. So no code may read ``trainer.received_sigterm`` on one rank only.
    """

    trainer: pl.Trainer
    _stop_requested: bool = False
    _agreed: bool = False
    check_every_n_steps: int = 1
    _checked_at: int | None = None  # the global step of the last agreement (one per check step)

    @property
    def received_sigterm(self) -> bool:
        # Lightning's own rule for "this batch does not end a window" (epoch end included); the
        # same on every rank, so either all ranks take the all-reduce below or none.
        if window_continues(self.trainer):
            return False
        if not several_processes(self.trainer):
            return self._stop_requested
        if self._agreed:
            return True
        # One all-reduce per check step, at its first read: the same on every rank (same step, same
        # order of reads), so all take it or none.
        step = self.trainer.global_step
        if step % self.check_every_n_steps or step == self._checked_at:
            return False
        self._checked_at = step
        self._agreed = self.trainer.strategy.reduce_boolean_decision(self._stop_requested, all=False)
        return self._agreed

    @received_sigterm.setter
    def received_sigterm(self, value: bool) -> None:
        self._stop_requested = value

    def _sigterm_notifier_fn(self, signum: Any, frame: Any) -> None:  # compat.SIGTERM_NOTIFIER_HOOK
        """Lightning's SIGTERM handler without its collective (see the class docstring)."""
        rank_zero_info(f"Received SIGTERM: {signum}")
        launcher = self.trainer.strategy.launcher
        if not self._stop_requested and launcher is not None:
            launcher.kill(signum)  # the processes Lightning started itself (ddp on one machine)
        self._stop_requested = True


def install_stop_rules(trainer: pl.Trainer, check_every_n_steps: int = 1) -> None:
    """Swap the connector's class (state kept), route the SIGTERM handler Lightning registered at
    fit start (it holds the old bound method) to StopConnector, and drop the per-batch broadcast.
    Several processes agree on a stop every ``check_every_n_steps`` optimizer steps."""
    connector = mix_into_signal_connector(trainer, StopConnector)
    connector._agreed = False
    connector._checked_at = None
    connector.check_every_n_steps = check_every_n_steps
    route_sigterm_handler(sigterm_notifier(connector))
    skip_sigterm_broadcast(trainer)  # decided by the flag
