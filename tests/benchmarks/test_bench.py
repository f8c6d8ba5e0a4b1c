"""spark-bench: the naive oracle agrees with SparK, the dense floor is dense, and every subcommand runs.

Tiny timm models on CPU; no speed assertions (timings on a shared machine prove nothing)."""
import json

import pytest
import torch
import torch.nn as nn

from sparkmim import build_spark
from sparkmim.sparse.norms import SparseBatchNorm2d
from sparkmim.benchmarks import cli as bench
from sparkmim.benchmarks.perf.dense import build_dense
from sparkmim.benchmarks.perf.naive import NaiveBatchNorm, NaiveSparK, naive_like
from tests.core_utils import skip_unless_triton_interpreter

TINY = ["--model", "resnet18", "--size", "64", "--batch", "2", "--decoder-width", "64", "--threads", "1"]


def _grads(model: nn.Module) -> dict:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {}),
    pytest.param("convnext_atto", {}, marks=pytest.mark.slow),
    # ConvNeXt-T/S/B/L build their blocks this way: Linear MLP and timm's channels-last LayerNorm
    pytest.param("convnext_atto", {"conv_mlp": False}, marks=pytest.mark.slow)])
def test_naive_reference_matches_spark_loss_and_grads(name, kwargs):
    torch.manual_seed(0)
    spark = build_spark(name, input_size=64, decoder_width=64, encoder_kwargs=kwargs).double().train()
    naive = naive_like(spark, name, encoder_kwargs=kwargs).double().train()
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    active = spark.mask(3, 2, 2, images.device)
    loss_a = spark(images, active).loss
    loss_c = naive(images, active)
    torch.testing.assert_close(loss_c, loss_a, rtol=1e-10, atol=0)
    loss_a.backward()
    loss_c.backward()
    grads_a, grads_c = _grads(spark), _grads(naive)
    assert set(grads_a) == set(grads_c)
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_c[key], grad, rtol=1e-7, atol=1e-12 * (grad.abs().max().item() + 1), msg=key)
    # the running statistics of the visible-only BatchNorms move identically
    state_a, state_c = spark.state_dict(), naive.state_dict()
    for key in state_a:
        if key.endswith("running_var"):
            torch.testing.assert_close(state_c[key], state_a[key], rtol=1e-9, atol=1e-12, msg=key)


def test_naive_reference_uses_gather_norms_and_differs_on_another_mask():
    torch.manual_seed(0)
    spark = build_spark("resnet18", input_size=64, decoder_width=64).double()
    naive = naive_like(spark, "resnet18").double()
    assert isinstance(naive, NaiveSparK)
    assert any(isinstance(m, NaiveBatchNorm) for m in naive.modules())
    assert not any(isinstance(m, SparseBatchNorm2d) for m in naive.modules())
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    active = torch.tensor([[True, False], [False, True]]).expand(2, 1, 2, 2)
    other = ~active
    assert not torch.allclose(naive(images, active), spark(images, other).loss)


def test_dense_floor_is_dense_and_trains():
    torch.manual_seed(0)
    floor = build_dense("resnet18", input_size=64, decoder_width=64)
    assert not any(isinstance(m, (SparseBatchNorm2d, NaiveBatchNorm)) for m in floor.modules())
    assert floor.densify_norm == "bn"
    loss = floor(torch.randn(2, 3, 64, 64))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in floor.parameters())
    with pytest.raises(ValueError, match="multiple of the encoder's stride"):
        build_dense("resnet18", input_size=70)


