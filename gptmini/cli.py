"""``gptmini fit --config configs/10m.yaml`` (or ``python -m gptmini.cli fit ...``): LightningCLI, wiring only."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from gptmini.core.startup import collector_paused, freeze_if_program

with collector_paused():  # Lightning's import: ~1 s less CPU per process (gptmini.core.startup)
    from jsonargparse import set_loader
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

    from gptmini.callbacks.fault_guard import FaultGuard
    from gptmini.callbacks.progress import LossProgressBar
    from gptmini.core.config import load_yaml_unique
    from gptmini.core.model import count_params
    from gptmini.core.step import use_tf32_matmuls
    from gptmini.core.tokenizer import vocab_of
    from gptmini.entry import COMMANDS, run_command, user_errors
    from gptmini.train import compat, launcher, ranks, resume, run_folder, setting_checks
    from gptmini.train.checkpoint_contents import RunConfigSource
    from gptmini.train.checkpoint_io import use_atomic_checkpoint_io
    from gptmini.train.datamodule import GPTMiniData
    from gptmini.train.logs import quiet_adverts
    from gptmini.train.module import GPTMiniModule
    from gptmini.train.names import did_you_mean
    from gptmini.train.profiler import NoProfiler
    from gptmini.train.step_hooks import SkipUnusedStepHooks


# The parser mode of every gptmini parser: YAML that refuses a key given twice (gptmini.core.config).
PARSER_MODE = "gptmini_yaml"


class GPTMiniParser(LightningArgumentParser):
    """Adds a did-you-mean to unknown-key errors, refuses a config that gives a key twice, and turns
    off argparse's prefix matching (which would silently take ``--trainer.max_step`` for
    ``--trainer.max_steps``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        set_loader(PARSER_MODE, load_yaml_unique)  # idempotent; here, not at import time
        kwargs.setdefault("parser_mode", PARSER_MODE)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        hint = did_you_mean(message, _keys(self)).strip()
        message = f"{hint} {message}" if hint else message  # the fix first, then what was wrong
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)  # raises: nothing printed
        # jsonargparse prints the whole usage first (86 lines for fit), burying the one line that
        # matters: the error, then where the options are listed.
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = "gptmini " + parser.prog.split()[-1] if " " in parser.prog else "gptmini"
        print(f"error: {message}", file=sys.stderr)
        print(f"tip: `{prog} --help` lists every option.", file=sys.stderr, flush=True)
        self.exit(2)


def _keys(parser: Any) -> list[str]:
    """Every option name of a parser and of its subcommands' parsers."""
    keys = []
    for action in compat.parser_actions(parser):
        if isinstance(action.dest, str):
            keys.append(action.dest)
        if isinstance(getattr(action, "choices", None), dict):  # subcommands: name -> parser
            keys += [k for sub in action.choices.values() if compat.parser_actions(sub) for k in _keys(sub)]
    return keys


class GPTMiniCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # GPTMiniModule has no test_step/predict_step, so `test`/`predict` could only fail; each
        # subcommand parser also costs seconds to build on every start.
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def before_fit(self) -> None:
        """Fail on bad settings now, before data preparation or any step (see gptmini.train.setting_checks)."""
        setting_checks.check_writable(self.trainer, self.datamodule)
        ckpt_path = resume.start_run(self, self._args, self.trainer.max_steps)
        if rank_zero_only.rank == 0 and ckpt_path and ckpt_path.endswith(".ckpt"):
            # Before any folder is claimed: a second resume of a live run stops here (one line).
            run_folder.lock_run(run_folder.run_folder_of(ckpt_path), f"fit --ckpt_path {ckpt_path}")
        setting_checks.check_trainer(self.trainer, self.model.schedule_cfg.warmup_steps)
        setting_checks.check_data_matches_model(self.datamodule, self.model.model_cfg)
        self._claim_log_dir()
        if rank_zero_only.rank == 0:
            run_folder.remove_stale_temps(self.trainer)  # of saves a hard kill interrupted
            run_folder.warn_if_disk_too_small(self.trainer, count_params(self.model))

    def before_validate(self) -> None:
        setting_checks.check_writable(self.trainer, self.datamodule)
        ckpt_path = resume.start_run(self, self._args, max_steps=None, need_weights=True)
        # Logs go beside the run the checkpoint belongs to (run/validate/), not into a new run folder.
        why = run_folder.log_validation_beside(self.trainer, ckpt_path or self.config[self.subcommand].get("init_from"))
        if why and rank_zero_only.rank == 0:
            run_folder.claim_version(self.trainer)
            rank_zero_info(f"validate: logging to a new run folder, {ranks.own_log_dir(self.trainer)}: {why}.")

    def _claim_log_dir(self) -> None:
        if rank_zero_only.rank == 0:  # other DDP ranks start after rank 0 has created the folder
            run_folder.claim_version(self.trainer)
            run_folder.check_log_dir_free(self.trainer)
            log_dir = ranks.own_log_dir(self.trainer)  # rank 0 alone, before fit: no collective
            if log_dir and "://" not in str(log_dir):  # a live fit's folder: not for another run to resume from
                run_folder.lock_run(log_dir, f"fit writing {log_dir}")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        with warnings.catch_warnings():
            # make_cli(args) is the whole command line: the calling script's own sys.argv (bench.py's
            # --rounds, gpu_check's) is not for this parser, so Lightning's both-given warning is noise.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)
        self._args = args  # resume.start_run reads the given values again only when it must

    def _parse_ckpt_path(self) -> None:  # compat.PARSE_CKPT_PATH_HOOK
        """Off: LightningCLI's would put a checkpoint's hyper_parameters over the parsed model settings
        before any hook, dropping the user's silently; gptmini.train.resume.start_run decides them."""

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
        setting_checks.check_strategy(config.get("strategy"), config.get("accelerator"))
        trainer = super().instantiate_trainer(**kwargs)
        # Before fit sets up the device: TF32 matmuls on CUDA (and no Lightning advice line about it).
        use_tf32_matmuls(trainer.strategy.root_device)
        # Crash-safe checkpoint files (temp file in the folder, fsync, rename; gptmini.train.checkpoint_io),
        # unless the user configured a CheckpointIO plugin of their own.
        use_atomic_checkpoint_io(trainer.strategy)
        # Lightning's default bar syncs with the GPU after every batch to show the loss; swap it
        # for one that reads the loss only when it redraws (see gptmini.callbacks.progress). Any other bar
        # class, or a TQDMProgressBar with non-default settings, is the user's choice: kept.
        callbacks = trainer.callbacks
        for i, cb in enumerate(callbacks):
            if compat.is_default_progress_bar(cb):
                callbacks[i] = LossProgressBar()
        # The default no-op profiler, minus its cost on every hook call (gptmini.train.profiler).
        if type(trainer.profiler) is PassThroughProfiler:
            trainer.profiler = NoProfiler()
        # Lightning dispatches every per-step hook to every callback, defined or not: skip the empty
        # ones from train start to teardown (gptmini.train.step_hooks).
        if not any(isinstance(cb, SkipUnusedStepHooks) for cb in callbacks):
            callbacks.append(SkipUnusedStepHooks())
        return trainer


def main(args: list[str] | None = None) -> int:
    """``python -m gptmini.cli ...``: the same commands as the ``gptmini`` script (gptmini.commands):
    a plain command (``generate ...``, gptmini.entry.COMMANDS) or fit/validate."""
    argv = sys.argv[1:] if args is None else list(args)
    launcher.follow_launcher()  # a torchrun worker ends with its launcher (docs/clusters.md)
    if not run_command(argv):
        freeze_if_program()  # what the parser and the fit import next: the imports so far frozen
        make_cli(args)  # None: LightningCLI reads sys.argv itself (no args-and-argv warning)
    return 0


def shows_help(argv: list[str]) -> bool:
    """Whether this command line prints help text (``--help``, ``--model.help X``, ``--print_config``):
    only then does the parser read each dataclass field's docstring (~0.5 s of CPU otherwise spent)."""
    options = (a.split("=", 1)[0] for a in argv)
    return any(o in ("-h", "--help") or o.endswith(".help") or o.startswith("--print_config") for o in options)


def make_cli(args: list[str] | None = None, run: bool = True) -> GPTMiniCLI:
    """The Python entry: the CLI object after running its subcommand (or only built: run=False)."""
    quiet_adverts()
    docs = shows_help(sys.argv[1:] if args is None else args)  # each field's docstring in --help
    with user_errors(), run_folder.owned_folders(), compat.attribute_docstrings(docs):
        return GPTMiniCLI(
            GPTMiniModule,
            GPTMiniData,
            # configure_optimizers is the only place optimizers are built: without this,
            # `optimizer:`/`lr_scheduler:` keys would replace it with one group stepped per epoch.
            auto_configure_optimizers=False,
            seed_everything_default=1337,
            parser_class=GPTMiniParser,
            save_config_callback=RunConfigSource,
            # `gptmini --help` names the plain commands dispatched before this parser (see COMMANDS).
            parser_kwargs={"description": "Pretrain GPTMini models (fit, validate). Also: "
                           + ", ".join(f"gptmini {t}" for t in COMMANDS) + " (each with --help)."},
            args=args,
            run=run,
        )


if __name__ == "__main__":
    sys.exit(main())
