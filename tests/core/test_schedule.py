import math

import pytest
import torch

from gptmini.core.schedule import ScheduleConfig, build_scheduler, lr_multiplier

# warmup 10, max_steps 110 (last step 109), min ratio 0.1: hand-computed multipliers.
GOLDEN = [
    (0, 1 / 11),
    (4, 5 / 11),
    (9, 10 / 11),
    (10, 1.0),
    (35, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 99))),
    (59, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 99))),
    (109, 0.1),
    (110, 0.1),
    (500, 0.1),
]


@pytest.mark.parametrize("step, expected", GOLDEN)
def test_golden_table(step, expected):
    assert lr_multiplier(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1) == pytest.approx(expected)


def test_shape_over_whole_run():
    values = [lr_multiplier(s, 100, 1000, 0.1) for s in range(1000)]
    assert 0 < values[0] < 0.02
    assert values[100] == 1.0 == max(values)
    assert all(a < b for a, b in zip(values[:100], values[1:101]))  # rising warmup
    assert all(a >= b for a, b in zip(values[100:], values[101:]))  # never rises after
    assert values[-1] == pytest.approx(0.1)


def test_no_warmup_starts_at_peak():
    assert lr_multiplier(0, 0, 100, 0.1) == 1.0


def test_lambdalr_applies_to_both_groups_with_their_peak():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "weight_decay": 0.0}], lr=6e-4)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1), max_steps=110)
    seen = []
    for _ in range(110):
        seen.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == seen[-1]
        opt.step()
        sched.step()
    for step, expected in GOLDEN[:7]:
        assert seen[step] == pytest.approx(6e-4 * expected)


@pytest.mark.parametrize(
    "warmup, max_steps, match",
    [(100, 100, "warmup_steps"), (10, 0, "max_steps"), (10, -1, "max_steps")],
)
def test_bad_horizon(warmup, max_steps, match):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=match):
        build_scheduler(opt, ScheduleConfig(warmup_steps=warmup), max_steps=max_steps)


def test_min_lr_ratio_range():
    with pytest.raises(ValueError, match="min_lr_ratio"):
        ScheduleConfig(min_lr_ratio=1.5)
