"""CUDA-only checks (the `gpu` marker: skipped without a device; scripts/gpu_check.py runs them):
generation with and without the KV cache on the captured decode path, and exact resume on CUDA.
The captured training step against eager and a CLI fit with every callback live with the captured
step's own tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import attribute_docstrings_off, scalars_by_step
from test_resume import run_args

from gptmini.cli import main
from gptmini.core import sampling
from gptmini.core.checkpoint import read_checkpoint
from gptmini.core.model import GPTMini

pytestmark = pytest.mark.gpu


@pytest.fixture
def exact_fp32():
    """fp32 matmuls without TF32 (a fit may have set `high`): argmax ties must not hinge on rounding."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 20}])
def test_generate_with_and_without_the_cache_equal_on_cuda(tiny_model_cfg, exact_fp32, settings):
    torch.manual_seed(0)
    model = GPTMini(tiny_model_cfg).cuda().eval()
    prompt = torch.randint(0, tiny_model_cfg.vocab_size, (2, 5), device="cuda")
    n_new = tiny_model_cfg.block_size - prompt.size(1)  # within the context: every path sees the same one

    def run(kv: bool, decode: str | None) -> torch.Tensor:
        cfg = sampling.SampleConfig(n_new, kv_cache=kv, seed=3, stop_at_eot=False, **settings)
        gen = torch.Generator(device="cuda").manual_seed(3)
        return sampling.generate_ids(model, prompt, cfg, gen, decode=decode).cpu()

    uncached = run(False, None)
    assert torch.equal(run(True, None), uncached)  # the default on CUDA: the captured decode step
    for decode in ("static", "dynamic"):
        assert torch.equal(run(True, decode), uncached), decode


def test_compiled_and_captured_decode_gives_the_uncached_tokens_on_cuda(tiny_model_cfg, exact_fp32):
    """decode=compiled-graph: the step through inductor, then captured (greedy, within the context)."""
    torch.manual_seed(0)
    model = GPTMini(tiny_model_cfg).cuda().eval()
    prompt = torch.randint(0, tiny_model_cfg.vocab_size, (1, 5), device="cuda")
    cfg = sampling.SampleConfig(tiny_model_cfg.block_size - 5, temperature=0.0, stop_at_eot=False)
    cached = sampling.generate_ids(model, prompt, cfg, decode="compiled-graph").cpu()
    uncached = sampling.generate_ids(model, prompt, replace(cfg, kv_cache=False)).cpu()
    assert torch.equal(cached, uncached)


def test_decode_step_is_captured_and_replayed_on_cuda(tiny_model_cfg):
    torch.manual_seed(0)
    model = GPTMini(tiny_model_cfg).cuda().eval()
    prompt = torch.randint(0, tiny_model_cfg.vocab_size, (1, 4), device="cuda")
    with torch.no_grad():
        cache = model.new_cache()
        model(prompt, cache=cache)
        decoder = sampling.Decoder(model, cache, sampling.default_decode(prompt.device))
        a = decoder(prompt[:, -1:]).clone()
        b = decoder(prompt[:, -1:]).clone()
    assert decoder.path == "cuda-graph" and decoder.graph is not None  # no silent fallback
    assert cache.pos == 6 and not torch.equal(a, b)  # two positions: the replay moved on


def test_resume_on_cuda_is_exact(tmp_path, corpus_file, data_cache):
    """A SIGTERM at step 6 on CUDA, `--ckpt_path last`: the resumed run logs exactly the steps after
    the checkpoint, with the uninterrupted run's losses and lr."""
    cuda = ["--trainer.accelerator=cuda"]
    with attribute_docstrings_off():
        main(run_args(tmp_path / "ref", corpus_file, data_cache) + cuda)
    (ref_run,) = (tmp_path / "ref" / "runs" / "tiny").iterdir()
    ref = scalars_by_step(ref_run)

    root = tmp_path / "cut"
    with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
        main(run_args(root, corpus_file, data_cache, fault={"at_step": 6, "kind": "sigterm"}) + cuda)
    assert info.value.code == 143
    first = root / "runs" / "tiny" / "version_0"
    assert read_checkpoint(first / "checkpoints" / "last.ckpt")["global_step"] == 7
    with attribute_docstrings_off():
        main(run_args(root, corpus_file, data_cache) + cuda + ["--ckpt_path=last"])
    got = scalars_by_step(root / "runs" / "tiny" / "version_1")

    steps = sorted(got["train/loss"])
    assert steps == [s for s in sorted(ref["train/loss"]) if s >= 7], steps
    worst = max(abs(ref["train/loss"][s] - got["train/loss"][s]) / abs(ref["train/loss"][s]) for s in steps)
    # Not bitwise: CUDA's embedding and attention backward add with atomics, so two uninterrupted
    # runs already differ in the last bits; a wrong restore (lr, optimizer moments, data order) is
    # off by 1e-2 and more.
    assert worst <= 1e-4, f"largest relative loss difference {worst:.3g}"
    for tag in [t for t in ref if t.startswith("lr")]:
        for s, v in got[tag].items():
            assert v == pytest.approx(ref[tag][s], rel=1e-12, abs=0), (tag, s)
    print(f"\nCUDA resume from step 7: largest relative loss difference {worst:.3g}")
