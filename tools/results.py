"""Collect the numbers the pipeline stages leave in their run folders.

- ImageNet fine-tuning (``spark-finetune``): ``summary.json`` (best top-1, best EMA top-1) beside
  the run's ``config.yaml`` (model, input size).
- COCO (``spark-d2-train``, the MMDetection entry points): ``coco_results.json``, box and mask AP in
  percent under ``bbox``/``segm`` (mmengine-style flat keys such as ``coco/bbox_mAP`` in 0-1 are
  also read).
- Pre-training (``spark-pretrain``): ``metrics.jsonl`` (per-step ``img_per_s``, per-epoch
  ``loss_mean``) beside its ``config.yaml``.
- The value benchmark (``spark-bench value``): ``results.json`` (SparK vs scratch, every number).

A folder is searched recursively, so a pipeline's whole work folder can be given at once."""
import json
import logging
import os
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import yaml

from sparkmim.utils.metrics import read_rows

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
COCO_FILE = "coco_results.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
VALUE_FILE = "results.json"


@dataclass
class ImageNetResult:
    run: str
    model: Optional[str]
    input_size: Optional[int]
    top1: Optional[float]
    ema_top1: Optional[float]
    epochs_done: Optional[int]
    epochs: Optional[int]
    linear_probe: bool = False
    classes: Optional[int] = None  # None: a run from before summaries recorded it

    @property
    def comparable_to_paper(self) -> bool:
        """Whether the paper's ImageNet rows apply: a fine-tuning (not a linear probe) on ImageNet's 1000 classes."""
        return not self.linear_probe and self.classes in (None, 1000)

    @property
    def protocol(self) -> str:
        return "linear probe" if self.linear_probe else "fine-tuning"

    @property
    def best(self) -> Optional[float]:
        values = [v for v in (self.top1, self.ema_top1) if v is not None and v >= 0]
        return max(values) if values else None


@dataclass
class CocoResult:
    run: str
    framework: str
    model: Optional[str]
    schedule: Optional[str]
    box: Optional[float]
    mask: Optional[float]
    box_ap75: Optional[float] = None
    mask_ap75: Optional[float] = None


@dataclass
class PretrainResult:
    run: str
    model: Optional[str]
    epochs_done: int
    epochs: Optional[int]
    final_loss: Optional[float]
    img_per_s: Optional[float]


@dataclass
class ValueResult:
    """One ``spark-bench value`` run: its whole ``results.json`` (the report renders its table)."""
    run: str
    payload: Dict[str, Any]


@dataclass
class Results:
    imagenet: List[ImageNetResult]
    coco: List[CocoResult]
    pretrain: List[PretrainResult]
    value: List[ValueResult] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"imagenet": [dict(asdict(r), best=r.best) for r in self.imagenet],
                "coco": [asdict(r) for r in self.coco], "pretrain": [asdict(r) for r in self.pretrain],
                "value": [asdict(r) for r in self.value]}

    def empty(self) -> bool:
        return not (self.imagenet or self.coco or self.pretrain or self.value)


