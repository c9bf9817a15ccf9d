"""Test-only CheckpointIO plugins (``--trainer.plugins``): kill writes mid-save, fill the disk.

Both subclass gptmini's :class:`AtomicCheckpointIO`, so the code under test is the real save path;
the hooks only slow a write, fork it, or make it fail like a full disk would.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import IO

import torch

from gptmini.train.checkpoint_io import AtomicCheckpointIO


def _slow_write(f: IO, data: memoryview, chunks: int, delay_s: float, progress: int) -> None:
    """Write in chunks; after each, tell the parent (pipe ``progress``) how many bytes are written."""
    step = max(1, len(data) // chunks)
    os.write(progress, b"0\n")
    for i in range(0, len(data), step):
        f.write(data[i : i + step])
        f.flush()
        os.write(progress, f"{min(i + step, len(data))}\n".encode())
        time.sleep(delay_s)


def _every_checkpoint_loads(folder: Path) -> bool:
    for p in folder.glob("*.ckpt"):
        try:
            torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return False
    return True


class KillInsideSaves(AtomicCheckpointIO):
    def __init__(
        self,
        report: str,
        fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
        pause_at_save: int = 0,
        marker: str | None = None,
        chunks: int = 16,
        delay_s: float = 0.002,
    ) -> None:
        """Before each real save, fork copies of this process that start the same save and SIGKILL
        each when its temp file holds ``fraction`` of the bytes (1.0: all written, not yet renamed);
        record whether the file of that name is unchanged and every checkpoint still loads.

        Args:
            report: JSON-lines file, one record per kill.
            fractions: Kill points per save.
            pause_at_save: In this save (1-based) the real write stops halfway, touches ``marker``
                and waits to be killed from outside (0: never).
            marker: See pause_at_save.
            chunks: Chunks per slowed write.
            delay_s: Sleep after each chunk.
        """
        super().__init__()
        self.report = Path(report)
        self.fractions = fractions
        self.pause_at_save = pause_at_save
        self.marker = marker
        self.chunks = chunks
        self.delay_s = delay_s
        self.saves = 0
        self._mode = "real"

    def write_file(self, path: Path, data: memoryview) -> None:
        self.saves += 1
        for fraction in self.fractions:
            self._kill_a_copy(path, data, fraction)
        self._mode = "pause" if self.saves == self.pause_at_save else "real"
        super().write_file(path, data)

    def write_data(self, f: IO, data: memoryview) -> None:
        if self._mode == "real":
            return super().write_data(f, data)
        if self._mode == "pause":  # the real process, killed from outside by the test
            f.write(data[: len(data) // 2])
            f.flush()
            Path(self.marker).touch()
            time.sleep(120)
            raise TimeoutError("paused in a save; no kill came")
        _slow_write(f, data, self.chunks, self.delay_s, self._progress)  # a forked copy
        time.sleep(60)  # all written, not yet renamed: wait to be killed

    def _kill_a_copy(self, path: Path, data: memoryview, fraction: float) -> None:
        before = path.read_bytes() if path.is_file() else None
        target = int(len(data) * fraction)
        read_end, self._progress = os.pipe()
        pid = os.fork()
        if pid == 0:  # the copy: the same save, slowed; never returns
            try:
                os.close(read_end)
                self._mode = "copy"
                super().write_file(path, data)
            finally:
                os._exit(1)
        os.close(self._progress)
        written, deadline, pending = -1, time.monotonic() + 20, b""
        try:
            while written < target and time.monotonic() < deadline:
                if select.select([read_end], [], [], 0.5)[0]:
                    chunk = os.read(read_end, 4096)
                    if not chunk:
                        break  # the copy died on its own
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    written = max([written, *(int(x) for x in lines if x)])
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
        size = written
        after = path.read_bytes() if path.is_file() else None
        record = {
            "save": self.saves,
            "file": path.name,
            "fraction": fraction,
            "bytes": len(data),
            "bytes_written_at_kill": size,
            "reached": size >= target,
            "unchanged": after == before,
            "all_load": _every_checkpoint_loads(path.parent),
        }
        with self.report.open("a") as out:
            out.write(json.dumps(record) + "\n")


class FullDisk(AtomicCheckpointIO):
    def __init__(self, fail_at_save: int = 1) -> None:
        """Save ``fail_at_save`` (1-based) fails halfway with ENOSPC, as a full disk does.

        Args:
            fail_at_save: Which save fails.
        """
        super().__init__()
        self.fail_at_save = fail_at_save
        self.saves = 0

    def write_file(self, path: Path, data: memoryview) -> None:
        self.saves += 1
        super().write_file(path, data)

    def write_data(self, f: IO, data: memoryview) -> None:
        if self.saves != self.fail_at_save:
            return super().write_data(f, data)
        f.write(data[: len(data) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
