"""Helpers of the step-0 check tests (test_checklist, test_first_batch, test_lr_curve,
test_recipe_checks): a seeded module, a short fit, the whole set of checks, a recording callback, a
run's TensorBoard events."""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.first_batch import InitialLossCheck, OverfitCheck
from gptmini.callbacks.lr_curve import LRCurveCheck
from gptmini.core.model import ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, lr_multiplier
from gptmini.train.module import GPTMiniModule

SMOKE = Path(__file__).parent.parent / "configs" / "smoke.yaml"


def make_module(cfg: ModelConfig, lr: float = 3e-3, warmup: int = 2, **optim) -> GPTMiniModule:
    pl.seed_everything(1234, verbose=False)
    return GPTMiniModule(
        arch=cfg, optim=OptimConfig(lr=lr, **optim), schedule=ScheduleConfig(warmup_steps=warmup)
    )


def fit(module, data, callbacks, tmp_path, max_steps: int = 4, ckpt_path: str | None = None, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "logger": TensorBoardLogger(tmp_path, name="t"),
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "gradient_clip_val": 1.0,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "callbacks": callbacks,
            **kwargs,
        }
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def all_checks(**overfit) -> list[pl.Callback]:
    return [
        LRCurveCheck(),
        InitialLossCheck(),
        OverfitCheck(**{"steps": 200, "rows": 2, **overfit}),
        Checklist(),
    ]


class ShuffledTargets(GPTMiniModule):
    """A loss that does not match its inputs: the targets permuted across the batch anew at every
    step, so they follow no input. (A permutation fixed once is a labelling the model memorises as
    fast as the real one: docs/training.md, "How long the overfit check trains".)"""

    def training_step(self, batch, batch_idx):
        x, y = batch
        perm = torch.randperm(y.numel(), device=y.device)
        return super().training_step((x, y.flatten()[perm].view_as(y)), batch_idx)


class Recorder(pl.Callback):
    """Listed last: sees the run right after the checks, at the first batch, and its first losses."""

    def __init__(self) -> None:
        self.weights = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.weights is None:
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
            self.all_training = all(m.training for m in pl_module.modules())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())

    def on_train_end(self, trainer, pl_module):
        self.final = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.opt_state = trainer.optimizers[0].state_dict()["state"]


def tb(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


# -- lr curve -----------------------------------------------------------------------------------------------


def schedule_curve(steps: int, warmup: int, horizon: int | None = None, ratio: float = 0.1) -> np.ndarray:
    return np.array([lr_multiplier(k, warmup, horizon or steps, ratio) for k in range(steps)])


class CustomSchedule(GPTMiniModule):
    """configure_optimizers with a hand-written multiplier (and no horizon validation)."""

    def __init__(self, fn, interval="step", **kwargs):
        super().__init__(**kwargs)
        self.fn, self.interval = fn, interval

    def configure_optimizers(self):
        opt = build_adamw(self.model, self.optim_cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}
