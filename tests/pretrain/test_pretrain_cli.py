"""spark-pretrain end to end on tiny generated data, and its one-line errors on bad input."""
import struct

import pytest
import timm
import torch
import yaml
from PIL import Image

from sparkmim.pretrain.main import main
from tests.core_utils import skip_unless_triton_interpreter
from tests.pretrain_fixtures import TINY_ARGS, make_images, read_rows, run_cli
from sparkmim.utils.checkpoint import load_file
from sparkmim.utils.run_folder import LOCK_NAME


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One complete 2-epoch run, with gradient accumulation and two unreadable files in the data."""
    root = tmp_path_factory.mktemp("pretrain_e2e")
    data = make_images(root / "data", 14)
    (data / "class_a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (data / "class_b" / "empty.jpg").write_bytes(b"")
    out = root / "run"
    result = run_cli([str(data), *TINY_ARGS, "--epochs", "2", "--micro-batch", "4", "--output-dir", str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_run_writes_checkpoints_logs_and_pictures(finished_run):
    out, result = finished_run
    steps_per_epoch = 2  # 16 files / global batch 8
    full = load_file(out / "checkpoint_last.pth")
    assert full["format"] == "sparkmim-pretrain"
    assert full["epoch"] == 2 and full["step"] == 2 * steps_per_epoch
    assert full["config"]["model"] == "test_resnet" and full["config"]["micro_batch"] == 4
    assert {"optimizer", "scaler", "rng", "sampler"} <= set(full)
    assert any(k.startswith("decoder.") for k in full["model"])

    encoder_state = load_file(out / "test_resnet_encoder_timm.pth")
    model = timm.create_model("test_resnet", pretrained=False)
    missing, unexpected = model.load_state_dict(encoder_state, strict=False)
    assert not unexpected and set(missing) == {"fc.weight", "fc.bias"}
    for key, value in encoder_state.items():
        assert torch.equal(full["model"][f"encoder.model.{key}"], value)

    steps = read_rows(out / "metrics.jsonl", "step")
    epochs = read_rows(out / "metrics.jsonl", "epoch")
    assert [r["step"] for r in steps] == list(range(4))
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in steps)
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(r["skipped_images"] >= 1 for r in epochs[:1])
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))

    for name in ("loss_curve.png", "reconstruction.png"):
        with Image.open(out / name) as picture:
            picture.verify()
    with Image.open(out / "reconstruction.png") as picture:
        assert picture.width > picture.height  # 2 rows x 4 panels

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == "test_resnet" and config["batch_size"] == 8 and config["betas"] == [0.9, 0.95]
    assert config["channels_last"] is False  # the default resolved for the device (off on CPU) is recorded
    log = (out / "log_rank0.txt").read_text()
    assert log.count("skipping unreadable image") == 2  # once per file, over both epochs
    assert "1 process(es) x 4 micro-batch x 2 accumulation" in log
    for name in ("checkpoint_last.pth", "test_resnet_encoder_timm.pth", "reconstruction.png", "loss_curve.png"):
        assert name in result.stdout


def test_accum_steps_is_the_other_spelling_of_the_micro_batch(tmp_path):
    """The vocabulary spark-finetune shares: --accum-steps 2 of a batch of 8 is --micro-batch 4."""
    data = make_images(tmp_path / "data", 6)
    runs = {}
    for name, split in (("micro", ["--micro-batch", "4"]), ("accum", ["--accum-steps", "2"])):
        out = tmp_path / name
        result = run_cli([str(data), *TINY_ARGS, "--epochs", "1", *split, "--output-dir", str(out)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 process(es) x 4 micro-batch x 2 accumulation" in (out / "log_rank0.txt").read_text()
        runs[name] = load_file(out / "checkpoint_last.pth")["model"]
    for key, value in runs["micro"].items():
        assert torch.equal(runs["accum"][key], value), key


def test_init_weight_from_our_encoder_and_full_checkpoints(finished_run, tmp_path):
    out, _ = finished_run
    data = make_images(tmp_path / "data", 8)
    for source in ("test_resnet_encoder_timm.pth", "checkpoint_last.pth"):
        run = tmp_path / source
        code = main([str(data), *TINY_ARGS, "--epochs", "1", "--output-dir", str(run),
                     "--init-weight", str(out / source), "--no-tensorboard", "--num-vis", "0"])
        assert code == 0
        assert "initialised" in (run / "log_rank0.txt").read_text()


def _error_line(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("spark-pretrain: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("extra, expected", [
    (["--input-size", "100"], "not a multiple of the encoder's total stride 32"),
    (["--input-size", "64", "90"], "--input-size 64 96"),
    (["--mask-ratio", "1.0"], "mask ratio must be strictly between 0 and 1"),
    (["--mask-ratio", "0"], "mask ratio must be strictly between 0 and 1"),
    # one 32-px patch: nothing visible (NaN features, blamed on the lr); 0.05 of 4 patches: nothing masked, loss 0
    (["--input-size", "32"], "--input-size 32 32 with --mask-ratio 0.6: mask ratio 0.6 leaves 0 of the 1x1 = 1"),
    (["--input-size", "64", "--mask-ratio", "0.05"], "leaves 4 of the 2x2 = 4 patches visible"),
    (["--model", "resnet_5O"], "unknown timm model 'resnet_5O'; did you mean resnet50"),
    (["--accum-steps", "3"], "--accum-steps 3 must divide the per-process batch 8"),
    (["--micro-batch", "2", "--accum-steps", "2"], "--micro-batch 2 x --accum-steps 2 must equal"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, expected):
    data = make_images(tmp_path / "data", 2)
    line = _error_line(capsys, [str(data), *TINY_ARGS, "--output-dir", str(tmp_path / "run"), *extra])
    assert expected in line


def test_missing_resume_or_init_file_fails_before_the_data_is_read(tmp_path, capsys):
    missing_data = str(tmp_path / "no_such_data")  # would be the first error if files were checked later
    line = _error_line(capsys, [missing_data, *TINY_ARGS, "--output-dir", str(tmp_path / "run"),
                                "--resume", str(tmp_path / "missing.pth")])
    assert "--resume" in line and "missing.pth" in line and "file not found" in line
    line = _error_line(capsys, [missing_data, *TINY_ARGS, "--output-dir", str(tmp_path / "run"),
                                "--init-weight", str(tmp_path / "missing_encoder.pth")])
    assert "--init-weight" in line and "file not found" in line


@pytest.mark.parametrize("argv, warmup", [
    (["--epochs", "1"], 40 / 1600),  # paper default scaled (was: "warmup_epochs must be within [0, 1], got 40")
    (["--recipe", "resnet50", "--epochs", "10"], 0.25),           # a recipe's 40 of 1600, scaled
    (["--epochs", "10", "--warmup-epochs", "3"], 3.0),            # given explicitly: kept
    ([], 40.0),                                                   # the paper's run: unchanged
])
def test_warmup_follows_a_shortened_run(tmp_path, argv, warmup):
    from sparkmim.pretrain.config import resolve
    config = resolve([str(tmp_path), *argv])
    assert config["warmup_epochs"] == pytest.approx(warmup)


def test_unwritable_output_folder(tmp_path, capsys):
    data = make_images(tmp_path / "data", 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = _error_line(capsys, [str(data), *TINY_ARGS, "--output-dir", str(blocker / "run")])
    assert "cannot write to the output folder" in line and "--output-dir" in line


def test_no_readable_image_fails_before_building_the_model(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jpg").write_bytes(b"not a jpeg")
    (data / "b.png").write_bytes(struct.pack("<I", 7))
    line = _error_line(capsys, [str(data), *TINY_ARGS, "--output-dir", str(tmp_path / "run")])
    assert "none of the 2 listed files is a readable image" in line
    assert not (tmp_path / "run" / "checkpoint_last.pth").exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # found after the folder was claimed: the claim is given back


def test_checkpoint_of_another_model_is_refused(finished_run, tmp_path, capsys):
    out, _ = finished_run
    data = make_images(tmp_path / "data", 2)
    args = [str(data), *TINY_ARGS, "--model", "test_convnext", "--output-dir", str(tmp_path / "run")]
    line = _error_line(capsys, args + ["--resume", str(out / "checkpoint_last.pth")])
    assert "checkpoint of model 'test_resnet'" in line and "--model test_resnet" in line
    line = _error_line(capsys, args + ["--init-weight", str(out / "test_resnet_encoder_timm.pth")])
    assert "does not fit 'test_convnext'" in line


def test_resuming_with_other_steps_per_epoch_is_refused(finished_run, tmp_path, capsys):
    # 16 files at batch 8 = 2 steps per epoch, stopped at step 4; at batch 4 step 4 would be the end of the
    # first of 4-step epochs (it used to resume there, or end with "nothing to do" when that was past the end)
    out, _ = finished_run
    checkpoint = out / "checkpoint_last.pth"
    args = [str(out.parent / "data"), *TINY_ARGS, "--epochs", "3", "--output-dir", str(tmp_path / "run"),
            "--resume", str(checkpoint)]
    line = _error_line(capsys, [*args, "--batch-size", "4"])
    assert line == (f"spark-pretrain: error: {checkpoint} was written at 2 steps per epoch (16 images, global batch "
                    "8), this run has 4: the data's image count or --batch-size changed, so its step 4 would be "
                    "another point of the schedule; resume with the same data and --batch-size, or start a new "
                    f"schedule from its weights with --init-weight {checkpoint} and another --output-dir")


def test_a_checkpoint_of_other_settings_names_the_keys_and_options(finished_run, tmp_path, capsys):
    # the error used to keep only torch's first line: "Error(s) in loading state_dict for SparK:"
    out, _ = finished_run
    checkpoint = out / "checkpoint_last.pth"
    args = [str(out.parent / "data"), *TINY_ARGS, "--epochs", "3", "--micro-batch", "4", "--decoder-width", "64",
            "--output-dir", str(tmp_path / "run")]
    line = _error_line(capsys, [*args, "--resume", str(checkpoint)])
    assert f"{checkpoint} does not fit this model (shape mismatch (weights vs model): decoder." in line
    assert line.endswith("resume with the options of the original run (it has --decoder-width 32, this run "
                         "--decoder-width 64)")
    line = _error_line(capsys, [*args, "--init-weight", str(checkpoint)])
    assert f"--init-weight {checkpoint} does not fit this SparK model (shape mismatch" in line
    assert "give the --decoder-width, --densify-norm and --in-chans it was trained with" in line


def test_unknown_recipe_and_missing_data(tmp_path, capsys):
    line = _error_line(capsys, [str(tmp_path / "nowhere"), *TINY_ARGS, "--output-dir", str(tmp_path / "run")])
    assert "does not exist" in line
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    line = _error_line(capsys, ["data", "--recipe", "resnet5000"])
    assert "unknown recipe 'resnet5000'" in line
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: ten\n")  # was a traceback from the warm-up scaling of --epochs
    line = _error_line(capsys, ["data", "--recipe", str(recipe), "--epochs", "10"])
    assert line == "spark-pretrain: error: option 'epochs' must be an integer, got 'ten'"


@pytest.mark.parametrize("option, message", [
    (["--workers", "-1"], "--workers must be 0 (load in the training process) or more, got -1"),
    (["--decoder-width", "0"], "--decoder-width must be positive, got 0"),
    (["--betas", "0.9", "1.5"], "--betas must be two numbers in [0, 1), got [0.9, 1.5]"),
    (["--drop-path", "2"], "--drop-path must be in [0, 1), got 2.0"),
    (["--device", "gpu"], "--device must be auto, cuda, cuda:N or cpu, got 'gpu'"),
    (["--lr", "-0.001"], "--lr must be a positive number, got -0.001"),
    (["--base-lr", "0"], "--base-lr must be a positive number, got 0.0"),
    # taken without a word: a negative decay grows the weights, a negative clip was a no-op
    (["--weight-decay-end", "-0.2"], "--weight-decay-end must be 0 or more, got -0.2"),
    (["--clip-grad", "nan"], "--clip-grad must be 0 or more, got nan"),
    (["--num-vis", "-1"], "--num-vis must be 0 (no picture) or more, got -1"),
])
def test_values_the_libraries_would_refuse_with_a_traceback_are_one_line(tmp_path, capsys, option, message):
    # they ended in torch's own errors (or, for --device, ran silently on the CPU)
    data = make_images(tmp_path / "data", 2)
    line = _error_line(capsys, [str(data), *TINY_ARGS, "--output-dir", str(tmp_path / "run"), *option])
    assert line == f"spark-pretrain: error: {message}"
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    data = make_images(tmp_path / "data", 2)
    line = _error_line(capsys, [str(data), *TINY_ARGS, "--output-dir", str(tmp_path / "run"), "--device", "cuda"])
    assert line.startswith("spark-pretrain: error: --device cuda was asked for but no CUDA device is visible")


def test_the_triton_norm_kernel_on_a_cpu_is_one_line_and_frees_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would run the kernels on the CPU
    data = make_images(tmp_path / "data", 2)
    out = tmp_path / "run"
    line = _error_line(capsys, [str(data), *TINY_ARGS, "--output-dir", str(out), "--device", "cpu",
                                "--norm-kernel", "triton"])
    assert line == ("spark-pretrain: error: --norm-kernel triton: the triton norm kernel runs on CUDA devices, "
                    "not on cpu; use the torch kernel there (--norm-kernel torch)")
    assert not (out / LOCK_NAME).exists()


def test_a_run_with_the_triton_norm_kernel_trains_and_records_it(tmp_path):
    skip_unless_triton_interpreter()
    data = make_images(tmp_path / "data", 8)
    out = tmp_path / "run"
    assert main([str(data), *TINY_ARGS, "--epochs", "1", "--num-vis", "0", "--no-tensorboard", "--amp", "bf16",
                 "--norm-kernel", "triton", "--output-dir", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["norm_kernel"] == "triton"
    assert "norm kernel triton" in (out / "log_rank0.txt").read_text()
    full = load_file(out / "checkpoint_last.pth")
    assert all(torch.isfinite(v).all() for v in full["model"].values() if v.is_floating_point())
    assert full["model"]["encoder.model.bn1.num_batches_tracked"] == 1  # the running statistics moved


def test_the_model_is_placed_with_the_chosen_norm_kernel():
    from sparkmim import build_spark
    from sparkmim.pretrain.config import PretrainConfig
    from sparkmim.pretrain.main import place_model
    from sparkmim.sparse.norms import SparseBatchNorm2d
    from sparkmim.utils.distributed import DistInfo

    spark = build_spark("test_resnet", input_size=64, decoder_width=32)
    placed, _ = place_model(spark, PretrainConfig(norm_kernel="triton", channels_last=False),
                            DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    kernels = {m.norm_kernel for m in placed.modules() if isinstance(m, SparseBatchNorm2d)}
    assert kernels == {"triton"}


def test_a_cpu_run_with_a_large_forward_pass_is_told_to_accumulate(tmp_path, monkeypatch):
    # the paper's batch of 4096 in one forward pass got a CPU run killed by the system, without a message
    from sparkmim.pretrain import main as pretrain_main

    monkeypatch.setattr(pretrain_main, "CPU_MICRO_BATCH_WARNING", 4)  # the threshold, at this test's scale
    data = make_images(tmp_path / "data", 8)
    for micro, warned in (("8", True), ("4", False)):
        out = tmp_path / f"run{micro}"
        assert main([str(data), *TINY_ARGS, "--epochs", "1", "--num-vis", "0", "--micro-batch", micro,
                     "--output-dir", str(out)]) == 0
        log = (out / "log_rank0.txt").read_text()
        assert ("8 images per forward pass on the CPU: the memory may run out" in log) == warned


def test_demo_runs_without_a_data_argument(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARKMIM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo_run"
    code = main(["--demo-images", "8", "--demo-image-size", "72", "--input-size", "64", "--batch-size", "4",
                 "--epochs", "1", "--workers", "0", "--no-progress", "--no-tensorboard", "--output-dir", str(out)])
    assert code == 0
    assert len(list((tmp_path / "cache").glob("demo-*/*.png"))) == 8
    assert load_file(out / "checkpoint_last.pth")["config"]["model"] == "test_resnet"  # the demo recipe
    printed = capsys.readouterr().out
    assert str((out / "reconstruction.png").resolve()) in printed


@pytest.mark.parametrize("precision", [["--amp", "bf16", "--channels-last"], ["--amp", "fp16"]])
def test_mixed_precision_runs(tmp_path, precision):
    data = make_images(tmp_path / "data", 8)
    out = tmp_path / "run"
    code = main([str(data), *TINY_ARGS, "--epochs", "1", "--num-vis", "0", "--no-tensorboard",
                 "--output-dir", str(out), *precision])
    assert code == 0
    full = load_file(out / "checkpoint_last.pth")
    assert (full["scaler"] is not None) == ("fp16" in precision)
    assert all(torch.isfinite(v).all() for v in full["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("flag", ["--allow-unsafe", "--allow-unsafe-load"])
def test_allow_unsafe_has_the_vocabulary_of_the_other_commands(tmp_path, flag, caplog):
    from sparkmim.pretrain.config import resolve
    assert resolve([str(tmp_path), flag])["allow_unsafe_load"] is True
    assert ("--allow-unsafe-load is deprecated" in caplog.text) == (flag == "--allow-unsafe-load")
    assert resolve([str(tmp_path)])["allow_unsafe_load"] is False


def test_channels_last_defaults_to_the_device_and_can_be_turned_off(tmp_path):
    from sparkmim.pretrain.config import resolve
    assert resolve([str(tmp_path)])["channels_last"] is None  # decided once the device is known
    assert resolve([str(tmp_path), "--no-channels-last"])["channels_last"] is False
    assert resolve([str(tmp_path), "--channels-last"])["channels_last"] is True


def test_every_on_off_option_can_undo_what_a_recipe_turns_on(tmp_path):
    """As in spark-finetune, each switch has its --no- form: the command line wins over the recipe."""
    from sparkmim.pretrain.config import resolve
    recipe = tmp_path / "recipe.yaml"
    switches = {"compile": True, "decode_on_device": True, "overwrite": True, "progress": False, "tensorboard": False,
                "allow_unsafe_load": True}
    recipe.write_text(yaml.safe_dump(switches))
    assert {key: resolve([str(tmp_path), "--recipe", str(recipe)])[key] for key in switches} == switches
    flipped = resolve([str(tmp_path), "--recipe", str(recipe), "--no-compile", "--no-decode-on-device",
                       "--no-overwrite", "--progress", "--tensorboard", "--no-allow-unsafe"])
    assert {key: flipped[key] for key in switches} == {key: not value for key, value in switches.items()}


def test_amp_none_is_accepted_as_the_old_spelling_of_off(tmp_path):
    from sparkmim.pretrain.config import resolve
    assert resolve([str(tmp_path), "--amp", "none"])["amp"] == "off"
