"""BestCheckpoint keeps the run's best val/loss across a resume into a new version folder."""

from __future__ import annotations

import torch

from gptmini.callbacks.best import BestCheckpoint


def resumed(score: float) -> BestCheckpoint:
    cb = BestCheckpoint(dirpath="/runs/tiny/version_1/checkpoints")
    # What the interrupted run's checkpoint holds: its own (other) folder, its best file and score.
    cb.load_state_dict(
        {
            "dirpath": "/runs/tiny/version_0/checkpoints",
            "best_model_score": torch.tensor(score),
            "best_model_path": "/runs/tiny/version_0/checkpoints/best-step=200.ckpt",
        }
    )
    return cb


def test_a_worse_val_loss_after_resume_is_not_the_best():
    cb = resumed(3.0)
    assert cb.best_model_score.item() == 3.0
    assert cb.best_model_path.endswith("version_0/checkpoints/best-step=200.ckpt")
    assert cb.check_monitor_top_k(trainer=None, current=torch.tensor(3.5)) is False
    assert cb.check_monitor_top_k(trainer=None, current=torch.tensor(3.0)) is False
    assert cb.check_monitor_top_k(trainer=None, current=torch.tensor(2.5)) is True


def test_a_fresh_run_saves_its_first_validation():
    cb = BestCheckpoint(dirpath="/runs/tiny/version_0/checkpoints")
    assert cb.check_monitor_top_k(trainer=None, current=torch.tensor(9.0)) is True
