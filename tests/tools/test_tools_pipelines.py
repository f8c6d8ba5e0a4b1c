"""The shell pipelines in smoke mode: real commands, generated data, CPU, end to end.

The COCO pipelines run as far as the installed frameworks allow (Detectron2 and MMDetection are
installed separately); the tests check the clear skip otherwise."""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINES = Path(__file__).resolve().parents[2] / "tools" / "pipelines"
# variables the pipelines read: a developer's own settings must not leak into the tests
PIPELINE_VARIABLES = {"WORK", "MODEL", "GPUS", "NODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "PRETRAIN_DATA",
                      "PRETRAIN_RECIPE", "PRETRAIN_ARGS", "IMAGENET", "FINETUNE_ARGS", "COCO", "SCHEDULE", "D2_ARGS",
                      "D2_PYTHON", "MMDET_CONFIG", "MMDET_ARGS", "MMDET_PYTHON", "SMOKE", "SMOKE_GPUS"}
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the pipelines are bash scripts")


def run_pipeline(name: str, *args: str, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in PIPELINE_VARIABLES}
    environment.update({"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run(["bash", str(PIPELINES / name), *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


def stages_done(work: Path) -> set:
    return {p.name[:-len(".done")] for p in (work / ".stages").glob("*.done")}


@pytest.mark.slow
def test_imagenet_smoke_runs_end_to_end_and_resumes(tmp_path):
    work = tmp_path / "work"
    done = run_pipeline("imagenet.sh", "--smoke", "--work", str(work))
    assert done.returncode == 0, done.stdout + done.stderr
    assert stages_done(work) == {"data", "pretrain", "finetune", "eval"}
    summary = json.loads((work / "finetune" / "summary.json").read_text())
    assert 0.0 <= summary["best_top1"] <= 100.0
    evaluation = json.loads((work / "eval" / "eval.jsonl").read_text().splitlines()[-1])
    assert evaluation["images"] == 8 and math.isfinite(evaluation["top1"])
    report = (work / "report.md").read_text()
    assert "test_resnet" in report and (work / "report.png").is_file()

    # resume: finished stages are skipped, a stage whose marker is gone runs again
    (work / ".stages" / "eval.done").unlink()
    again = run_pipeline("imagenet.sh", "--smoke", "--work", str(work))
    assert again.returncode == 0, again.stdout + again.stderr
    for stage in ("data", "pretrain", "finetune"):
        assert f"stage {stage}: already done" in again.stdout
    assert "stage eval: running" in again.stdout and "eval" in stages_done(work)


@pytest.mark.slow
def test_first_failing_stage_stops_the_pipeline_with_its_log(tmp_path):
    work = tmp_path / "work"
    failed = run_pipeline("imagenet.sh", "--smoke", "--work", str(work), "--pretrain-args", "--mask-ratio 1.5")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "stage pretrain FAILED" in failed.stderr and "stopped at stage pretrain" in failed.stderr
    assert "mask ratio" in failed.stderr  # the end of the stage's log is shown
    assert "mask ratio" in (work / "logs" / "pretrain.log").read_text()
    assert stages_done(work) == {"data"} and not (work / "finetune").exists()


def test_bad_options_are_one_line_errors(tmp_path):
    unknown = run_pipeline("imagenet.sh", "--gpu", "2")
    assert unknown.returncode == 2 and "unknown option --gpu" in unknown.stderr
    missing = run_pipeline("resnet_coco.sh", "--pretrain-data", str(tmp_path), "--coco", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--coco folder not found" in missing.stderr
    wrong = run_pipeline("resnet_coco.sh", "--pretrain-data", str(tmp_path), "--coco", str(tmp_path),
                         "--model", "resnet18")
    assert wrong.returncode == 2 and "resnet50, resnet101 and resnet152" in wrong.stderr
    gpus = run_pipeline("convnext_coco.sh", "--gpus", "zero", "--pretrain-data", str(tmp_path), "--coco", str(tmp_path))
    assert gpus.returncode == 2 and "gpus must be a whole number" in gpus.stderr
    helped = run_pipeline("convnext_coco.sh", "--help")
    assert helped.returncode == 0 and "--mmdet-python" in helped.stdout


def test_the_detection_recipes_batch_must_split_over_the_gpus(tmp_path):
    # 16 images per iteration (the lr is for them): 3 GPUs would train with another batch or fail in Detectron2
    folders = ["--pretrain-data", str(tmp_path), "--coco", str(tmp_path)]
    for script in ("resnet_coco.sh", "convnext_coco.sh"):
        done = run_pipeline(script, "--gpus", "3", *folders)
        assert done.returncode == 2 and "do not split over 3 processes" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    # a batch the user sets is theirs: the pipelines go on to the next check (the COCO files here)
    chosen = {"resnet_coco.sh": ["--d2-args", "SOLVER.IMS_PER_BATCH 12 SOLVER.BASE_LR 0.0001875"],
              "convnext_coco.sh": ["--mmdet-args", "--batch-size 2 --auto-scale-lr"]}
    for script, args in chosen.items():
        done = run_pipeline(script, "--gpus", "3", *args, *folders)
        assert done.returncode == 2 and "expected the COCO layout" in done.stderr, done.stderr


@pytest.mark.slow
def test_resnet_coco_smoke(tmp_path):
    work = tmp_path / "work"
    done = run_pipeline("resnet_coco.sh", "--smoke", "--work", str(work))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "convert" / "resnet50_d2.pkl").is_file()
    if importlib.util.find_spec("detectron2") is None:
        assert "SKIPPED the remaining stages: Detectron2 is not installed" in done.stdout
        assert stages_done(work) == {"data", "pretrain", "convert"}
        return
    assert stages_done(work) == {"data", "pretrain", "convert", "detectron2", "coco_eval"}
    results = json.loads((work / "coco_eval" / "coco_results.json").read_text())
    assert math.isfinite(results["bbox"]["AP"]) and math.isfinite(results["segm"]["AP"])
    assert "SparK (1600 ep) | 1x" in (work / "report.md").read_text()


@pytest.mark.slow
def test_convnext_coco_smoke(tmp_path):
    work = tmp_path / "work"
    done = run_pipeline("convnext_coco.sh", "--smoke", "--work", str(work), env={"MMDET_PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    converted = work / "convert" / "convnext_tiny_mmdet.pth"
    assert converted.is_file()
    if importlib.util.find_spec("mmdet") is None:
        assert "SKIPPED the remaining stages: MMDetection is not installed" in done.stdout
        assert stages_done(work) == {"data", "pretrain", "convert"}
        return
    assert stages_done(work) == {"data", "pretrain", "convert", "mmdet", "mmdet_eval"}
    results = json.loads((work / "mmdet_eval" / "coco_results.json").read_text())
    assert math.isfinite(results["bbox"]["AP"]) and math.isfinite(results["segm"]["AP"])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_imagenet_smoke_with_two_processes(tmp_path):
    """--gpus N > 1 launches every training stage with torchrun (gloo on CPU here)."""
    work = tmp_path / "work"
    done = run_pipeline("imagenet.sh", "--smoke", "--work", str(work),
                        env={"SMOKE_GPUS": "2", "MASTER_PORT": str(free_port())})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 process(es) x 1 node(s)" in done.stdout
    assert "spark-pretrain: 2 process(es)" in (work / "logs" / "pretrain.log").read_text()
    assert (work / "eval" / "eval.jsonl").is_file()
