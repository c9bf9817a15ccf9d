"""Write a trained model as a folder others can load without gptmini's training stack. No Lightning.

``model.safetensors`` (weights only: bare ``GPTMini`` keys, no ``model.``/``_orig_mod.`` prefixes, the
tied embedding/head matrix stored once), ``config.json`` (the ModelConfig), ``tokenizer.json``,
``modeling_gptmini.py`` (the model's code, generated from gptmini/core/model.py: torch, safetensors
and tokenizers alone load the folder, gptmini.core.model_code) and ``README.md`` (the model card,
gptmini.core.model_card). Files get the mode the umask gives (gptmini.core.atomic), so a group
folder's model is readable by the group.

An export is written into a temp folder beside the target and renamed into place once complete:
a full disk, a kill or a read-only filesystem leaves no half-written folder (and an earlier export
being overwritten stays whole until the new one is). :func:`gptmini.core.checkpoint.load_model`,
``gptmini generate`` and ``gptmini eval`` read it back.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from gptmini.core import atomic
from gptmini.core.checkpoint import load_with_checkpoint
from gptmini.core.config import ConfigError
from gptmini.core.formats import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FILES,
    MODEL_CODE_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from gptmini.core.model import GPTMini
from gptmini.core.model_card import model_card
from gptmini.core.model_code import model_code

READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def save_folder(model: GPTMini, tokenizer, out_dir: str | Path, card: str | None = None) -> Path:
    """Write ``model``, ``tokenizer``, the model code and the card (when given) into ``out_dir``
    (created if needed), each file atomically."""
    from safetensors.torch import save_model as save_safetensors

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out / WEIGHTS_FILE) as tmp:
        # save_model drops the second name of the tied matrix (save_file refuses shared tensors).
        save_safetensors(model, str(tmp), metadata={"format": "pt"})
    atomic.write_text(out / CONFIG_FILE, json.dumps(asdict(model.cfg), indent=2) + "\n")
    with atomic.atomic_path(out / TOKENIZER_FILE) as tmp:
        tokenizer.save(str(tmp))
    atomic.write_text(out / MODEL_CODE_FILE, model_code())
    if card is not None:
        atomic.write_text(out / CARD_FILE, card)
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file; give a folder path.")
    if out.is_dir():
        # A killed export's temp files are not "other files" (removed when no live writer owns them).
        atomic.remove_stale_temps(out)
        others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES and not atomic.is_temp(p.name))
        if others:
            raise ConfigError(
                f"out_dir {out} already holds other files ({', '.join(others[:3])}); give a new folder."
            )
        if any((out / name).exists() for name in EXPORT_FILES) and not overwrite:
            raise ConfigError(f"out_dir {out} already holds an export; pass --overwrite=true to replace it.")
    problem = atomic.unwritable(out.parent)
    if problem:
        raise ConfigError(
            f"out_dir {out} cannot be written ({problem}); give a folder on a writable filesystem."
        )


def export_model(
    source: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Export a ``.ckpt`` (or another export folder) to ``out_dir``; refuses to mix with other files."""
    out = Path(out_dir).expanduser()
    _check_target(out, overwrite)  # before the checkpoint is read
    # Checks the weights against the config; the checkpoint, read once, also feeds the card.
    model, tok, ckpt = load_with_checkpoint(source, tokenizer)
    src = Path(source).expanduser()
    if src.is_dir():  # another export folder: its card, if it has one, still describes the model
        card = (src / CARD_FILE).read_text(encoding="utf-8") if (src / CARD_FILE).is_file() else None
        if card is None:
            card = model_card(out.name, asdict(model.cfg), model.num_params(), None, str(source))
    else:
        card = model_card(out.name, asdict(model.cfg), model.num_params(), ckpt, str(source))
    atomic.remove_stale_temps(out.parent)  # temp folders of killed exports
    tmp = atomic.temp_path(out)
    try:
        tmp.mkdir()  # mkdir's mode (the umask's), as the folder would get
        save_folder(model, tok, tmp, card)
        atomic.swap_in_folder(tmp, out)
    except Exception as e:  # OSError, and safetensors' / tokenizers' own errors around an OS error
        shutil.rmtree(tmp, ignore_errors=True)
        error = _write_error(e, out, model, tok, card)
        if error is e:
            raise
        raise error from e
    return out


def _write_error(e: Exception, out: Path, model: GPTMini, tok, card: str) -> Exception:
    """A full disk: :class:`~gptmini.core.atomic.DiskFullError` (exit 74); a read-only or forbidden
    folder: :class:`ConfigError` (exit 2); anything else as it was."""
    code = atomic.write_errno(e)
    if code in atomic.NO_SPACE:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())  # the tied matrix once
        needed = weights + len(tok.to_str().encode()) + len(card.encode()) + len(model_code().encode())
        try:
            free = atomic.free_bytes(out.parent)
        except OSError:
            free = 0
        full = atomic.DiskFullError(out / WEIGHTS_FILE, needed, free)
        full.elsewhere = "give gptmini export another out_dir"
        return full
    if code in READ_ONLY:
        return ConfigError(
            f"out_dir {out} cannot be written ({e}); nothing was left there. Give a folder on a "
            f"writable filesystem."
        )
    return e
