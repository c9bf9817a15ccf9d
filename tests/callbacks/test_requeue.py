"""callbacks/requeue.py and FaultGuard's requeue choice: ``fault_guard.requeue_on_sigterm: false``
(a cancelled job, ``scancel``, also gets SIGTERM) saves and stops without asking SLURM to requeue."""

from __future__ import annotations

import pytest
from conftest import attribute_docstrings_off
from test_cluster import JOB_ID, run_args, scontrol_calls, slurm_env

from gptmini.cli import main
from gptmini.core.checkpoint import read_checkpoint


def test_sigterm_with_requeue_on_sigterm_false_saves_but_does_not_requeue(
    tmp_path, corpus_file, data_cache, monkeypatch, capfd, caplog
):
    for key, value in slurm_env(tmp_path).items():  # srun's variables and a recording `scontrol`
        monkeypatch.setenv(key, value)
    args = run_args(tmp_path, corpus_file, data_cache, {"at_step": 2, "kind": "sigterm"})
    with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
        main([*args, "--fault_guard.requeue_on_sigterm=false"])
    assert info.value.code == 143
    assert scontrol_calls(tmp_path) == []  # the same run with true calls `scontrol requeue 4242`
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 3
    out = capfd.readouterr()
    text = "\n".join([out.out, out.err, caplog.text])
    (line,) = {x[x.index("SIGTERM: saved") :] for x in text.splitlines() if "SIGTERM: saved" in x}
    assert "requeued SLURM job" not in line and "not requeued" not in line and f"job {JOB_ID}" not in line
    assert "; resume with: " in line
