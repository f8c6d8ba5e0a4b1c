"""Configure ``logging``: the trainers' rank 0 logs to stdout and every rank to its own file
(:func:`setup_logging`); the one-shot commands log to stderr (:func:`setup_command_logging`)."""
import logging
import sys
from pathlib import Path
from typing import List, Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CurrentStream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at the time of each record (not the stream
    of the moment the handler was made), so a command run twice in one process (tests, notebooks)
    never writes to a stream that was closed in between."""

    def __init__(self, name: str = "stderr") -> None:
        self.stream_name = name
        super().__init__(getattr(sys, name))

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401 - logging reads this attribute
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, _value) -> None:
        pass


class RunLogFile(logging.FileHandler):
    """A run's log file that, when the disk fills up or the folder becomes read-only, says so once on
    stderr and stops writing, instead of logging's traceback for every later record (the console
    handler goes on, and the run's own error says what failed)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        sys.stderr.write(f"cannot write the log file {self.baseFilename} ({error}); it stops here, the "
                         "console log goes on\n")


def setup_logging(output_dir: Optional[Path] = None, rank: int = 0, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    _remove_own_handlers(root)
    formatter = logging.Formatter(FORMAT, datefmt="%H:%M:%S")
    handlers: List[logging.Handler] = []
    if rank == 0:
        handlers.append(CurrentStream("stdout"))
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(RunLogFile(Path(output_dir) / f"log_rank{rank}.txt"))
    for handler in handlers:
        handler._sparkmim = True  # marks handlers this function owns, so a second call replaces them
        handler.setFormatter(formatter)
        root.addHandler(handler)


def setup_command_logging(level: int = logging.WARNING, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """One stderr handler at ``level`` for a command-line tool, replacing the handlers a previous call
    (or a trainer's :func:`setup_logging`) made in this process."""
    root = logging.getLogger()
    _remove_own_handlers(root)  # a trainer run earlier in this process must not print into this command's output
    handler = CurrentStream("stderr")
    handler._sparkmim = True  # type: ignore[attr-defined]
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


def _remove_own_handlers(root: logging.Logger) -> None:
    """Remove (and close) the handlers an earlier :func:`setup_logging` / :func:`setup_command_logging` made."""
    for handler in list(root.handlers):
        if getattr(handler, "_sparkmim", False):
            root.removeHandler(handler)
            handler.close()
