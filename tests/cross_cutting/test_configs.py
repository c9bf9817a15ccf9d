"""Configs cannot hide mistakes: a key given twice in a config (shipped or a user's) is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_resume import run_subprocess

from gptmini.core.config import ConfigError, find_duplicate_key, load_yaml_unique

CONFIGS = sorted((Path(__file__).resolve().parent.parent.parent / "gptmini" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_gives_each_key_once(path):
    assert find_duplicate_key(path.read_text()) is None
    assert isinstance(load_yaml_unique(path.read_text(), str(path)), dict)


def test_duplicate_key_found_at_any_depth_with_both_lines():
    text = "trainer:\n  max_steps: 2\nmodel:\n  arch:\n    n_layer: 1\n    n_head: 2\n    n_layer: 3\n"
    assert find_duplicate_key(text) == ("model.arch.n_layer", 5, 7)
    assert find_duplicate_key("a: [{b: 1, b: 2}]") == ("a[0].b", 1, 1)
    assert find_duplicate_key("a: 1\nb: {a: 2}\n") is None  # the same name in two mappings is fine
    with pytest.raises(ConfigError, match=r"'x' is given twice \(lines 1 and 2\)"):
        load_yaml_unique("x: 1\nx: 2\n")


def test_users_config_with_a_duplicate_key_is_one_line_error_naming_key_and_lines(tmp_path):
    shipped = (CONFIGS[0].parent / "tiny.yaml").read_text().splitlines()
    line = next(i for i, s in enumerate(shipped) if s.strip().startswith("requeue_on_sigterm:"))
    config = tmp_path / "mine.yaml"
    config.write_text("\n".join(shipped[: line + 1] + [shipped[line]] + shipped[line + 1 :]) + "\n")
    out = tmp_path / "out"
    proc = run_subprocess(["fit", "--config", str(config), f"--trainer.default_root_dir={out}"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [s for s in proc.stderr.splitlines() if s.strip()]
    assert errors == [
        f"error: {config}: 'fault_guard.requeue_on_sigterm' is given twice (lines {line + 1} and {line + 2}); "
        "YAML would keep the last silently: remove one."
    ], proc.stderr
    assert not out.exists()  # refused before any work
