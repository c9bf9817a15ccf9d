"""scripts/bench.py end to end on the tiny setup (it writes its JSON; figures are not timed here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def test_bench_script_writes_json(corpus_file, data_cache, tmp_path, monkeypatch, recwarn):
    """scripts/bench.py end to end on a toy shape: both paths, alternating, JSON + table."""
    sys.path.insert(0, str(REPO / "scripts"))
    import bench

    # As when run as a script: its own options on the command line, the CLI's given as make_cli(args).
    monkeypatch.setattr(sys, "argv", ["scripts/bench.py", "--rounds=2"])
    ceilings, measure = [], bench.measure_matmul_flops  # --ceiling-seconds reaches each measurement
    monkeypatch.setattr(bench, "measure_matmul_flops", lambda *a, **k: ceilings.append(k["seconds"]) or measure(*a, **k))
    out = tmp_path / "bench.json"
    summary = bench.main(
        [
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--rounds=2",
            "--warmup=1",
            "--steps=2",
            "--window=1",
            "--no-mem",
            "--ceiling-seconds=0.05",
            f"--json={out}",
            "--set=model.arch.n_layer=1",
            "--set=model.arch.n_embd=32",
            "--set=model.arch.n_head=2",
            f"--set=data.data={corpus_file}",
            f"--set=data.cache_dir={data_cache}",
            "--set=data.vocab_size=384",
            "--set=data.block_size=32",
            "--set=data.batch_size=4",
            "--set=trainer.enable_progress_bar=false",
        ]
    )
    saved = json.loads(out.read_text())["variants"]["base"]
    assert saved["paths"].keys() == {"lightning", "plain"}
    for path in saved["paths"].values():
        assert len(path["round_medians_ms"]) == 2
        assert path["ms_per_step"] > 0 and path["tokens_per_sec"] > 0
        assert 0 < path["mfu_vs_measured_ceiling"]
    assert saved["ratio_tokens_per_sec"] > 0
    # Same seed, same data, fp32: both paths end each round on the same loss.
    assert saved["paths"]["lightning"]["last_loss"] == pytest.approx(
        saved["paths"]["plain"]["last_loss"], rel=1e-4
    )
    assert summary["base"]["shape"]["n_layer"] == 1
    assert ceilings == [0.05, 0.05]  # before and after the timed runs
    # Lightning's "both args and command line arguments" warning: make_cli(args) is the whole command line.
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
