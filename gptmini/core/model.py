"""GPTMini: a small decoder-only transformer, as a plain ``nn.Module``.

Pre-norm blocks (RMSNorm -> causal self-attention -> residual, RMSNorm -> MLP -> residual), rotary
position embeddings, no biases, and the token embedding tied to the output head.

Why RoPE rather than learned positions: it adds no parameters (so the 10m shape is exactly the
10.6M non-embedding / 13.7M total the recipe quotes), it is what current small-model recipes
(Llama, litgpt's defaults) use, and it lets attention see relative offsets directly.

This module imports nothing from Lightning: it can be trained by any loop and loaded for inference
from a checkpoint's ``state_dict`` alone. Generation passes a :class:`KVCache` to ``forward`` so that each
new token costs one position, not the whole context; training never does, and its path is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptmini.core.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    VocabSize,
    check_fields,
)
from gptmini.core.losshead import linear_cross_entropy


@dataclass
class ModelConfig:
    """Shape of a GPTMini model."""

    vocab_size: VocabSize = 8000
    """Number of token ids the embedding and the output head cover (must match the tokenizer)."""
    block_size: PositiveInt = 512
    """Longest context (tokens) the model attends over; RoPE tables are built for this length."""
    n_layer: PositiveInt = 6
    """Number of transformer blocks."""
    n_head: PositiveInt = 6
    """Attention heads per block; ``n_embd`` must be divisible by it."""
    n_embd: PositiveInt = 384
    """Width of the residual stream."""
    mlp_ratio: PositiveInt = 4
    """Hidden width of the MLP as a multiple of ``n_embd``."""
    rope_base: PositiveFloat = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: NonNegativeFloat = 1e-5
    """Epsilon inside RMSNorm."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the normal init; residual projections use init_std / sqrt(2 * n_layer)."""

    def __post_init__(self) -> None:
        check_fields(self, "model.arch")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.arch.n_embd ({self.n_embd}) must be divisible by model.arch.n_head ({self.n_head}); "
                f"pick n_head from the divisors of n_embd."
            )
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ConfigError(
                f"model.arch.n_embd / model.arch.n_head = {self.n_embd // self.n_head} must be even for rotary "
                f"embeddings; change n_embd or n_head."
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# model.kernels.attention names -> torch's SDPA backends (torch.nn.attention.sdpa_kernel).
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


@dataclass
class KernelConfig:
    """How the model's math runs on the device: the same function, other kernels (scripts/bench.py
    measures each; docs/performance.md has the figures). Not part of the architecture: checkpoints
    and exports load without it."""

    attention: str | None = None
    """SDPA backend for training's causal attention: flash, efficient, cudnn or math (CUDA; math also
    on CPU); null lets torch choose (flash for bf16 on recent GPUs)."""
    loss_chunk_tokens: NonNegativeInt = 0
    """0: the plain head (the (B, T, V) logits are kept for backward); N > 0: a chunked linear +
    cross-entropy over N tokens at a time that keeps no logits (gptmini.core.losshead). Training
    only: with no autograd (validation, sampling) the plain head runs."""

    def __post_init__(self) -> None:
        check_fields(self, "model.kernels")
        if self.attention is not None and self.attention not in SDPA_BACKENDS:
            raise ConfigError(
                f"model.kernels.attention is {self.attention!r}; use one of {sorted(SDPA_BACKENDS)} or null."
            )

    def sdpa_backends(self) -> list[SDPBackend] | None:
        return None if self.attention is None else [SDPA_BACKENDS[self.attention]]


def rope_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim // 2) for rotary embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim of x (B, H, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, hd/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of the positions processed so far, one buffer pair per layer (generation only).

    Buffers are allocated on first use with the keys' dtype and device and hold ``block_size``
    positions; ``pos`` is how many are filled. Who fills it decides what happens when it is full
    (gptmini.core.sampling restarts it from the latest tokens, see ``reset``).
    """

    def __init__(self, n_layer: int, block_size: int) -> None:
        self.block_size = block_size
        self.pos = 0
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) at positions pos..pos+T-1 of ``layer``; all keys/values so far."""
        B, H, T, hd = k.shape
        end = self.pos + T
        assert end <= self.block_size, "the caller must reset a full cache"
        if self.k[layer] is None:
            # Zeros, not empty: the static decode step (GPTMini.decode_step) reads the whole buffer
            # and masks what is not filled yet; a masked NaN would still poison the sum.
            self.k[layer] = k.new_zeros(B, H, self.block_size, hd)
            self.v[layer] = v.new_zeros(B, H, self.block_size, hd)
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, H, end, hd)

    def write_at(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one position's k, v (B, H, 1, hd) at ``pos`` (a (1,) device tensor, no host read);
        the whole buffers (B, H, block_size, hd). The buffers exist already (the prompt filled them)."""
        self.k[layer].index_copy_(2, pos, k)
        self.v[layer].index_copy_(2, pos, v)
        return self.k[layer], self.v[layer]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.proj.is_residual_proj = True  # scaled init, see GPTMini._init_weights
        self.sdpa_backends: list[SDPBackend] | None = None  # KernelConfig.attention; None: torch's choice

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None and self.sdpa_backends is None:  # training and uncached sampling
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        elif cache is None:  # a chosen backend (dynamo traces sdpa_kernel since torch 2.5)
            with sdpa_kernel(self.sdpa_backends):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif at is not None:  # GPTMini.decode_step: one token at a device-side position
            pos, visible = at
            k, v = cache.write_at(layer, k, v, pos)  # (B, H, block_size, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # positions <= pos only
        else:
            start = cache.pos
            k, v = cache.update(layer, k, v)  # (B, H, start + T, hd)
            if T == 1:  # one new token sees every cached position: no mask
                y = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # is_causal aligns top-left; new tokens need the bottom-right triangle
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.n_embd
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=False)
        self.proj.is_residual_proj = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm_mlp = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), cos, sin, cache, layer, at)  # (B, T, C)
        x = x + self.mlp(self.norm_mlp(x))  # (B, T, C)
        return x



def count_params(module: nn.Module) -> int:
    """The one parameter count: each parameter once (``parameters()`` skips a tied one's second name)."""
    return sum(p.numel() for p in module.parameters())

class GPTMini(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: KernelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_out = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying: one matrix, counted once
        cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_base)
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        self.set_kernels(kernels or KernelConfig())

    def set_kernels(self, kernels: KernelConfig) -> None:
        """Choose the attention backend and the loss head (same results, other kernels)."""
        self.kernels = kernels
        for block in self.blocks:
            block.attn.sdpa_backends = kernels.sdpa_backends()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.cfg.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_proj", False):
                # GPT-2: keep the residual stream's variance from growing with depth.
                std = std / math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; the tied head is counted once. non_embedding drops the token table."""
        n = count_params(self)
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def new_cache(self) -> KVCache:
        """An empty KV cache for :meth:`forward` (generation)."""
        return KVCache(self.cfg.n_layer, self.cfg.block_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V) and, given targets (B, T), the mean CE loss.

        With ``kernels.loss_chunk_tokens`` and autograd on, the loss comes from the chunked head
        and the logits are None: training never materialises them (callers with targets drop them).

        With a ``cache``, idx holds only the positions after the ``cache.pos`` already cached (RoPE
        continues from there), the cache is extended by T, and logits are for the last position
        only, (B, 1, V): all that sampling needs.
        """
        B, T = idx.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.cfg.block_size:
            raise ValueError(
                f"sequence length {start + T} exceeds model.arch.block_size {self.cfg.block_size}; "
                f"crop the input or raise block_size."
            )
        x = self.tok_emb(idx)  # (B, T, C)
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, hd/2)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.pos += T
            x = x[:, -1:]  # (B, 1, C)
        x = self.norm_out(x)  # (B, T, C)
        chunk = self.kernels.loss_chunk_tokens
        if targets is not None and chunk and torch.is_grad_enabled():
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, chunk)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            # Under autocast cross_entropy runs in fp32 by itself; no explicit upcast copy needed.
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def decode_step(self, tok: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Last-position logits (B, V) for one new token per row, tok (B, 1), at position ``pos`` (a
        (1,) long tensor on the model's device); its keys/values go into ``cache`` (positions before
        ``pos`` filled by a cached ``forward`` first). ``cache.pos`` is the caller's to advance.

        The same numbers as ``forward(tok, cache=cache)`` up to float rounding, but with static shapes
        and no host reads: attention runs over the whole cache buffer with the positions after
        ``pos`` masked, so one CUDA graph captured once replays every step (gptmini.core.sampling).
        """
        x = self.tok_emb(tok)  # (B, 1, C)
        cos, sin = self.rope_cos.index_select(0, pos), self.rope_sin.index_select(0, pos)  # (1, hd/2)
        visible = torch.arange(self.cfg.block_size, device=pos.device) <= pos  # (block_size,)
        at = (pos, visible[None, None, None, :])  # mask (1, 1, 1, block_size)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer, at)  # (B, 1, C)
        return self.lm_head(self.norm_out(x))[:, -1]  # (B, V)
