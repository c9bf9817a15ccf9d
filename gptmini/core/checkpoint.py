"""Read gptmini checkpoints without Lightning: ``load_model("last.ckpt")`` -> a ready ``GPTMini``.

Two formats load: a Lightning ``.ckpt`` and an export folder (``gptmini export``, gptmini.core.export_folder)
holding ``model.safetensors`` (weights only), ``config.json`` (the ModelConfig) and ``tokenizer.json``.
Both need only torch, safetensors and tokenizers: no Lightning, no data cache.

A Lightning checkpoint of :class:`gptmini.train.module.GPTMiniModule` holds the module's ``state_dict``
(keys ``model.<param>``) and ``gptmini_model_config`` (the :class:`ModelConfig` as a dict), which is
all a bare model needs (every key and file name: :mod:`gptmini.core.formats`). Keys from a
``torch.compile``d model (``_orig_mod.``) are stripped here too, so checkpoints written before that was
fixed upstream still load.

The one home of a checkpoint's gptmini contents: :func:`write_gptmini_keys` fills them (called by the one
writer hook, gptmini.train.checkpoint_contents), :func:`read_checkpoint` reads a file once
(memory-mapped), and :func:`upgrade_hparams` is the one rename path for keys earlier versions wrote
(:data:`RENAMED_KEYS`), used by every loader.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gptmini.core.config import ConfigError
from gptmini.core.formats import (
    CKPT_FORMAT,
    CKPT_FORMAT_VERSION,
    CKPT_HPARAMS,
    CKPT_MODEL_CONFIG,
    CKPT_RUN_CONFIG,
    CKPT_RUN_STATE,
    CKPT_STATE_DICT,
    CKPT_TOKENIZER,
    COMPILED_PREFIX,
    CONFIG_FILE,
    MODEL_PREFIX,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    RunRecord,
)
from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.tokenizer import load_tokenizer, tokenizer_from_json


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, truncated, corrupt or not a gptmini checkpoint."""


# Key prefixes earlier versions used -> today's (CHANGELOG.md): hyper-parameters under `model.`
# (upgrade_hparams) and CLI keys (gptmini.train.names' did-you-mean).
RENAMED_KEYS = {
    "model.model.": "model.arch.",
    "guard.": "fault_guard.",
}


def renamed_key(old: str) -> str | None:
    """Today's name for a key an earlier version used, else None."""
    for before, after in RENAMED_KEYS.items():
        if old.startswith(before):
            return after + old[len(before) :]
    return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``, for dicts and anything with ``as_dict()``
    (jsonargparse's Namespace). An empty dict is a leaf."""
    if hasattr(tree, "as_dict"):
        tree = tree.as_dict()
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored module arguments (``hyper_parameters``, the keys under ``model:``) with
    today's names, through :data:`RENAMED_KEYS` (``model.model.*`` -> ``model.arch.*``), so
    checkpoints of earlier versions load, resume and validate. Where both names are stored, today's wins."""
    leaves = flatten(hparams, "model.")
    renamed = [(renamed_key(k), v) for k, v in leaves.items() if renamed_key(k)]
    current = [(k, v) for k, v in leaves.items() if not renamed_key(k)]
    out: dict[str, Any] = {}
    for key, value in renamed + current:  # today's names last: they win
        *groups, leaf = key.split(".")[1:]
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return out


def write_gptmini_keys(
    checkpoint: dict[str, Any],
    model_cfg: ModelConfig,
    record: RunRecord,
    tokenizer_json: str | None,
    run_config: str | None,
) -> None:
    """Every ``gptmini_*`` key of a checkpoint (gptmini.core.formats), filled in one place."""
    checkpoint[CKPT_FORMAT] = CKPT_FORMAT_VERSION
    checkpoint[CKPT_MODEL_CONFIG] = asdict(model_cfg)  # enough to rebuild a bare GPTMini
    checkpoint[CKPT_RUN_STATE] = record.as_dict()
    # The tokenizer JSON itself (tens to hundreds of KB): generation needs only the checkpoint.
    if tokenizer_json is not None:
        checkpoint[CKPT_TOKENIZER] = tokenizer_json
    if run_config is not None:
        checkpoint[CKPT_RUN_CONFIG] = run_config


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``, memory-mapped (tensor data is read when used, so a
    caller that needs only some of it, or hands the dict on, reads the file once), and an error naming
    the file when it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        # mmap needs torch.save's zip format (torch.load refuses it for the legacy one).
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch.load raises many types on bad bytes (RuntimeError, KeyError, ...)
        first = str(e).strip().split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupt?): {first}. "
            f"Use another checkpoint, e.g. an earlier *step=*.ckpt in the same folder."
        ) from e
    if not isinstance(ckpt, dict) or CKPT_STATE_DICT not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no '{CKPT_STATE_DICT}'; it is not a gptmini checkpoint.")
    version = ckpt.get(CKPT_FORMAT, 0)
    if not isinstance(version, int) or version > CKPT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {version!r}, newer than this gptmini reads "
            f"({CKPT_FORMAT_VERSION}); upgrade gptmini to load it (`git pull` in its clone, then `pip install ./gptmini`)."
        )
    return ckpt


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable gptmini checkpoint (a short reason), or None when it is."""
    return peek_checkpoint(path)[1]


def peek_checkpoint(path: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(checkpoint, None)`` when ``path`` is a readable gptmini checkpoint, else ``(None, why)``.

    Memory-mapped: reads the archive's index and the pickled structure (``global_step`` and the
    like), not the tensor data, so probing many files (``--ckpt_path last``) stays cheap.
    """
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if not zipfile.is_zipfile(path):  # torch.save's format: a zip whose index is at the end
        return None, f"{size} bytes, truncated or corrupt: not a complete torch.save archive"
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types on bad bytes
        text = str(e).strip().split(". ")[0] if str(e).strip() else type(e).__name__
        return None, f"{size} bytes, truncated or corrupt: {text}"
    if not isinstance(ckpt, dict) or CKPT_STATE_DICT not in ckpt:
        return None, f"no {CKPT_STATE_DICT}, not a gptmini checkpoint"
    return ckpt, None


