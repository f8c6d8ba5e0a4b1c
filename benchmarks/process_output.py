"""Running a benchmark's child process and reading what it printed: one home for every part that
launches one."""
import os
import signal
import subprocess
from typing import Mapping, Optional, Sequence, Tuple, Union

# how long a stopped child gets to end on SIGTERM (spark-pretrain saves its checkpoint then) before SIGKILL
STOP_GRACE_S = 5.0


def last_line(text: Union[str, bytes, None]) -> str:
    """The last line a finished or stopped process printed (its error, usually), for a one-line report."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no output"


def run_child(command: Sequence[str], timeout: Optional[float] = None,
              env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)`` for a child that starts
    children of its own (spark-pretrain's loader workers, torchrun and its workers, a part's benchmarks).

    ``subprocess.run`` stops only the child at its timeout; what the child started would keep running and
    keep the GPU busy while the next part measures. Here the child leads a process group of its own, and
    at the timeout, or when the caller is interrupted, the whole group is stopped: SIGTERM (torchrun then
    stops its workers, which run in sessions of their own), SIGKILL after :data:`STOP_GRACE_S`. Raises
    :class:`subprocess.TimeoutExpired` with the output so far, as ``subprocess.run`` does."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=None if env is None else dict(env), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_process_group(process)
        raise subprocess.TimeoutExpired(process.args, timeout, stdout, stderr) from None
    except BaseException:  # KeyboardInterrupt included: the group would outlive the caller otherwise
        stop_process_group(process)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def stop_process_group(process: subprocess.Popen) -> Tuple[Union[str, bytes, None], Union[str, bytes, None]]:
    """Stop ``process`` and its process group (SIGTERM, then SIGKILL); returns the output it had left."""
    stdout = stderr = None
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:  # the group has ended already
            pass
        try:
            return process.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired as waiting:  # still running, or a descendant holds the pipes open
            stdout, stderr = waiting.stdout or stdout, waiting.stderr or stderr
    process.kill()  # a descendant in a session of its own still holds the pipes: give up on the rest
    process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    return stdout, stderr
