"""Metrics sinks for training jobs: a JSONL file (always) and TensorBoard (when installed).

Only the main process writes; other ranks get a logger whose calls do nothing."""
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

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


class MetricsLogger:
    """Appends one JSON object per call to ``<run_dir>/<name>.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Optional[Path], name: str = "metrics", enabled: bool = True,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / f"{name}.jsonl" if run_dir is not None else None
        self._writer = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: Mapping[str, Any], step: Optional[int] = None, prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {k: _jsonable(v) for k, v in record.items()}
        if step is not None:
            row.setdefault("step", step)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._writer is not None and step is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
