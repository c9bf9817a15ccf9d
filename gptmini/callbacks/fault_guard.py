"""Keep a run recoverable: stop (or skip) on non-finite losses, checkpoint on SIGTERM.

``FaultGuard`` is a Lightning callback the CLI always adds (configured under ``fault_guard:``):

- **Non-finite loss or gradients.** Checked after backward and before the optimizer step, so a
  bad update never reaches the weights and ``ModelCheckpoint`` (which saves after the step) never
  writes a NaN checkpoint: the last good checkpoint on disk stays intact. The first bad step stops
  training with an error naming the step and that checkpoint; ``max_skipped_steps: N`` instead
  skips up to N bad updates (all gradients dropped, so AdamW leaves weights and moments alone).
  With fused AdamW this costs no host sync per step: fused AdamW honours a ``found_inf`` flag and
  drops the update on the device; the flag counters are read every ``check_every_n_steps``. The
  check uses the step's one gradient norm (``gptmini.core.guard.NonFiniteGuard``, shared with
  clipping); in the captured step (``model.capture``) the step itself makes the check on the device
  and this callback only reads the counters.
- **SIGTERM and Ctrl-C** (preemption, ``scancel``, ``timeout``, ``kill``; SIGINT). Lightning finishes
  the current step on SIGTERM and raises ``SIGTERMException``; a first Ctrl-C is turned into the
  same stop (a second one raises ``KeyboardInterrupt`` at once: abort, nothing saved). The guard then
  saves ``last.ckpt`` next to the other checkpoints, prints where it is and the resume command, and
  sets the exit status to 128 + the signal (143, 130), so ``--ckpt_path last`` resumes from the
  exact step (a hard kill resumes from the previous interval checkpoint instead). DataLoader workers
  ignore both signals (``gptmini.train.loader.ignore_stop_signals``), so a signal to the whole
  process group does not kill them mid-step. Under SLURM (auto_requeue, Lightning's default) the
  requeue signal (SIGUSR1, ``#SBATCH --signal=USR1@90``) stops the run the same way, and after the
  save rank 0 requeues the job once (``gptmini.callbacks.requeue``), on SIGTERM too. A stop inside
  a gradient-accumulation window waits for the window's optimizer step (the half-summed gradients
  are in no checkpoint); one during the validation of step N stops after the current validation
  batch, and the resumed run repeats that validation from its start. Several processes (DDP,
  torchrun, srun) stop together after the same step when any of them was signalled
  (``gptmini.callbacks.stop_rules``).
"""

from __future__ import annotations

import copy
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gptmini.callbacks import requeue
from gptmini.callbacks.interface import recipe_module
from gptmini.callbacks.stop_rules import install_stop_rules
from gptmini.core.atomic import DiskFullError
from gptmini.core.config import NonNegativeInt, PositiveInt, check_args
from gptmini.core.formats import CKPT_STATE_DICT
from gptmini.core.guard import NonFiniteGuard
from gptmini.train.compat import grad_scaler, request_stop, set_validation_progress, validation_progress


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient (more often than ``max_skipped_steps`` allows)."""


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint file this run wrote or resumed from, if any."""
    candidates = [trainer.ckpt_path]
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            candidates += [cb.last_model_path, cb.best_model_path, *cb.best_k_models]
    files = {str(p) for p in candidates if p and Path(p).is_file()}
    return max(files, key=os.path.getmtime) if files else None


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


