"""``gptmini fit --config configs/10m.yaml`` (or ``python -m gptmini.cli fit ...``): LightningCLI, wiring only."""

from __future__ import annotations

import sys
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from gptmini import commands
from gptmini.callbacks.fault_guard import FaultGuard
from gptmini.callbacks.progress import LossProgressBar
from gptmini.commands import TOOLS, user_errors
from gptmini.core.config import ConfigError
from gptmini.core.tokenizer import vocab_of
from gptmini.train import before_fit, resume
from gptmini.train.datamodule import GPTMiniData
from gptmini.train.module import GPTMiniModule
from gptmini.train.names import did_you_mean

# Show each dataclass field's docstring in --help.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


class GPTMiniParser(LightningArgumentParser):
    """Adds a did-you-mean to unknown-key errors and turns off argparse's prefix matching (which
    would silently take ``--trainer.max_step`` for ``--trainer.max_steps``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        super().error(message + did_you_mean(message, _keys(self)), ex)


def _keys(parser: Any) -> list[str]:
    """Every option name of a parser and of its subcommands' parsers."""
    keys = []
    for action in parser._actions:
        if isinstance(action.dest, str):
            keys.append(action.dest)
        if isinstance(getattr(action, "choices", None), dict):  # subcommands: name -> parser
            keys += [k for sub in action.choices.values() if hasattr(sub, "_actions") for k in _keys(sub)]
    return keys


