"""A run's folders: the ``version_N`` folder each run claims, the folders its checkpoints live in,
and the disk space they need. Called by the CLI before any work (rank 0).
"""

from __future__ import annotations

import glob
import os
import re
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
