"""The pre-training loop reads values from the device once per log interval, never inside a step.

A real tiny SparK, timm's LAMB and the loop's own objects; the recorder of ``spark-bench sync``
checks the step at the dispatcher (on a GPU each such op would make the host wait)."""
import itertools
import json
from pathlib import Path

import pytest
import torch

from sparkmim import build_spark
from sparkmim.pretrain.data import SkipReporter
from sparkmim.pretrain.engine import Loop, NonFiniteLossError
from sparkmim.pretrain.optim import build_optimizer
from sparkmim.utils.schedule import Schedule
from sparkmim.benchmarks.perf.sync_check import optimizer_host_scalars, record_host_syncs
from sparkmim.utils.distributed import DistInfo
from sparkmim.utils.metrics import MetricsLogger
from sparkmim.utils.signals import GracefulStop

STEPS = 10


def _loop(tmp_path: Path, log_interval: int, nan_at_step: int = -1, saves: list = None) -> Loop:
    torch.manual_seed(0)
    spark = build_spark("test_resnet", input_size=64, decoder_width=32).train()
    optimizer = build_optimizer(spark, lr=1e-3, betas=(0.9, 0.95), clip_grad=5.0)
    images = torch.randn(2, 3, 64, 64)

    def batches():
        for step in itertools.count():
            yield (images.clone().fill_(float("nan")) if step == nan_at_step else images), []
    saves = saves if saves is not None else []
    return Loop(model=spark, params=list(spark.parameters()), optimizer=optimizer, scaler=None,
                schedule=Schedule(total_steps=STEPS, warmup_steps=2, peak_lr=1e-3, weight_decay=0.04,
                                  weight_decay_end=0.2),
                batches=batches(), accumulation=1, steps_per_epoch=STEPS, total_steps=STEPS, global_batch=2,
                dist_info=DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                metrics=MetricsLogger(tmp_path, tensorboard=False), skips=SkipReporter([]), stop=GracefulStop(),
                save=lambda step, progress: saves.append(step) or tmp_path / "checkpoint.pth", progress=False,
                log_interval=log_interval)


def _step_rows(tmp_path: Path) -> list:
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("kind") == "step"]


def test_a_training_step_has_no_host_device_synchronisation(tmp_path):
    loop = _loop(tmp_path, log_interval=4)
    loop.train_step(0)  # optimizer state exists from here on
    pending = []
    syncs = record_host_syncs(lambda: pending.append(loop.train_step(1)), optimizer_host_scalars(loop.optimizer))
    assert syncs == {}
    assert pending[0].loss.dim() == 0 and isinstance(pending[0].loss, torch.Tensor)


def test_values_are_read_per_interval_and_every_step_is_logged(tmp_path):
    saves = []
    result = _loop(tmp_path, log_interval=4, saves=saves).run(0)
    assert result.step == STEPS and saves == [STEPS]
    rows = _step_rows(tmp_path)
    assert [row["step"] for row in rows] == list(range(STEPS))
    assert all(row["loss"] > 0 and row["grad_norm"] > 0 for row in rows)
    rates = [row["img_per_s"] for row in rows]  # one rate per read: steps 0-3, 4-7, 8-9
    assert len(set(rates[0:4])) == 1 and len(set(rates[4:8])) == 1 and len(set(rates[8:10])) == 1
    assert len(set(rates)) == 3


def test_a_non_finite_loss_names_its_step_and_nothing_is_saved(tmp_path):
    saves = []
    with pytest.raises(NonFiniteLossError, match=r"at step 6 \(epoch 0\)"):
        _loop(tmp_path, log_interval=4, nan_at_step=6, saves=saves).run(0)
    assert saves == []
    assert [row["step"] for row in _step_rows(tmp_path)] == [0, 1, 2, 3]  # the interval with step 6 is not logged
