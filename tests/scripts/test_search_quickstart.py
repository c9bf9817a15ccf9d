"""scripts/search_quickstart.py: its --help runs (docs cite it), and its scorer puts every val token
after the first in exactly one window, so points with different contexts are scored on the same bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptmini.core.model import GPTMini, ModelConfig

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import search_quickstart  # noqa: E402


def test_help_names_the_budget():
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "search_quickstart.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "CPU time" in res.stdout and "--points" in res.stdout and "v1" in res.stdout


@pytest.mark.parametrize("block", [16, 48, 300])
def test_evaluate_scores_every_target_once(tmp_path, block):
    torch.manual_seed(0)
    n = 301  # 300 targets: 300 % 16 and 300 % 48 leave a short last window
    tokens = torch.randint(0, 50, (n,))
    path = tmp_path / "val.bin"
    tokens.numpy().astype(np.uint16).tofile(path)
    model = GPTMini(ModelConfig(vocab_size=50, block_size=block, n_layer=1, n_head=2, n_embd=16))
    nats, count = search_quickstart.evaluate(model, path, block, batch=4)
    assert count == n - 1
    want = 0.0
    for s in range(0, n - 1, block):  # by hand: consecutive windows, the last one shorter
        x, y = tokens[s : min(s + block, n - 1)], tokens[s + 1 : min(s + block, n - 1) + 1]
        with torch.no_grad():
            want += F.cross_entropy(model(x[None])[0][0], y, reduction="sum").item()
    assert nats == pytest.approx(want, rel=1e-5)
