"""spark-bench gpu-check: its CPU mode (every part's code path on tiny sizes, what CI runs) and the
runner's promises (a part's limit, the budget, reports after every part, one-line errors)."""
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from sparkmim.benchmarks.cli import main
from sparkmim.benchmarks.gpu_check.options import CheckOptions
from sparkmim.benchmarks.gpu_check.runner import default_fixtures, run_gpu_check

PARTS = ["correctness", "sync", "throughput", "data", "distributed", "finetune", "value"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "quick"
    status = main(["gpu-check", "--device", "cpu", "--quick", "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_part_runs_its_code_path_on_cpu(quick_run):
    status, out, results = quick_run
    parts = {part["part"]: part for part in results["parts"]}
    assert status == 0 and list(parts) == PARTS
    assert all(part["status"] == "ok" for part in parts.values()), {k: (v["status"], v["message"]) for k, v in parts.items()}
    checks = [check for part in parts.values() for check in part["checks"]]
    assert all(check["passed"] is not False for check in checks)
    cuda_only = [c for c in checks if "set_sync_debug_mode" in c["name"] or "device vs CPU" in c["name"]]
    assert cuda_only and all(c["passed"] is None and "skipped: no CUDA" in c["detail"] for c in cuda_only)
    assert sum(c["passed"] is True for c in checks) >= 15  # the checks that do run on CPU, and pass
    assert results["environment"]["device"] == "cpu" and results["environment"]["mode"] == "quick"
    # the generated images, run folders and checkpoints are gone: the folder can be copied back whole
    assert not (out / "scratch").exists() and not list(out.glob("*/checkpoint_last.pth"))


@pytest.mark.slow
def test_the_summary_names_each_part_and_its_figures(quick_run):
    _, out, results = quick_run
    summary = (out / "summary.md").read_text()
    for part in results["parts"]:
        assert f"## {part['title']}: ok" in summary
    # a throughput row: model, batch, precision, layout, norm kernel
    assert "| test_resnet | 2 | bf16 | True | torch |" in summary
    assert "BatchNorm forward+backward, batch 2, bf16" in summary and "| 64 x 14 |" in summary  # the norm alone
    assert "a/b" in summary and "spark-pretrain end to end" in summary and "--resume auto" in summary
    assert "spark-finetune (ResNet-50 recipe, bf16, contiguous): one epoch, then --resume auto" in summary
    assert "--eval-only of the best checkpoint prints the top-1 its training recorded | pass" in summary
    if os.environ.get("TRITON_INTERPRET") == "1":  # the triton kernel's code paths, through Triton's interpreter
        assert "| test_resnet | 2 | bf16 | True | triton |" in summary and "| masked, triton (ms) |" in summary
        assert "test_resnet b2 bf16 cl=True triton: the triton norm kernel against the torch kernel | n/a | a/b " in summary
        checks = [c["name"] for part in results["parts"] for c in part["checks"]]
        assert any("with the triton norm kernel" in name for name in checks)  # correctness
        assert any("triton norm kernel: no syncing op" in name for name in checks)  # sync


def test_rows_come_most_wanted_first_with_each_norm_kernel_for_batchnorm_models():
    from sparkmim.benchmarks.gpu_check.throughput import FULL, _row_order

    order = _row_order(FULL, ("torch", "triton"))
    assert order[:4] == [("bf16", True, ("resnet50", 128), "torch"), ("bf16", True, ("resnet50", 128), "triton"),
                         ("bf16", True, ("convnext_base", 64), "torch"), ("bf16", False, ("resnet50", 128), "torch")]
    assert len(order) == 10 and all(kernel == "torch" for precision, *_, kernel in order if precision == "fp32")
    assert len(_row_order(FULL, ("torch",))) == 8


def test_the_triton_kernel_is_checked_where_it_can_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert CheckOptions(out="x", device="cpu").norm_kernels == ("torch",)
    if importlib.util.find_spec("triton") is not None:
        assert CheckOptions(out="x", device="cuda").norm_kernels == ("torch", "triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert CheckOptions(out="x", device="cpu").norm_kernels == ("torch", "triton")


@pytest.mark.slow
def test_a_kernel_that_fails_costs_only_its_own_checks_and_rows(tmp_path, monkeypatch):
    """The triton kernel's first GPU run must not cost a part the torch kernel's findings. Here it fails for
    real: asked for on a CPU without Triton's interpreter, its layers raise at their first training call."""
    from sparkmim.benchmarks.gpu_check.part import run_part
    from sparkmim.benchmarks.gpu_check.throughput import QUICK, _row_order

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    options = CheckOptions(out=str(tmp_path), device="cpu", quick=True, kernels=("torch", "triton"))
    for name in ("correctness", "sync", "throughput"):
        result = run_part(name, options)
        assert result.status == "failed", (name, result.status, result.message)  # not "error": the part went on
        failed = [check for check in result.checks if check.passed is False]
        assert failed and all("triton" in check.name and "runs on CUDA devices, not on cpu" in check.detail
                              for check in failed), failed
        others = [check for check in result.checks if "triton" not in check.name]
        assert all(check.passed is not False for check in others)
        if name == "correctness":  # bf16 and fp16, the encoder under autocast and a training step
            assert len(failed) == 4 and sum(check.passed is True for check in others) == 10
        if name == "sync":  # fp32 and bf16 model steps; spark-pretrain's loop step still checked
            assert len(failed) == 2 and any("spark-pretrain" in check.name for check in others)
        if name == "throughput":  # the norm alone timed again without it, every torch row measured
            assert len(failed) == 2
            assert "masked, torch" in result.tables[0] and "triton" not in result.tables[0]
            rows = [line for line in result.tables[1].splitlines()[2:] if line.startswith("|")]
            assert len(rows) == len(_row_order(QUICK, ("torch",))) and all("| torch |" in row for row in rows)


def test_a_part_past_its_limit_is_reported_and_the_budget_stops_the_rest(tmp_path):
    options = CheckOptions(out=str(tmp_path), device="cpu", quick=True)
    results = run_gpu_check(options, ["correctness", "sync"], budget_s=0.3)  # no part can finish in 0.3 s
    assert [r.status for r in results] == ["timed out", "skipped"]
    assert "limit" in results[0].message and "budget" in results[1].message
    written = json.loads((tmp_path / "results.json").read_text())
    assert [p["status"] for p in written["parts"]] == ["timed out", "skipped"]  # rewritten after each part


@pytest.mark.slow
def test_keep_scratch_keeps_the_generated_files(tmp_path):
    options = CheckOptions(out=str(tmp_path), device="cpu", quick=True, keep_scratch=True)
    [result] = run_gpu_check(options, ["data"], budget_s=None)
    assert result.status == "ok", result.message
    assert list((tmp_path / "scratch" / "e2e" / "images").iterdir())


def test_bad_requests_are_one_line_errors(tmp_path, capsys, monkeypatch):
    if not torch.cuda.is_available():
        assert main(["gpu-check", "--out", str(tmp_path)]) == 2  # --device cuda is the default
        assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["gpu-check", "--out", str(tmp_path), "--parts", "speed"])
    cpu = ["gpu-check", "--out", str(tmp_path), "--device", "cpu", "--quick", "--parts", "sync"]
    assert main(cpu + ["--norm-kernels", "triton"]) == 2
    assert "must start with torch" in capsys.readouterr().err
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(cpu + ["--norm-kernels", "torch", "triton"]) == 2
    assert "runs on CUDA devices, not on cpu" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # refused before any part ran


def test_norm_kernels_chooses_the_kernels_a_rerun_checks(tmp_path):
    """--norm-kernels torch: a rerun on a GPU without the fused kernel, should it have failed there."""
    [result] = run_gpu_check(CheckOptions(out=str(tmp_path), device="cpu", quick=True, kernels=("torch",)),
                             ["sync"], budget_s=None)
    assert result.status == "ok" and result.checks
    assert not any("triton" in check.name for check in result.checks)


def test_a_part_stopped_at_its_limit_keeps_what_it_had_finished(tmp_path):
    # two fixture cases: a real one, then a named pipe that nobody writes (a read that never returns,
    # like a hung network file system): the first case's check is done when the part is stopped
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "a.pt").symlink_to(Path(default_fixtures(), "resnet_tiny.pt"))
    os.mkfifo(fixtures / "b.pt")
    options = CheckOptions(out=str(tmp_path / "out"), device="cpu", quick=True, fixtures=str(fixtures))
    [result] = run_gpu_check(options, ["correctness"], budget_s=30)
    assert result.status == "timed out" and "1 checks and 0 tables it had finished are kept" in result.message
    assert [check.name for check in result.checks] == ["a: float64 on the device vs CPU"]
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["parts"][0]["checks"][0]["name"] == "a: float64 on the device vs CPU"


def test_a_finished_part_leaves_no_journal(tmp_path):
    options = CheckOptions(out=str(tmp_path), device="cpu", quick=True, fixtures=str(tmp_path / "none"))
    [result] = run_gpu_check(options, ["correctness"], budget_s=None)
    assert result.status == "ok" and result.checks
    assert not list(tmp_path.glob("partial_*")) and (tmp_path / "results.json").is_file()


def test_a_sub_process_may_use_what_is_left_of_its_part(tmp_path):
    assert CheckOptions(out=str(tmp_path)).seconds_left() is None  # a part without a limit
    left = CheckOptions(out=str(tmp_path), seconds=100, deadline=time.time() + 100).seconds_left(margin=2)
    assert 97 < left <= 98
    assert CheckOptions(out=str(tmp_path), seconds=100, deadline=time.time() - 5).seconds_left(floor=10) == 10