def _read_json(path: Path) -> Optional[Any]:
    """The parsed file; None when it is absent (most folders) or unreadable (then with a warning)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("skipping %s: %s", path, error)
        return None


def _read_config(folder: Path) -> Dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        logger.warning("skipping %s: %s", path, error)
        return {}
    return config if isinstance(config, dict) else {}


def _size(value: Any) -> Optional[int]:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], int):
        return int(value[0])
    return None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_imagenet(folder: Path) -> Optional[ImageNetResult]:
    summary = _read_json(folder / SUMMARY_FILE)
    if not isinstance(summary, dict) or "best_top1" not in summary:
        return None
    config = _read_config(folder)
    return ImageNetResult(run=str(folder), model=config.get("model"), input_size=_size(config.get("input_size")),
                          top1=_number(summary.get("best_top1")), ema_top1=_number(summary.get("best_ema_top1")),
                          epochs_done=summary.get("epochs_done"), epochs=summary.get("epochs"),
                          linear_probe=bool(summary.get("linear_probe", config.get("linear_probe", False))),
                          classes=summary.get("classes") if isinstance(summary.get("classes"), int) else None)


_D2_CONFIG = re.compile(r"R_(\d+)_FPN_(\d+x)")
_CONVNEXT = re.compile(r"convnext(v2)?[_-]?(atto|femto|pico|nano|tiny|small|base|large|xlarge|t|s|b|l)(?![a-z])", re.I)
_SHORT = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
_SCHEDULE = re.compile(r"(?<![0-9])(\d+x)(?![a-z0-9])")


def _coco_ap(payload: Mapping[str, Any], task: str, metric: str = "AP") -> Optional[float]:
    """AP in percent from Detectron2-style ``{task: {AP: ..}}`` or mmengine-style flat keys (0-1)."""
    block = payload.get(task)
    if isinstance(block, Mapping):
        value = _number(block.get(metric, block.get("mAP" if metric == "AP" else f"mAP_{metric[2:]}")))
        if value is not None:
            return value
    suffix = "mAP" if metric == "AP" else f"mAP_{metric[2:]}"
    for key in (f"coco/{task}_{suffix}", f"{task}_{suffix}"):
        value = _number(payload.get(key))
        if value is not None:
            return value * 100.0 if value <= 1.0 else value
    return None


def _model_and_schedule(payload: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    text = " ".join(str(payload.get(k, "")) for k in ("config", "model", "schedule"))
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    schedule = payload.get("schedule") if isinstance(payload.get("schedule"), str) else None
    d2 = _D2_CONFIG.search(text)
    if d2:
        model, schedule = model or f"resnet{d2[1]}", schedule or d2[2]
    cnx = _CONVNEXT.search(text)
    if cnx and model is None:
        model = f"convnext{cnx[1] or ''}_{_SHORT.get(cnx[2].lower(), cnx[2].lower())}"
    if schedule is None:
        found = _SCHEDULE.search(Path(str(payload.get("config", ""))).stem)
        schedule = found[1] if found else None
    epoch = payload.get("epoch")
    if schedule is None and isinstance(epoch, int) and epoch > 0 and epoch % 12 == 0:
        schedule = f"{epoch // 12}x"  # MMDetection schedules: 12 epochs per "x"
    return model, schedule


def read_coco(folder: Path) -> Optional[CocoResult]:
    """The folder's COCO metrics; a file of that name that holds none is skipped with a warning that says
    why (a list is COCO's detections format, which has no AP: evaluate it first)."""
    path = folder / COCO_FILE
    payload = _read_json(path)
    if payload is None:
        return None
    box, mask = (_coco_ap(payload, "bbox"), _coco_ap(payload, "segm")) if isinstance(payload, dict) else (None, None)
    if box is None and mask is None:
        found = "a list (COCO detections, not metrics)" if isinstance(payload, list) else (
            f"keys {', '.join(sorted(map(str, payload))[:6])}" if isinstance(payload, dict) else type(payload).__name__)
        logger.warning("skipping %s: no box or mask AP in it (found %s); expected {\"bbox\": {\"AP\": ...}, "
                       "\"segm\": {...}} or mmengine's coco/bbox_mAP keys", path, found)
        return None
    model, schedule = _model_and_schedule(payload)
    return CocoResult(run=str(folder), framework=str(payload.get("framework", "unknown")), model=model,
                      schedule=schedule, box=box, mask=mask,
                      box_ap75=_coco_ap(payload, "bbox", "AP75"), mask_ap75=_coco_ap(payload, "segm", "AP75"))


def read_pretrain(folder: Path) -> Optional[PretrainResult]:
    config = _read_config(folder)
    if "mask_ratio" not in config or not (folder / METRICS_FILE).is_file():
        return None
    speeds, epoch_losses, epochs_done = [], [], 0
    for row in read_rows(folder / METRICS_FILE):
        if row.get("kind") == "step" and _number(row.get("img_per_s")) is not None:
            speeds.append(float(row["img_per_s"]))
        elif row.get("kind") == "epoch" and _number(row.get("loss_mean")) is not None:
            epoch_losses.append(float(row["loss_mean"]))
            epochs_done = max(epochs_done, int(row.get("epoch", 0)) + 1)
    steady = speeds[2:] if len(speeds) > 4 else speeds  # the first steps include start-up work
    return PretrainResult(run=str(folder), model=config.get("model"), epochs_done=epochs_done,
                          epochs=config.get("epochs"), final_loss=epoch_losses[-1] if epoch_losses else None,
                          img_per_s=statistics.median(steady) if steady else None)


def read_value(folder: Path) -> Optional[ValueResult]:
    payload = _read_json(folder / VALUE_FILE)
    if not isinstance(payload, dict) or not {"settings", "frozen", "finetune"} <= set(payload):
        return None
    return ValueResult(run=str(folder), payload=payload)


def _folders(roots: Iterable[Path]) -> List[Path]:
    found = []
    for root in roots:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise FileNotFoundError(f"{root} is a file; give run folders (each searched for result files)")
        if not root.is_dir():
            raise FileNotFoundError(f"run folder not found: {root}")
        for current, dirs, _ in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "tensorboard")
            found.append(Path(current))
    return found


def collect(roots: Iterable[Path]) -> Results:
    results = Results([], [], [])
    for folder in _folders(roots):
        imagenet, coco, pretrain = read_imagenet(folder), read_coco(folder), read_pretrain(folder)
        if imagenet:
            results.imagenet.append(imagenet)
        if coco:
            results.coco.append(coco)
        if pretrain:
            results.pretrain.append(pretrain)
        value = read_value(folder)
        if value:
            results.value.append(value)
    return results
