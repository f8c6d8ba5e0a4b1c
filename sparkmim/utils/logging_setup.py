"""Configure ``logging`` once per process: rank 0 logs to stdout, every rank to its own file."""
import logging
import sys
from pathlib import Path
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(output_dir: Optional[Path] = None, rank: int = 0, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_sparkmim", False):
            root.removeHandler(handler)
            handler.close()
    formatter = logging.Formatter(FORMAT, datefmt="%H:%M:%S")
    handlers = []
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / f"log_rank{rank}.txt"))
    for handler in handlers:
        handler._sparkmim = True  # marks handlers this function owns, so a second call replaces them
        handler.setFormatter(formatter)
        root.addHandler(handler)
