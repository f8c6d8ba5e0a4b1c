"""spark-finetune never writes over what it should not: a finished run, the --weights it is given, a
spark-pretrain folder, or another folder's run; options that only --eval-only reads are refused elsewhere."""
import pytest
import torch
from PIL import Image

from sparkmim.downstream_imagenet.main import main


def make_folder(root, classes, per_class):
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (24, 24), (index * 40, 10, 200)).save(root / name / f"{index}.png")


@pytest.fixture()
def finished(tmp_path, capsys):
    """A finished two-epoch run (with EMA) and the command that made it."""
    make_folder(tmp_path / "data" / "train", ["a", "b"], per_class=4)
    make_folder(tmp_path / "data" / "val", ["a", "b"], per_class=1)
    out = tmp_path / "run"
    train = ["--model", "test_resnet", "--data", str(tmp_path / "data"), "--input-size", "32", "--batch-size", "4",
             "--warmup-epochs", "0", "--workers", "0", "--device", "cpu", "--no-progress", "--mixup", "0",
             "--cutmix", "0", "--ema", "0.9", "--repeated-aug", "0", "--epochs", "2", "--output-dir", str(out)]
    assert main(train) == 0
    capsys.readouterr()
    return out, train


def _refused(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_nothing_of_a_finished_run_is_lost_to_a_mistaken_command(finished, tmp_path, capsys):
    out, train = finished
    files = {path.name: path.read_bytes() for path in out.glob("*.pth")}
    # --overwrite deleted the folder's checkpoints before the missing data (or weights) was noticed
    _refused(capsys, [*train, "--overwrite", "--data", str(tmp_path / "no_data")], "must contain train/ and val/")
    _refused(capsys, [*train, "--overwrite", "--weights", str(tmp_path / "x.ptx")], "--weights ")
    # ... or deleted the very file given as --weights
    _refused(capsys, [*train, "--overwrite", "--weights", str(out / "checkpoint_best.pth")],
             "--overwrite would delete the --weights file")
    # an empty --resume (a script's unset variable) trained again over the run
    _refused(capsys, [*train, "--resume", ""], "already holds a run (checkpoint_last.pth)")
    _refused(capsys, [*train, "--resume", "auto", "--overwrite"], "--overwrite starts again from step 0 and --resume")
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint_last.pth").write_bytes(files["checkpoint_last.pth"])
    # another folder's checkpoint continued over this folder's own run, its metrics cut and mixed
    _refused(capsys, [*train, "--resume", str(other / "checkpoint_last.pth")], "which --resume")
    assert {path.name: path.read_bytes() for path in out.glob("*.pth")} == files
    # fewer --epochs than done trained nothing and rewrote summary.json and config.yaml as a 1-epoch run
    summary = (out / "summary.json").read_text()
    _refused(capsys, [*train, "--resume", "auto", "--epochs", "1"], "has 2 epochs done, more than --epochs 1")
    assert (out / "summary.json").read_text() == summary
    # the last checkpoint deleted to save space: the best ones and the summary were replaced without a word
    (out / "checkpoint_last.pth").unlink()
    _refused(capsys, train, "holds an earlier run's checkpoint_best.pth")


def test_a_pretraining_folder_is_not_taken_for_a_finetuning_run(finished, tmp_path, capsys):
    _, train = finished
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    torch.save({"format": "sparkmim-pretrain", "model": {}}, pretrain / "checkpoint_last.pth")
    for extra in ([], ["--overwrite"]):  # was "continue it with --resume auto", and with --overwrite: deleted
        _refused(capsys, [*train, "--output-dir", str(pretrain), *extra],
                 "holds a sparkmim-pretrain run (checkpoint_last.pth), not a spark-finetune one")
    assert (pretrain / "checkpoint_last.pth").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--checkpoint", "x.pth"], "--checkpoint and --eval-ema choose what --eval-only evaluates"),
    (["--eval-ema"], "--checkpoint and --eval-ema choose what --eval-only evaluates"),
    (["--log-interval", "0"], "--log-interval must be a positive number, got 0"),  # ZeroDivisionError
    (["--eval-batch-size", "-2"], "--eval-batch-size must be a positive number, got -2"),
    (["--repeated-aug", "-1"], "--repeated-aug must be 0 or more, got -1"),
    (["--drop-path", "1.5"], "--drop-path must be in [0, 1), got 1.5"),
    (["--stop-after-epoch", "0"], "--stop-after-epoch must be a positive number, got 0"),  # trained it all
    # timm's AssertionError / KeyError tracebacks after the folder was claimed, or taken without a word
    (["--auto-augment", "foo"], "--auto-augment 'foo' is not a policy timm knows (AssertionError: Unknown AA policy"),
    (["--reprob", "2"], "--reprob must be within [0, 1], got 2.0"),
    (["--mixup-prob", "1.5"], "--mixup-prob must be within [0, 1], got 1.5"),
    (["--crop-pct", "0"], "--crop-pct must be in (0, 1]"),
])
def test_options_the_run_would_ignore_or_fail_on_are_one_line(tmp_path, capsys, extra, message):
    argv = ["--model", "test_resnet", "--data", str(tmp_path), "--output-dir", str(tmp_path / "run"), *extra]
    _refused(capsys, argv, message)
    assert not (tmp_path / "run").exists()


def test_an_unknown_interpolation_is_refused_on_the_command_line_and_in_a_recipe(tmp_path, capsys):
    argv = ["--model", "test_resnet", "--data", str(tmp_path), "--output-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stopped:  # timm's KeyError traceback after the folder was claimed
        main([*argv, "--interpolation", "foo"])
    assert stopped.value.code == 2 and "argument --interpolation: invalid choice: 'foo'" in capsys.readouterr().err
    (tmp_path / "recipe.yaml").write_text("interpolation: foo\n")
    _refused(capsys, [*argv, "--recipe", str(tmp_path / "recipe.yaml")], "interpolation must be one of bicubic")
    assert not (tmp_path / "run").exists()


def test_eval_ema_without_a_checkpoint_reads_the_best_ema_file(finished, capsys):
    out, _ = finished
    # it read checkpoint_best.pth, then refused it as the model's weights
    assert main(["--eval-only", "--eval-ema", "--output-dir", str(out), "--workers", "0", "--device", "cpu"]) == 0
    shown = capsys.readouterr().out
    assert "checkpoint_best_ema.pth (EMA weights)" in shown, shown
    row = [line for line in (out / "eval.jsonl").read_text().splitlines() if line.strip()][-1]
    assert '"ema": true' in row and '"input_size": 32' in row and str(out.parent / "data" / "val") in row
    # the same file named with --checkpoint (no --eval-ema) holds EMA weights too: said so in the line and the row
    best_ema = out / "checkpoint_best_ema.pth"
    assert main(["--eval-only", "--checkpoint", str(best_ema), "--output-dir", str(out), "--workers", "0",
                 "--device", "cpu"]) == 0
    assert f"{best_ema} (EMA weights)" in capsys.readouterr().out
    assert '"ema": true' in [line for line in (out / "eval.jsonl").read_text().splitlines() if line.strip()][-1]
    # the training's data folder, moved since: say where the path came from
    (out.parent / "data").rename(out.parent / "moved")
    assert main(["--eval-only", "--output-dir", str(out), "--workers", "0", "--device", "cpu"]) == 2
    assert "(the data folders " in capsys.readouterr().err
