"""The final COCO AP table of an MMDetection run as a JSON file reports can read without mmdet.

Layout (the same as the Detectron2 pipeline's ``coco_results.json``): ``{"framework": "mmdetection",
"config": ..., "weights": ..., "epoch": ..., "iteration": ..., "bbox": {"AP": ..., "AP50": ..., "AP75": ...,
"APs": ..., "APm": ..., "APl": ...}, "segm": {...}}`` with AP in percent. mmdet's ``CocoMetric``
reports fractions under ``coco/bbox_mAP``, ``coco/segm_mAP_50``, ...; a metric COCO could not compute
(-1, e.g. no small objects) or a non-finite one is ``null``.
"""
import json
import math
from pathlib import Path
from typing import IO, Any, Dict, Mapping, Optional

from sparkmim.utils.checkpoint import save_atomic

RESULTS_FILE = "coco_results.json"
TASKS = ("bbox", "segm")
# mmdet CocoMetric suffix -> the AP names the project's reports use
METRIC_NAMES = {"mAP": "AP", "mAP_50": "AP50", "mAP_75": "AP75", "mAP_s": "APs", "mAP_m": "APm", "mAP_l": "APl"}


def _percent(value: Any) -> Optional[float]:
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < 0:
        return None
    return round(100.0 * number, 3)


def ap_table(metrics: Mapping[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """mmdet's flat metrics (``{'coco/bbox_mAP': 0.412, ...}``) as ``{'bbox': {'AP': 41.2, ...}, ...}``;
    tasks without metrics are left out."""
    table: Dict[str, Dict[str, Optional[float]]] = {}
    for key, value in metrics.items():
        name = key.split("/", 1)[-1]
        task, _, suffix = name.partition("_")
        if task in TASKS and suffix in METRIC_NAMES:
            table.setdefault(task, {})[METRIC_NAMES[suffix]] = _percent(value)
    return table


def no_detection_metrics() -> Dict[str, float]:
    """What COCO evaluation of a model without a single detection amounts to: every AP is 0.

    mmdet's CocoMetric returns no metrics at all in that case (an untrained or collapsed model);
    the results file must still say what happened rather than be missing."""
    return {f"coco/{task}_{suffix}": 0.0 for task in TASKS for suffix in METRIC_NAMES}


def write_results(metrics: Mapping[str, Any], path: Path, **info: Any) -> Path:
    """Write the AP table atomically to ``path``; ``info`` adds run facts (config, weights, epoch)."""
    payload = {"framework": "mmdetection", **info, **ap_table(metrics)}
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"

    def dump(obj: str, handle: IO[bytes]) -> None:
        handle.write(obj.encode("utf-8"))

    return save_atomic(text, path, dump=dump)
