"""Setting errors the CLI raises in LightningCLI's ``before_fit`` hook: after trainer, model and data
are built, before data preparation (tokenizer training) or any step. The step-0 checks (callbacks in
``gptmini.callbacks``) run later, on the real optimizer, schedule and first batch.

Each raises a ``ConfigError`` (a ``ValueError``) that names the setting and the fix, so a bad config fails in seconds
(not after tokenizer training or an hour of steps) and before anything is written to disk.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from gptmini.core import atomic
from gptmini.core.checkpoint import checkpoint_problem, model_config, read_checkpoint
from gptmini.core.config import ConfigError
from gptmini.core.formats import (
    CACHE_META,
    CHECKPOINT_DIR,
    CKPT_HPARAMS,
    CKPT_STEP,
    LAST_CKPT_GLOB,
    RUN_CONFIG_FILE,
)
from gptmini.core.schedule import validate_horizon
from gptmini.train import compat
from gptmini.train.compat import every_n_train_steps, logger_version_unset, set_logger_version
from gptmini.train.names import upgrade_hparams


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 (CPUs do, emulated where the ISA lacks it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type in ("cpu", "mps", "xla")


def check_trainer(trainer: pl.Trainer, warmup_steps: int) -> None:
    """Step budget, accumulation and precision settings the recipe cannot run with."""
    validate_horizon(warmup_steps, trainer.max_steps)
    acc = trainer.accumulate_grad_batches
    if not isinstance(acc, int) or acc < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches must be an integer >= 1 (micro-batches per optimizer "
            f"step), got {acc!r}."
        )
    precision = str(trainer.precision)
    device = trainer.strategy.root_device
    if "bf16" in precision and not bf16_supported(device):
        name = f"{device}, {torch.cuda.get_device_name(device)}" if device.type == "cuda" else str(device)
        raise ConfigError(
            f"trainer.precision={precision} needs bfloat16, which this device ({name}) does not "
            f"support; use trainer.precision=16-mixed (fp16 with a grad scaler) or 32-true."
        )


def check_strategy(strategy: object, accelerator: object) -> None:
    """FSDP on CPU: one line instead of Lightning's traceback (run before the Trainer is built).

    Lightning refuses FSDP without a GPU by name (``_check_strategy_and_fallback``); torch's FSDP
    itself runs on CPU with gloo only with changes Lightning does not make (docs/clusters.md)."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not CUDAAccelerator.is_available())
    if compat.names_fsdp(strategy) and on_cpu:
        name = strategy if isinstance(strategy, str) else type(strategy).__name__
        raise ConfigError(
            f"trainer.strategy={name} needs CUDA GPUs (Lightning's FSDP does not run on CPU, "
            f"docs/clusters.md); on CPU use trainer.strategy=ddp, or drop trainer.strategy."
        )


def check_data_matches_model(datamodule: object, model_cfg: object) -> None:
    """Vocab and context the data will produce must fit the model (normally linked by the CLI)."""
    vocab = getattr(datamodule, "vocab_size", None)
    if vocab is not None and vocab != model_cfg.vocab_size:
        raise ConfigError(
            f"tokenizer vocab size ({vocab}, from data.vocab_size/data.tokenizer) != model.arch.vocab_size "
            f"({model_cfg.vocab_size}); let the CLI link them (do not set model.arch.vocab_size)."
        )
    block = getattr(datamodule, "block_size", None)
    if block is not None and block > model_cfg.block_size:
        raise ConfigError(
            f"data.block_size ({block}) is larger than the model's context model.arch.block_size "
            f"({model_cfg.block_size}); lower data.block_size or raise model.arch.block_size."
        )


def _checkpoint_dir_globs(trainer: pl.Trainer) -> list[str]:
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
    """The existing folders of :func:`_checkpoint_dir_globs`."""
    return sorted({Path(d) for g in _checkpoint_dir_globs(trainer) for d in glob.glob(g) if Path(d).is_dir()})


