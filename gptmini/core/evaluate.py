"""Scoring a model on a token stream: loss, perplexity and bits per byte. No Lightning.

Bits per byte (bpb) compares models across tokenizers: the summed token losses (nats) divided by
ln 2 times the UTF-8 bytes those tokens decode to. A model that spreads its probability uniformly
over V tokens scores log2(V) x tokens / bytes.

A stream longer than the model's context is scored in windows of ``block_size`` tokens whose
starts are ``stride`` apart, each token scored once (Hugging Face's perplexity guide): the first
window scores all its targets, each later one only the targets the previous windows did not
reach, with up to ``block_size - stride`` tokens of context before them. ``stride = block_size``
(the default) gives the disjoint windows of ``fit``'s validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from gptmini.core.config import ConfigError

N = TypeVar("N")


def bits_per_byte(nats: N, n_bytes) -> N:
    """Summed token losses in nats over ln 2 x the bytes those tokens decode to."""
    return nats / (math.log(2) * n_bytes)


def window_plan(n_tokens: int, block_size: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """``(begin, end, scored)`` per window: inputs ``tokens[begin:end]``, targets
    ``tokens[begin + 1 : end + 1]``, of which the last ``scored`` are scored. Every target position
    1 .. n_tokens - 1 is scored exactly once."""
    if not 1 <= stride <= block_size:
        raise ConfigError(f"stride must be between 1 and the model's block_size {block_size}, got {stride}.")
    last, prev, begin = n_tokens - 1, 0, 0
    while prev < last:
        end = min(begin + block_size, last)
        yield begin, end, end - prev
        prev, begin = end, begin + stride


@dataclass
class Score:
    """What :func:`score_tokens` measured; ``bytes``/``bpb`` are None without a byte table."""

    tokens: int
    nats: float
    bytes: int | None
    windows: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)

    @property
    def bpb(self) -> float | None:
        return bits_per_byte(self.nats, self.bytes) if self.bytes else None


def _batches(plan: Iterator[tuple[int, int, int]], batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive windows of one length, at most batch_size at a time (only the last is shorter)."""
    batch: list[tuple[int, int, int]] = []
    for w in plan:
        if batch and (len(batch) == batch_size or w[1] - w[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


@torch.no_grad()
def score_tokens(
    model: torch.nn.Module,
    tokens: np.ndarray,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    byte_table: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> Score:
    """Score every token of ``tokens`` after the first (see the module docstring for the windows).

    ``model`` is a ``GPTMini`` in eval mode (its device is used); ``byte_table`` is
    ``gptmini.core.tokenizer.token_byte_lengths`` of its tokenizer; ``progress(n)`` gets the
    tokens scored by each batch.
    """
    block = model.cfg.block_size
    if len(tokens) < 2:
        raise ConfigError(f"the data holds {len(tokens)} token(s); scoring needs at least 2.")
    plan = window_plan(len(tokens), block, stride or block)
    device = next(model.parameters()).device
    table = None if byte_table is None else torch.as_tensor(byte_table, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    scored_total = windows = 0
    for batch in _batches(plan, batch_size):
        rows = np.stack([np.asarray(tokens[b : e + 1]) for b, e, _ in batch]).astype(np.int64)
        xy = torch.from_numpy(rows).to(device)
        x, y = xy[:, :-1], xy[:, 1:]  # (B, T)
        logits = model(x)[0]  # (B, T, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        T = y.size(1)
        scored = torch.tensor([s for _, _, s in batch], device=device)
        mask = torch.arange(T, device=device) >= (T - scored)[:, None]  # the last `scored` of each row
        nats += ce[mask].double().sum()
        if table is not None:
            n_bytes += table[y[mask]].sum()
        windows += len(batch)
        done = sum(s for _, _, s in batch)
        scored_total += done
        if progress is not None:
            progress(done)
    return Score(
        tokens=scored_total,
        nats=float(nats),
        bytes=int(n_bytes) if table is not None else None,
        windows=windows,
    )
