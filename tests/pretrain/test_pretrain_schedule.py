"""The pre-training schedule and optimizer follow the paper's formulas (checked against independent
re-statements of them, at chosen steps), including the weight-decay exemptions and LAMB's clip."""
import math

import pytest
import timm
import torch
from torch import nn

from sparkmim.pretrain.config import family_betas, peak_lr, resolve
from sparkmim.pretrain.optim import build_optimizer, param_groups, takes_decay
from sparkmim.utils.schedule import Schedule


def paper_lr(step, total, warmup, peak):
    """PAPER.md: linear warmup from 0.005 x peak, cosine to 0.001 x peak on the last step."""
    if step < warmup:
        return peak * (0.005 + 0.995 * step / warmup)
    t = (step - warmup) / (total - 1 - warmup)
    return peak * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * t)))


def paper_wd(step, total, start=0.04, end=0.2):
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / (total - 1)))


def test_lr_and_wd_at_chosen_steps_match_the_paper():
    steps_per_epoch, epochs, warmup_epochs, batch = 312, 1600, 40, 4096
    config = resolve(["data", "--recipe", "resnet50"])
    peak = peak_lr(config)
    assert peak == pytest.approx(2e-4 * batch / 256)
    total = steps_per_epoch * epochs
    schedule = Schedule(total_steps=total, warmup_steps=warmup_epochs * steps_per_epoch, peak_lr=peak,
                        weight_decay=0.04, weight_decay_end=0.2)
    warmup = warmup_epochs * steps_per_epoch
    for step in (0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, total // 2, total - 2, total - 1):
        assert schedule.lr(step) == pytest.approx(paper_lr(step, total, warmup, peak), rel=1e-12)
        assert schedule.wd(step) == pytest.approx(paper_wd(step, total), rel=1e-12)
    assert schedule.lr(0) == pytest.approx(0.005 * peak)
    assert schedule.lr(warmup) == pytest.approx(peak)
    assert schedule.lr(total - 1) == pytest.approx(0.001 * peak)
    assert schedule.wd(0) == pytest.approx(0.04) and schedule.wd(total - 1) == pytest.approx(0.2)


def test_schedule_is_written_into_the_optimizer_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, lr=1.0, betas=(0.9, 0.95), clip_grad=5.0)
    schedule = Schedule(total_steps=100, warmup_steps=10, peak_lr=0.5, weight_decay=0.04, weight_decay_end=0.2)
    schedule.apply(optimizer, 37)
    by_name = {g["group_name"]: g for g in optimizer.param_groups}
    assert by_name["decay"]["lr"] == pytest.approx(paper_lr(37, 100, 10, 0.5))
    assert by_name["decay"]["weight_decay"] == pytest.approx(paper_wd(37, 100))
    assert by_name["no_decay"]["weight_decay"] == 0.0


def test_no_weight_decay_on_1d_bias_mask_tokens_and_gamma():
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=0)
    model.register_parameter("mask_tokens_0", nn.Parameter(torch.zeros(1, 8, 1, 1)))
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay_scale"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay_scale"] == 1 for p in g["params"]}
    assert "mask_tokens_0" in no_decay
    assert any(n.endswith("gamma") for n in no_decay)
    assert all(model.get_parameter(n).ndim > 1 for n in decay)
    assert not any(n.endswith(".bias") for n in decay)
    assert "stem.0.weight" in decay
    assert not takes_decay("decoder.conv.bias", torch.zeros(3, 3))


def test_family_betas_and_drop_path_defaults():
    assert family_betas("resnet101") == [0.9, 0.95]
    assert family_betas("convnext_base") == [0.9, 0.999]
    config = resolve(["data", "--model", "resnet152"])
    assert config["drop_path"] == 0.10 and config["betas"] == [0.9, 0.95]
    assert config["batch_size"] == 4096 and config["epochs"] == 1600 and config["warmup_epochs"] == 40
    assert config["mask_ratio"] == 0.6 and config["input_size"] == 224
    large = resolve(["data", "--recipe", "convnext_large_384", "--batch-size", "1024"])
    assert large["mask_ratio"] == 0.75 and large["base_lr"] == 4e-4 and large["batch_size"] == 1024
    assert peak_lr(large) == pytest.approx(4e-4 * 1024 / 256)


def test_lamb_clips_the_global_gradient_norm():
    """timm's Lamb rescales all gradients by max(1, global_norm / max_grad_norm) before the update:
    with huge gradients, the first-moment buffer equals (1 - beta1) x clipped gradient."""
    model = nn.Linear(4, 4, bias=False)
    optimizer = build_optimizer(model, lr=0.1, betas=(0.9, 0.95), clip_grad=5.0)
    model.weight.grad = torch.full_like(model.weight, 100.0)  # global norm 400
    optimizer.step()
    exp_avg = optimizer.state[model.weight]["exp_avg"]
    clipped = torch.full_like(model.weight, 100.0) * 5.0 / 400.0
    assert torch.allclose(exp_avg, 0.1 * clipped)


def test_an_optimizer_state_that_lists_the_now_frozen_parameters_still_resumes():
    # before the encoder froze the parameters no feature map uses (ConvNeXt's head norm), the optimizer held
    # them too: such a checkpoint's optimizer state is resumed without them
    from sparkmim import build_spark
    from sparkmim.pretrain.optim import without_frozen_parameters

    torch.manual_seed(0)
    spark = build_spark("test_convnext", input_size=64, decoder_width=32)
    frozen = [p for p in spark.parameters() if not p.requires_grad]
    assert len(frozen) == 2  # head.norm.weight and .bias
    for param in frozen:
        param.requires_grad_(True)
    earlier = build_optimizer(spark, lr=1e-3, betas=(0.9, 0.95), clip_grad=5.0)
    spark(torch.randn(2, 3, 64, 64)).loss.backward()
    earlier.step()
    saved = earlier.state_dict()
    for param in frozen:
        param.requires_grad_(False)

    now = build_optimizer(spark, lr=1e-3, betas=(0.9, 0.95), clip_grad=5.0)
    with pytest.raises(ValueError, match="doesn't match the size"):
        now.load_state_dict(saved)
    now.load_state_dict(without_frozen_parameters(saved, spark))
    for param in (p for p in spark.parameters() if p.requires_grad):
        torch.testing.assert_close(now.state[param]["exp_avg"], earlier.state[param]["exp_avg"])
    current = now.state_dict()
    assert without_frozen_parameters(current, spark) is current  # a current state is left as it is
