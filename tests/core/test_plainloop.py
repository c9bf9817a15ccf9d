"""gptmini.core.plainloop: the Lightning path trains to the plain loop's losses (fp32 on CPU, bf16 on
a GPU). Speed itself is measured by scripts/bench.py, not here."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_cli
from lightning.pytorch import Callback, seed_everything

from gptmini.core.model import GPTMini
from gptmini.core.plainloop import train_plain


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())




def test_lightning_path_trains_to_the_plain_loops_losses(cli_args):
    """fp32, same seed, 20 steps: GPTMiniModule in the Trainer == gptmini.core.plainloop, within 1e-4."""
    rec = _Losses()
    cli = fit_cli(cli_args(max_steps=20) + ["--trainer.limit_val_batches=0"], rec)
    lightning = torch.stack(rec.losses)
    m, dm = cli.model, cli.datamodule

    seed_everything(1337)
    plain = torch.stack(
        train_plain(
            GPTMini(m.model_cfg),
            dm.train_dataloader(),
            m.optim_cfg,
            m.schedule_cfg,
            20,
            precision="32-true",
            gradient_clip_val=1.0,
        )
    )
    assert len(lightning) == len(plain) == 20
    assert lightning[-1] < lightning[0]  # it trained
    rel = ((lightning - plain).abs() / plain.abs()).max().item()
    assert rel <= 1e-4, (lightning, plain)
    # The configs' ThroughputLogger wrote its metrics (log_every_n_steps=1 in the tiny args).
    assert cli.trainer.logged_metrics["throughput/tokens_per_sec"] > 0


@pytest.mark.gpu
def test_lightning_path_matches_plain_loop_on_gpu_in_bf16(cli_args):
    """CUDA, bf16-mixed, fused AdamW, compiled: the same losses within bf16 noise."""
    args = cli_args(max_steps=20) + [
        "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cuda",
        "--trainer.precision=bf16-mixed",
    ]
    rec = _Losses()
    cli = fit_cli(args, rec)
    lightning = torch.stack(rec.losses).float().cpu()
    m, dm = cli.model, cli.datamodule
    seed_everything(1337)
    model = GPTMini(m.model_cfg)
    model.compile()  # compile is on by default for CUDA, as in the module
    plain = torch.stack(
        train_plain(
            model,
            dm.train_dataloader(),
            m.optim_cfg,
            m.schedule_cfg,
            20,
            precision="bf16-mixed",
            device="cuda",
        )
    )
    rel = ((lightning - plain.float().cpu()).abs() / plain.float().cpu()).max().item()
    assert rel <= 2e-2, (lightning, plain)
