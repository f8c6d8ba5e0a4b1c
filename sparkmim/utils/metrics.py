"""Metrics sinks for training jobs: a JSONL file (always) and TensorBoard (when installed).

Only the main process writes; other ranks get a logger whose calls do nothing. Every step appears once
in the file, also after a crash: a checkpoint records how many rows had been written when it was saved
(:attr:`MetricsLogger.rows`), and a run resumed from it first cuts the file back to those rows
(``keep_rows``), dropping what the crashed run logged after its last checkpoint, which the resumed run
logs again. TensorBoard is told the same through ``purge_step``."""
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from sparkmim.utils.disk import writing

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics JSONL file (none when it is absent); a line cut short by a crash is skipped."""
    rows: List[Dict[str, Any]] = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def keep_first_rows(path: Path, count: int) -> int:
    """Cut a JSONL file back to its first ``count`` complete rows (atomically); returns how many rows
    (and cut-short lines) were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines[:count] if line.endswith("\n")]
    dropped = len(lines) - len(kept)
    if dropped:
        temporary = path.with_name(f".{path.name}.rewrite.tmp")
        with writing(path):
            temporary.write_text("".join(kept))
            os.replace(temporary, path)
    return dropped


class MetricsLogger:
    """Appends one JSON object per call to ``<run_dir>/<name>.jsonl`` and mirrors scalars to TensorBoard.

    ``keep_rows``: the number of rows the run's checkpoint recorded (0 for a run starting from scratch),
    to which the file is cut back first; None keeps the file as it is. ``purge_step``: TensorBoard drops
    its events from this step on (those logged after the checkpoint)."""

    def __init__(self, run_dir: Optional[Path], name: str = "metrics", enabled: bool = True,
                 tensorboard: bool = True, keep_rows: Optional[int] = None, purge_step: Optional[int] = None) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / f"{name}.jsonl" if run_dir is not None else None
        self.rows = 0
        self._writer = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_rows is not None:
            dropped = keep_first_rows(self.path, keep_rows)
            if dropped:
                logger.info("%s: dropped %d row(s) logged after the checkpoint (they are logged again)",
                            self.path.name, dropped)
        self.rows = len(self.path.read_text().splitlines()) if self.path.is_file() else 0
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def log(self, record: Mapping[str, Any], step: Optional[int] = None, prefix: str = "",
            tensorboard_step: Optional[int] = None) -> None:
        """One row; ``tensorboard_step`` places its scalars at another step than the row's ``step``."""
        if not self.enabled:
            return
        row = {k: _jsonable(v) for k, v in record.items()}
        if step is not None:
            row.setdefault("step", step)
        with writing(self.path):
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        self.rows += 1
        board_step = step if tensorboard_step is None else tensorboard_step
        if self._writer is not None and board_step is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(f"{prefix}{key}", value, board_step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
