"""One writer per run folder: the lock, the refusal to start over a run, and leftover temporary files."""
import json
import os
import socket
import subprocess
import sys

import pytest

from sparkmim.utils.run_folder import (LOCK_NAME, RunFolderError, RunFolderLock, check_fresh_start, process_start,
                                       remove_orphan_temporaries)


def write_lock(folder, pid, host=None, **fields):
    (folder / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                                "started": 0, "command": "spark-pretrain", **fields}))


def test_a_live_holder_is_named_and_a_dead_one_is_taken_over(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, other.pid)
        with pytest.raises(RunFolderError, match=rf"in use by spark-pretrain \(pid {other.pid} on"):
            RunFolderLock(tmp_path, "spark-finetune").acquire()
    finally:
        other.kill()
        other.wait()
    with RunFolderLock(tmp_path, "spark-finetune") as lock:  # its process is gone: stale
        assert json.loads(lock.path.read_text())["command"] == "spark-finetune"
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


@pytest.mark.skipif(process_start(os.getpid()) is None, reason="needs /proc (Linux) to tell when a process started")
def test_a_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path):
    """A job died and the system gave its pid to another process: the lock must not look held forever."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, other.pid, process_start=process_start(other.pid),
                   command_line="python -m sparkmim.pretrain --model resnet50 --output-dir run")
        with pytest.raises(RunFolderError, match=rf"in use by spark-pretrain \(pid {other.pid} on .*; started as: "
                                                 r"python -m sparkmim.pretrain --model resnet50 --output-dir run\)"):
            RunFolderLock(tmp_path, "spark-finetune").acquire()
        write_lock(tmp_path, other.pid, process_start=process_start(other.pid) - 1)  # the dead job's own start
        with RunFolderLock(tmp_path, "spark-finetune") as lock:
            record = json.loads(lock.path.read_text())
            assert record["pid"] == os.getpid() and record["process_start"] == process_start(os.getpid())
            assert record["command"] == "spark-finetune" and "pytest" in record["command_line"]  # this process
    finally:
        other.kill()
        other.wait()


def test_a_lock_from_another_host_is_never_guessed_stale(tmp_path):
    write_lock(tmp_path, 1, host="some-other-node")
    with pytest.raises(RunFolderError, match="some-other-node.*delete"):
        RunFolderLock(tmp_path, "spark-pretrain").acquire()


def test_fresh_start_over_an_existing_run_is_refused(tmp_path):
    check_fresh_start(tmp_path, "checkpoint_last.pth", None, overwrite=False)  # empty folder: fine
    (tmp_path / "checkpoint_last.pth").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="--resume auto.*--overwrite"):
        check_fresh_start(tmp_path, "checkpoint_last.pth", None, overwrite=False)
    check_fresh_start(tmp_path, "checkpoint_last.pth", "auto", overwrite=False)
    check_fresh_start(tmp_path, "checkpoint_last.pth", None, overwrite=True)
    with pytest.raises(RunFolderError, match="already holds a run"):  # an empty --resume is no resume
        check_fresh_start(tmp_path, "checkpoint_last.pth", "", overwrite=False)
    with pytest.raises(RunFolderError, match="--overwrite starts again from step 0 and --resume auto continues"):
        check_fresh_start(tmp_path, "checkpoint_last.pth", "auto", overwrite=True)
    check_fresh_start(tmp_path, "checkpoint_last.pth", str(tmp_path / "checkpoint_last.pth"), overwrite=False)
    check_fresh_start(tmp_path, "checkpoint_last.pth", str(tmp_path / "kept_aside.pth"), overwrite=False)  # a rollback
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "elsewhere.pth").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="holds a run of its own .* which --resume .*elsewhere.pth would write over"):
        check_fresh_start(tmp_path, "checkpoint_last.pth", str(tmp_path / "other" / "elsewhere.pth"), overwrite=False)
    (tmp_path / "checkpoint_last.pth").unlink()
    (tmp_path / "summary.json").write_text("{}")
    check_fresh_start(tmp_path, "checkpoint_last.pth", None, overwrite=False)  # not one of this command's outputs
    with pytest.raises(RunFolderError, match="holds an earlier run's summary.json; .* --overwrite"):
        check_fresh_start(tmp_path, "checkpoint_last.pth", None, overwrite=False, other_outputs=("summary.json",))


def test_only_our_temporary_files_in_the_folder_itself_are_removed(tmp_path):
    (tmp_path / ".checkpoint_last.pth.k3j_x9.tmp").write_bytes(b"0" * 100)
    (tmp_path / "checkpoint_last.pth").write_bytes(b"keep")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".other.pth.a.tmp").write_bytes(b"keep")
    assert remove_orphan_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pth", "sub"]
    assert (tmp_path / "sub" / ".other.pth.a.tmp").exists()
