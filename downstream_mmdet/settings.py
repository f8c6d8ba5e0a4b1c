"""From command-line choices to an mmengine ``Config``: packaged configs, data, pretrained file, AMP.

The packaged configs live in ``configs/`` beside this module (package data); ``convnext-s``,
``convnext-b`` and ``convnext-l`` name them, any other value is a path to a config file. Everything
here edits the config only; mmengine's ``Runner`` does the rest. mmengine is imported by the caller
(``Config.fromfile``), so this module itself runs without it.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sparkmim.utils.coco import CocoFileError, read_coco_categories
from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_ALIASES = {
    "convnext-s": "mask-rcnn_spark-convnext-s_fpn_ms-crop-3x_coco.py",
    "convnext-b": "mask-rcnn_spark-convnext-b_fpn_ms-crop-3x_coco.py",
    "convnext-l": "mask-rcnn_spark-convnext-l_fpn_ms-crop-3x_coco.py",
}
AMP_CHOICES = ("auto", "on", "off")
SPLITS = ("train", "val", "test")


class SettingsError(UserError, ValueError):
    """A command-line choice cannot be applied to the config; the message says which and why."""


def resolve_config(name: str) -> Path:
    """A packaged config alias (``convnext-b``) or a file name in the packaged folder, else a path."""
    if name in CONFIG_ALIASES:
        return CONFIG_DIR / CONFIG_ALIASES[name]
    packaged = CONFIG_DIR / name
    if packaged.is_file():
        return packaged
    path = Path(name)
    if not path.is_file():
        raise SettingsError(f"config not found: '{name}' (packaged configs: {', '.join(CONFIG_ALIASES)})")
    return path


def read_class_names(json_file: Path) -> List[str]:
    """Category names of a COCO instances json in category-id order (the order mmdet's CocoDataset
    assigns labels in when given these names)."""
    try:
        return [category["name"] for category in read_coco_categories(json_file)]
    except CocoFileError as error:
        raise SettingsError(str(error)) from error


@dataclass
class DataSpec:
    """Where the data is: a COCO root (``annotations/instances_{train,val}2017.json``,
    ``train2017/``, ``val2017/``) and/or custom COCO-format splits with optional class names."""

    data_root: Optional[Path] = None
    train_json: Optional[Path] = None
    train_images: Optional[Path] = None
    val_json: Optional[Path] = None
    val_images: Optional[Path] = None
    classes: Optional[Sequence[str]] = None

    def splits(self, training: bool) -> Dict[str, Optional[tuple]]:
        """(json, image folder) per split from the options, validated; None where the config's
        own (or ``data_root``'s) files are used."""
        found: Dict[str, Optional[tuple]] = {}
        for split, json_file, images in (("train", self.train_json, self.train_images),
                                         ("val", self.val_json, self.val_images)):
            if (json_file is None) != (images is None):
                raise SettingsError(f"--{split}-json and --{split}-images must be given together")
            if json_file is not None:
                if not Path(json_file).is_file():
                    raise SettingsError(f"--{split}-json: file not found: {json_file}")
                if not Path(images).is_dir():
                    raise SettingsError(f"--{split}-images: folder not found: {images}")
                found[split] = (Path(json_file).resolve(), Path(images).resolve())
            elif self.data_root is not None:
                stem = "train2017" if split == "train" else "val2017"
                json_path = Path(self.data_root).resolve() / "annotations" / f"instances_{stem}.json"
                image_dir = Path(self.data_root).resolve() / stem
                if (training or split == "val") and not json_path.is_file():
                    raise SettingsError(f"--data-root: {json_path} not found (expected the COCO layout)")
                found[split] = (json_path, image_dir)
            else:
                found[split] = None
        return found


def _set_dataset(dataset: Any, json_file: Path, images: Path, classes: Optional[Sequence[str]]) -> None:
    dataset.data_root = ""
    dataset.ann_file = str(json_file)
    dataset.data_prefix = dict(img=str(images) + "/")
    if classes is not None:
        dataset.metainfo = dict(classes=tuple(classes))


def apply_data(cfg: Any, spec: DataSpec, training: bool) -> Optional[List[str]]:
    """Point the train/val/test dataloaders and evaluators at the data; set the class count of the
    heads when class names are given or read from a custom json. Returns the class names used
    (None: the config's own, COCO's 80)."""
    splits = spec.splits(training)
    classes = list(spec.classes) if spec.classes else None
    custom = spec.train_json or spec.val_json
    if classes is None and custom:
        classes = read_class_names(spec.train_json or spec.val_json)
    if classes is not None and len(set(classes)) != len(classes):
        raise SettingsError(f"class names must be unique, got {classes}")
    if training and splits["train"] is not None:
        _set_dataset(cfg.train_dataloader.dataset, *splits["train"], classes)
    if splits["val"] is not None:
        for loader, evaluator in (("val_dataloader", "val_evaluator"), ("test_dataloader", "test_evaluator")):
            if cfg.get(loader) is None:
                continue
            _set_dataset(cfg[loader].dataset, *splits["val"], classes)
            cfg[evaluator].ann_file = str(splits["val"][0])
    if classes is not None:
        cfg.model.roi_head.bbox_head.num_classes = len(classes)
        cfg.model.roi_head.mask_head.num_classes = len(classes)
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if cfg.get(loader) is not None:
                cfg[loader].dataset.metainfo = dict(classes=tuple(classes))
    return classes


def apply_loader(cfg: Any, batch_size: Optional[int], workers: Optional[int], training: bool) -> None:
    """Per-process batch size (training) and data-loading workers (all loaders)."""
    loaders = ["val_dataloader", "test_dataloader"] + (["train_dataloader"] if training else [])
    if batch_size is not None:
        if batch_size < 1:
            raise SettingsError(f"--batch-size must be >= 1, got {batch_size}")
        cfg.train_dataloader.batch_size = batch_size
    if workers is not None:
        if workers < 0:
            raise SettingsError(f"--workers must be >= 0, got {workers}")
        for loader in loaders:
            if cfg.get(loader) is not None:
                cfg[loader].num_workers = workers
                cfg[loader].persistent_workers = workers > 0  # a DataLoader refuses it without workers


def off_recipe_batch(cfg: Any, world_size: int) -> Optional[str]:
    """Why the run's total batch does not train with the recipe's lr, or None when it does.

    The recipe's lr is for ``auto_scale_lr.base_batch_size`` (16) images per iteration; mmengine only rescales
    it when ``auto_scale_lr.enable`` is set, so another process count or per-process batch would silently
    train with a different lr-to-batch ratio than the paper's."""
    total = world_size * int(cfg.train_dataloader.batch_size)
    base = int(cfg.auto_scale_lr.base_batch_size)
    if total == base or cfg.auto_scale_lr.get("enable", False):
        return None
    keep = f"pass --batch-size {base // world_size} to train as the recipe does, or " if base % world_size == 0 else ""
    return (f"{world_size} process(es) x {cfg.train_dataloader.batch_size} images = {total} images per iteration, "
            f"but the recipe's lr is for {base}: {keep}pass --auto-scale-lr to scale the lr linearly")


def use_amp(choice: str, cuda_available: bool) -> bool:
    """AMP on GPU ('auto'), never on CPU: mmengine's AmpOptimWrapper is a CUDA (fp16) feature."""
    if choice not in AMP_CHOICES:
        raise SettingsError(f"--amp must be one of {AMP_CHOICES}, got '{choice}'")
    if choice == "on" and not cuda_available:
        raise SettingsError("--amp on needs a CUDA device; use --amp auto or off on CPU")
    return choice == "on" or (choice == "auto" and cuda_available)


def apply_amp(cfg: Any, enabled: bool) -> None:
    """Keep the config's AmpOptimWrapper, or replace it with the plain (fp32) OptimWrapper."""
    wrapper = cfg.optim_wrapper
    if enabled:
        wrapper.type = "AmpOptimWrapper"
        wrapper.setdefault("loss_scale", "dynamic")
    else:
        wrapper.type = "OptimWrapper"
        wrapper.pop("loss_scale", None)


def apply_pretrained(cfg: Any, checkpoint: Optional[Path]) -> None:
    """Set the backbone's ``Pretrained`` init file; None: from scratch, with mmpretrain's own
    initialisation of ConvNeXt (truncated normal), not PyTorch's default."""
    if checkpoint is None:
        cfg.model.backbone.pop("init_cfg", None)
    else:
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(checkpoint), prefix="backbone.")


def apply_resume(cfg: Any, resume: Optional[str]) -> None:
    """``auto``: continue from the newest checkpoint in the work dir; a path: from that file."""
    if resume is None:
        return
    cfg.resume = True
    if resume == "auto":
        cfg.load_from = None
    else:
        if not Path(resume).is_file():
            raise SettingsError(f"--resume: checkpoint not found: {resume}")
        cfg.load_from = str(resume)
