import math

import pytest
import torch
import torch.nn.functional as F

from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.sampling import SampleConfig, generate_ids


def reference_logits(model: GPTMini, idx: torch.Tensor) -> torch.Tensor:
    """Same weights, written out longhand: explicit masked softmax, RoPE via complex numbers."""
    cfg = model.cfg
    B, T = idx.shape
    hd = cfg.head_dim
    freqs = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2).float() / hd)
    rot = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))  # (T, hd/2)

    def rms(x, g):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * g

    def rope(x):  # (B, H, T, hd), pairs (i, i + hd/2)
        z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :]) * rot
        return torch.cat([z.real, z.imag], dim=-1)

    x = model.tok_emb.weight[idx]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for blk in model.blocks:
        h = rms(x, blk.norm_attn.weight)
        q, k, v = (h @ blk.attn.qkv.weight.T).split(cfg.n_embd, dim=-1)
        q, k, v = (t.view(B, T, cfg.n_head, hd).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + y @ blk.attn.proj.weight.T
        h = rms(x, blk.norm_mlp.weight)
        x = x + F.gelu(h @ blk.mlp.fc.weight.T, approximate="tanh") @ blk.mlp.proj.weight.T
    x = rms(x, model.norm_out.weight)
    return x @ model.tok_emb.weight.T


def test_logits_match_reference():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32)
    model = GPTMini(cfg).eval()
    # Random norm gains so a swapped or missing norm would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    idx = torch.randint(0, cfg.vocab_size, (3, 16))
    logits, _ = model(idx)
    torch.testing.assert_close(logits, reference_logits(model, idx), rtol=1e-4, atol=1e-5)


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPTMini(ModelConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    torch.testing.assert_close(model(idx)[0][:, :8], model(changed)[0][:, :8])


def test_10m_parameter_counts():
    model = GPTMini(ModelConfig())  # the 10m shape is the default
    assert model.num_params(non_embedding=True) == 10_621_824
    assert model.num_params() == 13_693_824
    assert model.lm_head.weight is model.tok_emb.weight
    # Non-persistent RoPE tables: the state dict is weights only.
    assert not any("rope" in k for k in model.state_dict())


def test_init_std_and_scaled_residual_projections():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=2000, n_layer=6, n_head=6, n_embd=384)
    model = GPTMini(cfg)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert all(n.endswith("weight") for n, _ in model.named_parameters())  # no biases


def test_initial_loss_near_ln_vocab_for_10m_shape():
    torch.manual_seed(0)
    model = GPTMini(ModelConfig(block_size=64))  # 10m widths, short context for speed
    idx = torch.randint(0, 8000, (4, 64))
    with torch.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(8000)) < 0.3


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="n_embd.*divisible.*n_head"):
        ModelConfig(n_embd=100, n_head=6)
    with pytest.raises(ValueError, match="model.arch.n_layer"):
        ModelConfig(n_layer=0)


def test_generate_respects_length_and_context():
    torch.manual_seed(0)
    model = GPTMini(ModelConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    cfg = SampleConfig(max_new_tokens=12, top_k=5, stop_at_eot=False)
    out = generate_ids(model, torch.zeros(2, 3, dtype=torch.long), cfg)
    assert out.shape == (2, 15)
