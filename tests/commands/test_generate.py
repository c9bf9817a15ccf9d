"""Generation: repeatable for a seed, respects top-k and max tokens; the CLI; samples in TensorBoard."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptmini.callbacks.samples import TextSamples
from gptmini.commands import generate as gen
from gptmini.core import sampling
from gptmini.core.config import ConfigError
from gptmini.core.model import GPTMini
from gptmini.core.tokenizer import load_tokenizer
from tests.conftest import tiny_cli_args


@pytest.fixture
def model_and_tok(tiny_data, tiny_model_cfg):
    torch.manual_seed(0)
    model = GPTMini(tiny_model_cfg).eval()
    return model, load_tokenizer(tiny_data.tokenizer_path)


def test_same_seed_same_text_other_seed_other_text(model_and_tok):
    model, tok = model_and_tok
    cfg = sampling.SampleConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=7)
    a = sampling.sample(model, tok, "ROMEO:", cfg, num_samples=2)
    b = sampling.sample(model, tok, "ROMEO:", cfg, num_samples=2)
    c = sampling.sample(model, tok, "ROMEO:", sampling.SampleConfig(20, 1.0, None, seed=8), num_samples=2)
    assert a == b
    assert a != c
    assert a[0] != a[1]  # samples within one call are independent draws


def test_sampling_leaves_global_rng_alone(model_and_tok):
    model, tok = model_and_tok
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sampling.sample(model, tok, "", sampling.SampleConfig(max_new_tokens=5))
    assert torch.equal(torch.rand(3), expected)


def test_compiled_model_samples_eagerly_and_identically(model_and_tok):
    model, tok = model_and_tok
    cfg = sampling.SampleConfig(max_new_tokens=6, seed=2)
    expected = sampling.sample(model, tok, "KING:", cfg)
    model.compile()  # as GPTMiniModule does on CUDA; generation must not trigger compilation
    t0 = time.perf_counter()
    assert sampling.sample(model, tok, "KING:", cfg) == expected
    assert time.perf_counter() - t0 < 5.0  # an inductor compile takes far longer


def test_respects_max_new_tokens(model_and_tok):
    model, tok = model_and_tok
    ids = sampling.encode_prompt(tok, "KING:", model.cfg.block_size)
    for n in (1, 9, 50, 100):  # > block_size 32: the context is cropped, the count still holds
        for kv_cache in (True, False):
            cfg = sampling.SampleConfig(max_new_tokens=n, kv_cache=kv_cache)
            out = sampling.sample_ids(model, ids, cfg, num_samples=3)
            assert out.shape == (3, len(ids) + n)
            assert out[:, : len(ids)].tolist() == [ids] * 3


@pytest.mark.parametrize("k", [1, 5])
def test_respects_top_k(model_and_tok, k):
    model, tok = model_and_tok
    ids = sampling.encode_prompt(tok, "To be", model.cfg.block_size)
    n_new = model.cfg.block_size - len(ids)
    out = sampling.sample_ids(model, ids, sampling.SampleConfig(max_new_tokens=n_new, temperature=2.0, top_k=k, seed=3))
    logits, _ = model(out[:, :-1])  # (1, T-1, V): position t predicts token t + 1
    new_logits = logits[0, len(ids) - 1 :]  # (n_new, V)
    new_tokens = out[0, len(ids) :]  # (n_new,)
    ranks = (new_logits > new_logits.gather(1, new_tokens[:, None])).sum(dim=1)  # 0 = most likely
    assert int(ranks.max()) < k
    if k > 1:
        assert int(ranks.max()) > 0  # at temperature 2 not every pick is the argmax
    greedy = sampling.sample_ids(model, ids, sampling.SampleConfig(max_new_tokens=n_new, temperature=0.0))
    if k == 1:
        assert torch.equal(out, greedy)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 1.0, "top_k": None},
        {"temperature": 0.8, "top_k": 50, "top_p": 0.9},
        {"temperature": 0.0},
    ],
)
def test_kv_cache_gives_the_uncached_tokens(model_and_tok, settings):
    model, tok = model_and_tok
    ids = sampling.encode_prompt(tok, "KING:", model.cfg.block_size)
    n_new = model.cfg.block_size - len(ids)  # fills the context exactly: both paths see the same one
    runs = [
        sampling.sample_ids(model, ids, sampling.SampleConfig(n_new, kv_cache=c, seed=4, **settings), 3)
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    assert runs[0][0].tolist() != runs[0][1].tolist() or settings["temperature"] == 0


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 20}])
def test_static_decode_step_gives_the_dynamic_and_uncached_tokens(model_and_tok, settings):
    """The step that CUDA captures in a graph (GPTMini.decode_step), run eagerly: the same tokens as
    the dynamic cache and no cache within the context, and as the dynamic cache past it (both
    restart the cache from the latest half context)."""
    model, tok = model_and_tok
    ids = sampling.encode_prompt(tok, "KING:", model.cfg.block_size)
    prompt = torch.tensor([ids] * 2)

    def run(n: int, kv: bool, decode: str | None) -> torch.Tensor:
        cfg = sampling.SampleConfig(n, kv_cache=kv, seed=4, stop_at_eot=False, **settings)
        return sampling.generate_ids(model, prompt, cfg, torch.Generator().manual_seed(4), decode=decode)

    n_fit = model.cfg.block_size - len(ids)
    static = run(n_fit, True, "static")
    assert torch.equal(static, run(n_fit, True, "dynamic"))
    assert torch.equal(static, run(n_fit, False, None))
    n_past = 2 * model.cfg.block_size  # two cache restarts
    assert torch.equal(run(n_past, True, "static"), run(n_past, True, "dynamic"))


def test_compiled_decode_step_gives_the_same_tokens_and_is_compiled_under_sample(model_and_tok, monkeypatch):
    """The compiled path (tracing backend recorded: seconds, not an inductor build) gives the static
    step's tokens, and really compiles inside sample_ids' force_eager stance."""
    model, tok = model_and_tok
    compiled: list[int] = []

    def backend(gm, example_inputs):
        compiled.append(len(gm.graph.nodes))
        return gm.forward

    monkeypatch.setattr(sampling, "COMPILE_BACKEND", backend)
    ids = sampling.encode_prompt(tok, "KING:", model.cfg.block_size)
    settings = {"max_new_tokens": model.cfg.block_size + 4, "temperature": 0.0, "stop_at_eot": False}
    static = sampling.sample_ids(model, ids, sampling.SampleConfig(**settings, decode="static"), 2)
    torch.compiler.reset()
    got = sampling.sample_ids(model, ids, sampling.SampleConfig(**settings, decode="compiled"), 2)
    assert compiled, "the decode step ran uncompiled"
    assert torch.equal(got, static)
    torch.compiler.reset()


def test_the_captured_decode_path_is_chosen_on_cuda_only():
    assert sampling.default_decode("cpu") == "dynamic"
    assert sampling.default_decode(torch.device("cuda", 0)) == "cuda-graph"
    with pytest.raises(ValueError, match="decode path"):
        sampling.Decoder(None, None, "graph")
    with pytest.raises(ConfigError, match="decode must be one of"):
        sampling.SampleConfig(decode="graph")


def test_kv_cache_continues_rope_positions(model_and_tok):
    model, _ = model_and_tok
    idx = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.block_size))
    full, _ = model(idx)  # (2, T, V)
    cache = model.new_cache()
    for start, end in [(0, 7), (7, 20), (20, 21), (21, model.cfg.block_size)]:  # prefill, chunk, one, rest
        logits, _ = model(idx[:, start:end], cache=cache)
        assert logits.shape == (2, 1, model.cfg.vocab_size)
        torch.testing.assert_close(logits[:, 0], full[:, end - 1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds model.arch.block_size"):
        model(idx[:, :1], cache=cache)  # full: sampling restarts it instead (see sampling.generate_ids)


def test_top_p_keeps_the_nucleus_only():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    for top_p, kept in [(0.4, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})]:
        cfg = sampling.SampleConfig(temperature=1.0, top_k=None, top_p=top_p)
        drawn = sampling.next_token(logits, cfg, torch.Generator().manual_seed(0))
        assert set(drawn[:, 0].tolist()) == kept, top_p


def test_top_p_boundary_keeps_the_nucleus_that_reaches_top_p_exactly():
    # Sums exact in binary: the more likely tokens reach top_p exactly at the boundary, so the next
    # token is dropped ("the fewest most likely tokens whose probabilities sum to at least top_p").
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    logits = probs.log().expand(4000, 5)
    assert torch.equal(torch.softmax(logits[0], -1), probs)  # no rounding in the way
    for top_p, kept in [(0.5, {0}), (0.75, {0, 1}), (0.875, {0, 1, 2})]:
        cfg = sampling.SampleConfig(temperature=1.0, top_k=None, top_p=top_p)
        drawn = sampling.next_token(logits, cfg, torch.Generator().manual_seed(0))
        assert set(drawn[:, 0].tolist()) == kept, top_p


class _EotIs:
    """The tokenizer, with another token id playing end-of-text."""

    def __init__(self, tok, eot: int) -> None:
        self.tok, self.eot = tok, eot
        self.encode, self.decode = tok.encode, tok.decode

    def token_to_id(self, token: str) -> int:
        return self.eot


def test_stop_at_eot_ends_each_sample_on_its_own(model_and_tok):
    model, tok = model_and_tok
    ids = sampling.encode_prompt(tok, "ROMEO:", model.cfg.block_size)
    free = sampling.SampleConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=9, stop_at_eot=False)
    ref = sampling.sample_ids(model, ids, free, num_samples=4)[:, len(ids) :]  # (4, 20)
    eot = int(ref[0, 3])  # row 0 emits it at step 3 at the latest; other rows later or never
    stop = sampling.SampleConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=9, stop_at_eot=True)
    out = sampling.sample_ids(model, ids, stop, num_samples=4, eot_id=eot)[:, len(ids) :]
    ends = [row.index(eot) if eot in row else None for row in ref.tolist()]
    assert ends[0] <= 3
    longest = 20 if None in ends else max(ends) + 1
    assert out.shape == (4, longest)  # stops once every row has stopped
    for row, ref_row, end in zip(out.tolist(), ref.tolist(), ends):
        if end is None:
            assert row == ref_row
        else:  # the same tokens up to its end-of-text, then padding with it
            assert row == ref_row[: end + 1] + [eot] * (longest - end - 1)
    texts = sampling.sample(model, _EotIs(tok, eot), "ROMEO:", stop, num_samples=4)
    assert texts == [tok.decode(r if e is None else r[:e]) for r, e in zip(ref.tolist(), ends)]


def test_prompt_longer_than_context_is_a_clear_error(model_and_tok):
    model, tok = model_and_tok
    with pytest.raises(
        ValueError, match=r"prompt is \d+ tokens but the model's context \(block_size\) is 32"
    ):
        sampling.sample(model, tok, "O Romeo, Romeo, wherefore art thou Romeo? " * 10, sampling.SampleConfig())


def test_empty_prompt_starts_a_document(model_and_tok):
    model, tok = model_and_tok
    assert sampling.encode_prompt(tok, "", model.cfg.block_size) == [tok.token_to_id("<|endoftext|>")]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_settings(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        sampling.SampleConfig(**kwargs)


def test_bad_checkpoint_file_gets_a_message_naming_it(tmp_path, capsys):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(SystemExit) as e:
        gen.main([str(bad), "--device=cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "broken.ckpt" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "missing.ckpt"), "--device=cpu"])
    assert "missing.ckpt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus_file, data_cache) -> Path:
    """A 4-step tiny fit with TextSamples; returns its log folder (checkpoints/last.ckpt inside)."""
    from gptmini.cli import make_cli

    tmp = tmp_path_factory.mktemp("genrun")
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {
            "class_path": "gptmini.callbacks.samples.TextSamples",
            "init_args": {"prompts": ["ROMEO:", ""], "max_new_tokens": 8},
        },
    ]
    args = tiny_cli_args(tmp, corpus_file, data_cache, max_steps=4) + [
        f"--trainer.callbacks={json.dumps(callbacks)}"
    ]
    cli = make_cli(args)
    return Path(cli.trainer.logger.log_dir)


def test_text_samples_in_tensorboard(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run), size_guidance={"tensors": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["tensors"] if t.startswith("samples/")]
    assert sorted(tags) == ["samples/0/text_summary", "samples/1/text_summary"]
    events = acc.Tensors("samples/0/text_summary")
    assert [e.step for e in events] == [2, 4]  # one per validation (the sanity check is skipped)
    text = events[-1].tensor_proto.string_val[0].decode()
    assert "step 4" in text and "ROMEO:" in text


def test_generate_cli_from_checkpoint_alone(trained_run, capsys):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    assert "gptmini_tokenizer" in torch.load(ckpt, map_location="cpu", weights_only=True)
    args = [
        str(ckpt),
        "--prompt=ROMEO:",
        "--max_new_tokens=12",
        "--seed=5",
        "--device=cpu",
        "--num_samples=2",
    ]
    first = gen.main(args)
    out1 = capsys.readouterr().out
    second = gen.main(args)
    out2 = capsys.readouterr().out
    assert out1 == out2 and first == second
    assert out1.count("ROMEO:") >= 2 and "----- sample 1 -----" in out1


def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `gptmini` console script (PYTHONPATH, as set for the tests, picks this tree)."""
    exe = Path(sys.executable).with_name("gptmini")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# Runs before anything else in the child: importing Lightning in any form fails.
