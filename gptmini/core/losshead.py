"""The output head and its loss without (B, T, V) logits held for backward: chunked linear + cross-entropy.

Plain ``F.cross_entropy(lm_head(x))`` keeps the (B*T, V) logits (bf16 under autocast) and their fp32
log-softmax for backward: at the 10m shape (B32 T512 V8000) about 0.8 GB written and read back per
step. :func:`linear_cross_entropy` walks the tokens in chunks instead and, in the forward pass,
computes each chunk's loss *and* its gradients with respect to the hidden states and the head's
weight (the Liger / Apple "cut cross-entropy" trick); backward only scales them by the incoming
gradient. The FLOPs are the plain path's (three matmuls per chunk), nothing is recomputed, and at
most one chunk's logits are alive at a time.

Why our own: torch's ``F.linear_cross_entropy(options=LinearCrossEntropyOptions())`` first ships in
torch 2.13, and the GPUs we measure on run 2.11; swap it in once 2.13 is the floor (the test
``tests/core/test_losshead.py`` holds either to the plain loss and gradients).

Autocast: the matmuls run under the caller's autocast (bf16 inside ``bf16-mixed``) exactly as
``nn.Linear`` would; the log-softmax and the gradient of the logits are fp32, as ``F.cross_entropy``
computes them under autocast. No Lightning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        # x (N, C), weight (V, C), targets (N,); runs without grad tracking (autograd.Function).
        n = x.size(0)
        loss = x.new_zeros((), dtype=torch.float32)
        grad_x = torch.empty_like(x)  # (N, C)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)  # (V, C), summed over chunks in fp32
        for start in range(0, n, chunk):
            xc, tc = x[start : start + chunk], targets[start : start + chunk]  # (n_c, C), (n_c,)
            low = F.linear(xc, weight)  # (n_c, V): autocast picks the matmul dtype, as for nn.Linear
            logits = low.float()
            lse = torch.logsumexp(logits, dim=-1)  # (n_c,)
            loss = loss + (lse - logits.gather(1, tc[:, None])[:, 0]).sum()
            # d(mean CE)/d logits = (softmax - one_hot) / N, fp32 like cross_entropy's backward.
            g = (logits - lse[:, None]).exp_()  # (n_c, V)
            g.scatter_add_(1, tc[:, None], g.new_full((tc.size(0), 1), -1.0))
            g.div_(n)
            g = g.to(low.dtype)  # what nn.Linear's backward would receive
            grad_x[start : start + chunk] = (g @ weight.to(g.dtype)).to(x.dtype)  # (n_c, C)
            grad_w += (g.t() @ xc.to(g.dtype)).float()  # (V, C)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_out, grad_w * grad_out, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T`` (x (..., C), weight (V, C)) against ``targets`` (...),
    ``chunk`` tokens at a time, without keeping the logits for backward.

    Equal to ``F.cross_entropy(F.linear(x, weight).flatten(0, -2), targets.flatten())`` within float
    rounding, in value and in the gradients of x and weight. Without autograd (validation,
    ``torch.no_grad``) it is exactly that plain expression: nothing is kept then anyway.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 token, got {chunk}.")
    x2, t = x.reshape(-1, x.size(-1)), targets.reshape(-1)  # (N, C), (N,)
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.cross_entropy(F.linear(x2, weight), t)
    return _LinearCrossEntropy.apply(x2, weight, t, chunk)
