"""How a run starts: from scratch, resumed (``--ckpt_path``) or from weights (``--init_from``).

:func:`start_run` is the one call the CLI makes (in ``before_fit`` / ``before_validate``); every rule
about the two flags is below it.

``--ckpt_path`` continues a run exactly: the model, optimizer and schedule settings are the
checkpoint's. The CLI turns off LightningCLI's own ``_parse_ckpt_path``, which would put the
checkpoint's ``hyper_parameters`` over the parsed model arguments before any hook runs and so drop a
value the user gave without a word; :func:`resume_settings` makes any such difference an error
instead. ``trainer.max_steps`` may change (the cosine is recomputed over the new horizon), and so may
the keys in :data:`RUNTIME_KEYS`, which change how the same math is run.

``--init_from`` starts a new run (step 0, fresh AdamW, the configured schedule) from a checkpoint's
model weights only (nanoGPT's ``init_from``): :func:`load_weights`.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from gptmini.core.checkpoint import (
    flatten,
    model_config,
    model_state_dict,
    peek_checkpoint,
    read_checkpoint,
    upgrade_hparams,
)
from gptmini.core.config import ConfigError
from gptmini.core.formats import (
    CKPT_HPARAMS,
    CKPT_RUN_CONFIG,
    CKPT_STEP,
    CKPT_TOKENIZER,
    LAST_CKPT_GLOB,
    RUN_CONFIG_FILE,
)
from gptmini.train.checkpoint_io import hand_over
from gptmini.train.compat import parse_given
from gptmini.train.run_folder import checkpoint_dir_globs, checkpoint_dirs

# Under `model.`: the user's value applies on resume (same math, other kernels or compilation).
RUNTIME_KEYS = ("compile", "compile_mode", "capture", "optim.fused")
# Under `model.`: set by the CLI from the data settings, never given directly.
LINKED = {"arch.vocab_size": "data.vocab_size", "arch.block_size": "data.block_size"}
# Under `data.`: what makes the validation tokens (validate compares these with the checkpoint's run).
VALIDATE_DATA_KEYS = (
    "data", "tokenizer", "vocab_size", "block_size", "val_fraction", "text_field", "bpe_sample_chars",
    "hf_config", "hf_split", "skip_bad_records",
)



def _own_config(ckpt_path: str | Path) -> str:
    """How to repeat a run's own settings: its saved config.yaml when it is beside the checkpoints."""
    config = Path(ckpt_path).parent.parent / RUN_CONFIG_FILE
    return f"--config {config}" if config.is_file() else "the run's own config"

def start_run(cli: Any, args: Any, max_steps: int | None, need_weights: bool = False) -> str | None:
    """Decide how the run of ``cli`` (a LightningCLI after building trainer, model and data) starts.

    Resolves ``--ckpt_path`` (``last`` across version folders; the saved config then records the
    file actually used); when resuming, puts the checkpoint's settings into the config and, where
    they differ from the parsed ones, rebuilds the module from them (``last`` is found through the
    trainer's loggers, so only after the module was built); with ``--init_from``, loads its weights.

    Args:
        cli: The LightningCLI; its ``config``, ``config_init`` and ``model`` are updated in place
            (SaveConfigCallback holds ``cli.config[subcommand]`` and writes it to config.yaml).
        args: The arguments the CLI parsed (None: ``sys.argv``), read again only when needed.
        max_steps: ``trainer.max_steps`` for fit (a checkpoint already there is an error); None for validate.
        need_weights: Refuse to run without ``--ckpt_path`` or ``--init_from`` (validate).

    Returns:
        The resolved checkpoint path (None without ``--ckpt_path``).
    """
    sub = cli.subcommand
    ckpt_path = resolve_ckpt_path(cli.config_init[sub].get("ckpt_path"), cli.trainer)
    cli.config_init[sub]["ckpt_path"] = cli.config[sub]["ckpt_path"] = ckpt_path
    init_from = cli.config_init[sub].get("init_from")
    if need_weights and ckpt_path is None and not init_from:
        raise ConfigError(
            f"{sub} needs trained weights: add --ckpt_path last (the newest last.ckpt of this "
            "run name) or --ckpt_path path/to/file.ckpt."
        )
    if ckpt_path and ckpt_path.endswith(".ckpt"):
        _resume(cli, args, ckpt_path, max_steps, init_from)
    elif init_from and not ckpt_path:
        path = check_checkpoint(init_from, cli.model.model_cfg, flag="--init_from")
        step = load_weights(cli.model.model, path)
        rank_zero_info(f"--init_from {path}: model weights of step {step}; new run from step 0.")
    return ckpt_path


