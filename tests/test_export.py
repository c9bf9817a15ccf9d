"""`gptmini export`: files as shareable as any the user writes, and a README.md model card."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
import torch
from conftest import TINY_BLOCK, TINY_VOCAB

from gptmini.core.export_folder import EXPORT_FILES, export_model
from gptmini.core.model_card import model_card
from gptmini.core.sources import default_corpus
from gptmini.evaluate import evaluate
from gptmini.train.datamodule import GPTMiniData


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_export_files_get_the_mode_the_umask_gives(fitted_run, tmp_path, umask, mask):
    umask(mask)
    out = export_model(fitted_run / "checkpoints" / "last.ckpt", tmp_path / "m")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert sorted(modes) == sorted(EXPORT_FILES)  # no temp file left behind
    assert set(modes.values()) == {0o666 & ~mask}, modes  # 0644 / 0640, as open(path, "w") gives


# Runs the card's python blocks in a child where Lightning cannot be imported; with "bare", the
# gptmini loaders (gptmini.core.checkpoint / export) cannot either.
_RUN_BLOCKS = """
import importlib.abc, sys
bare = sys.argv[2] == "bare"
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        blocked = name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")
        if blocked or (bare and name in ("gptmini.core.checkpoint", "gptmini.core.export_folder")):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
ns = {}
exec(open(sys.argv[1]).read(), ns)
print("next token", int(ns["logits"][0, -1].argmax()) if "logits" in ns else ns["model"].cfg.vocab_size)
"""


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_model_card_says_what_the_model_is_and_its_load_recipes_run(fitted_run, corpus_file, data_cache, tmp_path):
    ckpt_path = fitted_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run = ckpt["gptmini_run"]
    out = export_model(ckpt_path, tmp_path / "tiny_model")
    card = (out / "README.md").read_text(encoding="utf-8")
    n_params = sum(t.numel() for t in ckpt["state_dict"].values()) - TINY_VOCAB * 32  # tied head once
    assert f"d32 L2 H2, vocab {TINY_VOCAB}, context {TINY_BLOCK}" in card
    assert f"| parameters | {n_params:,} " in card
    assert "| steps | 6 |" in card and f"| tokens seen | {6 * 8 * TINY_BLOCK:,} |" in card
    final, best = run["val"][-1], min(run["val"], key=lambda e: e["val/loss"])
    assert f"| final | val/loss {final['val/loss']:.4f}, val/bpb {final['val/bpb']:.4f} (step 6) |" in card
    assert f"| best | val/loss {best['val/loss']:.4f}, val/bpb {best['val/bpb']:.4f} (step {best['step']}) |" in card
    meta = GPTMiniData(data=str(corpus_file), cache_dir=str(data_cache), vocab_size=TINY_VOCAB, block_size=TINY_BLOCK).meta()
    assert f"- source: `{corpus_file}`" in card
    assert f"- tokens: {meta['train_tokens']:,} train, {meta['val_tokens']:,} validation" in card
    assert "licence: not known to gptmini" in card
    assert "```yaml\n" in card and "max_steps: 6" in card and "n_embd: 32" in card  # the resolved config
    # how to load it: both recipes run as written, from the folder's parent, without Lightning
    blocks = python_blocks(card)
    assert len(blocks) == 2
    results = []
    for block, mode in zip(blocks, ["gptmini", "bare"]):
        script = tmp_path / f"card_{mode}.py"
        script.write_text(block, encoding="utf-8")
        res = subprocess.run(
            [sys.executable, "-c", _RUN_BLOCKS, str(script), mode], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr
        results.append(res.stdout)
    assert results[0].split() == ["next", "token", str(TINY_VOCAB)] and results[1].startswith("next token ")


def test_generate_and_eval_read_the_folder_as_the_checkpoint(fitted_run, corpus_file, data_cache, tmp_path):
    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    out = export_model(ckpt, tmp_path / "m")
    val = GPTMiniData(data=str(corpus_file), cache_dir=str(data_cache), vocab_size=TINY_VOCAB, block_size=TINY_BLOCK).cache_path / "val.bin"
    a = evaluate(str(ckpt), data=str(val), max_tokens=512, device="cpu", progress=False)
    b = evaluate(str(out), data=str(val), max_tokens=512, device="cpu", progress=False)
    assert (a["loss"], a["bpb"], a["tokens"]) == (b["loss"], b["bpb"], b["tokens"])
    # re-exporting the folder keeps its card
    again = export_model(out, tmp_path / "m2")
    assert (again / "README.md").read_text() == (out / "README.md").read_text()


def test_card_of_the_embedded_corpus_carries_its_notice():
    cfg = {"n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 2048, "block_size": 128}
    run = {"tokens_seen": 100, "val": [], "corpus": {"sources": [{"source": str(default_corpus()), "bytes": 1}]}}
    card = model_card("m", cfg, 1000, {"global_step": 1, "gptmini_run": run}, "x.ckpt")
    assert "embedded Shakespeare corpus" in card and "CC-BY 2.5" in card and "public domain" in card
    assert "| final | not recorded |" in card
    old = model_card("m", cfg, 1000, {}, "old.ckpt")  # a checkpoint from before the run record
    assert "| tokens seen | not recorded |" in old and "sources: not recorded" in old


def test_card_best_row_is_the_lowest_validation_not_the_last():
    # A run whose validation got worse at the end: best (step 200) != final (step 300).
    cfg = {"n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 2048, "block_size": 128}
    val = [
        {"step": 100, "val/loss": 5.0, "val/bpb": 2.5},
        {"step": 200, "val/loss": 4.25, "val/bpb": 2.125},
        {"step": 300, "val/loss": 4.5, "val/bpb": 2.25},
    ]
    card = model_card("m", cfg, 1000, {"global_step": 300, "gptmini_run": {"tokens_seen": 9, "val": val}}, "x.ckpt")
    assert "| final | val/loss 4.5000, val/bpb 2.2500 (step 300) |" in card
    assert "| best | val/loss 4.2500, val/bpb 2.1250 (step 200) |" in card
