"""Custom COCO-format datasets from the command line, so fine-tuning on one's own data needs no code.

A dataset is a COCO instances json plus its image folder. It is registered in Detectron2's
``DatasetCatalog`` under ``<name>_train`` / ``<name>_val``; the config then points
``DATASETS.TRAIN``/``DATASETS.TEST`` at it and ``MODEL.ROI_HEADS.NUM_CLASSES`` at the number of
categories in the json (Detectron2 maps category ids to contiguous ones itself).
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from sparkmim.utils.coco import CocoFileError, read_coco_categories
from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)


class DatasetSpecError(UserError, ValueError):
    """A custom dataset given on the command line is incomplete or unreadable."""


@dataclass(frozen=True)
class CocoDataset:
    """One COCO-format split: its registry name, annotation json and image folder."""

    name: str
    json_file: Path
    image_root: Path

    def validate(self) -> None:
        if not self.json_file.is_file():
            raise DatasetSpecError(f"dataset '{self.name}': annotation file not found: {self.json_file}")
        if not self.image_root.is_dir():
            raise DatasetSpecError(f"dataset '{self.name}': image folder not found: {self.image_root}")


def read_categories(json_file: Path) -> List[dict]:
    """The ``categories`` list of a COCO json, sorted by id (the order Detectron2 assigns classes in)."""
    try:
        return read_coco_categories(json_file)
    except CocoFileError as error:
        raise DatasetSpecError(str(error)) from error


def custom_datasets(name: str, train_json: Optional[Path], train_images: Optional[Path],
                    val_json: Optional[Path], val_images: Optional[Path]) -> List[CocoDataset]:
    """Validated train/val specs from the command-line options (either split may be absent, but a
    json always needs its image folder and vice versa)."""
    datasets = []
    for split, json_file, images in (("train", train_json, train_images), ("val", val_json, val_images)):
        if (json_file is None) != (images is None):
            raise DatasetSpecError(f"--{split}-json and --{split}-images must be given together")
        if json_file is not None:
            dataset = CocoDataset(f"{name}_{split}", Path(json_file), Path(images))
            dataset.validate()
            datasets.append(dataset)
    return datasets


def num_classes(datasets: Sequence[CocoDataset]) -> int:
    """Number of categories, checked to agree between the splits."""
    names = {dataset.name: [c["name"] for c in read_categories(dataset.json_file)] for dataset in datasets}
    distinct = {tuple(categories) for categories in names.values()}
    if len(distinct) != 1:
        raise DatasetSpecError(f"the splits list different categories: {names}")
    return len(distinct.pop())


def config_overrides(datasets: Sequence[CocoDataset]) -> List[str]:
    """Detectron2 ``opts`` (KEY VALUE ...) that train and evaluate on the custom datasets."""
    if not datasets:
        return []
    overrides = ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes(datasets))]
    train = [d.name for d in datasets if d.name.endswith("_train")]
    val = [d.name for d in datasets if d.name.endswith("_val")]
    if train:
        overrides += ["DATASETS.TRAIN", repr(tuple(train))]
    if val:
        overrides += ["DATASETS.TEST", repr(tuple(val))]
    return overrides


def register(datasets: Sequence[CocoDataset]) -> None:
    """Register the datasets with Detectron2 (in every process that builds data loaders)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    for dataset in datasets:
        if dataset.name in DatasetCatalog.list():
            registered = MetadataCatalog.get(dataset.name).get("json_file")
            if registered != str(dataset.json_file):
                raise DatasetSpecError(f"dataset name '{dataset.name}' is already registered for {registered}; "
                                       f"choose another --dataset-name")
            continue
        register_coco_instances(dataset.name, {}, str(dataset.json_file), str(dataset.image_root))
        logger.info("registered dataset %s: %s (images in %s)", dataset.name, dataset.json_file, dataset.image_root)
