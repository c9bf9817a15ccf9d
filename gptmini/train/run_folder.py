"""A run's folders: the ``version_N`` folder each run claims, the folders its checkpoints live in,
and the disk space they need. Called by the CLI before any work (rank 0).
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from gptmini.core import atomic
from gptmini.core.config import ConfigError
from gptmini.core.formats import CHECKPOINT_DIR, RUN_CONFIG_FILE
from gptmini.train.compat import every_n_train_steps, logger_version_unset, set_logger_version
from gptmini.train.ranks import own_log_dir


def checkpoint_dir_globs(trainer: pl.Trainer) -> list[str]:
    """Where this run's checkpoints live: every version folder of the logger, and any explicit
    ModelCheckpoint.dirpath (with a logger, each run gets a new version folder, so Lightning's own
    ``ckpt_path="last"`` would only look in the new, empty one)."""
    globs = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            globs.append(str(Path(cb.dirpath)))
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root:
            globs.append(str(Path(root) / "*" / CHECKPOINT_DIR))
    if not trainer.loggers:
        globs.append(str(Path(trainer.default_root_dir) / CHECKPOINT_DIR))
    return globs


def checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    """The existing folders of :func:`checkpoint_dir_globs`."""
    return sorted({Path(d) for g in checkpoint_dir_globs(trainer) for d in glob.glob(g) if Path(d).is_dir()})


def claim_version(trainer: pl.Trainer) -> None:
    """Create the next free ``version_N`` folder for each logger without a fixed version.

    Lightning's loggers pick ``max(N) + 1`` lazily and create the folder later, so runs started
    together (a sweep) pick the same one. ``os.mkdir`` succeeds for exactly one process per name;
    the others move on to the next number.
    """
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if not logger_version_unset(logger) or not root or "://" in str(root):
            continue  # a fixed version (check_log_dir_free guards it), or a remote filesystem
        os.makedirs(root, exist_ok=True)
        taken = [int(m.group(1)) for d in os.listdir(root) if (m := re.fullmatch(r"version_(\d+)", d))]
        n = max(taken, default=-1) + 1
        while True:
            try:
                os.mkdir(os.path.join(root, f"version_{n}"))
                _claimed.append(Path(root) / f"version_{n}")
                break
            except FileExistsError:
                n += 1
        set_logger_version(logger, n)


def check_log_dir_free(trainer: pl.Trainer) -> None:
    """Refuse to write into a folder that already holds a run (a fixed logger version)."""
    log_dir = own_log_dir(trainer)  # rank 0 alone, before fit: not trainer.log_dir (gptmini.train.ranks)
    if log_dir is None:
        return
    old = [p for p in (Path(log_dir) / RUN_CONFIG_FILE, Path(log_dir) / CHECKPOINT_DIR) if p.exists()]
    if old:
        raise ConfigError(
            f"{log_dir} already holds a run ({old[0].name}); refusing to overwrite it. Leave "
            f"trainer.logger.init_args.version unset (a new version_N folder per run) or pick a new one."
        )


def checkpoint_bytes(n_params: int) -> int:
    """Estimated size of one full checkpoint: fp32 weights + AdamW's two moments (+ 1% framing)."""
    return int(n_params * 4 * 3 * 1.01)


