"""A callback that writes generated text to TensorBoard at each validation.

Reading samples next to the loss curve shows what a given loss means: at 5 nats the model babbles
frequent tokens, near 2 it writes names, line breaks and verse. Configure it in the YAML:

    callbacks:
      - class_path: gptmini.callbacks.samples.TextSamples
        init_args: {prompts: ["ROMEO:", ""], max_new_tokens: 64}
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from gptmini.callbacks.interface import recipe_module
from gptmini.core.config import ConfigError
from gptmini.core.sampling import SampleConfig, sample
from gptmini.train.compat import uses_fsdp


def _markdown_block(text: str) -> str:
    # TensorBoard renders text as Markdown; indenting by 4 spaces makes a code block that keeps
    # line breaks and stops `*` or `#` in the sample from being read as formatting.
    return "\n".join("    " + line for line in text.splitlines() or [""])


class TextSamples(Callback):
    def __init__(
        self,
        prompts: list[str] | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        stop_at_eot: bool = True,
        seed: int = 1337,
        print_to_console: bool = False,
    ) -> None:
        """Generate a few samples after each validation and log them as TensorBoard text.

        Args:
            prompts: One sample per prompt; ``""`` starts a new document. Null: ``[""]``.
            max_new_tokens: Tokens generated per sample.
            temperature: Softmax temperature (0 = greedy).
            top_k: Sample among the k most likely tokens; null for the whole vocabulary.
            top_p: Nucleus sampling after temperature and top_k (0 < top_p <= 1); null for no limit.
            stop_at_eot: End a sample at the end-of-text token.
            seed: Seed of the sampler's own generator, the same at every validation so that samples
                differ only because the weights changed. Training's RNG streams are not touched.
            print_to_console: Also print the samples (rank 0).
        """
        super().__init__()
        self.prompts = [""] if prompts is None else list(prompts)
        if not self.prompts:
            raise ConfigError('TextSamples.prompts is empty; give at least one prompt ("" is fine).')
        self.cfg = SampleConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            stop_at_eot=stop_at_eot, seed=seed,
        )
        self.print_to_console = print_to_console
        self._tokenizer = None
        self._warned = False

    def _get_tokenizer(self, trainer: pl.Trainer):
        if self._tokenizer is None:
            path = getattr(getattr(trainer, "datamodule", None), "tokenizer_path", None)
            if path is None or not path.is_file():
                return None
            from gptmini.core.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(path)
        return self._tokenizer

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if uses_fsdp(trainer):
            # Sharded weights: a forward on rank 0 alone would wait forever for the other ranks.
            if not self._warned:
                rank_zero_warn("TextSamples is skipped under FSDP; sample from a checkpoint instead.")
                self._warned = True
            return
        tok = self._get_tokenizer(trainer)
        if tok is None:
            return  # no GPTMiniData (e.g. a custom datamodule): nothing to decode with
        module = recipe_module(pl_module)
        if module is None:
            return  # no GPTMini to sample from
        texts = [sample(module.model, tok, p, self.cfg)[0] for p in self.prompts]
        step = trainer.global_step
        for i, (prompt, text) in enumerate(zip(self.prompts, texts)):
            body = f"step {step}, prompt {prompt!r}:\n\n" + _markdown_block(prompt + text)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text(f"samples/{i}", body, global_step=step)
            if self.print_to_console:
                rank_zero_info(f"[sample {i} @ step {step}] {prompt + text}")