_NO_LIGHTNING = """
import importlib.abc, json, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _Block())
from gptmini.core.checkpoint import load_model, load_model_and_tokenizer
from gptmini.core.sampling import SampleConfig, sample
out = []
for source in sys.argv[1:]:
    load_model(source)
    model, tok = load_model_and_tokenizer(source)
    out.append(sample(model, tok, "ROMEO:", SampleConfig(max_new_tokens=12, seed=5), num_samples=2))
assert not [m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")]
assert "torch._dynamo" not in sys.modules  # nothing compiled: no compiler imported (~1 s) to sample
print(json.dumps(out))
"""


def test_export_then_generate_through_console_script_and_without_lightning(
    trained_run, data_cache, tmp_path, capsys
):
    from gptmini.cli import main as cli_main

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "tiny_model"
    res = _console("export", str(ckpt), str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    names = ["README.md", "config.json", "model.safetensors", "modeling_gptmini.py", "tokenizer.json"]
    assert sorted(p.name for p in out.iterdir()) == names
    with pytest.raises(SystemExit) as e:  # a second export is refused (in process: cli.main's dispatch)
        cli_main(["export", str(ckpt), str(out)])
    assert e.value.code == 2 and "--overwrite=true" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "gptmini generate, gptmini export" in " ".join(capsys.readouterr().out.split())

    args = ["--prompt=ROMEO:", "--max_new_tokens=12", "--seed=5", "--device=cpu", "--num_samples=2"]
    res = _console("generate", str(out), *args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    from_ckpt = gen.main([str(ckpt), *args])  # in process, from the Lightning checkpoint
    assert res.stdout.count("ROMEO:") == 2
    for text in from_ckpt:
        assert "ROMEO:" + text in res.stdout  # the folder and the .ckpt give the same samples

    # Neither Lightning nor the data cache: hide the cache while a child loads both formats.
    hidden = data_cache.with_name(data_cache.name + "_hidden")
    data_cache.rename(hidden)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _NO_LIGHTNING, str(out), str(ckpt)],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
    finally:
        hidden.rename(data_cache)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == [from_ckpt, from_ckpt]


def test_text_samples_rejects_no_prompts():
    with pytest.raises(ValueError, match="prompts"):
        TextSamples(prompts=[])


def test_curves_from_the_runs_event_files(trained_run, tmp_path):
    from gptmini.tools.curves import main as plot_main
    from gptmini.tools.curves import read_scalars

    scalars = read_scalars(trained_run)
    steps, losses = scalars["train/loss"]
    assert steps == [0, 1, 2, 3] and all(v > 0 for v in losses)
    assert {"val/loss", "train/grad_norm"} <= set(scalars)
    out = tmp_path / "docs" / "curves.png"
    plot_main([str(trained_run), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no TensorBoard event files"):
        plot_main([str(tmp_path), "-o", str(tmp_path / "x.png")])
