"""Crash-safe file writes: a reader sees the old file or the complete new one, never a partial one.

Every file a user relies on (checkpoints, the export folder, the data cache's ``meta.json``) is
written to a temporary file *in the destination folder* (``.last.ckpt.tmp-<host>-<pid>-<rand>``),
flushed and fsynced, renamed over the final name with ``os.replace`` (atomic within one
filesystem), and the folder is fsynced so the rename itself survives a power loss. A write that
fails or is killed at any moment leaves the previous file of that name intact.

Why not a library: Lightning's ``_atomic_save`` stages through fsspec's transaction, whose temp file
lives in ``$TMPDIR``; moving it onto ``runs/`` on another filesystem is a copy into the final name
(a kill mid-copy leaves a truncated checkpoint). ``tempfile.mkstemp`` creates files with mode
0600; the temp file here is created with 0666 minus the umask, the mode ``open(path, "w")`` gives.

Leftover temp files (a process killed mid-write) are never read (:func:`is_temp` names them) and
are removed by :func:`remove_stale_temps` when they belong to no live writer.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

# ".<final name>.tmp-<host>-<pid>-<8 hex>": hidden, and never ends in a real suffix (.ckpt, .json).
_TEMP = re.compile(r"\.(?P<final>.+)\.tmp-(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-[0-9a-f]{8}")
# A temp file untouched this long belongs to no live write, whatever its host (shared storage).
STALE_AFTER_S = 6 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:32]


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it,
    and setting it briefly would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_path(final: str | Path) -> Path:
    """A fresh temp file name beside ``final`` (same folder, hence same filesystem)."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp(name: str | Path) -> bool:
    """Whether ``name`` is a temp file of :func:`atomic_write` (never a finished file)."""
    return _TEMP.fullmatch(Path(name).name) is not None


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable. Filesystems that cannot fsync a folder are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def unwritable(folder: str | Path, create: bool = True) -> str | None:
    """Why no file can be created in ``folder`` (created first when ``create``), or None. Root
    ignores permission bits, so the probe really creates (and removes) a file."""
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            return f"no folder {folder}"
        probe = temp_path(folder / "write-probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as e:  # the folder, not the probe's own name, is what the user knows
        where = folder if e.filename is None or Path(e.filename).name.startswith(".write-probe") else e.filename
        return f"{e.strerror or type(e).__name__}: {where}"
    return None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(final: Path) -> tuple[Path, int]:
    while True:
        tmp = temp_path(final)
        try:
            # 0o666 & ~umask, like open(path, "w"); O_EXCL: never write into someone else's file.
            return tmp, os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
            )
        except FileExistsError:
            continue


def _commit(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _discard(tmp: Path) -> None:
    with suppress(FileNotFoundError):
        tmp.unlink()


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing; on a clean exit it replaces ``path``.

    On an exception inside the block (or in the flush/fsync) the temp file is removed and the
    exception propagates; ``path`` is untouched. ``mode`` is ``"wb"`` or ``"w"`` (text).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files: mode 'wb' or 'w', not {mode!r}")
    final = Path(path)
    tmp, fd = _create_temp(final)
    try:
        f = os.fdopen(fd, "w", encoding=encoding or "utf-8") if mode == "w" else os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, final)
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """For writers that take a file name (safetensors, tokenizers): yields a temp path to write;
    on a clean exit it is fsynced and renamed over ``path``."""
    final = Path(path)
    tmp, fd = _create_temp(final)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)  # created with the umask's mode; the writer truncates and fills it
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            # The writer replaced the file with its own (safetensors >= 0.7 writes a 0600 temp
            # file and renames it): give it back the umask's mode.
            os.chmod(tmp, mode)
        _fsync_file(tmp)
        _commit(tmp, final)
    except BaseException:
        _discard(tmp)
        raise


def write_bytes(
    path: str | Path, data: bytes | memoryview, write: Callable[[IO, bytes | memoryview], None] | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (``write(f, data)`` replaces ``f.write``, e.g. in tests)."""
    with atomic_write(path, "wb") as f:
        (write or _write_all)(f, data)


def _write_all(f: IO, data: bytes | memoryview) -> None:
    f.write(data)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def free_bytes(folder: str | Path) -> int:
    """Bytes free for this user on ``folder``'s filesystem (one place, so tests can stand in a full disk)."""
    return shutil.disk_usage(folder).free


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def stale_temps(folder: str | Path, now: float | None = None) -> list[Path]:
    """Temp files (and temp folders: an export is written as one) in ``folder`` no live writer owns:
    this host's with a dead pid, or untouched for :data:`STALE_AFTER_S` (another host's on shared
    storage, or a reused pid)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    host, out = _host(), []
    for p in folder.iterdir():
        m = _TEMP.fullmatch(p.name)
        if m is None or not (p.is_file() or p.is_dir()) or p.is_symlink():
            continue
        pid = int(m.group("pid"))
        try:
            old = now - p.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:  # its writer just renamed it
            continue
        mine = m.group("host") == host and pid == os.getpid()
        if old or (m.group("host") == host and not mine and not _alive(pid)):
            out.append(p)
    return sorted(out)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete :func:`stale_temps` of ``folder``; returns what was removed."""
    removed = []
    for p in stale_temps(folder):
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def write_errno(e: BaseException) -> int | None:
    """The errno of a failed write: an ``OSError``'s, or the ``(os error N)`` that Rust writers
    (safetensors, tokenizers) put in their messages; None when there is none."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


def swap_in_folder(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder ``tmp`` (beside ``final``) at ``final``: a rename when ``final`` is
    missing or empty; else the old folder is renamed away first and deleted after."""
    tmp, final = Path(tmp), Path(final)
    try:
        os.rename(tmp, final)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        old = temp_path(final)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a full quota


class DiskFullError(OSError):
    """No space left while writing ``path`` (ENOSPC/EDQUOT): nothing partial was left behind.

    ``last_intact`` and ``resume`` are filled in by whoever knows the run (``FaultGuard``), so
    the one error line names the checkpoint to resume from and the command.
    """

    exit_status = 74  # sysexits.h EX_IOERR; gptmini.commands documents every exit status

    def __init__(self, path: str | Path, needed: int, free: int) -> None:
        super().__init__(errno.ENOSPC, "No space left on device", str(path))
        self.path, self.needed, self.free = Path(path), needed, free
        self.last_intact: str | None = None
        self.resume: str | None = None
        self.elsewhere = "set trainer.logger.init_args.save_dir elsewhere"  # the other way out

    def __str__(self) -> str:
        where = self.path.parent
        text = (
            f"disk full: writing {self.path.name} in {where} needs {_mb(self.needed)}, "
            f"{_mb(self.free)} free there; nothing partial was left"
        )
        if self.last_intact:
            text += f"; the last intact checkpoint is {self.last_intact}"
            then = (
                f"resume with: {self.resume}"
                if self.resume
                else f"resume with --ckpt_path {self.last_intact}"
            )
        else:
            then = "run again."
        # No full stop after the command: it is copied as is.
        return f"{text}. Free space there (or {self.elsewhere}), then {then}"
