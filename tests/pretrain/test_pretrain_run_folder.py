"""spark-pretrain keeps one writer per run folder (real processes on one folder)."""
import signal
import time

from sparkmim.utils.checkpoint import load_file
from sparkmim.utils.run_folder import LOCK_NAME
from tests.pretrain_fixtures import TINY_ARGS, make_images, read_rows, run_cli, start_cli


def test_second_job_refused_restart_refused_leftovers_cleared_overwrite_starts_clean(tmp_path):
    data = make_images(tmp_path / "data", 8)  # 8 files, batch 8: one step per epoch
    out = tmp_path / "run"
    args = [str(data), *TINY_ARGS, "--output-dir", str(out)]
    first = start_cli([*args, "--epochs", "40"], tmp_path / "first.log")
    deadline = time.time() + 120
    while not (out / LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    # hold the first job still while the second starts: a live holder whatever the machine's speed
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first job ended before the second could meet it"
        second = run_cli([*args, "--epochs", "1", "--resume", "auto"])
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert second.returncode == 2 and f"is in use by spark-pretrain (pid {first.pid} on" in second.stderr
    assert f" -m sparkmim.pretrain {data} " in second.stderr  # how the holder was started
    assert len(second.stderr.strip().splitlines()) == 1
    assert load_file(out / "checkpoint_last.pth")["step"] == 40 and not (out / LOCK_NAME).exists()

    again = run_cli([*args, "--epochs", "40"])  # no --resume on a finished run
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume auto" in again.stderr

    leftover = out / ".checkpoint_last.pth.q1w2e3.tmp"
    leftover.write_bytes(b"0" * 1000)
    resumed = run_cli([*args, "--epochs", "41", "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not leftover.exists() and load_file(out / "checkpoint_last.pth")["step"] == 41

    fresh = run_cli([*args, "--epochs", "2", "--overwrite"])
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert [row["step"] for row in read_rows(out / "metrics.jsonl", "step")] == [0, 1]
    assert load_file(out / "checkpoint_last.pth")["step"] == 2
