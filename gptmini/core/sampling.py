"""Sampling from a bare GPTMini: KV cache, temperature, top-k, top-p, stop at end-of-text, seeded. No Lightning.

Past ``block_size`` tokens the context is cropped, never an error: the uncached path feeds the last
``block_size`` tokens at every step (as before); the cached path, once its cache is full, restarts it
from the last ``block_size // 2`` tokens (one re-read of half a context per half a context generated,
instead of a full context per token). The two paths give the same tokens as long as prompt + new
tokens fit in ``block_size``; beyond it they crop differently, so the text differs from there on.

Each cached new token takes one of these decode paths, the same numbers up to float rounding
(:data:`DECODE_PATHS`; ``SampleConfig.decode``, null = :func:`default_decode`): ``dynamic``
(``GPTMini.forward`` with the cache: attention over the filled positions only; the CPU default),
``static`` (``GPTMini.decode_step``: static shapes, the position a device tensor), ``cuda-graph``
(that step captured once per call in a CUDA graph and replayed per token; the CUDA default), and
``compiled`` / ``compiled-graph`` (the step through ``torch.compile`` first: fused kernels, after
tens of seconds of compilation once per process). At batch 1 a token is a few hundred tiny kernels:
eagerly the host's launches are the step time, replayed they are one launch. Why not
``torch.compile(mode="reduce-overhead")`` of the model: it recompiles per shape.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptmini.core.config import ConfigError
from gptmini.core.model import GPTMini, KVCache
from gptmini.core.tokens import EOT

DECODE_PATHS = ("dynamic", "static", "compiled", "cuda-graph", "compiled-graph")
COMPILE_BACKEND = "inductor"  # of the compiled decode paths (tests trace with aot_eager: seconds, not minutes)


@dataclass
class SampleConfig:
    """How to sample continuations."""

    max_new_tokens: int = 200
    """Tokens to generate after the prompt (fewer when a sample stops at the end-of-text token)."""
    temperature: float = 0.8
    """Softmax temperature; lower is more conservative, 0 is greedy (argmax)."""
    top_k: int | None = 50
    """Sample only among the k most likely next tokens; null samples from the whole vocabulary."""
    top_p: float | None = None
    """Nucleus sampling, after temperature and top_k: keep the fewest most likely tokens whose
    probabilities sum to at least top_p (0 < top_p <= 1); null keeps them all."""
    stop_at_eot: bool = True
    """End a sample when it emits the end-of-text token (the token and anything after it are dropped);
    false always generates max_new_tokens, running on into new documents."""
    kv_cache: bool = True
    """Keep each layer's attention keys/values between steps, so a new token costs one position
    instead of the whole context; false recomputes the context every step (slower, for comparison)."""
    decode: str | None = None
    """How a cached token runs: dynamic, static, compiled, cuda-graph or compiled-graph (module
    docstring of gptmini.core.sampling); null = cuda-graph on CUDA, dynamic elsewhere."""
    seed: int = 1337
    """Seed of the sampler's own random generator: the same seed gives the same text."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or null (no limit), got {self.top_k!r}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] or null (no limit), got {self.top_p!r}.")
        if self.decode is not None and self.decode not in DECODE_PATHS:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_PATHS)} or null, got {self.decode!r}.")


def encode_prompt(tokenizer, prompt: str, block_size: int) -> list[int]:
    """Token ids of the prompt; an empty prompt starts a fresh document (the end-of-text token)."""
    ids = tokenizer.encode(prompt).ids
    if not ids:
        eot = tokenizer.token_to_id(EOT)
        if eot is None:
            raise ConfigError("the prompt is empty and the tokenizer has no end-of-text token; give a prompt.")
        ids = [eot]
    if len(ids) > block_size:
        raise ConfigError(
            f"the prompt is {len(ids)} tokens but the model's context (block_size) is {block_size}; "
            f"shorten the prompt to at most {block_size} tokens (roughly {block_size * 3} characters)."
        )
    return ids


