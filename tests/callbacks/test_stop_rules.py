"""gptmini.callbacks.stop_rules with several processes: they agree on a stop every
``fault_guard.check_every_n_steps`` optimizer steps (one all-reduce then), none in between, and all
stop after the same step whichever was signalled. One process stands in for a rank: the stop rule's
collective is a counting spy (``strategy.reduce_boolean_decision``) that can add the other rank's
flag; the reads are Lightning's own (after each batch, validation, epoch end) in a real CLI fit."""

from __future__ import annotations

import sys

import pytest
from conftest import attribute_docstrings_off, callbacks_args, tiny_cli_args
from lightning.pytorch.strategies import SingleDeviceStrategy

import gptmini.callbacks.stop_rules as stop_rules
from gptmini.cli import main
from gptmini.core.checkpoint import read_checkpoint

EVERY = 4
MAX_STEPS = 12
SIGNALLED_AT = 5  # global_step when the signal comes: after step index 4


def run(tmp_path, corpus_file, data_cache, fault: bool) -> int:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
    ]
    if fault:  # SIGTERM to this process once global_step == SIGNALLED_AT
        fault_args = {"at_step": SIGNALLED_AT - 1, "kind": "sigterm"}
        callbacks.append({"class_path": "fault_injection.InjectFault", "init_args": fault_args})
    args = tiny_cli_args(tmp_path, corpus_file, data_cache, MAX_STEPS) + [
        *callbacks_args(tmp_path, callbacks),
        f"--fault_guard.check_every_n_steps={EVERY}",
        "--trainer.limit_val_batches=2",
    ]
    with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def spy_collectives(monkeypatch, other_rank_signalled: bool = False) -> list[int]:
    """The global step of each all-reduce the stop rule takes; the other rank's flag is set from
    SIGNALLED_AT on when ``other_rank_signalled``."""
    collectives: list[int] = []
    own = SingleDeviceStrategy.reduce_boolean_decision

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if sys._getframe(1).f_code.co_name != "received_sigterm":  # e.g. ModelCheckpoint's own
            return own(self, decision, all)
        step = self.lightning_module.trainer.global_step
        collectives.append(step)
        return decision or (other_rank_signalled and step >= SIGNALLED_AT)  # all=False: any rank

    monkeypatch.setattr(SingleDeviceStrategy, "reduce_boolean_decision", reduce_boolean_decision)
    return collectives


def last_step(tmp_path) -> int:
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    return read_checkpoint(last)["global_step"]


@pytest.mark.parametrize("signalled", ["this rank", "another rank"])
def test_ranks_agree_on_a_stop_every_n_steps_without_a_collective_per_step(
    signalled, tmp_path, corpus_file, data_cache, monkeypatch
):
    monkeypatch.setattr(stop_rules, "several_processes", lambda trainer: True)
    collectives = spy_collectives(monkeypatch, other_rank_signalled=signalled == "another rank")
    assert run(tmp_path, corpus_file, data_cache, fault=signalled == "this rank") == 143
    # At steps 4 and 8 only: none after the other steps, nor in the validation at step 6.
    assert collectives == [4, 8]
    assert last_step(tmp_path) == 8  # the first check step after the signal, on every rank


def test_one_process_stops_after_the_signalled_step_whatever_n(
    tmp_path, corpus_file, data_cache, monkeypatch
):
    collectives = spy_collectives(monkeypatch)
    assert run(tmp_path, corpus_file, data_cache, fault=True) == 143
    assert collectives == [] and last_step(tmp_path) == SIGNALLED_AT
