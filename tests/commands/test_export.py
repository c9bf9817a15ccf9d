"""`gptmini export`: files as shareable as any the user writes, and a README.md model card."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import TINY_BLOCK, TINY_VOCAB

from gptmini.commands.eval import evaluate
from gptmini.core.checkpoint import load_model_and_tokenizer
from gptmini.core.export_folder import EXPORT_FILES, export_model
from gptmini.core.model_card import model_card
from gptmini.core.model_code import model_code
from gptmini.core.sources import default_corpus
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


# Runs a card's python block in a child where what argv[2] names (comma-separated top-level
# packages) cannot be imported, and saves the ``logits`` it computed (or the model's vocab size).
_RUN_BLOCK = """
import importlib.abc, sys
blocked = set(sys.argv[2].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError("blocked: " + name, name=name)
sys.meta_path.insert(0, Block())
ns = {}
exec(open(sys.argv[1]).read(), ns)
import torch
torch.save(ns["logits"] if "logits" in ns else ns["model"].cfg.vocab_size, sys.argv[3])
assert not blocked & {m.split(".")[0] for m in sys.modules}, sorted(blocked & set(sys.modules))
"""
LIGHTNING = ["lightning", "pytorch_lightning", "lightning_fabric"]
# The folder alone: neither gptmini nor what only gptmini needs.
TRAINING_STACK = ["gptmini", "jsonargparse", *LIGHTNING, "torchmetrics", "tensorboard", "numpy"]


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def run_block(block: str, blocked: list[str], where: Path) -> object:
    """Run ``block`` as the card says (from the folder's parent) in ``python -I`` (no PYTHONPATH, no
    user site), with ``blocked`` unimportable; what it computed."""
    script, result = where / "block.py", where / "block.pt"
    script.write_text(block, encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-I", "-c", _RUN_BLOCK, str(script), ",".join(blocked), str(result)],
        cwd=where, capture_output=True, text=True, timeout=300,
        # This process's thread count: the same float summation order, so logits compare bit for bit.
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert res.returncode == 0, res.stderr
    return torch.load(result, weights_only=True)


def test_model_card_says_what_the_model_is_and_its_load_recipes_run(fitted_run, corpus_file, data_cache, tmp_path):
    ckpt_path = fitted_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run = ckpt["gptmini_run"]
    out = export_model(ckpt_path, tmp_path / "tiny_model")  # `gptmini export` itself: the test below
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
    # The install line is how gptmini is really installed, not the PyPI name this project does not own.
    assert "pip install gptmini" not in card and "`pip install ./gptmini`" in card
    # How to load it: each recipe runs literally, from the folder's parent. With gptmini (no
    # Lightning), and with torch, safetensors and tokenizers alone: its logits are gptmini's.
    assert (out / "modeling_gptmini.py").read_text() == model_code()  # generated from model.py now
    with_gptmini, alone = python_blocks(card)
    assert run_block(with_gptmini, LIGHTNING, tmp_path) == TINY_VOCAB
    assert "from modeling_gptmini import" in alone and not re.search(r"\bgptmini\.", alone)
    logits = run_block(alone, TRAINING_STACK, tmp_path)
    model, tok = load_model_and_tokenizer(ckpt_path)
    expected = model(torch.tensor([tok.encode("ROMEO:").ids]))[0]
    assert logits.shape == expected.shape and torch.equal(logits, expected)


def test_the_shipped_model_code_is_model_py_and_gives_its_logits(tiny_model_cfg, tmp_path, monkeypatch):
    # modeling_gptmini.py is generated from gptmini/core/model.py at export: the same code, so the
    # two cannot drift; here run on its own (no gptmini import), against gptmini's GPTMini.
    import gptmini.core.model as model_py

    code = model_code()
    assert not re.search(r"^\s*(from|import) gptmini", code, flags=re.M)
    source = Path(model_py.__file__).read_text()
    body = source[source.index("class GPTMini(nn.Module):") :]  # the class, to the end of model.py
    assert body.rstrip() in code  # the model's text, unchanged
    (tmp_path / "modeling_gptmini.py").write_text(code)
    spec = importlib.util.spec_from_file_location("modeling_gptmini", tmp_path / "modeling_gptmini.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "modeling_gptmini", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    ns = vars(module)
    torch.manual_seed(0)
    ours = model_py.GPTMini(tiny_model_cfg).eval()
    theirs = ns["GPTMini"](ns["ModelConfig"](**asdict(tiny_model_cfg))).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    idx = torch.randint(0, TINY_VOCAB, (2, TINY_BLOCK))
    assert torch.equal(theirs(idx)[0], ours(idx)[0])
    cache_a, cache_b = ours.new_cache(), theirs.new_cache()  # the generation path too
    assert torch.equal(theirs(idx[:, :5], cache=cache_b)[0], ours(idx[:, :5], cache=cache_a)[0])
    assert torch.equal(theirs(idx[:, 5:6], cache=cache_b)[0], ours(idx[:, 5:6], cache=cache_a)[0])
    with pytest.raises(ValueError, match="divisible"):  # its config still refuses a shape that cannot work
        ns["ModelConfig"](n_embd=30, n_head=4)


def test_a_gptmini_import_without_a_stand_in_stops_the_export():
    import gptmini.core.model as model_py

    source = Path(model_py.__file__).read_text()
    used_in_forward = source.replace(
        "from gptmini.core.config import (", "from gptmini.core.tokens import EOT\nfrom gptmini.core.config import ("
    ).replace("        B, T = idx.shape\n", "        B, T = idx.shape\n        assert EOT\n")
    with pytest.raises(RuntimeError, match=r"uses EOT \(from gptmini\) outside the methods"):
        model_code(used_in_forward)


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


# -- a full or read-only filesystem: one line, exit 74 / 2, nothing half-written -------------------
_ON_SMALL_FILESYSTEMS = """
import hashlib, json, os, subprocess, sys
ckpt, exe, fits_kb, report = sys.argv[1:5]
out = {}
def mount(where, opts):
    os.makedirs(where)
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", where], check=True)
def export(target, *extra):
    res = subprocess.run([exe, "export", ckpt, target, *extra], capture_output=True, text=True)
    return {"rc": res.returncode, "err": res.stderr}
def files(folder):
    return {p: hashlib.sha256(open(os.path.join(folder, p), "rb").read()).hexdigest() if os.path.isfile(os.path.join(folder, p)) else "dir"
            for p in sorted(os.listdir(folder))}
mount("full", "size=64k")
out["full"] = {**export("full/m"), "left": files("full")}
mount("ro", "ro")
out["ro"] = {**export("ro/m"), "left": files("ro")}
mount("fits_one", f"size={fits_kb}k")  # room for one export, not for a second copy beside it
first = export("fits_one/m")
before = files("fits_one/m")
out["overwrite"] = {**export("fits_one/m", "--overwrite=true"), "first_rc": first["rc"], "before": before,
                    "after": files("fits_one/m"), "left": files("fits_one")}
json.dump(out, open(report, "w"))
"""


def _can_mount() -> bool:
    try:
        cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount(), reason="needs unshare (user + mount namespaces) to mount a small tmpfs")
def test_export_onto_a_full_or_read_only_filesystem_is_one_line_and_leaves_nothing_half_written(fitted_run, tmp_path):
    import json

    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    size = sum(p.stat().st_size for p in export_model(ckpt, tmp_path / "probe").iterdir())
    report = tmp_path / "report.json"
    exe = Path(sys.executable).with_name("gptmini")
    cmd = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", _ON_SMALL_FILESYSTEMS,
           str(ckpt), str(exe), str(int(size * 1.5) // 1024 + 16), str(report)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(report.read_text())

    def one_error_line(case: dict) -> str:
        assert "Traceback" not in case["err"], case["err"]
        (line,) = case["err"].splitlines()
        return line

    assert got["full"]["rc"] == 74 and got["full"]["left"] == {}
    assert one_error_line(got["full"]).startswith("error: disk full: writing model.safetensors in full/m needs ")
    assert got["ro"]["rc"] == 2 and got["ro"]["left"] == {}
    assert one_error_line(got["ro"]) == (
        "error: out_dir ro/m cannot be written (Read-only file system: ro); give a folder on a writable filesystem."
    )
    over = got["overwrite"]
    assert over["first_rc"] == 0 and sorted(over["before"]) == sorted(EXPORT_FILES)
    assert over["rc"] == 74 and one_error_line(over).startswith("error: disk full: writing model.safetensors in fits_one/m")
    assert over["after"] == over["before"] and list(over["left"]) == ["m"]  # the earlier export whole, no temp folder


def test_a_killed_exports_temp_folder_is_removed_by_the_next_export(fitted_run, tmp_path):
    from gptmini.core import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.tmp-{atomic._host()}-{dead.pid}-0123abcd"  # a SIGKILLed export's
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    export_model(fitted_run / "checkpoints" / "last.ckpt", tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(EXPORT_FILES)