def _newest_first(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_ckpt_path(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """``last`` -> the newest ``last*.ckpt`` of this run name (if it cannot be read, the newest
    readable checkpoint of the run, with a warning naming both); a path must exist. Else unchanged."""
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry") or ckpt_path.startswith("registry:"):
        return ckpt_path
    if ckpt_path == "last":
        dirs = checkpoint_dirs(trainer)
        # Hidden temp files of interrupted saves (".last.ckpt.tmp-...") never match "*.ckpt".
        every = _newest_first([p for d in dirs for p in d.glob("*.ckpt") if p.is_file()])
        lasts = [p for p in every if fnmatch.fnmatch(p.name, LAST_CKPT_GLOB)]
        if not lasts:
            looked = ", ".join(str(Path(g) / LAST_CKPT_GLOB) for g in _checkpoint_dir_globs(trainer))
            raise ConfigError(
                f"--ckpt_path last: no last.ckpt found (looked for {looked}); drop "
                f"--ckpt_path to start a new run, or give the checkpoint file."
            )
        problem = checkpoint_problem(lasts[0])
        if problem is None:
            return str(lasts[0])
        problems = {lasts[0]: problem}
        for p in every:
            if p not in problems and (problems.setdefault(p, checkpoint_problem(p))) is None:
                rank_zero_warn(
                    f"--ckpt_path last: {lasts[0]} cannot be read ({problem}); using {p}, "
                    f"the newest readable checkpoint of this run."
                )
                return str(p)
        found = "; ".join(f"{p} cannot be read ({why})" for p, why in problems.items())
        raise ConfigError(
            f"--ckpt_path last: no readable checkpoint of this run: {found}. Give another "
            f"checkpoint file, or drop --ckpt_path to start a new run."
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--ckpt_path {ckpt_path} does not exist; give an existing .ckpt file, `last`, or drop it."
        )
    return str(path)


def check_checkpoint(path: str, model_cfg: object, flag: str = "--ckpt_path") -> str:
    """The checkpoint is readable and was trained with this model shape; returns its path."""
    try:
        saved = model_config(read_checkpoint(path), path)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None
    diffs = [
        f"model.arch.{k}: checkpoint {getattr(saved, k)} vs config {getattr(model_cfg, k)}"
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio")
        if getattr(saved, k) != getattr(model_cfg, k)
    ]
    if diffs:
        raise ConfigError(
            f"{flag} {path} was trained with another model shape ({'; '.join(diffs)}); use the "
            f"checkpoint's model.arch settings (its run's config.yaml) or start from scratch."
        )
    return str(Path(path).expanduser())


def read_resume_checkpoint(path: str, max_steps: int | None) -> dict:
    """The checkpoint to resume from, readable, with its settings and steps left to train."""
    try:
        ckpt = read_checkpoint(path)
        model_config(ckpt, path)
    except ValueError as e:
        raise ConfigError(f"--ckpt_path: {e}") from None
    if not isinstance(ckpt.get(CKPT_HPARAMS), dict):
        raise ConfigError(f"--ckpt_path {path} holds no {CKPT_HPARAMS}; it is not a gptmini checkpoint.")
    ckpt[CKPT_HPARAMS] = upgrade_hparams(ckpt[CKPT_HPARAMS])  # older checkpoints' names (train.names)
    step = int(ckpt.get(CKPT_STEP, 0))
    if max_steps is not None and 0 < max_steps <= step:
        raise ConfigError(
            f"--ckpt_path {path} is at step {step}, and trainer.max_steps is {max_steps}: nothing "
            f"left to train. Raise trainer.max_steps to continue (the cosine is recomputed over it)."
        )
    return ckpt


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
    log_dir = trainer.log_dir
    if log_dir is None:
        return
    old = [p for p in (Path(log_dir) / RUN_CONFIG_FILE, Path(log_dir) / CHECKPOINT_DIR) if p.exists()]
    if old:
        raise ConfigError(
            f"{log_dir} already holds a run ({old[0].name}); refusing to overwrite it. Leave "
            f"trainer.logger.init_args.version unset (a new version_N folder per run) or pick a new one."
        )


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (created if missing), or None. Root ignores
    permission bits, so the probe really creates (and removes) a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = atomic.temp_path(folder / "write-probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as e:
        return f"{e.strerror or type(e).__name__}: {e.filename or folder}"
    return None


def check_writable(trainer: pl.Trainer, datamodule: object | None = None) -> None:
    """The run's log/checkpoint folder and, when data must be prepared, ``data.cache_dir`` accept
    new files: a read-only or unwritable folder is one error line before any work."""
    where: list[tuple[str, Path]] = []
    cache = getattr(datamodule, "cache_root", None)
    prepared = getattr(datamodule, "cache_path", None)
    if cache is not None and not (prepared is not None and (Path(prepared) / CACHE_META).is_file()):
        where.append(("data.cache_dir", Path(cache)))  # a prepared cache is only read: read-only is fine
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir and "://" not in str(save_dir):
            where.append(("trainer.logger.init_args.save_dir", Path(save_dir)))
    if not trainer.loggers and "://" not in str(trainer.default_root_dir):
        where.append(("trainer.default_root_dir", Path(trainer.default_root_dir)))
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath and "://" not in str(cb.dirpath):
            where.append(("ModelCheckpoint dirpath (trainer.callbacks)", Path(cb.dirpath)))
    for setting, folder in where:
        problem = _probe_writable(folder.expanduser())
        if problem:
            raise ConfigError(
                f"{setting} {folder} is not writable ({problem}); give a folder this user can "
                f"write to (not on a read-only filesystem)."
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
    log_dir = trainer.log_dir or trainer.default_root_dir
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
