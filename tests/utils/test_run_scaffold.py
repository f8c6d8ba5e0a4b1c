"""The pieces both trainers share: one batch vocabulary and one per-step schedule."""
import pytest
import torch

from sparkmim.utils.config import ConfigError
from sparkmim.utils.run import batch_layout
from sparkmim.utils.schedule import Schedule


def test_micro_batch_and_accum_steps_describe_the_same_split():
    by_micro = batch_layout(4096, 8, micro_batch=128)
    by_accum = batch_layout(4096, 8, accum_steps=4)
    assert by_micro == by_accum and by_micro.per_process == 512 and by_micro.accum_steps == 4
    assert batch_layout(64, 2).micro_batch == 32 and batch_layout(64, 2).accum_steps == 1
    assert batch_layout(64, 2, micro_batch=8, accum_steps=4).micro_batch == 8  # consistent: accepted


@pytest.mark.parametrize("args, message", [
    ((100, 3), "not divisible by the 3 processes"),
    ((64, 2, 5), r"--micro-batch 5 must divide the per-process batch 32 \(= --batch-size 64 / 2 processes\)"),
    ((64, 2, None, 3), "--accum-steps 3 must divide"),
    ((64, 2, 8, 2), "--micro-batch 8 x --accum-steps 2 must equal .* give only one"),
    ((64, 2, 0), "--micro-batch must be positive"),
])
def test_splits_that_do_not_divide_name_the_options(args, message):
    with pytest.raises(ConfigError, match=message):
        batch_layout(*args)


def test_schedule_weight_decay_is_constant_without_an_end_value():
    constant = Schedule(total_steps=10, warmup_steps=2, peak_lr=1.0, weight_decay=0.05)
    annealed = Schedule(total_steps=10, warmup_steps=2, peak_lr=1.0, weight_decay=0.04, weight_decay_end=0.2)
    assert {constant.wd(s) for s in range(10)} == {0.05}
    assert annealed.wd(0) == pytest.approx(0.04) and annealed.wd(9) == pytest.approx(0.2)
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr_scale": 0.5}], lr=0.0)
    lr, wd = constant.apply(optimizer, 2)
    assert lr == optimizer.param_groups[0]["lr"] == pytest.approx(0.5) and wd == 0.05