class SaveConfigToCheckpoint(SaveConfigCallback):
    """LightningCLI's config.yaml in the log folder, and the same resolved config in every checkpoint."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Dumped once: the config is fixed once fit starts, and each dump takes ~0.2 s of host time.
        if getattr(self, "_dumped", None) is None:
            self._dumped = self.parser.dump(self.config, skip_none=False)
        checkpoint["gptmini_config"] = self._dumped


class GPTMiniCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # GPTMiniModule has no test_step/predict_step, so `test`/`predict` could only fail; each
        # subcommand parser also costs seconds to build on every start.
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def before_fit(self) -> None:
        """Fail on bad settings now, before data preparation or any step (see gptmini.train.before_fit)."""
        trainer = self.trainer
        ckpt = self._resolve_ckpt_path()
        if ckpt and ckpt.endswith(".ckpt"):
            self._resume_settings(ckpt, trainer.max_steps)
        model = self.model
        before_fit.check_trainer(trainer, model.schedule_cfg.warmup_steps)
        before_fit.check_data_matches_model(self.datamodule, model.model_cfg)
        self._init_from(ckpt)
        self._claim_log_dir()

    def before_validate(self) -> None:
        ckpt = self._resolve_ckpt_path()
        if ckpt and ckpt.endswith(".ckpt"):
            self._resume_settings(ckpt, max_steps=None)
        elif ckpt is None and not self.config_init[self.subcommand].get("init_from"):
            raise ConfigError(
                "validate needs trained weights: add --ckpt_path last (the newest last.ckpt of this "
                "run name) or --ckpt_path path/to/file.ckpt."
            )
        self._init_from(ckpt)
        self._claim_log_dir()

    def _resolve_ckpt_path(self) -> str | None:
        ckpt = before_fit.resolve_ckpt_path(self.config_init[self.subcommand].get("ckpt_path"), self.trainer)
        # `last` resolved across version folders (Lightning's own `last` looks only in this run's
        # new, empty one); the saved config records the file actually used.
        self.config_init[self.subcommand]["ckpt_path"] = ckpt
        self.config[self.subcommand]["ckpt_path"] = ckpt
        return ckpt

    def _claim_log_dir(self) -> None:
        if rank_zero_only.rank == 0:  # other DDP ranks start after rank 0 has created the folder
            before_fit.claim_version(self.trainer)
            before_fit.check_log_dir_free(self.trainer)

    # -- resume and init_from (gptmini.train.resume) ----------------------------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self._args = args

    def _parse_ckpt_path(self) -> None:
        """Keep the user's model settings before LightningCLI puts the checkpoint's over them."""
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path"):
            given = resume.given_values(self.parser, self._args)
            self._user_model = (
                resume.flatten(given.get(sub, {}).get("model") or {}),
                resume.flatten(self.config[sub]["model"]),
            )
        super()._parse_ckpt_path()

    def _resume_settings(self, ckpt_path: str, max_steps: int | None) -> None:
        """Exact resume: the checkpoint's model settings, an error for any the user gave that differ."""
        sub = self.subcommand
        ckpt = before_fit.read_resume_checkpoint(ckpt_path, max_steps)
        given, parsed = self._user_model
        settings = resume.resume_settings(ckpt_path, ckpt["hyper_parameters"], given, parsed)
        resume.check_init_from(ckpt_path, ckpt, self.config[sub].get("init_from"))
        if resume.flatten(settings) != resume.flatten(dict(self.model.hparams)):
            # `last` is found only now (LightningCLI applied nothing) or a runtime key changed.
            # In place: SaveConfigCallback holds self.config[sub] and writes it to config.yaml.
            updated = self.parser.parse_object({sub: {"model": settings}}, self.config)
            self.config[sub]["model"] = updated[sub]["model"]
            self.model = self.config_init[sub]["model"] = type(self.model)(**settings)

    def _init_from(self, ckpt_path: str | None) -> None:
        """``--init_from``: a new run from a checkpoint's model weights (fresh optimizer, step 0)."""
        path = self.config_init[self.subcommand].get("init_from")
        if not path or ckpt_path:  # resuming: the weights come from ckpt_path (checked above)
            return
        path = before_fit.check_checkpoint(path, self.model.model_cfg, flag="--init_from")
        step = resume.load_weights(self.model.model, path)
        rank_zero_info(f"--init_from {path}: model weights of step {step}; new run from step 0.")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always on: stop at non-finite losses, checkpoint on SIGTERM (configured under `fault_guard:`).
        parser.add_lightning_class_args(FaultGuard, "fault_guard")
        # The model's vocab and context are the data's: one source of truth, no mismatch by typo.
        parser.link_arguments("data.block_size", "model.arch.block_size")
        # A given tokenizer file decides the vocab; otherwise data.vocab_size does.
        parser.link_arguments(("data.vocab_size", "data.tokenizer"), "model.arch.vocab_size", vocab_of)
        parser.add_argument(
            "--init_from",
            type=str | None,
            default=None,
            help="Start a new run from this checkpoint's model weights only: step 0, fresh AdamW, "
            "the configured schedule (model.arch must match). To continue a run, use --ckpt_path.",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        before_fit.check_strategy(config.get("strategy"), config.get("accelerator"))
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's default bar syncs with the GPU after every batch to show the loss; swap it
        # for one that reads the loss only when it redraws (see gptmini.callbacks.progress). Any other bar
        # class, or a TQDMProgressBar with non-default settings, is the user's choice: kept.
        callbacks = trainer.callbacks
        for i, cb in enumerate(callbacks):
            if type(cb) is TQDMProgressBar and cb.refresh_rate == 1 and not cb._leave:
                callbacks[i] = LossProgressBar()
        return trainer


# `gptmini generate ...` / `export ...` / `exercises ...`: plain tools, dispatched before LightningCLI parses.
def main(args: list[str] | None = None) -> int:
    """``python -m gptmini.cli ...``: the same commands as the ``gptmini`` script (gptmini.commands)."""
    return commands.main(args)


def make_cli(args: list[str] | None = None, run: bool = True) -> GPTMiniCLI:
    """The Python entry: the CLI object after running its subcommand (or only built: run=False)."""
    with user_errors():
        return GPTMiniCLI(
            GPTMiniModule,
            GPTMiniData,
            # configure_optimizers is the only place optimizers are built: without this,
            # `optimizer:`/`lr_scheduler:` keys would replace it with one group stepped per epoch.
            auto_configure_optimizers=False,
            seed_everything_default=1337,
            parser_class=GPTMiniParser,
            save_config_callback=SaveConfigToCheckpoint,
            # `gptmini --help` names the tools dispatched before this parser (see TOOLS).
            parser_kwargs={"description": "Pretrain GPTMini models (fit, validate). Also: "
                           + ", ".join(f"gptmini {t}" for t in TOOLS) + " (each with --help)."},
            args=args,
            run=run,
        )


if __name__ == "__main__":
    sys.exit(main())