def _resume(cli: Any, args: Any, path: str, max_steps: int | None, init_from: str | None) -> None:
    """Exact resume: the checkpoint's model settings, an error for any the user gave that differ.
    validate: :func:`_validate_as_trained`."""
    sub = cli.subcommand
    ckpt = read_resume_checkpoint(path, max_steps)
    hand_over(cli.trainer.strategy, path, ckpt)  # Lightning's restore takes it: the file is read once
    hparams = ckpt[CKPT_HPARAMS]
    if sub != "fit":
        _validate_as_trained(cli, args, path, ckpt)
        check_init_from(path, ckpt, init_from)
        return
    parsed = flatten(cli.config[sub]["model"])
    # Only a parsed value that differs from the checkpoint's can be a given one that differs: in the
    # usual resume (the run's own config) the arguments are not read a second time.
    differ = any(
        k in parsed and not _same(parsed[k], v)
        for k, v in flatten(hparams).items()
        if k not in RUNTIME_KEYS and k not in LINKED
    )
    given = flatten(given_values(cli.parser, args).get(sub, {}).get("model") or {}) if differ else {}
    settings = resume_settings(path, hparams, given, parsed)
    check_init_from(path, ckpt, init_from)
    if flatten(settings) != flatten(dict(cli.model.hparams)):
        updated = cli.parser.parse_object({sub: {"model": settings}}, cli.config)
        cli.config[sub]["model"] = updated[sub]["model"]
        cli.model = cli.config_init[sub]["model"] = type(cli.model)(**settings)


def _validate_as_trained(cli: Any, args: Any, path: str, ckpt: dict[str, Any]) -> None:
    """validate with ``--ckpt_path``: the checkpoint's settings, except what cannot change the result.

    Only the settings that decide the number are compared: the model's shape (``model.arch``) and
    the data that becomes the validation tokens (:data:`VALIDATE_DATA_KEYS`, the tokenizer among
    them, from the run's config stored in the checkpoint). A given value that differs is an error
    (another corpus is ``gptmini eval``'s job); everything not given is the checkpoint's. Optimizer
    and schedule settings cannot change a validation: the checkpoint's, whatever was given.
    """
    sub = cli.subcommand
    hparams = ckpt[CKPT_HPARAMS]
    saved_data = (yaml.safe_load(ckpt.get(CKPT_RUN_CONFIG) or "{}") or {}).get("data") or {}
    saved = {f"model.{k}": v for k, v in flatten(hparams.get("arch", {}), "arch.").items() if k not in LINKED}
    saved |= {f"data.{k}": saved_data[k] for k in VALIDATE_DATA_KEYS if k in saved_data}
    parsed = {"model." + k: v for k, v in flatten(cli.config[sub]["model"]).items()}
    parsed |= {"data." + k: v for k, v in flatten(cli.config[sub]["data"]).items()}
    if "data.data" in saved and not _sources_here(saved["data.data"]):
        # The run's corpus is not at its path on this machine (moved, another mount): the given one.
        rank_zero_info(f"{sub}: the run's data.data {saved.pop('data.data')} is not here; using {parsed['data.data']}.")
        saved_data = {k: v for k, v in saved_data.items() if k != "data"}
    differ = [k for k, v in saved.items() if k in parsed and not _same(parsed[k], v)]
    if differ:  # a given value, or a default the checkpoint's replaces? Only then read the arguments again
        given = flatten(given_values(cli.parser, args).get(sub) or {})
        diffs = [f"{k}: checkpoint {_show(saved[k])}, given {_show(given[k])}" for k in differ if k in given]
        if diffs:
            own = _own_config(path)
            raise ConfigError(
                f"{sub} --ckpt_path {path} scores the checkpoint on the model and data it was trained "
                f"with, but {len(diffs)} given setting(s) differ: {'; '.join(diffs)}. Drop them "
                f"({sub} with {own}), or score other text with: gptmini eval {path} --data FILE."
            )
    runtime = {k: v for k, v in flatten(cli.config[sub]["model"]).items() if k in RUNTIME_KEYS}
    model = resume_settings(path, hparams, {}, runtime)
    parsed_data = cli.config[sub]["data"].as_dict()
    data = {**parsed_data, **{k: saved_data[k] for k in VALIDATE_DATA_KEYS if k in saved_data}}
    updated = cli.parser.parse_object({sub: {"model": model, "data": data}}, cli.config)
    cli.config[sub]["model"], cli.config[sub]["data"] = updated[sub]["model"], updated[sub]["data"]
    if flatten(model) != flatten(dict(cli.model.hparams)):
        cli.model = cli.config_init[sub]["model"] = type(cli.model)(**model)
    if not all(_same(data[k], parsed_data.get(k)) for k in data):
        cli.datamodule = cli.config_init[sub]["data"] = type(cli.datamodule)(**data)
    _check_tokenizer(path, ckpt, cli.datamodule)


