"""Scoring a model on token streams: loss, perplexity and bits per byte. No Lightning.

Bits per byte (bpb) compares models across tokenizers: the summed token losses (nats) divided by
ln 2 times the UTF-8 bytes those tokens decode to. A model that spreads its probability uniformly
over V tokens scores log2(V) x tokens / bytes.
"""

from __future__ import annotations

import math
from typing import TypeVar

N = TypeVar("N")


def bits_per_byte(nats: N, n_bytes) -> N:
    """Summed token losses in nats over ln 2 x the bytes those tokens decode to."""
    return nats / (math.log(2) * n_bytes)
