"""mmengine hook writing the COCO AP JSON after every evaluation (imports mmengine: load lazily)."""
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from mmengine.hooks import Hook

from .results import no_detection_metrics, write_results

logger = logging.getLogger(__name__)


class CocoResultsHook(Hook):
    """After each validation or test epoch, rank 0 rewrites ``path`` with the AP table, so the file
    always holds the latest evaluation (the final one once a run ends)."""

    priority = "VERY_LOW"

    def __init__(self, path: Path, info: Optional[Dict[str, Any]] = None) -> None:
        self.path = Path(path)
        self.info = dict(info or {})

    def _write(self, runner: Any, metrics: Optional[Dict[str, Any]], **info: Any) -> None:
        if runner.rank != 0:
            return
        if not metrics:
            logger.warning("the evaluation produced no detections; writing AP 0 for every metric")
            metrics, info = no_detection_metrics(), dict(info, detections=0)
        write_results(metrics, self.path, **info, **self.info)
        logger.info("COCO AP written to %s", self.path)

    def after_val_epoch(self, runner: Any, metrics: Optional[Dict[str, Any]] = None) -> None:
        self._write(runner, metrics, split="val", epoch=runner.epoch, iteration=runner.iter)

    def after_test_epoch(self, runner: Any, metrics: Optional[Dict[str, Any]] = None) -> None:
        # no epoch/iteration here: reading them would build the training loop (and its data)
        self._write(runner, metrics, split="test")