def _sources_here(data: Any) -> bool:
    """Whether every local source of a ``data.data`` value exists here (None: the embedded corpus)."""
    items = data if isinstance(data, list) else [data]
    return all(x is None or str(x).startswith("hf:") or Path(str(x)).expanduser().exists() for x in items)


def _check_tokenizer(path: str, ckpt: dict[str, Any], datamodule: Any) -> None:
    """The tokenizer validate would use, when it exists already (data.tokenizer, or a prepared
    cache), is the one stored in the checkpoint: other ids would make the loss meaningless."""
    stored = ckpt.get(CKPT_TOKENIZER)
    file = getattr(datamodule, "tokenizer_file", None) or getattr(datamodule, "tokenizer_path", None)
    if stored is None or file is None or not Path(file).is_file():
        return
    if json.loads(Path(file).read_text(encoding="utf-8")) != json.loads(stored):
        raise ConfigError(
            f"--ckpt_path {path} was trained with another tokenizer than {file} (its token ids "
            f"would mean other tokens); validate with the run's data settings (its config.yaml), or "
            f"give its tokenizer as data.tokenizer."
        )


def given_values(parser: ArgumentParser, args: Any) -> Namespace:
    """The settings the user gave (config files and command line), without parser defaults.

    jsonargparse fills defaults and linked values on every parse, so a second parse with
    ``defaults=False`` and links off tells a given value from a default (even one that equals it).
    """
    return parse_given(parser, args)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return float(a) == float(b)
    return a == b


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def resume_settings(
    path: str, hparams: dict[str, Any], given: dict[str, Any], parsed: dict[str, Any]
) -> dict[str, Any]:
    """The model arguments a resumed run uses: the checkpoint's, with the user's runtime keys.

    Args:
        path: The checkpoint (for the message).
        hparams: Its ``hyper_parameters`` (the module's arguments, plain dicts).
        given: The model keys the user gave, flattened (``optim.lr``), from :func:`given_values`.
        parsed: The model arguments as parsed before the checkpoint's replaced them, flattened
            (defaults and linked values included).

    Raises:
        ConfigError: listing every key the user gave, or the data settings linked into the model,
            that differ from the checkpoint's.
    """
    saved = flatten(hparams)
    diffs = []
    for key, value in saved.items():
        if key in RUNTIME_KEYS:
            continue
        if key in LINKED:
            if key in parsed and not _same(parsed[key], value):
                diffs.append(
                    f"{LINKED[key]}: checkpoint model.{key} {_show(value)}, this run {_show(parsed[key])}"
                )
        elif key in given and not _same(given[key], value):
            diffs.append(f"model.{key}: checkpoint {_show(value)}, given {_show(given[key])}")
    if diffs:
        own = _own_config(path)
        raise ConfigError(
            f"--ckpt_path {path} resumes a run exactly, with its own settings, but {len(diffs)} "
            f"differ: {'; '.join(diffs)}. Drop them (resume with {own}), or start a new run from "
            f"these weights with new optimizer/schedule settings: --init_from {path} instead of "
            f"--ckpt_path."
        )
    effective = {k: v for k, v in hparams.items() if k not in ("compile", "compile_mode", "capture")}
    effective["optim"] = {**hparams.get("optim", {})}
    for key in RUNTIME_KEYS:
        group, _, leaf = key.rpartition(".")
        if key in parsed:
            (effective[group] if group else effective)[leaf] = parsed[key]
    return effective


