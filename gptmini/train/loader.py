"""A train DataLoader whose position in the epoch is saved in checkpoints (exact mid-epoch resume)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

WindowOffset = Literal["fixed", "random_per_epoch", "random"]
WINDOW_OFFSETS: tuple[str, ...] = WindowOffset.__args__  # type: ignore[attr-defined]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores Ctrl-C and any SIGTERM but its parent's.

    ``timeout``, ``scancel``, preemption and Ctrl-C signal the whole process group. A worker that
    dies of it makes the main process raise "DataLoader worker is killed" mid-step, before
    FaultGuard can save; so the main process alone decides, finishes the step, saves and shuts its
    workers down. The parent's own SIGTERM (the DataLoader's ``terminate()`` of a stuck worker, also
    at interpreter exit) still ends the worker, as torch's handler does: SIG_IGN would hang that exit.
    A worker whose parent died exits on its own (torch's watchdog). As a ``worker_init_fn`` it stands
    in for Lightning's per-worker seeding, which the deterministic token windows do not need.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: keep torch's SIGTERM handling
        return
    # Blocked here, inherited by the thread: SIGTERM stays pending until the thread takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parent_sigterm, args=(os.getppid(),), daemon=True).start()


def _exit_on_parent_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)  # what torch's worker handler does on its parent's SIGTERM


class ResumableSampler(DistributedSampler):
    """Seeded shuffle per epoch (``seed + epoch``), split across ranks, resumable mid-epoch.

    A ``DistributedSampler`` so that Lightning uses it as is under DDP (it only injects its own
    sampler into loaders that lack one); with one process it is a plain seeded permutation.
    ``skip`` drops the first indices of the next iteration only: that is how a resumed run
    continues the interrupted epoch instead of restarting it.

    ``window_offset`` (on a ``TokenWindows`` dataset): ``fixed`` yields window indices of the fixed
    grid; ``random_per_epoch`` shifts the whole grid by one offset in [0, block_size) drawn per
    epoch; ``random`` draws each window's start uniformly (nanoGPT's sampling, with replacement).
    Both draw from ``seed`` and ``epoch`` only, so a resumed epoch replays exactly and N ranks
    together see what one process sees.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        window_offset: WindowOffset = "fixed",
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        assert window_offset in WINDOW_OFFSETS, window_offset  # checked in GPTMiniData
        self.window_offset = window_offset
        self.skip = 0

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices: list = list(super().__iter__())
        if self.window_offset != "fixed":
            # A generator of its own (the permutation's stays as it was), seeded by seed and epoch
            # only: every rank draws the same numbers, so N ranks see what one process would.
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 1)
            if self.window_offset == "random_per_epoch":
                offset = int(torch.randint(self.dataset.block_size, (1,), generator=g))
                indices = [(i, offset) for i in indices]
            else:  # this rank's share of one global draw, split as DistributedSampler splits
                starts = torch.randint(self.dataset.max_start + 1, (self.total_size,), generator=g)
                indices = [(0, s) for s in starts[self.rank : self.total_size : self.num_replicas].tolist()]
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in checkpoints.

    Lightning stores ``state_dict()`` of a train loader that has one in every checkpoint and
    calls ``load_state_dict()`` before iterating on resume, so the resumed run sees exactly the
    batches the interrupted run had not yet trained on. The count is of batches handed to the
    training loop (not the sampler's position, which worker prefetching runs ahead of).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = 0  # batches handed out in the current epoch
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from load_state_dict

    def __iter__(self) -> Iterator:
        # A generator: nothing below runs until the first batch is requested, which Lightning
        # does after its set_epoch(), even though it calls iter() before. So the sampler (and any
        # worker prefetch) starts with the right epoch, and the skip applies only if the loop
        # continues the interrupted epoch: a checkpoint from an epoch's last batch resumes at
        # the start of the next epoch, where nothing must be skipped.
        resume, self._resume = self._resume, None
        sampler = self.sampler
        start = resume[1] if resume and resume[0] == getattr(sampler, "epoch", None) else 0
        if isinstance(sampler, ResumableSampler):
            sampler.skip = start * self.batch_size
        self._batches_done = start
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        sampler = self.sampler
        return {
            "epoch": getattr(sampler, "epoch", 0),
            "seed": getattr(sampler, "seed", 0),
            "batches_done": self._batches_done,
            "batch_size": self.batch_size,
            "num_replicas": getattr(sampler, "num_replicas", 1),
        }

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # e.g. overfit_batches swapped it out
            return
        sampler.seed = state["seed"]
        sampler.set_epoch(state["epoch"])
        done = state["batches_done"]
        if (state["batch_size"], state["num_replicas"]) != (self.batch_size, sampler.num_replicas):
            # Another batch size or device count splits the permutation differently: keep the
            # number of windows already seen this epoch, which is the closest exact equivalent.
            seen = done * state["batch_size"] * state["num_replicas"]
            done = seen // (self.batch_size * sampler.num_replicas)
            rank_zero_warn(
                f"resuming with data.batch_size x devices = {self.batch_size} x {sampler.num_replicas}, "
                f"the checkpoint used {state['batch_size']} x {state['num_replicas']}: the data order "
                f"continues approximately (at window {seen} of epoch {state['epoch']}), not exactly."
            )
        self._resume = (state["epoch"], done)
