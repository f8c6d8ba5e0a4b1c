"""Fault tolerance of spark-pretrain with real processes and real signals: graceful stop, exact
resume after SIGKILL, atomic checkpoints, and a non-finite loss."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pretrain_fixtures import (REPO_ROOT, TINY_ARGS, environment, make_images, read_rows,
                                              run_cli, start_cli, step_losses)
from sparkmim.utils.checkpoint import load_file

pytestmark = pytest.mark.slow


def _wait_for(predicate, process, timeout=240.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("fault_data") / "images", 24)  # 3 steps per epoch at batch 8


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(data, tmp_path):
    # --log-interval 1: every step's loss is logged when it ends, so the kill can land mid-epoch
    args = [str(data), *TINY_ARGS, "--epochs", "5", "--seed", "3", "--log-interval", "1"]
    reference = run_cli(args + ["--output-dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr
    expected = step_losses(tmp_path / "reference" / "metrics.jsonl")
    assert sorted(expected) == list(range(15))

    run_dir = tmp_path / "interrupted"
    # one loader worker here and none in the reference: the data stream must not depend on it
    process = start_cli(args + ["--output-dir", str(run_dir), "--workers", "1"], tmp_path / "interrupted.log")
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: any(r["step"] >= 4 for r in read_rows(metrics, "step")), process,
              what="step 4 (in epoch 1, after the first checkpoint)")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    saved_step = load_file(run_dir / "checkpoint_last.pth")["step"]
    assert saved_step % 3 == 0 and 3 <= saved_step < 15
    killed_at = max(step_losses(metrics))
    assert killed_at >= saved_step  # some work after the checkpoint was lost and must be redone

    resumed = run_cli(args + ["--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {saved_step}" in (run_dir / "log_rank0.txt").read_text()
    got = step_losses(metrics)
    assert sorted(got) == list(range(15))
    for step in range(saved_step, 15):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"


# "group": SLURM, Kubernetes and timeout(1) signal every process of the job, loader workers included (a worker
# that died of it made the main process's loader fail instead of finishing the step)
@pytest.mark.parametrize("signalled, workers", [("process", "0"), ("group", "1")])
def test_sigterm_finishes_the_step_saves_and_resume_continues(data, tmp_path, signalled, workers):
    run_dir = tmp_path / "run"
    args = [str(data), *TINY_ARGS, "--epochs", "40", "--output-dir", str(run_dir), "--workers", workers]
    process = start_cli(args, tmp_path / "first.log", own_group=signalled == "group")
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: any(r["step"] >= 4 for r in read_rows(metrics, "step")), process, what="step 4")
    if signalled == "group":
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]
    output = (tmp_path / "first.log").read_text()
    assert "stopped after step" in output and "--resume auto" in output
    saved = load_file(run_dir / "checkpoint_last.pth")
    last_logged = max(step_losses(metrics))
    assert saved["step"] == last_logged + 1  # the interrupted step was finished and saved, mid-epoch
    assert saved["step"] < 18, "the stop came too late for this test's shortened resume"

    resumed = run_cli([str(data), *TINY_ARGS, "--epochs", "6", "--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(step_losses(metrics)) == list(range(18))
    assert load_file(run_dir / "checkpoint_last.pth")["step"] == 18


SLOW_WRITER = """
import sys, time
from sparkmim.utils.checkpoint import save_atomic

class SlowToPickle:
    def __reduce__(self):
        time.sleep(120)
        return (int, (0,))

save_atomic({"format": "sparkmim-pretrain", "payload": SlowToPickle()}, sys.argv[1])
"""


def test_crash_mid_write_never_leaves_a_checkpoint_that_resume_would_pick(data, tmp_path):
    run_dir = tmp_path / "run"
    args = [str(data), *TINY_ARGS, "--output-dir", str(run_dir)]
    assert run_cli(args + ["--epochs", "1", "--num-vis", "0"]).returncode == 0
    checkpoint = run_dir / "checkpoint_last.pth"
    before = _digest(checkpoint)
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(checkpoint)], cwd=REPO_ROOT, env=environment())
    _wait_for(lambda: any(run_dir.glob(".checkpoint_last.pth.*.tmp")), writer, what="the temporary file")
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert any(run_dir.glob(".checkpoint_last.pth.*.tmp"))  # the debris of the crash
    assert _digest(checkpoint) == before
    resumed = run_cli(args + ["--epochs", "2", "--resume", "auto", "--num-vis", "0"])
    assert resumed.returncode == 0, resumed.stderr
    log = (run_dir / "log_rank0.txt").read_text()
    assert "resumed from" in log and "step 3" in log
    assert load_file(checkpoint)["step"] == 6


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    args = [str(data), *TINY_ARGS, "--output-dir", str(run_dir), "--num-vis", "0"]
    assert run_cli(args + ["--epochs", "1"]).returncode == 0
    checkpoint = run_dir / "checkpoint_last.pth"
    before = _digest(checkpoint)
    exploded = run_cli(args + ["--epochs", "3", "--resume", "auto", "--lr", "1e30", "--clip-grad", "0"])
    assert exploded.returncode == 1, exploded.stdout + exploded.stderr
    error_lines = [line for line in exploded.stderr.splitlines() if line.startswith("spark-pretrain: error:")]
    assert len(error_lines) == 1 and " at step " in error_lines[0] and "last good checkpoint" in error_lines[0]
    assert _digest(checkpoint) == before
    assert load_file(checkpoint)["step"] == 3
