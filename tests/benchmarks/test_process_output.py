"""last_line: the one-line reason every benchmark part gives when a process it launched fails;
run_child: a launched process that runs too long is stopped with everything it started."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkmim.benchmarks.process_output import STOP_GRACE_S, last_line, run_child


def test_the_last_printed_line_is_reported_from_text_or_bytes():
    assert last_line("loading\nRuntimeError: CUDA out of memory\n\n") == "RuntimeError: CUDA out of memory"
    assert last_line(b"step 1\nKilled\n") == "Killed"
    assert last_line(b"\xff bad byte") == "\ufffd bad byte"


def test_a_silent_process_says_so():
    assert last_line(None) == last_line("") == last_line("  \n") == "no output"


# a child that starts a grandchild (as spark-pretrain starts loader workers), says its pid, then waits
PARENT_OF_SLEEPER = """
import subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(sleeper.pid, flush=True)
print("waiting", file=sys.stderr, flush=True)
time.sleep(120)
"""


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """True once ``pid`` has ended (a zombie nobody reaps counts as ended)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_child_that_runs_too_long_is_stopped_with_everything_it_started():
    # subprocess.run stops only the child: its workers would keep the GPU busy during the next part
    tick = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run_child([sys.executable, "-c", PARENT_OF_SLEEPER], timeout=3)
    assert time.monotonic() - tick < 3 + 2 * STOP_GRACE_S
    grandchild = int(last_line(expired.value.stdout))
    assert _gone(grandchild), f"the grandchild {grandchild} outlived its parent's timeout"
    assert last_line(expired.value.stderr) == "waiting"


def test_a_finished_child_gives_what_subprocess_run_gives():
    done = run_child([sys.executable, "-c", "import os, sys; print(os.environ['MARK']); sys.exit(3)"],
                     timeout=60, env={**os.environ, "MARK": "here"})
    assert (done.returncode, done.stdout, done.stderr) == (3, "here\n", "")
