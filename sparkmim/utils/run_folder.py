"""One writer per run folder, for both trainers.

A second job started on a folder that a live job is writing would interleave its metrics and leave
whichever checkpoint was written last beside the other job's config; a job restarted without
``--resume`` on a finished folder would silently train again from step 0 over the old checkpoint.
:class:`RunFolderLock` (an advisory lock file holding host, pid, the process's start and command line,
the time and the command, taken by the main process only, released on exit, taken over when its process is gone)
stops the first;
:func:`check_fresh_start` stops the second. Orphaned temporary files of an earlier crashed save
(``.<name>.<random>.tmp``, up to a whole checkpoint in size) are removed once the lock is held."""
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".sparkmim.lock"


class RunFolderError(UserError):
    """The run folder is in use by another job, or holds a run this command would overwrite."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def process_start(pid: int) -> Optional[int]:
    """When process ``pid`` started, in clock ticks since boot (Linux's /proc), or None where unknown.

    A pid alone does not name a process for long: once a job has died, the system may give its pid to
    another process, and a lock naming only the pid would then look held forever."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22; the command name (field 2) may hold spaces and parentheses, so count after its last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _process_command_line() -> str:
    """How this process was started, as a shell would take it (interpreter and script included: a trainer
    called from Python, a notebook or a test holds the lock with that process's command line, not its own)."""
    return " ".join(map(shlex.quote, getattr(sys, "orig_argv", [sys.executable, *sys.argv])))


def _shortened(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain process): the one that owns the run folder's lock."""
    return int(os.environ.get("RANK", "0")) == 0


class RunFolderLock:
    """The advisory lock of one run folder; :meth:`acquire` raises :class:`RunFolderError` naming the holder."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_NAME
        self.held = False

    def _describe(self, holder: Dict[str, Any]) -> str:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
        process = f"; started as: {_shortened(holder['command_line'])}" if holder.get("command_line") else ""
        return f"{holder.get('command', 'a job')} (pid {holder.get('pid')} on {holder.get('host')}, since {started}{process})"

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, holder: Optional[Dict[str, Any]]) -> bool:
        if holder is None:  # unreadable or half written: only a crash leaves that
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot look at another machine's processes
        pid = int(holder.get("pid", -1))
        if pid == os.getpid() or not _alive(pid):
            return True
        recorded = holder.get("process_start")  # absent from locks of older versions: the pid alone decides
        return recorded is not None and process_start(pid) not in (None, recorded)  # the pid now names another process

    def acquire(self) -> "RunFolderLock":
        record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid()),
                  "started": time.time(), "command": self.command, "command_line": _process_command_line()}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if not self._stale(holder):
                    raise RunFolderError(
                        f"{self.folder} is in use by {self._describe(holder)}; wait for it or choose another "
                        f"--output-dir (if that job is gone for good, delete {self.path})") from None
                logger.warning("taking over the run folder lock of a job that no longer runs (%s)",
                               self._describe(holder or {}))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as lock_file:
                json.dump(record, lock_file)
            self.held = True
            return self
        raise RunFolderError(f"another job took {self.folder} at the same moment; choose another --output-dir")

    def release(self) -> None:
        if self.held:
            holder = self._read()
            if holder is not None and holder.get("pid") == os.getpid():
                try:
                    self.path.unlink(missing_ok=True)
                except OSError as error:  # a folder made read-only: the next job finds the lock stale
                    logger.warning("could not remove the run folder lock %s (%s)", self.path, error.strerror or error)
            self.held = False

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def remove_orphan_temporaries(folder: Path) -> int:
    """Delete the ``.<name>.<random>.tmp`` files an interrupted atomic save left in ``folder`` (not below
    it); returns how many. Only call with the folder's lock held: a live job's save uses the same names."""
    removed, size = 0, 0
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            size += path.stat().st_size
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("removed %d temporary file(s) (%.1f MB) left by an interrupted save", removed, size / 2 ** 20)
    return removed


def check_fresh_start(folder: Path, checkpoint_name: str, resume: Optional[str], overwrite: bool,
                      other_outputs: Sequence[str] = ()) -> None:
    """A run must not write over a folder that holds another run's files: without ``--resume`` over its
    checkpoint or ``other_outputs`` (a best checkpoint kept after the last one was deleted to save space),
    with ``--resume`` of another folder's checkpoint over this folder's own run (one of its own checkpoints,
    such as a copy kept aside, may roll it back). ``--overwrite`` (a fresh
    start) and ``--resume`` (a continuation) contradict each other. An empty ``resume`` is no resume."""
    folder, resume = Path(folder), resume or None
    if overwrite and resume is not None:
        raise RunFolderError(f"--overwrite starts again from step 0 and --resume {resume} continues a run: give "
                             "one of them")
    if overwrite:
        return
    existing = folder / checkpoint_name
    if resume is None:
        earlier = next((folder / name for name in (checkpoint_name, *other_outputs) if (folder / name).is_file()), None)
        if earlier == existing:
            raise RunFolderError(f"{folder} already holds a run ({existing.name}); continue it with --resume auto, "
                                 "choose another --output-dir, or pass --overwrite to train again from the start")
        if earlier is not None:
            raise RunFolderError(f"{folder} holds an earlier run's {earlier.name}; choose another --output-dir, or "
                                 "pass --overwrite to replace that run")
    elif resume != "auto" and existing.is_file() and Path(resume).resolve().parent != folder.resolve():
        # (a checkpoint of this folder, such as a copy kept aside, rolls this run back: the user's choice)
        raise RunFolderError(f"{folder} holds a run of its own ({existing.name}), which --resume {resume} would "
                             "write over; give that checkpoint's folder as --output-dir, or a new one")


def claim_run_folder(folder: Path, command: str, checkpoint_name: str, resume: Optional[str], overwrite: bool,
                     is_main: bool, metrics_file: str = "metrics.jsonl",
                     other_outputs: Sequence[str] = ()) -> Optional[RunFolderLock]:
    """What both trainers do before writing to their folder: refuse a fresh start over an earlier run,
    take the lock (main process only), clear an interrupted save's temporary files and, with
    ``overwrite``, delete the earlier run's checkpoint, metrics and ``other_outputs`` (files the new run may
    never write, such as a best checkpoint) so they cannot mix with the new run's.
    Returns the lock (None on other processes); release it when the run ends."""
    check_fresh_start(folder, checkpoint_name, resume, overwrite, other_outputs)
    if not is_main:
        return None
    lock = RunFolderLock(folder, command).acquire()
    remove_orphan_temporaries(folder)
    if overwrite:
        for name in (checkpoint_name, metrics_file, *other_outputs):
            (Path(folder) / name).unlink(missing_ok=True)
    return lock
