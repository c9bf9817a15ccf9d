"""``python -m gptmini.cli fit --config configs/10m.yaml``: LightningCLI, wiring only."""

from __future__ import annotations

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from gptmini.data import GPTMiniData, vocab_of
from gptmini.module import GPTMiniModule

# Show each dataclass field's docstring in --help.
set_parsing_settings(docstring_parse_attribute_docstrings=True)


class GPTMiniCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model's vocab and context are the data's: one source of truth, no mismatch by typo.
        parser.link_arguments("data.block_size", "model.model.block_size")
        # A given tokenizer file decides the vocab; otherwise data.vocab_size does.
        parser.link_arguments(("data.vocab_size", "data.tokenizer"), "model.model.vocab_size", vocab_of)


def main(args: list[str] | None = None, run: bool = True) -> GPTMiniCLI:
    return GPTMiniCLI(
        GPTMiniModule,
        GPTMiniData,
        # configure_optimizers is the only place optimizers are built: without this,
        # `optimizer:`/`lr_scheduler:` keys would replace it with one group stepped per epoch.
        auto_configure_optimizers=False,
        seed_everything_default=1337,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
