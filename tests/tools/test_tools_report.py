"""spark-report on result files laid out as the stages write them."""
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sparkmim.tools.report import load_paper, main
from sparkmim.tools.results import collect


def write_finetune(folder: Path, model: str, top1: float, ema: float, input_size: int = 224, **summary) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model, "input_size": input_size, "epochs": 300}))
    (folder / "summary.json").write_text(json.dumps({"best_top1": top1, "best_ema_top1": ema, "epochs_done": 300,
                                                     "epochs": 300, "output_dir": str(folder), **summary}))
    (folder / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 1, "train_loss": 3.0}) + "\n")


def write_d2(folder: Path, config: str, box: float, mask: float) -> None:
    folder.mkdir(parents=True)
    (folder / "coco_results.json").write_text(json.dumps({
        "framework": "detectron2", "config": config, "weights": "w.pkl", "iteration": 90000,
        "bbox": {"AP": box, "AP50": 60.0, "AP75": 45.0, "APs": None}, "segm": {"AP": mask, "AP75": 40.0}}))


def write_pretrain(folder: Path, model: str) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model, "mask_ratio": 0.6, "epochs": 2}))
    rows = [{"kind": "step", "step": s, "loss": 1.0 - 0.1 * s, "img_per_s": 100.0 + s} for s in range(6)]
    rows += [{"kind": "epoch", "epoch": 0, "loss_mean": 0.9}, {"kind": "epoch", "epoch": 1, "loss_mean": 0.7}]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"kind\": \"st")


@pytest.fixture()
def runs(tmp_path):
    write_finetune(tmp_path / "a" / "finetune", "resnet50", 80.1, 80.4)
    write_finetune(tmp_path / "b" / "cnxl384", "convnext_large", 85.9, 86.2, input_size=384)
    write_finetune(tmp_path / "b" / "tiny", "test_resnet", 40.0, 41.0, input_size=64)
    write_d2(tmp_path / "a" / "coco", "mask_rcnn_R_50_FPN_1x", 41.0, 37.5)
    write_d2(tmp_path / "b" / "coco101", "/configs/mask_rcnn_R_101_FPN_2x.yaml", 44.0, 39.9)
    (tmp_path / "b" / "mmdet").mkdir()
    (tmp_path / "b" / "mmdet" / "coco_results.json").write_text(json.dumps({
        "framework": "mmdetection", "config": "convnext-b", "epoch": 36, "coco/bbox_mAP": 0.515,
        "coco/segm_mAP": 0.452, "coco/bbox_mAP_75": 0.561}))
    write_pretrain(tmp_path / "a" / "pretrain", "resnet50")
    return tmp_path


def test_results_are_collected_from_nested_run_folders(runs):
    results = collect([runs / "a", runs / "b"])
    assert sorted((r.model, r.input_size, r.best) for r in results.imagenet) == [
        ("convnext_large", 384, 86.2), ("resnet50", 224, 80.4), ("test_resnet", 64, 41.0)]
    coco = {(r.framework, r.model, r.schedule): (r.box, r.mask) for r in results.coco}
    assert coco[("detectron2", "resnet50", "1x")] == (41.0, 37.5)
    assert coco[("detectron2", "resnet101", "2x")] == (44.0, 39.9)
    assert coco[("mmdetection", "convnext_base", "3x")] == pytest.approx((51.5, 45.2))
    (pretrain,) = results.pretrain
    assert (pretrain.model, pretrain.epochs_done, pretrain.final_loss) == ("resnet50", 2, 0.7)
    assert pretrain.img_per_s == pytest.approx(103.5)  # median of the steps after start-up


def test_a_coco_file_without_metrics_is_skipped_with_the_reason(tmp_path, caplog, capsys):
    # a detections list (COCO's results format, same file name in many tools) vanished without a word
    write_d2(tmp_path / "ok", "mask_rcnn_R_50_FPN_1x", 41.0, 37.5)
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "coco_results.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "coco_results.json").write_text(json.dumps({"loss": 0.3}))
    with caplog.at_level("WARNING"):
        results = collect([tmp_path])
    assert [r.box for r in results.coco] == [41.0]
    (tmp_path / "other" / "coco_results.json").write_text(json.dumps({"bbox": {"AP": 40.0}}))  # no model, no schedule
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert row_of(out, "unknown", "?", "?", "40.0") and "None" not in out  # was 'None | None'
    assert re.search(r"skipping \S*dets/coco_results\.json: no box or mask AP in it \(found a list \(COCO "
                     r"detections, not metrics\)\)", caplog.text)
    assert re.search(r"skipping \S*other/coco_results\.json: no box or mask AP in it \(found keys loss\)", caplog.text)


