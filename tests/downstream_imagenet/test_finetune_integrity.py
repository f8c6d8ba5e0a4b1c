"""spark-finetune's run folder stays consistent when a run ends badly (real processes, real signals, a real
full file system): each step once in ``metrics.jsonl`` and the uninterrupted epoch rows after a kill and
resume, a double Ctrl-C that ends in one line, and one line (not a traceback) when the disk fills up."""
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sparkmim.utils.checkpoint import load_file
from sparkmim.utils.metrics import read_rows
from tests.finetune_fixtures import common_args, make_workspace
from tests.small_filesystem import require_mounts, run_on_small_filesystem

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3  # 48 readable training images at batch 16
EPOCHS = 3
COMMAND = [sys.executable, "-m", "sparkmim.downstream_imagenet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(out: Path, kind: str):
    return [row for row in read_rows(out / "metrics.jsonl") if row.get("kind") == kind]


def _args(workspace: Path, out: Path, epochs: int = EPOCHS):
    return [*common_args(workspace, out), "--epochs", str(epochs), "--log-interval", "1"]


def _start(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen(COMMAND + list(args), env=ENV, stdout=open(log, "w"), stderr=open(log.with_suffix(".err"), "w"))


def _wait_for_step(out: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not any(row["step"] >= step for row in _rows(out, "train_step")):
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before step {step}"
        assert time.time() < deadline, f"timed out waiting for step {step}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("finetune_integrity"))


@pytest.fixture(scope="module")
def reference(workspace):
    out = workspace / "integrity_reference"
    done = subprocess.run(COMMAND + _args(workspace, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _epoch_rows(out: Path):
    return [(row["epoch"], row["train_loss"], row["val_top1"], row["train_skipped"]) for row in _rows(out, "epoch")]


def test_sigkill_then_resume_logs_every_step_once_and_the_same_epochs(workspace, reference, tmp_path):
    out = tmp_path / "run"
    process = _start(_args(workspace, out), tmp_path / "killed.log")
    _wait_for_step(out, STEPS_PER_EPOCH + 1, process)  # in epoch 2, after the first checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert load_file(out / "checkpoint_last.pth")["step"] == STEPS_PER_EPOCH

    resumed = subprocess.run(COMMAND + _args(workspace, out) + ["--resume", "auto"], env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = Counter(row["step"] for row in _rows(out, "train_step"))
    assert sorted(steps) == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1)) and set(steps.values()) == {1}, steps
    got, expected = _epoch_rows(out), _epoch_rows(reference)
    assert [(e, s) for e, _, _, s in got] == [(e, s) for e, _, _, s in expected]
    assert [(loss, top1) for _, loss, top1, _ in got] == \
        [(pytest.approx(loss, rel=1e-5), pytest.approx(top1)) for _, loss, top1, _ in expected]


def test_double_sigint_ends_in_one_line_and_keeps_the_checkpoint(workspace, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "output.log"
    process = _start(_args(workspace, out, epochs=50), log)
    _wait_for_step(out, STEPS_PER_EPOCH + 1, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    errors = log.with_suffix(".err").read_text()
    assert "Traceback" not in errors and "Traceback" not in log.read_text()
    last = (out / "checkpoint_last.pth").resolve()
    assert errors.strip().splitlines()[-1].startswith(
        f"spark-finetune: interrupted: stopped by SIGINT; the last checkpoint {last} is kept; continue with "
        "--resume auto"), errors[-2000:]
    assert load_file(out / "checkpoint_last.pth")["step"] % STEPS_PER_EPOCH == 0


def test_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(workspace, reference, tmp_path):
    require_mounts()
    files = [path for path in reference.rglob("*") if path.is_file()]
    last_size = (reference / "checkpoint_last.pth").stat().st_size
    # everything the finished reference holds, but not the second copy of checkpoint_last.pth a later save needs
    size = sum(path.stat().st_size for path in files) + 4096 * len(files) + last_size // 2
    out = tmp_path / "mnt" / "run"
    outcome = run_on_small_filesystem(COMMAND + _args(workspace, out), tmp_path, size_bytes=size, env=ENV,
                                      cwd=Path.cwd())
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    error = outcome.stderr.strip().splitlines()[-1]
    assert error.startswith(f"spark-finetune: error: no space left on device writing {out}/checkpoint_"), error
    assert f"; the last good checkpoint is {out / 'checkpoint_last.pth'}" in error
    assert load_file(outcome.run_dir / "checkpoint_last.pth")["epoch"] >= 1
    assert not list(outcome.run_dir.glob(".*.tmp"))
