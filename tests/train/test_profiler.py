"""gptmini.train.profiler: the CLI's Trainer runs without the default profiler's per-hook cost, and a
configured profiler is kept."""

from __future__ import annotations

from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

from gptmini.cli import make_cli
from gptmini.train.profiler import NoProfiler


def test_no_profiler_is_one_shared_do_nothing_context():
    p = NoProfiler()
    assert isinstance(p, PassThroughProfiler)  # what Lightning's code expects of the default
    with p.profile("[Callback]x.on_train_batch_end"), p.profile("nested"):
        pass
    assert p.profile("a") is p.profile("b")  # nothing built per hook call


def test_the_cli_swaps_only_the_default_profiler(cli_args):
    assert type(make_cli(cli_args()[1:], run=False).trainer.profiler) is NoProfiler
    chosen = make_cli(cli_args()[1:] + ["--trainer.profiler=simple"], run=False).trainer.profiler
    assert type(chosen) is SimpleProfiler