def row_of(markdown: str, *cells: str) -> list:
    for line in markdown.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if all(c in parts for c in cells):
            return parts
    raise AssertionError(f"no row with {cells} in:\n{markdown}")


def test_markdown_places_ours_beside_the_paper_with_the_difference(runs, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert row_of(out, "ResNet-50")[2:6] == ["79.8", "80.6", "80.40", "-0.2"]
    assert row_of(out, "ConvNeXt-L 384")[3:6] == ["86.0", "86.20", "+0.2"]
    assert row_of(out, "ConvNeXt-L", "224")[4] == "–"  # no run for it
    spark_1x = row_of(out, "SparK (1600 ep)", "1x")
    assert spark_1x[2:8] == ["41.6", "37.7", "41.0", "37.5", "-0.6", "-0.2"]
    assert row_of(out, "SparK", "3x")[4:8] == ["51.5", "45.2", "+0.3", "+0.1"]
    assert row_of(out, "detectron2", "resnet101", "2x")[3:5] == ["44.0", "39.9"]  # no paper row for R101
    assert row_of(out, "test_resnet", "64")[2:6] == ["fine-tuning", "?", "40.00", "41.00"]
    assert row_of(out, "resnet50", "2/2")[2] == "0.7000"
    # the paper's own rows are all there even without results
    paper = load_paper()
    for row in paper["imagenet"]["rows"]:
        assert re.search(rf"\| {re.escape(row['label'])} \| {row['input_size']} \| {row['supervised']:.1f} \|", out)


def test_only_1000_class_fine_tunings_fill_the_paper_rows(runs, capsys):
    # a linear probe and a fine-tuning on 3 classes of a ResNet-50 at 224 px: better numbers, other protocols
    write_finetune(runs / "c" / "probe", "resnet50", 88.0, 88.0, linear_probe=True, classes=1000)
    write_finetune(runs / "c" / "flowers", "resnet50", 95.0, 95.5, linear_probe=False, classes=3)
    write_finetune(runs / "c" / "in1k", "resnet50", 80.5, 80.3, linear_probe=False, classes=1000)
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert row_of(out, "ResNet-50")[4:6] == ["80.50", "-0.1"]
    assert row_of(out, "resnet50", "linear probe")[3:5] == ["1000", "88.00"]
    assert row_of(out, "resnet50", "fine-tuning", "3")[4:6] == ["95.00", "95.50"]


def test_plot_writes_a_png(runs, tmp_path, capsys):
    chart = tmp_path / "out" / "chart.png"
    assert main([str(runs), "--plot", str(chart), "--output", str(tmp_path / "new" / "report.md")]) == 0
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 300
    assert (tmp_path / "new" / "report.md").read_text().startswith("## SparK: paper vs ours")  # its folder made
    capsys.readouterr()
    assert main([str(runs), "--plot", str(tmp_path / "out" / "bars")]) == 0  # matplotlib appends .png
    assert capsys.readouterr().out.rstrip().endswith(f"chart: {tmp_path / 'out' / 'bars.png'}")
    assert (tmp_path / "out" / "bars.png").is_file()


def test_json_output_and_errors(runs, tmp_path, capsys):
    assert main([str(runs / "a"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["imagenet"][0]["best"] == 80.4
    assert main([str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no result files" in capsys.readouterr().err
    # a summary file given as the run, and a folder given as --output (a traceback after the table)
    summary = next(runs.rglob("summary.json"))
    assert main([str(summary)]) == 2
    assert f"spark-report: error: {summary} is a file; give run folders" in capsys.readouterr().err
    assert main([str(runs / "a"), "--output", str(tmp_path / "empty")]) == 2
    captured = capsys.readouterr()
    assert f"--output {tmp_path / 'empty'} is a folder; give a file name" in captured.err and captured.out == ""


def test_paper_numbers_match_the_paper_tables():
    paper = load_paper()
    imagenet = {(r["label"]): (r["supervised"], r["spark"]) for r in paper["imagenet"]["rows"]}
    assert imagenet["ResNet-50"] == (79.8, 80.6) and imagenet["ConvNeXt-L 384"] == (84.3, 86.0)
    assert len(imagenet) == 8
    d2 = {(r["pretraining"], r["schedule"]): (r["box"], r["mask"]) for r in paper["coco_d2"]["rows"]}
    assert d2[("SparK (1600 ep)", "2x")] == (43.4, 39.4) and d2[("supervised", "1x")] == (38.9, 35.4)
    mmdet = {r["pretraining"]: (r["box"], r["mask"]) for r in paper["coco_mmdet"]["rows"]}
    assert mmdet == {"supervised": (47.7, 43.2), "SparK": (51.2, 45.1)}
