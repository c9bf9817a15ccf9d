"""Checkpoint files written crash-safe: Lightning's ``CheckpointIO`` extension point, wired in by the CLI.

Every ``trainer.save_checkpoint`` (interval, ``last``, ``best``, the SIGTERM/Ctrl-C save in
``FaultGuard``) goes through :class:`AtomicCheckpointIO`: the checkpoint is serialized in memory
(as Lightning's own ``_atomic_save`` does), then written with :func:`gptmini.core.atomic.write_bytes`
(temp file in the checkpoint folder, fsync, rename, folder fsync). Lightning's own save stages the
file in ``$TMPDIR`` and moves it, which is a copy into the final name when ``runs/`` is on another
filesystem: a kill mid-copy leaves a truncated checkpoint.

A full disk (ENOSPC, EDQUOT) ends the save with :class:`~gptmini.core.atomic.DiskFullError`, which
names the folder, the bytes needed and free; the temp file is removed, the previous file of that
name is intact. Remote paths (``s3://...``) keep Lightning's own save.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gptmini.core import atomic
from gptmini.train.compat import configured_checkpoint_io, wraps_checkpoint_io

NO_SPACE = atomic.NO_SPACE


def _local(path: Any) -> Path | None:
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    return None if "://" in text else Path(text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic: a reader sees the old file or the new one.

    Its load takes a checkpoint the resume checks already read (:func:`hand_over`), so a resume
    reads the file once (memory-mapped, gptmini.core.checkpoint.read_checkpoint), not twice."""

    def __init__(self) -> None:
        super().__init__()
        self._handed: tuple[Path, dict[str, Any]] | None = None

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        handed, self._handed = self._handed, None  # used once: a later load reads the file
        local = _local(path)
        if handed is not None and local is not None and local.resolve() == handed[0]:
            return handed[1]
        return super().load_checkpoint(path, *args, **kwargs)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        local = _local(path)
        if local is None or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        local.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        try:
            self.write_file(local, data)
        except OSError as e:
            if e.errno in NO_SPACE:
                raise atomic.DiskFullError(local, len(data), atomic.free_bytes(local.parent)) from e
            raise

    def write_file(self, path: Path, data: memoryview) -> None:
        """The crash-safe write (a separate method so that tests can fork or slow it)."""
        atomic.write_bytes(path, data, write=self.write_data)

    def write_data(self, f: IO, data: memoryview) -> None:
        """Write the serialized checkpoint into the open temp file (tests slow or fail this)."""
        f.write(data)


def hand_over(strategy: Any, path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Give ``checkpoint``, already read from ``path`` (CPU tensors), to the strategy's next load of
    that file; a no-op with a CheckpointIO plugin of the user's own, which then reads it itself."""
    io_plugin = strategy.checkpoint_io
    if isinstance(io_plugin, AtomicCheckpointIO):
        io_plugin._handed = (Path(path).expanduser().resolve(), checkpoint)


def use_atomic_checkpoint_io(strategy: Any) -> None:
    """Make ``strategy`` save through :class:`AtomicCheckpointIO` unless the user gave a CheckpointIO.

    ``strategy._checkpoint_io`` is None until something reads ``checkpoint_io`` (which then picks
    Lightning's ``TorchCheckpointIO``): None here means no plugin was configured.
    """
    io_plugin = configured_checkpoint_io(strategy)
    if io_plugin is None:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif wraps_checkpoint_io(io_plugin) and io_plugin.checkpoint_io is None:
        io_plugin.checkpoint_io = AtomicCheckpointIO()  # e.g. AsyncCheckpointIO() without a base
