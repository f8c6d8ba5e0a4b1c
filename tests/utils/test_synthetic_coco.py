"""The one COCO-layout generator (smoke data, Detectron2 and MMDetection tests): pycocotools reads it."""
import numpy as np
import pytest

from sparkmim.utils.synthetic import polygon_area, write_coco_split


def test_pycocotools_reads_the_generated_split(tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools is not installed")
    json_file, image_dir = write_coco_split(tmp_path / "imgs", tmp_path / "ann" / "val.json", 3, 96,
                                            np.random.default_rng(0), names=("square", "triangle"), suffix=".png")
    coco = coco_api.COCO(str(json_file))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["square", "triangle"]
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == 6
    for annotation in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(annotation)
        assert abs(int(mask.sum()) - annotation["area"]) <= 0.15 * annotation["area"]  # rasterised polygon
        assert (image_dir / coco.loadImgs(annotation["image_id"])[0]["file_name"]).is_file()
    assert polygon_area([0, 0, 4, 0, 4, 3, 0, 3]) == 12.0
