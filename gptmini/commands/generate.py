"""Sample text from a trained GPTMini: ``gptmini generate CHECKPOINT --prompt "ROMEO:"``.

Which checkpoint: ``checkpoints/best-step=N.ckpt`` (the lowest val/loss of the run, named at the end
of fit; ``gptmini.callbacks.best.BestCheckpoint``); ``last.ckpt`` is the latest step, the one to
resume training from (it may have begun to overfit).

Also ``python -m gptmini.commands.generate``. CHECKPOINT is a ``.ckpt`` or a folder written by ``gptmini export``;
either is all that is needed: ``GPTMiniModule`` stores the model config and the tokenizer JSON in
every checkpoint it writes (``--tokenizer`` overrides the stored one, e.g. for checkpoints written
before it did). ``--help`` lists every option.
"""

from __future__ import annotations

from gptmini.core.checkpoint import load_model_and_tokenizer
from gptmini.core.config import ConfigError
from gptmini.core.device import resolve_device
from gptmini.core.sampling import SampleConfig, sample
from gptmini.entry import command_main


def generate(
    checkpoint: str,
    prompt: str = "",
    # Defaults are SampleConfig's (one home); --help shows the values.
    max_new_tokens: int = SampleConfig.max_new_tokens,
    temperature: float = SampleConfig.temperature,
    top_k: int | None = SampleConfig.top_k,
    top_p: float | None = SampleConfig.top_p,
    stop_at_eot: bool = SampleConfig.stop_at_eot,
    seed: int = SampleConfig.seed,
    num_samples: int = 1,
    device: str = "auto",
    tokenizer: str | None = None,
    kv_cache: bool = SampleConfig.kv_cache,
    decode: str | None = SampleConfig.decode,
) -> list[str]:
    """Sample text from a gptmini checkpoint and print it.

    Args:
        checkpoint: A ``.ckpt`` written by ``gptmini fit`` (e.g. runs/tiny/version_0/checkpoints/last.ckpt)
            or a folder written by ``gptmini export``.
        prompt: Text to continue; empty starts a new document.
        max_new_tokens: Tokens to generate after the prompt.
        temperature: Softmax temperature; 0 is greedy.
        top_k: Sample among the k most likely tokens only; null for the whole vocabulary.
        top_p: Nucleus sampling after temperature and top_k: the fewest most likely tokens whose
            probabilities sum to top_p (0 < top_p <= 1); null for no limit.
        stop_at_eot: End a sample at the end-of-text token (false: always max_new_tokens).
        seed: Seed of the sampler: the same seed, checkpoint and options give the same text.
        num_samples: Independent continuations to print.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        tokenizer: A tokenizers JSON file overriding the one stored in the checkpoint.
        kv_cache: Reuse attention keys/values between steps (false recomputes the context for
            every token: slower, for comparison).
        decode: How a cached token runs: null = a CUDA graph replayed per token on CUDA, the plain
            cached forward on CPU; ``compiled-graph`` compiles the step first (fewer kernels, after
            tens of seconds of compilation); also dynamic, static, compiled (docs/generate.md).
    """
    cfg = SampleConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        stop_at_eot=stop_at_eot, kv_cache=kv_cache, seed=seed, decode=decode,
    )
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
    model, tok = load_model_and_tokenizer(checkpoint, tokenizer, resolve_device(device))
    texts = sample(model, tok, prompt, cfg, num_samples)
    for i, text in enumerate(texts):
        if num_samples > 1:
            print(f"----- sample {i} -----")
        print(prompt + text)
    return texts


def main(args: list[str] | None = None) -> list[str]:
    return command_main(generate, args, "gptmini generate")


if __name__ == "__main__":
    main()
