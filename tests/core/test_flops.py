"""gptmini.core.flops: FLOPs per token against counted FLOPs, chip names, peak FLOP/s."""

from __future__ import annotations

import pytest
import torch

from gptmini.core.flops import chip_of, device_peak_flops, flops_per_token
from gptmini.core.model import GPTMini, ModelConfig


def test_flops_per_token_matches_counted_flops():
    """6N + 12LCT against torch's FLOP counter on a real forward + backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64)
    model = GPTMini(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 64))
    # The math backend: its matmuls are counted (the CPU flash kernel is not); norm gains, which
    # 6N includes, are the 0.25% left over.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    counted = counter.get_total_flops() / x.numel()
    assert counted == pytest.approx(flops_per_token(cfg, 64), rel=0.005)
    ten_m = ModelConfig()
    assert flops_per_token(ten_m, 512) == pytest.approx(96.3e6, rel=1e-3)  # the figure
    assert 6 * GPTMini(cfg).num_params() + 12 * 2 * 64 * 64 == flops_per_token(cfg, 64)


@pytest.mark.parametrize(
    ("name", "chip"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100 pcie"),
        ("NVIDIA H100 NVL", "h100 nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_chip_names(name, chip):
    assert chip_of(name) == chip


def test_peak_flops_lookup_and_cpu():
    assert device_peak_flops(torch.device("cpu"), torch.bfloat16) is None
