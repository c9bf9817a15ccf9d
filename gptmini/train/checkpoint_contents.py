"""The one writer of a checkpoint's gptmini contents, and the keeper of the run record.

:class:`CheckpointContents` is a callback the module itself adds (``GPTMiniModule.configure_callbacks``,
Lightning's way for a module to bring callbacks), so every run has it, through the CLI or a plain
``Trainer``. It counts the training tokens and records each validation (the run record,
:class:`gptmini.core.formats.RunRecord`), and on every save fills all ``gptmini_*`` keys through
:func:`gptmini.core.checkpoint.write_gptmini_keys`: the format version, the model config, the run
record, the tokenizer and, under the CLI, the resolved config. On resume it restores the record.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback

from gptmini.core.checkpoint import write_gptmini_keys
from gptmini.core.formats import META_CORPUS_KEYS, RunRecord


class RunConfigSource(SaveConfigCallback):
    """LightningCLI's config.yaml in the log folder; its resolved config is also what checkpoints hold
    (read by :class:`CheckpointContents`, which writes it)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # validate logs into its run's validate/ folder, again at each validation: the latest config.
        self.overwrite = self.overwrite or stage == "validate"
        super().setup(trainer, pl_module, stage)

    def run_config(self) -> str:
        # Dumped once: the config is fixed once fit starts, and each dump takes ~0.2 s of host time.
        if getattr(self, "_dumped", None) is None:
            self._dumped = self.parser.dump(self.config, skip_none=False)
        return self._dumped


class CheckpointContents(Callback):
    """Fills every ``gptmini_*`` checkpoint key; keeps the run record (tokens seen, validations, corpus)."""

    def __init__(self) -> None:
        self.record = RunRecord()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        meta = getattr(trainer.datamodule, "meta", None)  # GPTMiniData's meta.json; other data: none
        if callable(meta):
            info = meta()
            self.record.corpus = {k: info.get(k) for k in META_CORPUS_KEYS}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Here, not in training_step: the step-0 checks call training_step outside the loop.
        self.record.tokens_seen += batch[0].numel() * trainer.world_size

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before ModelCheckpoint's save of this validation (Lightning runs checkpoint callbacks last).
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        entry = {"step": trainer.global_step}
        entry.update({k: float(metrics[k]) for k in ("val/loss", "val/bpb") if k in metrics})
        if "val/loss" in entry:
            self.record.val.append(entry)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        tok_path = getattr(trainer.datamodule, "tokenizer_path", None)
        tokenizer_json = tok_path.read_text(encoding="utf-8") if tok_path is not None and tok_path.is_file() else None
        source = next((cb for cb in trainer.callbacks if isinstance(cb, RunConfigSource)), None)
        run_config = source.run_config() if source is not None else None
        write_gptmini_keys(checkpoint, pl_module.model_cfg, self.record, tokenizer_json, run_config)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        corpus = self.record.corpus
        self.record = RunRecord.of(checkpoint)
        self.record.corpus = self.record.corpus or corpus