def test_step_benchmark_runs_all_variants(tmp_path, capsys):
    out = tmp_path / "step.json"
    code = bench.main(["step", *TINY, "--warmup", "1", "--steps", "2", "--repeats", "1", "--in-process",
                       "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(a) sparkmim SparK" in printed and "(b) dense floor" in printed and "(c) naive reference" in printed
    payload = json.loads(out.read_text())
    assert {run["variant"] for run in payload["runs"]} == {"spark", "dense", "naive"}
    assert all(len(run["step_times_s"]) == 2 and run["median_s"] > 0 for run in payload["runs"])
    assert set(payload["summary"]["ratios"]) >= {"a/b", "c/a"}


def test_step_benchmark_isolated_worker_reports_memory(tmp_path):
    out = tmp_path / "step.json"
    code = bench.main(["step", *TINY, "--variants", "b", "--warmup", "0", "--steps", "1", "--repeats", "1",
                       "--json", str(out)])
    assert code == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["variant"] == "dense" and run["threads"] == 1
    assert run["peak_memory_mib"] is None or run["peak_memory_mib"] > 0


def test_bad_input_is_one_line_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["step", "--variants", "x"])
    assert bench.main(["step", *TINY, "--precision", "fp32", "--size", "70", "--variants", "a", "--in-process",
                       "--repeats", "1", "--steps", "1", "--warmup", "0"]) == 2
    assert "spark-bench: error:" in capsys.readouterr().err


def test_profile_compares_spark_with_dense(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert bench.main(["profile", *TINY, "--warmup", "1", "--profile-steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for variant in ("spark", "dense"):
        assert set(report[variant]["phases_ms"]) == {"forward", "backward", "optimizer"}
        assert report[variant]["step_ms"] > 0 and report[variant]["forward_layers_ms"]["BatchNorm"] > 0
    assert "ATen ops by self CPU time" in capsys.readouterr().out


@pytest.mark.slow
def test_end_to_end_runs_spark_pretrain_on_jpegs(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    code = bench.main(["e2e", "--work-dir", str(tmp_path / "work"), "--num-images", "12", "--image-size", "72",
                       "--model", "resnet18", "--size", "64", "--batch", "4", "--workers", "1", "--threads", "1",
                       "--warmup", "1", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert len(list((tmp_path / "work" / "images").glob("*.jpg"))) == 12
    assert report["end_to_end"]["steps"] == 3
    assert "--amp off --no-channels-last" in report["end_to_end"]["command"]  # not the device's default layout
    for part in ("loader", "step", "end_to_end"):
        assert report[part]["images_per_s"] > 0
    assert report["verdict"].split()[0] in {"loading-bound", "compute-bound", "contention:"}


@pytest.mark.slow
def test_end_to_end_with_device_decoding_reports_both_loader_rates(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    code = bench.main(["e2e", "--work-dir", str(tmp_path / "work"), "--num-images", "8", "--image-size", "72",
                       "--model", "resnet18", "--size", "64", "--batch", "4", "--workers", "1", "--threads", "1",
                       "--warmup", "0", "--decode-on-device", "--precision", "bf16", "--channels-last",
                       "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    # the training step alone and spark-pretrain measure one precision and one layout
    assert "--amp bf16 --channels-last" in report["end_to_end"]["command"]
    assert (report["config"]["precision"], report["config"]["channels_last"]) == ("bf16", True)
    assert report["loader"]["decode_on_device"] is False and report["loader_device"]["decode_on_device"] is True
    assert report["loader"]["images_per_s"] > 0 and report["loader_device"]["images_per_s"] > 0
    assert "--decode-on-device" in report["end_to_end"]["command"] and report["end_to_end"]["steps"] == 2
    printed = capsys.readouterr().out
    assert "PIL decode in workers" in printed and "JPEG decode on cpu (decode_jpeg)" in printed


def test_loader_only_compares_both_loading_paths(tmp_path, capsys):
    out = tmp_path / "loader.json"
    assert bench.main(["e2e", "--work-dir", str(tmp_path / "work"), "--num-images", "6", "--image-size", "48",
                       "--size", "32", "--batch", "2", "--workers", "0", "--warmup", "0", "--decode-on-device",
                       "--loader-only", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["loader"]["images_per_s"] > 0 and report["loader_device"]["images_per_s"] > 0
    assert "step" not in report and "end_to_end" not in report
    assert "loader only" in capsys.readouterr().out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_norm_microbenchmark_runs(precision):
    from sparkmim.benchmarks.perf import norm as bench_norm
    rows = bench_norm.time_norms(batch=2, shapes=[(8, 14), (16, 7)], repeats=2, precision=precision)
    assert [(r["channels"], r["side"]) for r in rows] == [(8, 14), (16, 7)]
    assert all(r["masked_ms"] > 0 and r["native_ms"] > 0 for r in rows)
    assert f"batch 2, {precision}," in bench_norm.format_norms(rows, 2, precision)
    with pytest.raises(ValueError, match="precision must be one of"):
        bench_norm.time_norms(batch=2, shapes=[(8, 14)], repeats=1, precision="fp16")


def test_norm_microbenchmark_times_both_kernels_side_by_side(tmp_path, capsys):
    skip_unless_triton_interpreter()
    from sparkmim.benchmarks.perf import norm as bench_norm
    rows = bench_norm.time_norms(batch=2, shapes=[(8, 14)], repeats=1, precision="bf16", kernels=("torch", "triton"))
    assert rows[0]["masked_ms"] > 0 and rows[0]["masked_triton_ms"] > 0 and rows[0]["masked_triton_ratio"] > 0
    table = bench_norm.format_norms(rows, 2, "bf16", kernels=("torch", "triton"))
    assert "| masked, torch (ms) | masked, triton (ms) | native (ms) |" in table and "| all shapes |" in table
    with pytest.raises(ValueError, match="kernels must be some of torch, triton"):
        bench_norm.time_norms(batch=2, shapes=[(8, 14)], repeats=1, kernels=("cudnn",))


def test_the_step_benchmark_runs_spark_with_the_triton_kernel(tmp_path, capsys):
    skip_unless_triton_interpreter()
    out = tmp_path / "paired.json"
    assert bench.main(["paired", "--model", "test_resnet", "--size", "64", "--batch", "2", "--decoder-width", "32",
                       "--rounds", "1", "--warmup", "0", "--norm-kernel", "triton", "--json", str(out)]) == 0
    assert "norm kernel triton" in capsys.readouterr().out
    assert json.loads(out.read_text())["summary"]["variants"]["spark"]["images_per_s"] > 0


def test_the_step_benchmark_refuses_the_triton_kernel_off_cuda_even_compiled(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert bench.main(["step", "--model", "test_resnet", "--size", "64", "--batch", "2", "--decoder-width", "32",
                       "--variants", "a", "--repeats", "1", "--warmup", "0", "--steps", "1", "--in-process",
                       "--norm-kernel", "triton", "--compile"]) == 2
    assert "the triton norm kernel runs on CUDA devices, not on cpu" in capsys.readouterr().err


def test_saved_activations_count_the_storages_autograd_keeps():
    from sparkmim.benchmarks.perf.activations import saved_bytes
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    # the linear layer keeps its input (3 x 4 floats; its weight is a parameter, not counted), ReLU its output
    assert saved_bytes(model, torch.randn(3, 4), None) == (3 * 4 + 3 * 8) * 4


def test_the_triton_kernel_keeps_less_for_backward_than_the_torch_kernel(tmp_path, capsys):
    skip_unless_triton_interpreter()
    out = tmp_path / "saved.json"
    assert bench.main(["activations", "--model", "test_resnet", "--size", "64", "--batch", "2", "--decoder-width", "32",
                       "--precision", "bf16", "--json", str(out)]) == 0
    rows = {(r["variant"], r["norm_kernel"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("dense", "torch")]["to_dense"] == 1.0
    # bf16: the torch kernel keeps a float32 centred copy of each BatchNorm input, the triton kernel the input
    assert rows[("spark", "triton")]["saved_mib_per_image"] < rows[("spark", "torch")]["saved_mib_per_image"]
    assert "| (a) sparkmim SparK | triton |" in capsys.readouterr().out


def test_loader_only_compares_a_folder_with_the_same_images_in_shards_both_ways(tmp_path, capsys):
    pytest.importorskip("webdataset", reason="tar shards need the webdataset package (sparkmim[shards])")
    out = tmp_path / "loader.json"
    assert bench.main(["e2e", "--work-dir", str(tmp_path / "work"), "--num-images", "8", "--image-size", "48",
                       "--size", "32", "--batch", "2", "--workers", "2", "--warmup", "0", "--shards", "--shard-size",
                       "2", "--repeats", "3", "--loader-only", "--decode-on-device", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["pack"]["shards"] == 4 and len(report["loader_shards"]["all_images_per_s"]) == 3
    assert report["loader_shards_device"]["decode_on_device"] is True and report["loader_shards_device"]["images_per_s"] > 0
    assert report["loader_shards"]["images_per_s"] == sorted(report["loader_shards"]["all_images_per_s"])[1]
    assert len(report["loader"]["all_images_per_s"]) == 3
    assert [len(run["all_images_per_s"]) for run in report["reading"]] == [3, 3]
    printed = capsys.readouterr().out
    assert "tar shards (4, up to 2 images each), PIL decode in workers (2 workers)" in printed
    assert "tar shards (4, up to 2 images each), JPEG decode on cpu (decode_jpeg) (2 workers)" in printed
    assert "spark-data pack into 4 shard(s)" in printed and "bytes alone, no decoding, 1 process: tar shards" in printed


def test_the_help_lists_the_commands_a_user_runs_and_not_the_internal_worker():
    text = bench.build_parser().format_help()
    assert "SUPPRESS" not in text and "worker" not in text  # help=SUPPRESS printed "==SUPPRESS==" as a command
    assert "gpu-check" in text and "kill-trials" in text


def test_bad_output_paths_and_devices_are_one_line_before_anything_runs(tmp_path, capsys):
    from sparkmim.benchmarks.value.cli import main as value_main

    a_file, a_folder = tmp_path / "a_file", tmp_path / "a_folder"
    a_file.write_text("keep me")
    a_folder.mkdir()
    cases = [
        (["gpu-check", "--device", "cpu", "--quick", "--out", str(a_file)], f"--out {a_file} is a file; give a folder"),
        (["gpu-check", "--device", "cpu", "--quick", "--out", str(a_file / "x")],
         f"--out {a_file / 'x'}: {a_file} is a file, not a folder"),
        (["step", "--device", "cpu", "--json", str(a_folder)],
         f"--json {a_folder} is a folder; give a file name, e.g. {a_folder / 'results.json'}"),
        (["coverage", "--out", str(a_folder)], f"--out {a_folder} is a folder; give a file name"),
        (["e2e", "--work-dir", str(a_file)], f"--work-dir {a_file} is a file; give a folder"),
        (["step", "--device", "gpu"], "--device must be auto, cuda, cuda:N or cpu, got 'gpu'"),
    ]
    if not torch.cuda.is_available():  # torch's driver message, relayed by a failed worker, before
        cases.append((["step", "--device", "cuda"], "--device cuda was asked for but no CUDA device is visible"))
        cases.append((["gpu-check", "--out", str(tmp_path / "g")], "--device cuda was asked for but no CUDA device "
                      "is visible to torch"))
    for argv, message in cases:
        assert bench.main(argv) == 2, argv
        error = capsys.readouterr().err
        assert f"spark-bench: error: {message}" in error and "Traceback" not in error, (argv, error)
        assert ("use --device cpu --quick for gpu-check's CPU code path" in error) == (argv[:2] == ["gpu-check", "--out"])
    assert value_main(["--smoke", "--out", str(a_file)]) == 2
    assert f"spark-bench value: error: --out {a_file} is a file; give a folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert value_main(["--smoke", "--device", "cuda", "--out", str(tmp_path / "v")]) == 2
        assert "spark-bench value: error: --device cuda was asked for but no CUDA device" in capsys.readouterr().err
    assert a_file.read_text() == "keep me" and not any(a_folder.iterdir()) and not (tmp_path / "g").exists()
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("argv, message", [
    (["step", "--device", "cpu", "--batch", "0"], "--batch must be a positive number, got 0"),  # SIGFPE, no message
    (["norm", "--batch", "0"], "--batch must be a positive number, got 0"),
    (["step", "--device", "cpu", "--steps", "0"], "--steps must be a positive number, got 0"),  # a NaN median
    (["step", "--device", "cpu", "--repeats", "0"], "--repeats must be a positive number, got 0"),  # IndexError
    (["profile", "--profile-steps", "0"], "--profile-steps must be a positive number, got 0"),  # ZeroDivisionError
    (["e2e", "--work-dir", "WORK", "--num-images", "0"], "--num-images must be a positive number, got 0"),
    (["kill-trials", "--work-dir", "WORK", "--trials", "0"], "--trials must be a positive number, got 0"),  # "clean"
    (["gpu-check", "--device", "cpu", "--out", "WORK", "--budget-s", "0"], "--budget-s must be a positive number"),
    (["gpu-check", "--device", "cpu", "--out", "WORK", "--fixtures", "WORK/none"], "--fixtures WORK/none: folder not found"),
    (["coverage", "--jobs", "0"], "--jobs must be a positive number, got 0"),
    (["paired", "--device", "cpu", "--warmup", "-1"], "--warmup must be 0 or more, got -1"),
])
def test_counts_and_sizes_out_of_range_are_one_line_before_anything_runs(tmp_path, capsys, argv, message):
    work = str(tmp_path / "work")
    assert bench.main([part.replace("WORK", work) for part in argv]) == 2
    error = capsys.readouterr().err
    assert f"spark-bench: error: {message.replace('WORK', work)}" in error and "Traceback" not in error, error
    assert not (tmp_path / "work").exists()
