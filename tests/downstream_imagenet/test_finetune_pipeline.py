"""End to end on CPU: the real ``spark-finetune`` command on a generated 4-class image folder.

The classes are solid colours with pixel noise (blue, green, red, yellow), so a small ResNet
fine-tuned from an encoder checkpoint must clearly beat chance (25%) within a few epochs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from sparkmim.downstream_imagenet.main import main
from tests.finetune_fixtures import COLOURS, MODEL_KWARGS, common_args, make_workspace, write_images

THRESHOLD = 75.0  # val top-1 (%) the fine-tuned model must reach; chance is 25%


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("finetune"))


def run_cli(*args: str, launcher=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the command in a fresh process (one thread: the CI machines are small)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = (launcher or [sys.executable, "-m", "sparkmim.downstream_imagenet"]) + list(args)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def epochs_of(out: Path):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("kind") == "epoch"]


@pytest.mark.slow
def test_finetune_beats_chance_and_eval_only_reproduces(workspace):
    out = workspace / "run"
    run_cli(*common_args(workspace, out))
    summary = json.loads((out / "summary.json").read_text())
    epochs = epochs_of(out)
    assert [row["epoch"] for row in epochs] == [1, 2, 3, 4, 5, 6]
    step_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("kind") == "train_step"]
    assert step_rows[0]["epoch"] == 1 and {row["epoch"] for row in step_rows} <= {1, 2, 3, 4, 5, 6}  # as epoch rows count
    assert all(row["train_skipped"] == 1 for row in epochs)  # the corrupt file, skipped and counted
    assert all(row["val_images"] == 24 for row in epochs)
    assert summary["best_top1"] >= THRESHOLD, summary
    assert summary["best_top1"] == max(row["val_top1"] for row in epochs)
    assert summary["best_ema_top1"] == max(row["ema_top1"] for row in epochs)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["layer_decay"] == 0.7 and config["model_kwargs"] == MODEL_KWARGS
    for name in ("checkpoint_last.pth", "checkpoint_best.pth", "checkpoint_best_ema.pth"):
        assert (out / name).is_file()

    shown = run_cli("--eval-only", "--checkpoint", str(out / "checkpoint_best.pth"), "--data",
                    str(workspace / "data")).stdout
    assert f"top-1 {summary['best_top1']:.2f}" in shown, shown
    shown = run_cli("--eval-only", "--checkpoint", str(out / "checkpoint_best_ema.pth"), "--data",
                    str(workspace / "data")).stdout
    assert f"top-1 {summary['best_ema_top1']:.2f}" in shown, shown


@pytest.mark.slow
def test_resume_continues_exactly(workspace, capsys):
    straight, split = workspace / "straight", workspace / "split"
    tricks = ["--epochs", "3", "--mixup", "0.2", "--cutmix", "1.0", "--loss", "bce", "--opt", "lamb",
              "--auto-augment", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--clip-grad", "5"]
    run_cli(*common_args(workspace, straight), *tricks)
    run_cli(*common_args(workspace, split), *tricks, "--stop-after-epoch", "2")
    assert [row["epoch"] for row in epochs_of(split)] == [1, 2]
    # another --batch-size: its step 6 would be past the new schedule's 2 epochs (lr at its floor); refused, and
    # nothing in the folder changes
    metrics = (split / "metrics.jsonl").read_text()
    assert main([*common_args(workspace, split), *tricks, "--resume", "auto", "--batch-size", "8", "--workers", "0"]) == 2
    assert ("was written at 3 steps per epoch (--batch-size 16), this run has 6: --batch-size, the number of "
            "processes or the training images changed, so its step 6") in capsys.readouterr().err
    assert (split / "metrics.jsonl").read_text() == metrics
    # a resume needs no --weights; config.yaml still names the encoder the run started from (it was rewritten
    # as weights: null, and used again as a recipe it fine-tuned from random weights)
    args = common_args(workspace, split)
    weights_at = args.index("--weights")
    without_weights = args[:weights_at] + args[weights_at + 2:]
    run_cli(*without_weights, *tricks, "--resume", "auto")
    assert [row["epoch"] for row in epochs_of(split)] == [1, 2, 3]
    assert yaml.safe_load((split / "config.yaml").read_text())["weights"] == args[weights_at + 1]
    whole = torch.load(straight / "checkpoint_last.pth", weights_only=True)
    resumed = torch.load(split / "checkpoint_last.pth", weights_only=True)
    assert resumed["step"] == whole["step"] == 3 * 3
    for key, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, msg=key)
    for key, value in whole["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, msg=key)


@pytest.mark.slow
def test_linear_probe_trains_only_the_head(workspace):
    out = workspace / "probe"
    # no test recipe: the built-in linear-probe recipe supplies the hyper-parameters
    run_cli(*common_args(workspace, out, recipe=False), "--linear-probe", "--epochs", "3", "--warmup-epochs", "1",
            "--batch-size", "16", "--base-lr", "1.6", "--workers", "0", "--input-size", "32", "--device", "cpu",
            "--model-kwargs", json.dumps(MODEL_KWARGS), "--no-progress", "--amp", "bf16", "--channels-last",
            "--layer-decay", "0.6")  # ignored (only the head trains), not refused
    log = (out / "log_rank0.txt").read_text()
    assert "--linear-probe trains the head only: layer decay 0.6 ignored" in log
    assert "encoder.pth; every tensor of the backbone" in log  # was "classifier left to train: none"
    record = torch.load(out / "checkpoint_last.pth", weights_only=True)
    encoder = torch.load(workspace / "encoder.pth", weights_only=True)
    for key, value in encoder.items():  # backbone frozen, BatchNorm statistics included
        assert torch.equal(record["model"][f"backbone.{key}"], value), key
    assert set(k for k in record["model"] if not k.startswith("backbone.")) == {
        "head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked", "head.1.weight", "head.1.bias"}
    assert record["config"]["opt"] == "lars" and record["config"]["mixup"] == 0.0
    from sparkmim.convert import load_encoder_state_dict

    # the probe's checkpoint as --weights of a fine-tuning: was ~40 unmatched 'backbone.' keys
    state, report = load_encoder_state_dict(record)
    assert state.keys() == encoder.keys() and all(torch.equal(state[key], encoder[key]) for key in encoder)
    assert sorted(report.dropped) == ["head.0.num_batches_tracked", "head.0.running_mean", "head.0.running_var",
                                      "head.1.bias", "head.1.weight"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_top1"] > 25.0
    assert summary["linear_probe"] is True and summary["classes"] == 4  # spark-report keeps it off the paper rows


@pytest.mark.slow
def test_convnext_from_official_style_release(workspace):
    """A ConvNeXt from a facebookresearch-named file under 'model', with repeated augmentation."""
    from sparkmim.convert import convnext_timm_to_fb

    kwargs = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}
    torch.manual_seed(0)
    timm_state = timm.create_model("convnext_atto", num_classes=0, global_pool="", **kwargs).state_dict()
    fb_state, _ = convnext_timm_to_fb(timm_state)
    torch.save({"model": fb_state}, workspace / "convnext_1kpretrained_official_style.pth")
    out = workspace / "convnext"
    run_cli("--model", "convnext_atto", "--data", str(workspace / "data"), "--recipe", str(workspace / "recipe.yaml"),
            "--weights", str(workspace / "convnext_1kpretrained_official_style.pth"), "--output-dir", str(out),
            "--model-kwargs", json.dumps(kwargs), "--epochs", "2", "--repeated-aug", "3", "--loss", "softce",
            "--mixup", "0.8")
    log = (out / "log_rank0.txt").read_text()
    assert "classifier left to train: head.fc.bias, head.fc.weight" in log
    assert "layer7_decay" in log  # N = 6 for two third-stage blocks; the head is layer 7
    assert [row["epoch"] for row in epochs_of(out)] == [1, 2]


def test_class_mismatch_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_images(tmp_path / "train", 1, rng)
    write_images(tmp_path / "val", 1, rng)
    (tmp_path / "val" / "purple").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "purple" / "0.png")
    code = main(["--model", "resnet50", "--data", str(tmp_path), "--output-dir", str(tmp_path / "out"),
                 "--device", "cpu"])
    assert code == 2
    assert "only in val ['purple']" in capsys.readouterr().err


def test_resume_refuses_a_weights_only_checkpoint(workspace, capsys):
    from sparkmim.downstream_imagenet import checkpoints

    config = {"model": "resnet18", "linear_probe": False}
    record = checkpoints.weights_record({}, config, sorted(COLOURS), 1, {"top1": 1.0}, ema=False)
    checkpoints.save(record, workspace / "wrong_kind", checkpoints.BEST)
    code = main(common_args(workspace, workspace / "wrong_kind") + [
        "--resume", str(workspace / "wrong_kind" / checkpoints.BEST)])
    assert code == 2
    assert "holds weights, expected training" in capsys.readouterr().err


@pytest.mark.parametrize("split, message", [(["--micro-batch", "5"], "--micro-batch 5 must divide the per-process batch 16"),
                                            (["--accum-steps", "3"], "--accum-steps 3 must divide")])
def test_batch_splits_share_the_pretraining_vocabulary(workspace, capsys, split, message):
    assert main(common_args(workspace, workspace / "bad_split") + split) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes(workspace):
    out = workspace / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "sparkmim.downstream_imagenet"]
    run_cli(*common_args(workspace, out), "--epochs", "2", launcher=torchrun)
    epochs = epochs_of(out)
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert all(row["val_images"] == 24 for row in epochs)  # each image once across both processes
    assert epochs[-1]["step"] == 2 * (48 // 16)  # 49 files, 1 corrupt, global batch 16 = 2 x 8
    assert (out / "log_rank1.txt").is_file()
    assert (out / "checkpoint_last.pth").is_file()


def test_amp_vocabulary_is_shared_and_none_is_a_deprecated_alias(caplog):
    from sparkmim.utils.run import amp_dtype, canonical_amp

    assert amp_dtype("off") is None and amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    with caplog.at_level("WARNING"):
        assert canonical_amp("none") == "off"
    assert "deprecated" in caplog.text and "--amp off" in caplog.text


def test_unknown_model_gets_the_core_hint(tmp_path, capsys):
    assert main(["--model", "resnet_5O", "--data", str(tmp_path), "--output-dir", str(tmp_path / "o"),
                 "--base-lr", "1e-3", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--opt", "adamw",
                 "--layer-decay", "1", "--weight-decay", "0", "--mixup", "0", "--repeated-aug", "0",
                 "--drop-path", "0", "--ema", "0"]) == 2
    assert "unknown timm model 'resnet_5O'; did you mean resnet50" in capsys.readouterr().err


def test_run_folder_has_one_writer_and_is_not_restarted_silently(workspace, capsys):
    import socket

    from sparkmim.utils.run_folder import LOCK_NAME

    out = workspace / "claimed"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid, "started": 0,
                                                 "command": "spark-finetune"}))
        assert main(common_args(workspace, out)) == 2
        assert f"is in use by spark-finetune (pid {other.pid} on" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    (out / LOCK_NAME).unlink()
    (out / "checkpoint_last.pth").write_bytes(b"an earlier run")
    assert main(common_args(workspace, out)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err
    assert (out / "checkpoint_last.pth").read_bytes() == b"an earlier run"  # nothing overwritten
