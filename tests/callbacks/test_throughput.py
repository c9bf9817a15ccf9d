"""gptmini.callbacks.throughput: ThroughputLogger's tokens/s, step time and MFU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from gptmini.callbacks import throughput
from gptmini.callbacks.throughput import ThroughputLogger
from gptmini.core.flops import flops_per_token
from gptmini.core.model import ModelConfig
from gptmini.train.module import GPTMiniModule


def test_throughput_counts_every_device_and_logs_mfu(monkeypatch):
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    cb = ThroughputLogger(peak_flops=1e9, log_every_n_steps=2)
    logged: dict[str, float] = {}
    writes: list[int] = []

    def log_metrics(metrics: dict, step: int) -> None:
        logged.update(metrics)
        writes.append(step)

    module = SimpleNamespace(  # gptmini.callbacks.interface.RecipeModule; never self.log (a cost per step)
        model=None, model_cfg=cfg, schedule_cfg=None, last_loss=None, nonfinite_guard=None,
        runs_own_step=lambda: False,
        log=lambda *a, **k: pytest.fail("self.log"),
    )
    trainer = SimpleNamespace(
        world_size=4,
        global_step=0,
        log_every_n_steps=50,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        loggers=[SimpleNamespace(log_metrics=log_metrics)],
    )
    def log_step_metrics(t, metrics: dict) -> None:  # at the step Lightning writes step metrics at
        t.loggers[0].log_metrics(metrics, 10 * t.global_step)

    monkeypatch.setattr(throughput, "log_step_metrics", log_step_metrics)
    cb.peak_flops = 1e9
    batch = (torch.zeros(3, 16, dtype=torch.long), torch.zeros(3, 16, dtype=torch.long))
    for step in (1, 2, 3, 4):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, batch, step - 1)
    per_device = logged["throughput/tokens_per_sec_per_device"]
    assert logged["throughput/tokens_per_sec"] == pytest.approx(4 * per_device)
    assert logged["throughput/mfu"] == pytest.approx(per_device * flops_per_token(cfg, 16) / 1e9)
    assert logged["throughput/step_ms"] > 0
    assert writes == [20, 40]  # one write per interval, at the step Lightning writes step metrics at


def test_throughput_logger_rejects_bad_peak():
    with pytest.raises(ValueError, match="peak_flops"):
        ThroughputLogger(peak_flops="fast")
    with pytest.raises(ValueError, match="peak_flops"):
        ThroughputLogger(peak_flops=-1.0)


def test_throughput_in_tensorboard(tiny_data, tiny_model_cfg, tmp_path):
    module = GPTMiniModule(tiny_model_cfg)
    module.schedule_cfg.warmup_steps = 2
    trainer = Trainer(
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=2,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[ThroughputLogger(peak_flops=1e10)],
    )
    trainer.fit(module, datamodule=tiny_data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(trainer.logger.log_dir))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"throughput/tokens_per_sec", "throughput/mfu", "throughput/step_ms"} <= tags
    steps = [e.step for e in events.Scalars("throughput/tokens_per_sec")]
    assert len(steps) >= 2  # every log interval after the first step, not once
    assert set(steps) <= {e.step for e in events.Scalars("train/loss")}  # at the steps train/loss is written
    assert trainer.logged_metrics["throughput/tokens_per_sec"] > 0  # and among what the trainer logged
