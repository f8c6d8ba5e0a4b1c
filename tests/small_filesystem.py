"""Run a trainer on a file system that fills up or turns read-only, for real: a size-limited tmpfs
mounted in a private mount namespace (``unshare``; root, or an unprivileged user namespace), so no
mount is left behind on the machine. The run folder is copied out before the namespace ends."""
import functools
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import pytest


def _unshare() -> List[str]:
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]


@functools.lru_cache(maxsize=1)
def mount_problem() -> Optional[str]:
    """Why a private tmpfs cannot be mounted here (None when it can)."""
    if shutil.which("unshare") is None:
        return "the unshare tool is not installed"
    probe = subprocess.run(_unshare() + ["sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a private tmpfs here ({probe.stderr.strip() or probe.returncode})"
    return None


def require_mounts() -> None:
    problem = mount_problem()
    if problem:
        pytest.skip(problem)


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path  # the run folder as it was when the command ended (a copy)


def run_on_small_filesystem(command: Sequence[str], workdir: Path, *, size_bytes: int, env: dict,
                            cwd: Path, make_read_only_after: Optional[str] = None, timeout: float = 600) -> Outcome:
    """Run ``command`` (whose ``--output-dir`` must be ``<workdir>/mnt/run``) with ``<workdir>/mnt`` a tmpfs of
    ``size_bytes``. With ``make_read_only_after`` (a file name in the run folder), the run folder is made
    read-only once that file exists: a read-only bind mount over it, so files the job already holds
    open stay writable and every new write fails, as after an administrator's ``chmod``."""
    mnt, copy = workdir / "mnt", workdir / "after"
    mnt.mkdir(parents=True, exist_ok=True)
    out, err, code = workdir / "stdout.txt", workdir / "stderr.txt", workdir / "returncode.txt"
    run = f"{shlex.join(command)} > {shlex.quote(str(out))} 2> {shlex.quote(str(err))}"
    lines = ["set -u", f"mount -t tmpfs -o size={size_bytes} tmpfs {shlex.quote(str(mnt))}"]
    if make_read_only_after is None:
        lines += [run, "status=$?"]
    else:
        folder, marker = shlex.quote(str(mnt / "run")), shlex.quote(str(mnt / "run" / make_read_only_after))
        lines += [f"{run} &", "job=$!",
                  f"tries=0; while [ ! -f {marker} ] && [ $tries -lt 3000 ]; do sleep 0.05; tries=$((tries+1)); done",
                  f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} || kill $job",
                  "wait $job", "status=$?"]
    lines += [f"cp -a {shlex.quote(str(mnt / 'run'))} {shlex.quote(str(copy))}",
              f"echo $status > {shlex.quote(str(code))}"]
    done = subprocess.run(_unshare() + ["sh", "-c", "\n".join(lines)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert code.is_file(), f"the namespace script failed: {done.stderr}"
    return Outcome(int(code.read_text()), out.read_text(), err.read_text(), copy)
