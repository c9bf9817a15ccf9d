"""Sample text from a trained GPTMini: ``python -m gptmini.generate CHECKPOINT --prompt "ROMEO:"``.

Which checkpoint: ``checkpoints/best-step=N.ckpt`` (the lowest val/loss of the run, named at the end
of fit; ``gptmini.callbacks.best.BestCheckpoint``); ``last.ckpt`` is the latest step, the one to
resume training from (it may have begun to overfit).

The checkpoint is all that is needed: ``GPTMiniModule`` stores the model config and the tokenizer
JSON in every checkpoint it writes (``--tokenizer`` overrides the stored one, e.g. for checkpoints
written before it did). ``--help`` lists every option.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gptmini.core.checkpoint import CheckpointError, model_config, model_state_dict, read_checkpoint
from gptmini.core.model import GPTMini
from gptmini.core.sampling import SampleConfig, sample
from gptmini.core.tokenizer import load_tokenizer, tokenizer_from_json


def load_for_generation(checkpoint: str | Path, tokenizer: str | Path | None = None, device: str = "cpu"):
    """(model in eval mode on ``device``, tokenizer) from a gptmini checkpoint."""
    ckpt = read_checkpoint(checkpoint, map_location="cpu")
    model = GPTMini(model_config(ckpt, checkpoint))
    try:
        model.load_state_dict(model_state_dict(ckpt), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {checkpoint} does not match its model config: {e}") from e
    if tokenizer is not None:
        tok = load_tokenizer(Path(tokenizer).expanduser())
    elif "gptmini_tokenizer" in ckpt:
        tok = tokenizer_from_json(ckpt["gptmini_tokenizer"])
    else:
        raise ValueError(
            f"checkpoint {checkpoint} holds no tokenizer (written by an older gptmini); pass "
            f"--tokenizer data_cache/<key>/tokenizer.json, the one the run trained with."
        )
    if tok.get_vocab_size() != model.cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.get_vocab_size()} tokens but the model in {checkpoint} has "
            f"vocab_size {model.cfg.vocab_size}; use the tokenizer the model was trained with."
        )
    return model.to(device).eval(), tok


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu.")
    return device


def generate(
    checkpoint: str,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 1337,
    num_samples: int = 1,
    device: str = "auto",
    tokenizer: str | None = None,
) -> list[str]:
    """Sample text from a gptmini checkpoint and print it.

    Args:
        checkpoint: A ``.ckpt`` file written by ``gptmini.cli fit`` (e.g. runs/tiny/version_0/checkpoints/last.ckpt).
        prompt: Text to continue; empty starts a new document.
        max_new_tokens: Tokens to generate after the prompt.
        temperature: Softmax temperature; 0 is greedy.
        top_k: Sample among the k most likely tokens only; null for the whole vocabulary.
        seed: Seed of the sampler: the same seed, checkpoint and options give the same text.
        num_samples: Independent continuations to print.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        tokenizer: A tokenizers JSON file overriding the one stored in the checkpoint.
    """
    cfg = SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    model, tok = load_for_generation(checkpoint, tokenizer, resolve_device(device))
    texts = sample(model, tok, prompt, cfg, num_samples)
    for i, text in enumerate(texts):
        if num_samples > 1:
            print(f"----- sample {i} -----")
        print(prompt + text)
    return texts


def main(args: list[str] | None = None) -> list[str]:
    from jsonargparse import CLI

    try:
        return CLI(generate, args=args)
    except ValueError as e:  # user errors (CheckpointError included): the message, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