def check_init_from(ckpt_path: str, ckpt: dict[str, Any], init_from: str | None) -> None:
    """With ``--ckpt_path``, ``init_from`` may only be the one the checkpoint's run started from
    (it is in that run's config.yaml); the weights then come from the checkpoint."""
    if not init_from:
        return
    saved = yaml.safe_load(ckpt.get(CKPT_RUN_CONFIG) or "{}") or {}
    if saved.get("init_from") != init_from:
        raise ConfigError(
            f"--init_from {init_from} and --ckpt_path {ckpt_path} both given: --ckpt_path continues "
            f"a run (its weights, optimizer and step), --init_from starts a new one from weights; "
            f"drop one."
        )


def load_weights(model: torch.nn.Module, path: str) -> int:
    """Copy a checkpoint's model weights into ``model`` (a bare GPTMini), strictly; returns the
    checkpoint's step (for the log line). Optimizer state, schedule and step are not read."""
    ckpt = read_checkpoint(path)  # CheckpointError (a ConfigError) names the file
    try:
        model.load_state_dict(model_state_dict(ckpt), strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"--init_from {path}: its weights do not fit this model ({' '.join(str(e).split())[:300]}); "
            f"set model.arch to the checkpoint's (see its run's config.yaml)."
        ) from None
    return int(ckpt.get(CKPT_STEP, 0))


# -- the checkpoint to start from ------------------------------------------------------------------


def resolve_ckpt_path(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """``last`` -> the newest readable checkpoint of this run name, by step; a path must exist. Else unchanged.

    The run: of the folders the run's checkpoints live in (one per ``version_N``), the one written
    last (a resumed run writes on in a new folder; a new run of the same name starts again at step
    0, so steps alone cannot compare folders). In it, the highest ``global_step`` wins, read from
    each file memory-mapped (no tensor data); at equal steps ``last*.ckpt``, then the newest file.
    A ``last.ckpt`` is not always the newest: a kill while it is overwritten leaves the older one
    beside an intact ``epoch=0-step=N.ckpt`` saved just before it. Unreadable files are skipped,
    with a warning naming them when they are newer than the one taken.
    """
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry") or ckpt_path.startswith("registry:"):
        return ckpt_path
    if ckpt_path != "last":  # a file
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"--ckpt_path {ckpt_path} does not exist; give an existing .ckpt file, `last`, or drop it."
            )
        return str(path)

    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile (a live run's save_top_k rotation)
            return 0.0

    def last_then_newest(paths: Any) -> list[Path]:
        return sorted(paths, key=lambda p: (fnmatch.fnmatch(p.name, LAST_CKPT_GLOB), mtime(p)), reverse=True)

    # Hidden temp files of interrupted saves (".last.ckpt.tmp-...") never match "*.ckpt".
    folders = [[p for p in d.glob("*.ckpt") if p.is_file()] for d in checkpoint_dirs(trainer)]
    folders = sorted((f for f in folders if f), key=lambda f: max(map(mtime, f)), reverse=True)
    if not folders:
        looked = ", ".join(str(Path(g) / "*.ckpt") for g in checkpoint_dir_globs(trainer))
        raise ConfigError(
            f"--ckpt_path last: no checkpoint found (looked for {looked}); drop --ckpt_path to start "
            f"a new run, or give the checkpoint file."
        )
    problems: dict[Path, str] = {}
    for files in folders:
        steps = {}
        for p in files:
            ckpt, problem = peek_checkpoint(p)
            if problem is None:
                steps[p] = int(ckpt.get(CKPT_STEP, 0))
            else:
                problems[p] = problem
        if not steps:
            continue
        best = max(steps, key=lambda p: (steps[p], fnmatch.fnmatch(p.name, LAST_CKPT_GLOB), mtime(p)))
        newer = [p for p in last_then_newest(problems) if mtime(p) > mtime(best)]
        if newer:
            rank_zero_warn(
                f"--ckpt_path last: {newer[0]} cannot be read ({problems[newer[0]]}); using {best}, "
                f"the newest readable checkpoint of this run."
            )
        rank_zero_info(f"--ckpt_path last: {best} (step {steps[best]})")
        return str(best)
    found = "; ".join(f"{p} cannot be read ({problems[p]})" for p in last_then_newest(problems))
    raise ConfigError(
        f"--ckpt_path last: no readable checkpoint of this run: {found}. Give another "
        f"checkpoint file, or drop --ckpt_path to start a new run."
    )


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
