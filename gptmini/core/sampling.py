"""Sampling from a bare GPTMini: temperature, top-k, seeded. No Lightning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptmini.core.model import GPTMini
from gptmini.core.tokens import EOT


@dataclass
class SampleConfig:
    """How to sample continuations."""

    max_new_tokens: int = 200
    """Tokens to generate after the prompt."""
    temperature: float = 0.8
    """Softmax temperature; lower is more conservative, 0 is greedy (argmax)."""
    top_k: int | None = 50
    """Sample only among the k most likely next tokens; null samples from the whole vocabulary."""
    seed: int = 1337
    """Seed of the sampler's own random generator: the same seed gives the same text."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or null (no limit), got {self.top_k!r}.")


def encode_prompt(tokenizer, prompt: str, block_size: int) -> list[int]:
    """Token ids of the prompt; an empty prompt starts a fresh document (the end-of-text token)."""
    ids = tokenizer.encode(prompt).ids
    if not ids:
        eot = tokenizer.token_to_id(EOT)
        if eot is None:
            raise ValueError("the prompt is empty and the tokenizer has no end-of-text token; give a prompt.")
        ids = [eot]
    if len(ids) > block_size:
        raise ValueError(
            f"the prompt is {len(ids)} tokens but the model's context (block_size) is {block_size}; "
            f"shorten the prompt to at most {block_size} tokens (roughly {block_size * 3} characters)."
        )
    return ids


def sample_ids(model: GPTMini, ids: list[int], cfg: SampleConfig, num_samples: int = 1) -> torch.Tensor:
    """(num_samples, len(ids) + max_new_tokens) token ids: the prompt ``ids`` and its continuations.

    Uses its own ``torch.Generator`` seeded with ``cfg.seed``: repeatable, and the global RNG streams
    (training's shuffling, dropout) are left untouched.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)  # (N, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        # Eager even when training compiled the model in place (GPTMiniModule's `compile`): every new
        # context length would otherwise recompile, or re-capture CUDA graphs.
        with torch.compiler.set_stance("force_eager"):
            return model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator=generator)
    finally:
        model.train(was_training)


def sample(model: GPTMini, tokenizer, prompt: str, cfg: SampleConfig, num_samples: int = 1) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (prompt excluded), decoded to text."""
    ids = encode_prompt(tokenizer, prompt, model.cfg.block_size)
    out = sample_ids(model, ids, cfg, num_samples)  # (N, T + new)
    return [tokenizer.decode(row[len(ids) :].tolist()) for row in out]