def clean_key(key: str) -> str:
    """Drop every ``_orig_mod.`` segment that ``torch.compile`` wrappers insert."""
    return key.replace(COMPILED_PREFIX, "")


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bare ``GPTMini`` weights from a Lightning checkpoint's ``state_dict``."""
    out = {}
    for key, value in ckpt[CKPT_STATE_DICT].items():
        key = clean_key(key)
        if key.startswith(MODEL_PREFIX):
            out[key[len(MODEL_PREFIX) :]] = value
    return out


def model_config(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> ModelConfig:
    """The ``ModelConfig`` stored by ``GPTMiniModule.on_save_checkpoint`` (or its hparams)."""
    cfg = ckpt.get(CKPT_MODEL_CONFIG)
    if cfg is None:
        cfg = upgrade_hparams(ckpt.get(CKPT_HPARAMS) or {}).get("arch")  # before gptmini_model_config
    if cfg is None:
        raise CheckpointError(f"checkpoint {path} holds no model config; it is not a gptmini checkpoint.")
    return ModelConfig(**cfg)


def _model_from_ckpt(ckpt: dict[str, Any], path: str | Path) -> GPTMini:
    model = GPTMini(model_config(ckpt, path))
    try:
        model.load_state_dict(model_state_dict(ckpt), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its model config: {e}") from e
    return model


def _model_from_folder(folder: Path) -> GPTMini:
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder} is a folder without {' and '.join(missing)}; give a .ckpt file or a folder "
            f"written by `gptmini export`."
        )
    try:
        model = GPTMini(ModelConfig(**json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))))
    except (ValueError, TypeError) as e:  # bad JSON, unknown or invalid fields
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a gptmini model config: {e}") from e
    try:
        # safetensors' load_model knows the tied head (stored once) and checks every key.
        load_safetensors(model, folder / WEIGHTS_FILE, strict=True)
    except (RuntimeError, SafetensorError) as e:
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} does not match {CONFIG_FILE} or is corrupt: {e}"
        ) from e
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> GPTMini:
    """A fresh ``GPTMini`` (eval mode) from a gptmini ``.ckpt`` or an export folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        model = _model_from_folder(path)
    else:
        model = _model_from_ckpt(read_checkpoint(path, map_location), path)
    return model.to(map_location).eval()


def load_model_and_tokenizer(
    path: str | Path, tokenizer: str | Path | None = None, map_location: str | torch.device = "cpu"
):
    """(model in eval mode on ``map_location``, tokenizer) from a ``.ckpt`` or an export folder.

    ``tokenizer`` (a tokenizers JSON file) overrides the stored one, e.g. for checkpoints written
    before gptmini stored it.
    """
    model, tok, _ = load_with_checkpoint(path, tokenizer, map_location)
    return model, tok


def load_with_checkpoint(
    path: str | Path, tokenizer: str | Path | None = None, map_location: str | torch.device = "cpu"
):
    """:func:`load_model_and_tokenizer` and the checkpoint dict it read (None for an export folder):
    a caller that needs more of the checkpoint (the export's model card) reads the file once."""
    path = Path(path).expanduser()
    ckpt = None
    if path.is_dir():
        model = _model_from_folder(path)
        stored = path / TOKENIZER_FILE
        stored_json = stored.read_text(encoding="utf-8") if stored.is_file() else None
    else:
        ckpt = read_checkpoint(path, "cpu")
        model = _model_from_ckpt(ckpt, path)
        stored_json = ckpt.get(CKPT_TOKENIZER)
    if tokenizer is not None:
        tok = load_tokenizer(Path(tokenizer).expanduser(), "--tokenizer")  # eval, generate, export's flag
    elif stored_json is not None:
        tok = tokenizer_from_json(stored_json)
    else:
        raise ConfigError(
            f"{path} holds no tokenizer (written by an older gptmini?); pass --tokenizer "
            f"data_cache/<key>/tokenizer.json, the one the run trained with."
        )
    if tok.get_vocab_size() != model.cfg.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tok.get_vocab_size()} tokens but the model in {path} has "
            f"vocab_size {model.cfg.vocab_size}; use the tokenizer the model was trained with."
        )
    return model.to(map_location).eval(), tok, ckpt