def _step_loss(trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
    """This step's loss: GPTMiniModule keeps it (it logs only on writing steps); else the logged one."""
    module = recipe_module(pl_module)
    loss = module.last_loss if module is not None else None
    return loss if loss is not None else trainer.callback_metrics.get("train/loss")


class FaultGuard(Callback):
    # Its closure hook (on_before_optimizer_step) is not needed by the captured step, which makes
    # the same check on the device (gptmini.train.module.closure_hook_owners skips it).
    captured_step_aware = True

    def __init__(
        self,
        max_skipped_steps: NonNegativeInt = 0,
        check_every_n_steps: PositiveInt = 1,
        save_on_sigterm: bool = True,
        requeue_on_sigterm: bool = True,
    ):
        """Stop on non-finite losses; save a checkpoint on SIGTERM.

        Args:
            max_skipped_steps: Optimizer steps with a non-finite loss or gradient to skip (update
                dropped) before stopping; 0 = stop at the first one.
            check_every_n_steps: Check every n-th optimizer step. Unfused AdamW: each check is one
                host sync, and a NaN between checks reaches the weights. Fused AdamW: every step is
                guarded on the device and the verdict is read (one sync) every n steps.
            save_on_sigterm: Save ``last.ckpt`` when SIGTERM or a first Ctrl-C stops the run.
            requeue_on_sigterm: Under SLURM with auto_requeue (Lightning's default), requeue the job
                after a SIGTERM too (time limit without ``--signal``, preemption), not only after the
                requeue signal. ``scancel`` also sends SIGTERM: false keeps a cancelled job from
                asking to be requeued.
        """
        checked = check_args(FaultGuard.__init__, "fault_guard", locals())  # the range types above
        self.max_skipped_steps = checked["max_skipped_steps"]
        self.check_every_n_steps = checked["check_every_n_steps"]
        self.save_on_sigterm = save_on_sigterm
        self.requeue_on_sigterm = requeue_on_sigterm
        self.skipped = 0
        self.stop_signal: int | None = None  # the signal that stopped the run
        self._previous_handlers: dict[int, Any] = {}
        self._val_progress: dict | None = None  # validation counters at the start of a running validation
        self._saving_stop = False
        self._guard: NonFiniteGuard | None = None  # device counters, read every n steps
        self._counts_on_device = False  # self.skipped comes from the guard's counter

    # -- non-finite ------------------------------------------------------------------------
    def _guard_for(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> NonFiniteGuard:
        """The module's guard for ``optimizer`` (the norm clipping also uses), else one of our own."""
        module_guard = getattr(recipe_module(pl_module), "nonfinite_guard", None)
        if module_guard is not None and module_guard.optimizer is optimizer:
            self._guard = module_guard
        elif self._guard is None or self._guard.optimizer is not optimizer:
            self._guard = NonFiniteGuard(optimizer, skipped=self.skipped, step=trainer.global_step)
        return self._guard

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The captured step checks on the device, without calling on_before_optimizer_step: read
        # its counters at the start of every n-th step (the steps before it are checked).
        module = recipe_module(pl_module)
        if module is None or not getattr(module, "runs_own_step", lambda: False)():
            return
        if trainer.global_step % self.check_every_n_steps == 0:
            self._read_device_verdict(trainer, module.nonfinite_guard)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._guard is not None and recipe_module(pl_module) is None:
            self._guard.done()  # our own guard: the module does it for its own

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        no_scaler = grad_scaler(trainer) is None
        if no_scaler and optimizer.defaults.get("fused"):
            self._flag_on_device(trainer, pl_module, optimizer, step)
            return
        if step % self.check_every_n_steps:
            return
        loss = _step_loss(trainer, pl_module)
        # With an fp16 grad scaler, inf gradients are routine (the scaler skips those steps itself).
        if no_scaler:
            guard = self._guard_for(trainer, pl_module, optimizer)
            if not guard.grads() and loss is None:
                return
            guard.measure(loss)  # the step's one grad norm: clipping reuses it
            finite = not bool(guard.found_inf)  # the one host sync
        elif loss is None:
            return
        else:
            finite = bool(torch.isfinite(loss.detach()).all())  # the one host sync
        # Every rank must take the same decision, or DDP/FSDP would deadlock.
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        loss_text = f"{loss.item():.4g}" if loss is not None else "n/a"
        if self.skipped < self.max_skipped_steps:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # AdamW skips params without grads entirely
            rank_zero_warn(
                f"non-finite loss or gradient at step {step} (train/loss={loss_text}): update skipped "
                f"({self.skipped} of fault_guard.max_skipped_steps={self.max_skipped_steps})."
            )
            return
        self._stop(trainer, step, f"train/loss={loss_text}")

    def _flag_on_device(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        step: int,
    ) -> None:
        """Fused AdamW: skip bad updates on the device, read the verdict every n steps.

        Fused AdamW honours a ``found_inf`` tensor (the hook GradScaler uses): when it is 1 the
        kernel leaves weights, moments and step count alone. So every step is guarded without a
        host sync, and only every ``check_every_n_steps`` the counters are read to stop or warn.
        """
        guard = self._guard_for(trainer, pl_module, optimizer)
        if not guard.grads():
            return
        guard.measure(_step_loss(trainer, pl_module))  # writes found_inf, which fused AdamW reads
        if step % self.check_every_n_steps:
            return
        self._read_device_verdict(trainer, guard)

    def _read_device_verdict(self, trainer: pl.Trainer, guard: NonFiniteGuard) -> None:
        """Read the device counters (the host sync), then stop past the budget or warn of new skips."""
        self._guard, self._counts_on_device = guard, True
        total, first = guard.read()
        stop = total > self.max_skipped_steps
        if not trainer.strategy.reduce_boolean_decision(not stop, all=True):
            self._stop(trainer, first, "update skipped on the device, weights unchanged")
        if first >= 0:  # new skips since the last read
            rank_zero_warn(
                f"non-finite loss or gradient at step {first}: update skipped "
                f"({total} of fault_guard.max_skipped_steps={self.max_skipped_steps})."
            )
        self.skipped = total

    def _stop(self, trainer: pl.Trainer, step: int, detail: str) -> None:
        last = last_good_checkpoint(trainer)
        where = (
            f"The last good checkpoint is {last} (left intact); resume with --ckpt_path {last}"
            if last
            else "No checkpoint was saved yet; restart"
        )
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} ({detail}); training stopped "
            f"before the update. {where} after lowering model.optim.lr or raising "
            f"model.schedule.warmup_steps, or let fault_guard.max_skipped_steps skip such steps."
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving_stop and self._val_progress is not None:
            self._as_before_validation(checkpoint)
        # Between checks (check_every_n_steps > 1) a NaN may have reached the weights: never let
        # it overwrite last.ckpt. Raising here aborts the save before the file is opened.
        bad = [
            k
            for k, v in checkpoint.get(CKPT_STATE_DICT, {}).items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            last = last_good_checkpoint(trainer)
            raise NonFiniteLossError(
                f"weights are non-finite at step {trainer.global_step} ({bad[0]}, ...); checkpoint not "
                f"saved. The last good checkpoint is {last} (left intact)."
            )

    # -- SIGTERM and Ctrl-C ------------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._val_progress = validation_progress(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_progress = None

    def _as_before_validation(self, checkpoint: dict[str, Any]) -> None:
        """Make a checkpoint saved mid-validation resume with that whole validation, run again.

        Lightning resumes such a checkpoint "mid-evaluation" and runs only the remaining batches,
        while the token-weighted val/loss sums (a metric state no checkpoint holds) start empty: the
        validation of that step would be lost (Lightning 2.6: not logged at all). Setting the
        validation counters back to the validation's start, with its first batch "started", makes
        Lightning's mid-evaluation restart run every batch again before the next training step."""
        val = copy.deepcopy(self._val_progress)
        for counts in (val["total"], val["current"]):
            counts["ready"] += 1
            counts["started"] += 1
        set_validation_progress(checkpoint, val)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        install_stop_rules(trainer)
        module_guard = getattr(recipe_module(pl_module), "nonfinite_guard", None)
        if module_guard is not None:  # count on from a resumed run's skips, at its step
            module_guard.reset_counts(self.skipped, trainer.global_step)
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

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._counts_on_device and self._guard is not None:  # device counter, read at save time only
            self.skipped = int(self._guard.bad_total)
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self._guard, self._counts_on_device = None, False
