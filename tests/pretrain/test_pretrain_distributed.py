"""spark-pretrain under a real 2-process ``torchrun`` with the gloo backend on CPU."""
import re
import subprocess
import sys

import pytest

from tests.pretrain_fixtures import REPO_ROOT, TINY_ARGS, environment, make_images, read_rows
from sparkmim.utils.checkpoint import load_file

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

CHECKSUM = re.compile(r"rank (\d) state after step (\d+): parameter checksum (\S+), synchronised-norm buffer checksum (\S+)")


# test_convnext keeps a classifier-head norm that the feature forward never uses (as every ConvNeXt does):
# DistributedDataParallel stopped at the second step while that norm was trainable; channels_last, the
# default layout on CUDA devices, under DDP with the cross-process norms
@pytest.mark.parametrize("model, layout", [("test_resnet", []), ("test_convnext", []),
                                           ("test_resnet", ["--channels-last"])])
def test_two_processes_agree_on_weights_and_reduce_batchnorm_statistics(tmp_path, model, layout):
    data = make_images(tmp_path / "data", 16)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sparkmim.pretrain", str(data), *TINY_ARGS, "--model", model, "--epochs", "1",
               "--device", "cpu", "--output-dir", str(out), *layout]
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    states = {}
    for rank in (0, 1):
        match = CHECKSUM.search((out / f"log_rank{rank}.txt").read_text())
        assert match, f"rank {rank} logged no state checksum"
        states[rank] = (int(match.group(2)), float(match.group(3)), float(match.group(4)))
    assert states[0][0] == states[1][0] == 2
    # gradients are averaged by DDP: identical weights on both ranks after the steps
    assert states[0][1] == pytest.approx(states[1][1], rel=1e-9, abs=1e-9)
    # each rank saw different images, so the running statistics of its BatchNorms (sparse ones in the encoder
    # and densify norms, dense ones in the decoder; buffers are not broadcast) agree only because they were
    # reduced across processes
    assert states[0][2] != 0.0
    assert states[0][2] == pytest.approx(states[1][2], rel=1e-9, abs=1e-9)

    log = (out / "log_rank0.txt").read_text()
    assert "2 process(es)" in log and "2 process(es) x 4 micro-batch" in log
    assert f"(channels_last {'on' if layout else 'off'}, norm kernel torch)" in log
    assert [r["step"] for r in read_rows(out / "metrics.jsonl", "step")] == [0, 1]
    assert not (out / "metrics.jsonl").with_name("metrics_rank1.jsonl").exists()
    checkpoint = load_file(out / "checkpoint_last.pth")
    assert checkpoint["step"] == 2 and len(checkpoint["rng"]) == 2  # every rank's RNG state
    assert not any(k.startswith("module.") for k in checkpoint["model"])


def test_a_file_both_processes_meet_is_counted_once(tmp_path):
    # 3 images and 1 unreadable file at a global batch of 8 over 2 processes: each process's half of the one
    # step wraps around the whole epoch order, so both meet the unreadable file (it was counted twice)
    data = make_images(tmp_path / "data", 3)
    (data / "class_a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sparkmim.pretrain", str(data), *TINY_ARGS, "--epochs", "1", "--device", "cpu", "--num-vis", "0",
               "--output-dir", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [r["skipped_images"] for r in read_rows(out / "metrics.jsonl", "epoch")] == [1]
    log = (out / "log_rank0.txt").read_text()
    assert "1 unreadable image(s) skipped" in log
    assert "the data has 4 image(s), fewer than one global batch of 8: every step repeats images" in log
