"""Write a trained model as a folder others can load without gptmini's training stack. No Lightning.

``model.safetensors`` (weights only: bare ``GPTMini`` keys, no ``model.``/``_orig_mod.`` prefixes, the
tied embedding/head matrix stored once), ``config.json`` (the ModelConfig), ``tokenizer.json`` and
``README.md`` (the model card, gptmini.core.model_card). Each file is written atomically with the
mode the umask gives (gptmini.core.atomic), so a group folder's model is readable by the group.
:func:`gptmini.core.checkpoint.load_model`, ``gptmini generate`` and ``gptmini eval`` read it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from gptmini.core.atomic import atomic_path, is_temp, remove_stale_temps, write_text
from gptmini.core.checkpoint import load_with_checkpoint
from gptmini.core.config import ConfigError
from gptmini.core.formats import CARD_FILE, CONFIG_FILE, EXPORT_FILES, TOKENIZER_FILE, WEIGHTS_FILE
from gptmini.core.model import GPTMini
from gptmini.core.model_card import model_card


def save_folder(model: GPTMini, tokenizer, out_dir: str | Path, card: str | None = None) -> Path:
    """Write ``model``, ``tokenizer`` and the model card (when given) into ``out_dir`` (created if needed)."""
    from safetensors.torch import save_model as save_safetensors

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    # Each file crash-safe (gptmini.core.atomic): a kill or full disk leaves no half-written file.
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        # save_model drops the second name of the tied matrix (save_file refuses shared tensors).
        save_safetensors(model, str(tmp), metadata={"format": "pt"})
    write_text(out / CONFIG_FILE, json.dumps(asdict(model.cfg), indent=2) + "\n")
    with atomic_path(out / TOKENIZER_FILE) as tmp:
        tokenizer.save(str(tmp))
    if card is not None:
        write_text(out / CARD_FILE, card)
    return out


def export_model(
    source: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Export a ``.ckpt`` (or another export folder) to ``out_dir``; refuses to mix with other files."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file; give a folder path.")
    if out.is_dir():
        # A killed export's temp files are not "other files" (removed when no live writer owns them).
        remove_stale_temps(out)
        others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES and not is_temp(p.name))
        if others:
            raise ConfigError(
                f"out_dir {out} already holds other files ({', '.join(others[:3])}); give a new folder."
            )
        if any((out / name).exists() for name in EXPORT_FILES) and not overwrite:
            raise ConfigError(f"out_dir {out} already holds an export; pass --overwrite=true to replace it.")
    # Checks the weights against the config; the checkpoint, read once, also feeds the card.
    model, tok, ckpt = load_with_checkpoint(source, tokenizer)
    src = Path(source).expanduser()
    if src.is_dir():  # another export folder: its card, if it has one, still describes the model
        card = (src / CARD_FILE).read_text(encoding="utf-8") if (src / CARD_FILE).is_file() else None
        if card is None:
            card = model_card(out.name, asdict(model.cfg), model.num_params(), None, str(source))
    else:
        card = model_card(out.name, asdict(model.cfg), model.num_params(), ckpt, str(source))
    return save_folder(model, tok, out, card)
