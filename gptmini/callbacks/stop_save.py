"""Stop and save: SIGTERM, Ctrl-C and SLURM's requeue signal end a run with ``last.ckpt`` saved.

Lightning finishes the current step on SIGTERM and raises ``SIGTERMException``; a first Ctrl-C is
turned into the same stop (a second one raises ``KeyboardInterrupt`` at once: abort, nothing saved).
:class:`StopAndSave` then saves ``last.ckpt`` next to the other checkpoints, prints where it is and the
resume command, and sets the exit status to 128 + the signal (143, 130), so ``--ckpt_path last``
resumes from the exact step (a hard kill resumes from the previous interval checkpoint instead).
DataLoader workers ignore both signals (``gptmini.train.loader.ignore_stop_signals``). Under SLURM
(auto_requeue, Lightning's default) the requeue signal (SIGUSR1, ``#SBATCH --signal=USR1@90``) stops
the run the same way, and after the save rank 0 requeues the job once (``gptmini.callbacks.requeue``),
on SIGTERM too. When a stop takes effect (end of an accumulation window, the same batch on every
process) is ``gptmini.callbacks.stop_rules``'. Part of ``FaultGuard`` (``fault_guard:``).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gptmini.callbacks import requeue
from gptmini.callbacks.nonfinite import last_good_checkpoint
from gptmini.callbacks.stop_rules import install_stop_rules
from gptmini.core.atomic import DiskFullError
from gptmini.train.compat import request_stop


def resume_command(
    argv: list[str] | None = None, ckpt: str = "last", environ: dict[str, str] | None = None
) -> str:
    """The command that started this process with ``--ckpt_path last`` (or ``ckpt``) instead of any ckpt_path.

    Under torchrun or srun a worker does not see the launcher's own options: they are left as
    ``<the same torchrun options>``."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    prog = {"cli.py": ["python", "-m", "gptmini.cli"], "gptmini": ["gptmini"]}.get(Path(argv[0]).name)
    if prog is None:  # started from Python (tests, notebooks): no command line to repeat
        return f"--ckpt_path {ckpt}"
    launcher = ""
    if "TORCHELASTIC_RUN_ID" in environ:  # set by torchrun for its workers
        launcher, prog = "torchrun <the same torchrun options> ", ["-m", "gptmini.cli"]
    elif "SLURM_STEP_ID" in environ:  # set by srun for its tasks
        launcher = "srun "
    args, skip = [], False
    for a in argv[1:]:
        if skip or a.startswith("--ckpt_path="):
            skip = False
            continue
        if a == "--ckpt_path":
            skip = True
            continue
        args.append(a)
    return launcher + shlex.join([*prog, *args, "--ckpt_path", ckpt])



def _name_last_intact(trainer: pl.Trainer, error: DiskFullError) -> None:
    """Complete a full-disk error with the checkpoint to resume from and the command."""
    last = last_good_checkpoint(trainer)
    error.last_intact = last
    if last:  # `last` resolves to the newest last*.ckpt; any other file is named
        error.resume = resume_command(ckpt="last" if Path(last).name.startswith("last") else last)



class StopAndSave(Callback):
    """Save ``last.ckpt`` and exit 128 + signal when a stop signal ends the run; requeue under SLURM."""

    def __init__(self, save_on_sigterm: bool = True, requeue_on_sigterm: bool = True) -> None:
        """See :class:`gptmini.callbacks.fault_guard.FaultGuard` for the settings."""
        self.save_on_sigterm = save_on_sigterm
        self.requeue_on_sigterm = requeue_on_sigterm
        self.stop_signal: int | None = None  # the signal that stopped the run
        self._previous_handlers: dict[int, Any] = {}
        self._saving_stop = False  # ValidationRestart reads it: this save is a stop's

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Several processes agree on a stop every n steps: FaultGuard's check_every_n_steps (NonFiniteStop's).
        install_stop_rules(trainer, getattr(self, "check_every_n_steps", 1))
        # Lightning handles SIGTERM itself (finish the step, raise SIGTERMException) but has no such
        # path for SIGINT: a KeyboardInterrupt lands mid-step and nothing is saved. So a first Ctrl-C
        # raises Lightning's SIGTERM flag, and the run stops exactly as on SIGTERM. Under SLURM the
        # requeue signal does the same (gptmini.callbacks.requeue says why not Lightning's handler).
        self.stop_signal = None
        self._requeue_signal = requeue.requeue_signal(trainer)
        self._requeued = False
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, self._requeue_signal):
            if signum is None:
                continue
            previous = signal.getsignal(signum)
            if signum == signal.SIGINT and previous in (signal.SIG_IGN, None):
                continue  # started with Ctrl-C ignored (nohup, `cmd &`): keep it
            self._previous_handlers[signum] = previous
            signal.signal(signum, lambda s, frame: self._on_stop_signal(trainer, s))

    def _on_stop_signal(self, trainer: pl.Trainer, signum: int) -> None:
        if signum == signal.SIGINT:
            self._restore_handlers(signal.SIGINT)  # a second Ctrl-C raises KeyboardInterrupt at once: abort
        if self.stop_signal is None:
            self.stop_signal = signum
        # Lightning reads this flag after every batch (stop_rules.StopConnector: all ranks agree).
        request_stop(trainer)
        if signum == signal.SIGINT:
            rank_zero_info(
                "\nCtrl-C: finishing the current step, then saving last.ckpt (Ctrl-C again aborts "
                "without saving)."
            )

    def _restore_handlers(self, *signums: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signums or list(self._previous_handlers):
            previous = self._previous_handlers.pop(signum, None)
            if previous is not None:
                signal.signal(signum, previous)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        if isinstance(exception, DiskFullError):
            _name_last_intact(trainer, exception)
            return
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.stop_signal or signal.SIGTERM
        # SIGTERMException is a SystemExit: its code becomes the exit status. Lightning leaves it
        # 0; a scheduler or requeue script must tell "stopped" from "finished" (128 + signal).
        exception.code = 128 + signum
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        cb = trainer.checkpoint_callback
        if (
            not self.save_on_sigterm
            or trainer.state.fn != TrainerFn.FITTING
            or not isinstance(cb, ModelCheckpoint)
            or cb.dirpath is None
        ):
            rank_zero_info(f"{what}: stopped at step {trainer.global_step}, no checkpoint saved.")
            return
        path = os.path.join(cb.dirpath, f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
        self._saving_stop = True
        try:
            trainer.save_checkpoint(path, weights_only=False)  # full state: an exact resume
        except DiskFullError as e:
            _name_last_intact(trainer, e)
            raise
        finally:
            self._saving_stop = False
        then = f"resume with: {resume_command()}"
        # Under SLURM (auto_requeue): the requeue signal and SIGTERM (time limit, preemption) put
        # the job back in the queue, once, after the save; not a Ctrl-C. The save is skipped above
        # when save_on_sigterm is off: then nothing to resume from, no requeue.
        asks = signum == self._requeue_signal or (signum == signal.SIGTERM and self.requeue_on_sigterm)
        if self._requeue_signal is not None and asks and not self._requeued:
            self._requeued = True
            if trainer.is_global_zero:
                then = f"{requeue.requeue()}; the job script resumes with: {resume_command()}"
        rank_zero_info(f"{what}: saved {path} at step {trainer.global_step}; {then}")
