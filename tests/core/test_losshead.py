"""The chunked linear + cross-entropy head (gptmini.core.losshead) and model.kernels: the same loss and
gradients as the plain head, no logits kept, and traceable by torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptmini.core.config import ConfigError
from gptmini.core.losshead import linear_cross_entropy
from gptmini.core.model import GPTMini, KernelConfig, ModelConfig


def _inputs(n: int = 37, c: int = 24, v: int = 101, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(v, c, generator=g)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    return x, w, t


def _loss_and_grads(fn, x, w, t):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = fn(x, w, t)
    loss.backward()
    return loss.detach(), x.grad, w.grad


def _plain(x, w, t):
    return F.cross_entropy(F.linear(x, w), t)


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])  # one token, uneven chunks, exact, one chunk
def test_chunked_matches_plain_in_loss_and_gradients_fp32(chunk):
    x, w, t = _inputs()
    ref = _loss_and_grads(_plain, x, w, t)
    got = _loss_and_grads(lambda x, w, t: linear_cross_entropy(x, w, t, chunk), x, w, t)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_matches_plain_under_bf16_autocast():
    """bf16 matmuls, fp32 softmax: as nn.Linear + cross_entropy under autocast, to bf16 rounding."""
    x, w, t = _inputs(n=64, c=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(_plain, x, w, t)
        got = _loss_and_grads(lambda x, w, t: linear_cross_entropy(x, w, t, 16), x, w, t)
    assert all(g.dtype == torch.float32 for g in got)  # gradients land in the parameters' dtype
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-4)


def test_scaled_upstream_gradient_is_honoured():
    x, w, t = _inputs()
    ref = _loss_and_grads(lambda x, w, t: 3.0 * _plain(x, w, t), x, w, t)
    got = _loss_and_grads(lambda x, w, t: 3.0 * linear_cross_entropy(x, w, t, 5), x, w, t)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _tiny(kernels: KernelConfig | None = None) -> GPTMini:
    torch.manual_seed(0)
    return GPTMini(ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32), kernels)


def test_model_with_chunked_head_trains_like_the_plain_head():
    """Same loss and the same gradient on every parameter (the tied embedding/head included); no
    logits returned in training, the plain ones without autograd."""
    idx = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    plain, chunked = _tiny(), _tiny(KernelConfig(loss_chunk_tokens=7))
    logits_p, loss_p = plain(x, y)
    logits_c, loss_c = chunked(x, y)
    assert logits_p is not None and logits_c is None
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-6, atol=1e-6)
    loss_p.backward()
    loss_c.backward()
    for (name, a), b in zip(chunked.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # validation: the plain head, logits included
        logits, loss = chunked(x, y)
    assert logits is not None
    torch.testing.assert_close(loss, loss_p.detach(), rtol=1e-6, atol=1e-6)


def test_chunked_head_traces_under_torch_compile():
    """Dynamo + AOTAutograd trace the autograd.Function (aot_eager: no code generation, seconds)."""
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    x, y = idx[:, :-1], idx[:, 1:]
    ref = _tiny(KernelConfig(loss_chunk_tokens=8))
    model = _tiny(KernelConfig(loss_chunk_tokens=8))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(x, y)[1]
    loss.backward()
    ref_loss = ref(x, y)[1]
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.tok_emb.weight.grad, ref.tok_emb.weight.grad, rtol=1e-5, atol=1e-7)


def test_attention_backend_is_applied_and_checked():
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = _tiny()(idx)[0]
        got = _tiny(KernelConfig(attention="math"))(idx)[0]  # the one backend every CPU has
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="No viable backend"), torch.no_grad():
        _tiny(KernelConfig(attention="efficient"))(idx)  # CUDA-only kernel: proves the choice is applied
    with pytest.raises(ConfigError, match="model.kernels.attention"):
        KernelConfig(attention="flashy")
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        KernelConfig(loss_chunk_tokens=-1)
