"""The final COCO AP table as a JSON file that reports can read without Detectron2.

Layout: ``{"framework": "detectron2", "config": ..., "weights": ..., "iteration": ...,
"bbox": {"AP": ..., "AP50": ..., "AP75": ..., "APs": ..., "APm": ..., "APl": ..., "AP-<class>": ...},
"segm": {...}}`` with AP in percent as Detectron2's COCOEvaluator reports it; a metric COCO could not
compute (e.g. no small objects) is ``null``.
"""
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

RESULTS_FILE = "coco_results.json"


def _clean(value: Any) -> Optional[float]:
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def ap_table(results: Mapping[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Detectron2's results (``{'bbox': {'AP': ...}, 'segm': {...}}``, possibly nested per dataset)
    as plain floats; with several test datasets the keys become ``<dataset>/<task>``."""
    table: Dict[str, Dict[str, Optional[float]]] = {}
    for key, value in results.items():
        if not isinstance(value, Mapping):
            continue
        if value and all(isinstance(v, Mapping) for v in value.values()):  # {dataset: {task: ...}}
            for task, metrics in value.items():
                table[f"{key}/{task}"] = {m: _clean(v) for m, v in metrics.items()}
        else:
            table[key] = {m: _clean(v) for m, v in value.items()}
    return table


def write_results(results: Mapping[str, Any], output_dir: Path, **info: Any) -> Path:
    """Write ``coco_results.json`` atomically into ``output_dir``; ``info`` adds run facts
    (config, weights, iteration)."""
    path = Path(output_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"framework": "detectron2", **info, **ap_table(results)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