def files_kept(trainer: pl.Trainer) -> int:
    """Checkpoint files the configured ModelCheckpoints keep at most (an unbounded ``save_top_k=-1``
    counts its interval files over ``max_steps``), plus one: a save writes the new file beside the old."""
    files = 0
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        k = cb.save_top_k
        if k < 0:
            every = every_n_train_steps(cb)
            k = max(1, trainer.max_steps // every) if every and trainer.max_steps > 0 else 1
        files += k + (1 if cb.save_last else 0)
    return files + 1 if files else 0


def warn_if_disk_too_small(trainer: pl.Trainer, n_params: int) -> int | None:
    """Warn before step 0 when the checkpoint folder's filesystem has less free space than the
    configured checkpoints need; returns the bytes needed (None when not checked)."""
    files = files_kept(trainer)
    log_dir = own_log_dir(trainer) or trainer.default_root_dir
    if not files or log_dir is None or "://" in str(log_dir):
        return None
    folder = Path(log_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    size = checkpoint_bytes(n_params)
    needed, free = size * files, atomic.free_bytes(folder)
    if free < needed:
        rank_zero_warn(
            f"{folder} has {free / 1e6:.1f} MB free, but the configured checkpoints need about "
            f"{needed / 1e6:.1f} MB ({files} files of ~{size / 1e6:.1f} MB: {n_params:,} parameters, "
            f"fp32 weights + 2 AdamW moments); a save that does not fit stops the run (exit 74). "
            f"Free space, or keep fewer checkpoints (ModelCheckpoint save_top_k, every_n_train_steps)."
        )
    return needed


def remove_stale_temps(trainer: pl.Trainer) -> list[Path]:
    """Delete temp files that interrupted saves left in this run's checkpoint folders."""
    removed = [p for d in checkpoint_dirs(trainer) for p in atomic.remove_stale_temps(d)]
    if removed:
        rank_zero_info(
            f"removed {len(removed)} temp file(s) of interrupted checkpoint saves: "
            + ", ".join(str(p) for p in removed[:3])
            + (" ..." if len(removed) > 3 else "")
        )
    return removed


# -- who is running a run folder ----------------------------------------------------------------------

LOCK_FILE = "run.lock"  # in a run folder while a live fit trains in it or resumes from it
# Folders this process claimed (claim_version) and lock files it holds (lock_run): see owned_folders.
_claimed: list[Path] = []
_locks: list[Path] = []


def run_folder_of(ckpt_path: str | Path) -> Path:
    """The run folder a checkpoint belongs to: ``version_N`` above its ``checkpoints/`` folder."""
    folder = Path(ckpt_path).expanduser().parent
    return folder.parent if folder.name == CHECKPOINT_DIR else folder


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _holder(lock: Path) -> dict | None:
    """The live process named in ``lock`` (pid, host, start), or None when the lock is stale or gone."""
    try:
        holder = json.loads(lock.read_text())
        pid = int(holder["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return {"pid": "?", "host": "?"}  # unreadable: kept, the message says how to remove it
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("job") == job and pid != os.getpid():
        return None  # this job's earlier incarnation: a requeued job keeps its id, maybe not its node
    if holder.get("host") != socket.gethostname():
        return holder  # cannot be checked from here: assumed alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    start = holder.get("start")
    return holder if start is None or start == _start_time(pid) else None


def lock_run(folder: str | Path, why: str) -> None:
    """Hold ``folder/run.lock`` (pid, host, process start) for this process's life; refuse, with one
    :class:`ConfigError`, when a live process holds it. A dead process's lock (killed, a lost node on
    this host) is taken over. Call on rank 0 only: one lock per run, whatever the process count.
    The lock file is created with its content in one step (a link), so a reader never sees it empty."""
    folder = Path(folder)
    lock = folder / LOCK_FILE
    if lock in _locks:
        return
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _start_time(os.getpid()),
        "job": os.environ.get("SLURM_JOB_ID"),
        "what": why,
    }
    if not folder.exists():  # a fixed logger version, created by Lightning only later
        folder.mkdir(parents=True)
        _claimed.append(folder)
    temp = atomic.temp_path(lock)
    temp.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                os.link(temp, lock)
                _locks.append(lock)
                return
            except FileExistsError:
                holder = _holder(lock)
                if holder is not None:
                    raise ConfigError(
                        f"{folder} is in use by a running process (pid {holder.get('pid')} on "
                        f"{holder.get('host')}: {holder.get('what', 'a fit')}); two runs from the same "
                        f"checkpoints would train twice and race for its files. Wait for it or stop it; "
                        f"if no such process runs, delete {lock}."
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
    finally:
        temp.unlink(missing_ok=True)
    raise ConfigError(f"{lock} keeps reappearing; another process is starting on {folder}. Try again.")


def release_locks() -> None:
    """Remove the lock files this process holds (only where they still name this process)."""
    while _locks:
        lock = _locks.pop()
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass


def _nothing_recorded(folder: Path) -> bool:
    """The folder holds only what any start writes: the run's config, hparams, and TensorBoard event
    files with no event beyond the file header (one TFRecord: u64 length, u32 crc, data, u32 crc)."""
    for p in folder.iterdir():
        if p.name in (RUN_CONFIG_FILE, "hparams.yaml"):
            continue
        if not (p.is_file() and p.name.startswith("events.out.tfevents.")):
            return False
        data = p.read_bytes()
        length = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
        if len(data) > 16 + length:  # a second record: something was logged
            return False
    return True


@contextmanager
def owned_folders() -> Iterator[None]:
    """Around one command: the locks it takes are released when it ends (a SIGKILLed process's
    stay, and are recognised as stale), and a ``version_N`` folder it claimed is removed when the
    command fails before anything was recorded there (a fit that stops on bad data leaves no trace)."""
    claimed = len(_claimed)
    try:
        yield
    except BaseException:
        release_locks()  # its own folder's lock first: the folder is then empty if nothing was written
        for folder in _claimed[claimed:]:
            with suppress(OSError):
                if _nothing_recorded(folder):
                    for p in folder.iterdir():
                        p.unlink()
                    folder.rmdir()
        raise
    finally:
        del _claimed[claimed:]
        release_locks()


atexit.register(release_locks)  # a command that ends another way than through owned_folders (an exit)


VALIDATE_DIR = "validate"  # under a run folder: its validations' logs (TensorBoard shows it beside the run)


def log_validation_beside(trainer: pl.Trainer, ckpt_path: str | None) -> str | None:
    """Point each logger without a fixed version at ``<run folder of ckpt_path>/validate``: a
    validation is part of the run it scores, not a new run, and repeating it makes no new folder.
    The run's own files (config.yaml, hparams.yaml, events) are not touched. Returns why not (the
    checkpoint is not in a run folder of the logger's), or None. On every rank: no collective."""
    why = None
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if not logger_version_unset(logger) or not root or "://" in str(root):
            continue
        run = run_folder_of(ckpt_path) if ckpt_path else None
        if run is not None and run.parent.resolve() == Path(root).resolve():
            set_logger_version(logger, f"{run.name}/{VALIDATE_DIR}")
        else:
            why = f"{ckpt_path} is not in a run folder of {root}" if ckpt_path else "no --ckpt_path"
    return why
