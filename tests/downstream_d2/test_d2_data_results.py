"""Custom-dataset options and the results JSON of the Detectron2 trainer (runs without Detectron2)."""
import json
import math

import pytest

from sparkmim.downstream_d2 import datasets
from sparkmim.downstream_d2.results import RESULTS_FILE, evaluation_tasks, write_results


def coco_json(path, categories):
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path


def test_custom_dataset_overrides(tmp_path):
    (tmp_path / "img").mkdir()
    train = coco_json(tmp_path / "train.json", [(7, "cat"), (3, "dog")])
    val = coco_json(tmp_path / "val.json", [(3, "dog"), (7, "cat")])
    specs = datasets.custom_datasets("pets", train, tmp_path / "img", val, tmp_path / "img")
    assert [s.name for s in specs] == ["pets_train", "pets_val"]
    assert datasets.config_overrides(specs) == ["MODEL.ROI_HEADS.NUM_CLASSES", "2",
                                                "DATASETS.TRAIN", "('pets_train',)",
                                                "DATASETS.TEST", "('pets_val',)"]
    assert datasets.config_overrides(datasets.custom_datasets("x", None, None, None, None)) == []


def test_custom_dataset_errors(tmp_path):
    (tmp_path / "img").mkdir()
    train = coco_json(tmp_path / "train.json", [(1, "cat")])
    with pytest.raises(datasets.DatasetSpecError, match="--train-images"):
        datasets.custom_datasets("d", train, None, None, None)
    with pytest.raises(datasets.DatasetSpecError, match="image folder not found"):
        datasets.custom_datasets("d", train, tmp_path / "nope", None, None)
    with pytest.raises(datasets.DatasetSpecError, match="annotation file not found"):
        datasets.custom_datasets("d", tmp_path / "nope.json", tmp_path / "img", None, None)
    other = coco_json(tmp_path / "val.json", [(1, "dog")])
    specs = datasets.custom_datasets("d", train, tmp_path / "img", other, tmp_path / "img")
    with pytest.raises(datasets.DatasetSpecError, match="different categories"):
        datasets.config_overrides(specs)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(datasets.DatasetSpecError, match="no 'categories'"):
        datasets.read_categories(tmp_path / "bad.json")


def test_results_json(tmp_path):
    results = {"bbox": {"AP": 41.5, "AP50": 61.0, "APs": float("nan"), "AP-cat": 40.0},
               "segm": {"AP": 37.25, "AP50": 58.0}}
    path = write_results(results, tmp_path, config="mask_rcnn_R_50_FPN_1x", weights="r50.pkl", iteration=90000)
    assert path == tmp_path / RESULTS_FILE
    data = json.loads(path.read_text())
    assert data["framework"] == "detectron2" and data["iteration"] == 90000
    assert data["bbox"] == {"AP": 41.5, "AP50": 61.0, "APs": None, "AP-cat": 40.0}
    assert data["segm"]["AP"] == 37.25
    nested = {"a_val": {"bbox": {"AP": 1.0}}, "b_val": {"bbox": {"AP": 2.0}}}
    data = json.loads(write_results(nested, tmp_path).read_text())
    assert data["a_val/bbox"] == {"AP": 1.0} and data["b_val/bbox"] == {"AP": 2.0}
    assert not math.isnan(data["b_val/bbox"]["AP"])


def test_every_evaluated_task_is_reported_even_without_predictions(tmp_path):
    assert evaluation_tasks(mask_on=True) == ("bbox", "segm") and evaluation_tasks(mask_on=False) == ("bbox",)
    short_run = {"bbox": {"AP": float("nan"), "AP50": float("nan")}}  # a short run: no segm from Detectron2
    data = json.loads(write_results(short_run, tmp_path, tasks=evaluation_tasks(True)).read_text())
    assert data["bbox"] == {"AP": None, "AP50": None}
    assert data["segm"] == {metric: None for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    data = json.loads(write_results({}, tmp_path, tasks=evaluation_tasks(True)).read_text())
    assert set(data) >= {"bbox", "segm"}
