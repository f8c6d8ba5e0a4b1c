"""spark-finetune's epoch loop reads the loss from the device once per log interval, not once per
micro-batch, and still stops on a non-finite loss, naming its step."""
import os
import subprocess
import sys

import pytest
from torch import nn

from sparkmim.benchmarks.perf.sync_check import record_host_syncs
from sparkmim.downstream_imagenet.engine import DivergenceError, train_one_epoch
from tests.downstream_imagenet.engine_fixtures import STEPS, NanAt, tiny_batches, tiny_trainer
from tests.pretrain_fixtures import REPO_ROOT


def test_the_loss_is_read_once_per_log_interval():
    trainer = tiny_trainer(log_interval=3, criterion=nn.CrossEntropyLoss())
    result = {}
    syncs = record_host_syncs(lambda: result.update(train_one_epoch(trainer, tiny_batches(STEPS), 0, 0, STEPS, True)))
    # the window reads (tolist) at log steps are not dispatched ops; what remains is the epoch-end total.
    # Reading every micro-batch's loss with .item(), as before, counts STEPS here.
    assert syncs.get("aten._local_scalar_dense", 0) <= 2 < STEPS, syncs
    assert result["step"] == STEPS and result["train_loss"] > 0


def test_a_non_finite_loss_stops_training_and_names_its_step():
    trainer = tiny_trainer(log_interval=50, criterion=NanAt(call=4))
    with pytest.raises(DivergenceError, match="at epoch 0 step 4"):
        train_one_epoch(trainer, tiny_batches(STEPS), 0, 0, STEPS, True)


@pytest.mark.distributed
def test_every_process_stops_when_one_process_s_loss_is_not_finite(tmp_path):
    # a process stopping alone would leave the others waiting in their next gradient reduction (NCCL: for
    # its whole timeout where no torchrun agent stops them)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tests.downstream_imagenet.divergence_worker", str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert outcomes[1].startswith("stopped: loss is nan at epoch 0 step 2"), outcomes
    assert outcomes[0].startswith("stopped: another process's loss is not finite at epoch 0"), outcomes
