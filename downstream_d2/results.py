"""The final COCO AP table as a JSON file that reports can read without Detectron2.

Layout: ``{"framework": "detectron2", "config": ..., "weights": ..., "iteration": ...,
"bbox": {"AP": ..., "AP50": ..., "AP75": ..., "APs": ..., "APm": ..., "APl": ..., "AP-<class>": ...},
"segm": {...}}`` with AP in percent as Detectron2's COCOEvaluator reports it; a metric COCO could not
compute (e.g. no small objects) is ``null``; a task the model has (box, and mask with MASK_ON) is always
present, all ``null`` when a short run predicted nothing.
"""
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

RESULTS_FILE = "coco_results.json"
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluation_tasks(mask_on: bool) -> Tuple[str, ...]:
    """The COCO tasks to evaluate, given explicitly: Detectron2 otherwise infers them from the predictions
    and drops ``segm`` when a short run predicts no instance."""
    return ("bbox", "segm") if mask_on else ("bbox",)


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


def write_results(results: Mapping[str, Any], output_dir: Path, tasks: Sequence[str] = (), **info: Any) -> Path:
    """Write ``coco_results.json`` atomically into ``output_dir``; each of ``tasks`` missing from
    ``results`` is written with null metrics; ``info`` adds run facts (config, weights, iteration)."""
    path = Path(output_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    table = ap_table(results)
    for task in tasks:
        if not any(key == task or key.endswith(f"/{task}") for key in table):
            table[task] = {metric: None for metric in COCO_METRICS}
    payload = {"framework": "detectron2", **info, **table}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