def next_token(logits: torch.Tensor, cfg: SampleConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1) ids drawn from last-position logits (B, V): temperature, then top-k, then top-p."""
    logits = logits.float()
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
        # Drop a token when the more likely ones already reach top_p; the most likely always stays.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        probs = probs.masked_fill(drop, 0.0)  # multinomial needs no renormalisation
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def default_decode(device: torch.device | str) -> str:
    """The decode path for a device: the CUDA graph on CUDA, the dynamic forward elsewhere."""
    return "cuda-graph" if torch.device(device).type == "cuda" else "dynamic"


class Decoder:
    """One cached new token per call: logits (B, V) for tok (B, 1) at ``cache.pos``, which it advances."""

    def __init__(self, model: GPTMini, cache: KVCache, path: str) -> None:
        if path not in DECODE_PATHS:
            raise ValueError(f"decode path {path!r}: use one of {DECODE_PATHS}.")
        self.model, self.cache, self.path = model, cache, path
        self.graph: torch.cuda.CUDAGraph | None = None
        self.tok = self.pos = self.out = None  # the static step's inputs and output
        self.step = model.decode_step
        if path.startswith("compiled"):
            # Compiled once per process: dynamo's cache is keyed on decode_step's code and guarded
            # on this model, so later calls (and Decoders) reuse it.
            self.step = torch.compile(model.decode_step, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        if self.path == "dynamic":
            return self.model(tok, cache=self.cache)[0][:, -1]  # forward advances cache.pos
        if self.tok is None:
            self.tok = tok.clone()
            self.pos = torch.full((1,), self.cache.pos, dtype=torch.long, device=tok.device)
            if self.path.endswith("graph"):
                self._capture()
        self.tok.copy_(tok)
        self.pos.fill_(self.cache.pos)  # a fill kernel with the value as its argument: no sync
        if self.graph is not None:
            self.graph.replay()
        else:
            self.out = self._run()
        self.cache.pos += 1
        return self.out

    def _run(self) -> torch.Tensor:
        # sample_ids runs under the force_eager stance (keeps a compiled training model eager);
        # the compiled decode step is ours to run compiled.
        with compile_stance("default"):
            return self.step(self.tok, self.pos, self.cache)

    def _capture(self) -> None:
        """Capture the step at the current position; on failure warn and run it uncaptured."""
        try:
            # Warm-up on a side stream (CUDA's rule before a capture; compilation happens here); it
            # writes this very step's keys/values, which the replay writes again: idempotent.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may be running (TextSamples mid-fit).
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.out = self._run()
            self.graph = graph
        except RuntimeError as e:  # pragma: no cover - CUDA only
            warnings.warn(f"KV-cache decode: CUDA graph capture failed ({e}); decoding uncaptured.", stacklevel=2)
            self.graph = None
            self.path = self.path.removesuffix("-graph") if self.path != "cuda-graph" else "static"


@torch.no_grad()
def generate_ids(
    model: GPTMini,
    idx: torch.Tensor,
    cfg: SampleConfig,
    generator: torch.Generator | None = None,
    eot_id: int | None = None,
    decode: str | None = None,
) -> torch.Tensor:
    """idx (B, T) followed by up to ``cfg.max_new_tokens`` sampled tokens, (B, T + n).

    With ``cfg.stop_at_eot`` and an ``eot_id``, each row stops at its own end-of-text token: it is
    padded with ``eot_id`` after that, and generation ends early once every row has stopped.
    ``decode`` picks the cached path (module docstring); None: ``cfg.decode``, else :func:`default_decode`.
    """
    block = model.cfg.block_size
    stop = cfg.stop_at_eot and eot_id is not None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
    cache = model.new_cache() if cfg.kv_cache else None
    logits = model(idx[:, -block:], cache=cache)[0][:, -1]  # (B, V)
    path = decode or cfg.decode or default_decode(idx.device)
    step_fn = None if cache is None else Decoder(model, cache, path)
    for step in range(cfg.max_new_tokens):
        nxt = next_token(logits, cfg, generator)  # (B, 1)
        if stop:
            nxt = nxt.masked_fill(done[:, None], eot_id)
            done |= nxt[:, 0] == eot_id
        idx = torch.cat((idx, nxt), dim=1)
        if step == cfg.max_new_tokens - 1 or (stop and bool(done.all())):
            break
        if cache is None:
            logits = model(idx[:, -block:])[0][:, -1]
        elif cache.pos < block:
            logits = step_fn(nxt)
        else:  # full: restart from the latest half context (see the module docstring)
            cache.reset()
            logits = model(idx[:, -max(1, block // 2) :], cache=cache)[0][:, -1]
    return idx


def compile_stance(stance: str) -> contextlib.AbstractContextManager:
    """``torch.compiler.set_stance(stance)``, or nothing when Dynamo was never imported: then nothing
    in this process is compiled, and setting a stance would import it (~1 s of CPU per generate)."""
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return torch.compiler.set_stance(stance)


def sample_ids(
    model: GPTMini, ids: list[int], cfg: SampleConfig, num_samples: int = 1, eot_id: int | None = None
) -> torch.Tensor:
    """(num_samples, len(ids) + n) token ids: the prompt ``ids`` and its continuations (n <= max_new_tokens).

    Uses its own ``torch.Generator`` seeded with ``cfg.seed``: repeatable, and the global RNG streams
    (training's shuffling, dropout) are left untouched. Rows stop at ``eot_id`` (see generate_ids).
    """
    device = next(model.parameters()).device
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)  # (N, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        # Eager even when training compiled the model in place (GPTMiniModule's `compile`): every new
        # context length would otherwise recompile, or re-capture CUDA graphs.
        with compile_stance("force_eager"):
            return generate_ids(model, idx, cfg, generator, eot_id)
    finally:
        model.train(was_training)


def sample(model: GPTMini, tokenizer, prompt: str, cfg: SampleConfig, num_samples: int = 1) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (prompt excluded), decoded to text."""
    ids = encode_prompt(tokenizer, prompt, model.cfg.block_size)
    eot = tokenizer.token_to_id(EOT)
    out = sample_ids(model, ids, cfg, num_samples, eot)  # (N, T + n)
    texts = []
    for row in out[:, len(ids) :].tolist():
        if cfg.stop_at_eot and eot in row:
            row = row[: row.index(eot)]
        texts.append(tokenizer.decode(row))
    return texts
