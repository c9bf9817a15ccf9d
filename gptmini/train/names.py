"""Names: what gptmini calls its settings and classes now, and what users may call them instead.

The one rename table: settings other trainers name differently (``ALIASES``), and the keys and class
paths earlier gptmini versions used (``MOVED``; the keys: ``gptmini.core.checkpoint.RENAMED_KEYS``;
CHANGELOG.md).
:func:`did_you_mean` turns an unknown-key or unknown-class error into one that names the new name.
"""

from __future__ import annotations

import difflib
import re

# The key renames live in core, beside the one checkpoint loader that applies them.
from gptmini.core.checkpoint import RENAMED_KEYS, upgrade_hparams

__all__ = ["ALIASES", "MOVED", "RENAMED_KEYS", "did_you_mean", "new_name", "upgrade_hparams"]

_KEY = re.compile(r"--([A-Za-z_][\w.]*)|'([A-Za-z_][\w.]*)'")
# Names other trainers use for our settings: a typo check cannot find these by spelling.
ALIASES = {
    "learning_rate": "lr",
    "wd": "weight_decay",
    "warmup": "warmup_steps",
    "warmup_iters": "warmup_steps",
    "max_iters": "max_steps",
    "num_steps": "max_steps",
    "grad_clip": "gradient_clip_val",
    "clip_grad": "gradient_clip_val",
    "grad_accum": "accumulate_grad_batches",
    "gradient_accumulation_steps": "accumulate_grad_batches",
    "context_length": "block_size",
    "seq_len": "block_size",
    "n_layers": "n_layer",
    "n_heads": "n_head",
    "d_model": "n_embd",
    "batch": "batch_size",
    "min_lr": "min_lr_ratio",
}


# Class paths of the flat layout (gptmini/<module>.py) -> today's. Modules that were split list each
# class; whole-module moves map the module prefix.
MOVED = {
    "gptmini.checks.InitialLossCheck": "gptmini.callbacks.first_batch.InitialLossCheck",
    "gptmini.checks.OverfitCheck": "gptmini.callbacks.first_batch.OverfitCheck",
    "gptmini.checks.LRCurveCheck": "gptmini.callbacks.lr_curve.LRCurveCheck",
    "gptmini.checks.Checklist": "gptmini.callbacks.checklist.Checklist",
    "gptmini.checks.SanityCheckError": "gptmini.callbacks.checks_shared.SanityCheckError",
    "gptmini.throughput.ThroughputLogger": "gptmini.callbacks.throughput.ThroughputLogger",
    "gptmini.data.GPTMiniData": "gptmini.train.datamodule.GPTMiniData",
    "gptmini.resilience.FaultGuard": "gptmini.callbacks.fault_guard.FaultGuard",
    "gptmini.samples.": "gptmini.callbacks.samples.",
    "gptmini.progress.": "gptmini.callbacks.progress.",
    "gptmini.module.": "gptmini.train.module.",
    "gptmini.preflight.": "gptmini.train.setting_checks.",  # its checks; the checkpoint/folder parts moved on (train.resume, train.run_folder)
    "gptmini.model.": "gptmini.core.model.",
    "gptmini.optim.": "gptmini.core.optim.",
    "gptmini.schedule.": "gptmini.core.schedule.",
    "gptmini.checkpoint.": "gptmini.core.checkpoint.",
    "gptmini.plainloop.": "gptmini.core.plainloop.",
    "gptmini.curves.": "gptmini.tools.curves.",
    "gptmini.exercises.": "gptmini.tools.exercises.",
}
_CLASS_PATH = re.compile(r"\bgptmini(?:\.\w+)+")


def new_name(old: str) -> str | None:
    """Today's key or class path for one an earlier version used, else None."""
    if old in MOVED:
        return MOVED[old]
    for table in (MOVED, RENAMED_KEYS):
        for before, after in table.items():
            if before.endswith(".") and old.startswith(before):
                return after + old[len(before) :]
    return None


def _suggest(word: str, known: list[str]) -> str | None:
    renamed = new_name(word)
    if renamed in known:
        return renamed
    match = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
    if match:
        return match[0]
    group, _, leaf = word.rpartition(".")
    alias = ALIASES.get(leaf)
    if alias:
        same_leaf = [k for k in known if k == alias or k.endswith("." + alias)]
        if same_leaf:  # prefer the one in the same group
            return max(same_leaf, key=lambda k: len(_common_prefix(k, group)))
    return None


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def did_you_mean(message: str, known: list[str]) -> str:
    """' Did you mean ...?' for unknown keys in a jsonargparse error message, else ''."""
    words = [a or b for a, b in _KEY.findall(message)]
    # "Group 'model' does not accept option 'optim.learning_rate'" names the key in two parts.
    group = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    if group:
        words.append(f"{group.group(1)}.{group.group(2)}")
    hints = []
    for word in words:
        if word in known:
            continue
        hint = _suggest(word, known)
        if hint and hint not in hints:
            hints.append(hint)
    moves = []
    for path in dict.fromkeys(_CLASS_PATH.findall(message)):
        target = new_name(path)
        if target and target != path:
            moves.append(f"{path} is now {target}")
    out = f" Did you mean {' or '.join(hints)}?" if hints else ""
    if moves:
        out += "\nMoved: " + "; ".join(moves) + ' (CHANGELOG.md).'
    return out
