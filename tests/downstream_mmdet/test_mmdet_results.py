"""The COCO results file of an MMDetection run (written without mmdet)."""
import json


def test_no_detections_give_zero_ap_not_a_missing_file(tmp_path):
    from sparkmim.downstream_mmdet.results import no_detection_metrics, write_results
    path = write_results(no_detection_metrics(), tmp_path / "coco_results.json", detections=0)
    table = json.loads(path.read_text())
    assert table["detections"] == 0
    assert table["bbox"] == table["segm"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": 0.0, "APl": 0.0}
