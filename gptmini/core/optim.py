"""AdamW with the recipe's two parameter groups, as pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gptmini.core.config import NonNegativeFloat, PositiveFloat, UnitIntervalRightOpen, check_fields
from gptmini.core.recipe import BETAS


@dataclass
class OptimConfig:
    """AdamW hyper-parameters."""

    lr: PositiveFloat = 6e-4
    """Peak learning rate (reached at the end of warmup)."""
    weight_decay: NonNegativeFloat = 0.1
    """Decoupled weight decay on weight matrices; embeddings, norm gains and biases get 0."""
    betas: tuple[UnitIntervalRightOpen, UnitIntervalRightOpen] = BETAS
    """AdamW (beta1, beta2); 0.95 reacts faster to loss spikes than the classic 0.999."""
    eps: PositiveFloat = 1e-8
    """AdamW epsilon."""
    fused: bool | None = None
    """Fused AdamW kernel: null = on for CUDA without a grad scaler, off elsewhere."""

    def __post_init__(self) -> None:
        check_fields(self, "model.optim")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into [decay group, no-decay group].

    Rule: weights of ``nn.Linear`` layers decay; everything else (embeddings, including a head
    tied to them, norm gains, biases) does not. Decided by module type, not by name or ndim, so
    a tied head cannot sneak the embedding into the decay group.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.add(id(module.weight))
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_matrix = isinstance(module, nn.Linear) and name == "weight"
            (decay if is_matrix and id(p) not in no_decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def use_fused(cfg: OptimConfig, device: torch.device | str, grad_scaler: bool = False) -> bool:
    """The one home of the fused-AdamW rule: ``cfg.fused`` when set; null = on for CUDA unless a grad
    scaler is active (fp16: Lightning must unscale before clipping, which it refuses for fused)."""
    if cfg.fused is not None:
        return cfg.fused
    return torch.device(device).type == "cuda" and not grad_scaler


def build_adamw(
    model: nn.Module, cfg: OptimConfig, device: torch.device | str | None = None, grad_scaler: bool = False
) -> torch.optim.AdamW:
    """AdamW over the two groups of :func:`param_groups`, fused as :func:`use_fused` decides for
    ``device`` (default: where the model's parameters are)."""
    if device is None:
        device = next(model.parameters()).device
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=use_fused(cfg, device, grad_scaler),
    )
