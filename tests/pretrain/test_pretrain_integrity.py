"""Everything around spark-pretrain's checkpoint stays consistent when a run ends badly (real processes,
real signals, a real full or read-only file system): each step once in ``metrics.jsonl`` after a kill
and resume, epoch summaries equal to an uninterrupted run's after a mid-epoch stop, a second Ctrl-C
that does not break the save, and one line (not a traceback) when the disk fills up."""
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from sparkmim.utils.checkpoint import load_file
from tests.pretrain_fixtures import (REPO_ROOT, TINY_ARGS, command, environment, make_images, read_rows, run_cli,
                                     start_cli)
from tests.small_filesystem import require_mounts, run_on_small_filesystem

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH, EPOCHS = 7, 2  # 52 readable + 4 corrupt files at batch 8: 7 steps per epoch


def _wait_for_step(metrics: Path, step: int, process) -> None:
    deadline = time.time() + 240
    while not any(row["step"] >= step for row in read_rows(metrics, "step")):
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before step {step}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for step {step}")
        time.sleep(0.02)


def _summaries(run_dir: Path):
    return [(row["epoch"], row["loss_mean"], row["skipped_images"]) for row in read_rows(run_dir / "metrics.jsonl",
                                                                                         "epoch")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = make_images(tmp_path_factory.mktemp("integrity") / "images", 52)
    for index in range(4):
        (folder / "class_a" / f"corrupt_{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return folder


def _args(data: Path):
    return [str(data), *TINY_ARGS, "--epochs", str(EPOCHS), "--seed", "5", "--log-interval", "1", "--num-vis", "0"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("integrity_reference") / "run"
    done = run_cli(_args(data) + ["--output-dir", str(run_dir)])
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = _summaries(run_dir)
    assert [epoch for epoch, _, _ in summaries] == list(range(EPOCHS))
    assert all(skipped > 0 for _, _, skipped in summaries), "the test needs unreadable files in every epoch"
    return run_dir


def _assert_same_records(run_dir: Path, reference: Path) -> None:
    steps = Counter(row["step"] for row in read_rows(run_dir / "metrics.jsonl", "step"))
    assert sorted(steps) == list(range(STEPS_PER_EPOCH * EPOCHS))
    assert set(steps.values()) == {1}, f"steps logged more than once: {[s for s, n in steps.items() if n > 1]}"
    got, expected = _summaries(run_dir), _summaries(reference)
    assert [(e, s) for e, _, s in got] == [(e, s) for e, _, s in expected]
    assert [loss for _, loss, _ in got] == pytest.approx([loss for _, loss, _ in expected], rel=1e-6)


def test_sigkill_then_resume_logs_every_step_once(data, reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli(_args(data) + ["--output-dir", str(run_dir)], tmp_path / "killed.log")
    _wait_for_step(run_dir / "metrics.jsonl", STEPS_PER_EPOCH + 1, process)  # in epoch 1, after a checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    saved = load_file(run_dir / "checkpoint_last.pth")["step"]
    logged = [row["step"] for row in read_rows(run_dir / "metrics.jsonl", "step")]
    assert max(logged) >= saved, "nothing was logged after the checkpoint: the test would prove nothing"

    resumed = run_cli(_args(data) + ["--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_records(run_dir, reference)


def test_mid_epoch_stop_then_resume_gives_the_uninterrupted_epoch_summaries(data, reference, tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli(_args(data) + ["--output-dir", str(run_dir)], tmp_path / "stopped.log")
    _wait_for_step(run_dir / "metrics.jsonl", STEPS_PER_EPOCH + 1, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    saved = load_file(run_dir / "checkpoint_last.pth")
    assert saved["step"] % STEPS_PER_EPOCH != 0, "the stop fell on an epoch end: not the case under test"
    assert saved["epoch_progress"]["losses"], "a mid-epoch checkpoint carries the epoch's losses so far"

    resumed = run_cli(_args(data) + ["--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_records(run_dir, reference)
    last_mean = _summaries(reference)[-1][1]
    assert f"last epoch mean loss {last_mean:.4f}" in resumed.stdout


def test_second_sigint_lets_the_save_finish_without_a_traceback(data, tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli([str(data), *TINY_ARGS, "--epochs", "40", "--log-interval", "1", "--output-dir",
                         str(run_dir)], tmp_path / "output.log")
    _wait_for_step(run_dir / "metrics.jsonl", 2, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 0
    output = (tmp_path / "output.log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert "stopped after step" in output
    last_logged = max(row["step"] for row in read_rows(run_dir / "metrics.jsonl", "step"))
    assert load_file(run_dir / "checkpoint_last.pth")["step"] == last_logged + 1


def _checkpoint_bytes(run_dir: Path) -> int:
    return sum(path.stat().st_size for path in run_dir.glob("*.pth"))


def test_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(data, reference, tmp_path):
    require_mounts()
    # room for the first save only: the second needs a second copy of the checkpoint beside the first
    size = _checkpoint_bytes(reference) + 384 * 1024
    run_folder = tmp_path / "mnt" / "run"
    outcome = run_on_small_filesystem(command(_args(data) + ["--output-dir", str(run_folder)]), tmp_path,
                                      size_bytes=size, env=environment(), cwd=REPO_ROOT)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    assert "MB free" in outcome.stdout and "the first save will fail" in outcome.stdout  # warned at start
    error = outcome.stderr.strip().splitlines()[-1]
    checkpoint = run_folder / "checkpoint_last.pth"
    assert error.startswith(f"spark-pretrain: error: no space left on device writing {checkpoint}; "
                            f"the last good checkpoint is {checkpoint}"), error
    assert load_file(outcome.run_dir / "checkpoint_last.pth")["step"] == STEPS_PER_EPOCH
    assert not list(outcome.run_dir.glob(".*.tmp"))


def test_read_only_folder_ends_in_one_line_and_keeps_the_last_checkpoint(data, tmp_path):
    require_mounts()
    run_folder = tmp_path / "mnt" / "run"
    args = [str(data), *TINY_ARGS, "--epochs", "400", "--log-interval", "1", "--num-vis", "0",
            "--output-dir", str(run_folder)]
    outcome = run_on_small_filesystem(command(args), tmp_path, size_bytes=256 * 2 ** 20, env=environment(),
                                      cwd=REPO_ROOT, make_read_only_after="checkpoint_last.pth")
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    error = outcome.stderr.strip().splitlines()[-1]
    assert error.startswith("spark-pretrain: error: read-only file system writing "), error
    assert f"; the last good checkpoint is {run_folder / 'checkpoint_last.pth'}" in error
    assert load_file(outcome.run_dir / "checkpoint_last.pth")["step"] >= STEPS_PER_EPOCH
