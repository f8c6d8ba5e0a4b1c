"""spark-finetune on data read with its own values, from encoders pre-trained on it: 5-band arrays with the
channels and statistics of the pre-training run (its config.yaml, or the config inside a full checkpoint copied
anywhere) and a 3-band file among them skipped and counted, 16-bit grayscale with the channel count of its
pre-training and statistics from the training files (kept by a resumed run), a contradicting --in-chans and an
encoder of another channel count refused in one line, evaluation of the fine-tuned checkpoint."""
import shutil

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from sparkmim.downstream_imagenet.config import parse, resolve
from sparkmim.downstream_imagenet.main import build_model, main
from sparkmim.downstream_imagenet.weights import WeightLoadingError, load_pretrained
from sparkmim.utils import metrics
from sparkmim.utils.checkpoint import load_file
from tests.pretrain_fixtures import BAND_MEANS, pretrain_multiband, pretrain_one_epoch

TINY = ["--model", "test_resnet", "--input-size", "32", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0",
        "--workers", "0", "--device", "cpu", "--no-progress", "--mixup", "0", "--cutmix", "0", "--ema", "0",
        "--repeated-aug", "0", "--reprob", "0.25"]


def _labelled_bands(root, rng):
    for split, count in (("train", 8), ("val", 4)):
        for name, offset in (("field", 0.0), ("forest", 300.0)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                np.save(folder / f"{index}.npy", rng.normal(BAND_MEANS + offset, 50.0, (40, 40, 5)).astype(np.float32))
    np.save(root / "val" / "field" / "rgb.npy", rng.normal(1000.0, 50.0, (40, 40, 3)).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def bands_pretrained(tmp_path_factory):
    """A 5-band .npy pre-training run (statistics from the data) and labelled 5-band data."""
    root = tmp_path_factory.mktemp("finetune_bands")
    return pretrain_multiband(root), _labelled_bands(root / "labelled", np.random.default_rng(1))


def test_bands_fine_tune_with_the_pretraining_channels_and_statistics(bands_pretrained, tmp_path):
    run, data = bands_pretrained
    encoder = run / "test_resnet_encoder_timm.pth"
    out = tmp_path / "run"
    assert main([*TINY, "--data", str(data), "--weights", str(encoder), "--output-dir", str(out)]) == 0
    pretraining = yaml.safe_load((run / "config.yaml").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["in_chans"] == 5 and config["mean"] == pretraining["mean"] and config["std"] == pretraining["std"]
    log = (out / "log_rank0.txt").read_text()
    assert f"loaded 90 tensors from {encoder}" in log and "are RGB operations and are not applied" in log
    assert "rgb.npy: 3 channel(s), the run expects 5 (--in-chans)" in log  # skipped and counted, as corrupt files are
    assert [row["val_skipped"] for row in metrics.read_rows(out / "metrics.jsonl") if row.get("kind") == "epoch"] == [1]
    stem = torch.load(encoder, weights_only=True)["conv1.0.weight"]
    assert stem.shape[1] == 5
    trained = load_file(out / "checkpoint_last.pth")["model"]["conv1.0.weight"]
    assert trained.shape == stem.shape and torch.allclose(trained, stem, atol=0.05)  # loaded, then one short epoch
    assert main(["--eval-only", "--output-dir", str(out), "--workers", "0", "--device", "cpu"]) == 0


def test_a_contradicting_in_chans_is_one_line(bands_pretrained, tmp_path, capsys):
    run, data = bands_pretrained
    encoder = run / "test_resnet_encoder_timm.pth"
    assert main([*TINY, "--data", str(data), "--weights", str(encoder), "--in-chans", "3",
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"spark-finetune: error: --in-chans 3 contradicts the pre-training of {encoder} (5 channel(s), its "
        "config.yaml); drop --in-chans or give other weights")
    assert main([*TINY, "--data", str(data), "--in-chans", "5", "--output-dir", str(tmp_path / "run2")]) == 2
    assert "--in-chans 5 needs its normalisation: --mean and --std" in capsys.readouterr().err
    assert main([*TINY, "--data", str(data), "--weights", str(encoder), "--norm-stats", "auto", "--mean", *["1"] * 5,
                 "--std", *["1"] * 5, "--output-dir", str(tmp_path / "run3")]) == 2
    assert "--norm-stats auto computes the mean and std from the data: give it or --mean/--std, not both" in \
        capsys.readouterr().err


def test_a_full_checkpoint_carries_its_channels_wherever_it_is_copied(bands_pretrained, tmp_path, capsys):
    run, data = bands_pretrained
    copied = tmp_path / "copied"  # no config.yaml beside the files
    copied.mkdir()
    full, encoder = shutil.copy(run / "checkpoint_last.pth", copied), shutil.copy(run / "test_resnet_encoder_timm.pth",
                                                                                   copied)
    args = [*TINY, "--data", str(data), "--output-dir", str(tmp_path / "run")]
    config = resolve(parse([*args, "--weights", full]))
    pretraining = load_file(full)["config"]
    assert config.in_chans == 5 and config.mean == pretraining["mean"] and config.std == pretraining["std"]
    model = build_model(config, 2)
    load_pretrained(model, full)
    assert torch.equal(model.state_dict()["conv1.0.weight"], load_file(encoder)["conv1.0.weight"])
    assert main([*args, "--weights", full, "--in-chans", "4"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"spark-finetune: error: --in-chans 4 contradicts the pre-training of {full} (5 channel(s), its config); "
        "drop --in-chans or give other weights")
    # the encoder file alone says nothing of its channels: the arrays are not RGB images, and its stem does not fit
    assert main([*args, "--weights", encoder]) == 2
    assert "contains no image files (it holds .npy arrays, which are read with --in-chans N" in capsys.readouterr().err
    with pytest.raises(WeightLoadingError, match=r"pre-trained on 5 input channel\(s\), the model takes 3 "
                                                 r"\(--in-chans 3\); give --in-chans 5 with the data's --mean/--std"):
        load_pretrained(timm.create_model("test_resnet", num_classes=2), encoder)


def test_16_bit_grayscale_fine_tunes_with_statistics_from_the_training_files(tmp_path):
    rng = np.random.default_rng(3)
    pixels = []
    for split, count in (("train", 6), ("val", 2)):
        for name, level in (("healthy", 20000), ("lesion", 40000)):
            folder = tmp_path / "scans" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                scan = np.clip(rng.normal(level, 3000, (40, 40)), 0, 65535).astype(np.uint16)
                Image.fromarray(scan).save(folder / f"{index}.png")
                if split == "train":
                    pixels.append(scan.astype(np.float64))
    encoder = pretrain_one_epoch(tmp_path / "scans", tmp_path / "pretrained", 1) / "test_resnet_encoder_timm.pth"
    out = tmp_path / "run"  # --in-chans 1 from the pre-training run, the statistics from the training files
    assert main([*TINY, "--data", str(tmp_path / "scans"), "--weights", str(encoder), "--norm-stats", "auto",
                 "--output-dir", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["in_chans"] == 1
    assert config["mean"][0] == pytest.approx(np.mean(pixels), rel=1e-5)  # 16-bit values, from the 12 training files
    assert config["std"][0] == pytest.approx(np.std(pixels), rel=1e-4)
    assert "normalisation from the training data (--norm-stats auto)" in (out / "log_rank0.txt").read_text()
    stem = load_file(encoder)["conv1.0.weight"]
    trained = load_file(out / "checkpoint_last.pth")["model"]["conv1.0.weight"]
    assert stem.shape[1] == 1 and trained.shape == stem.shape and torch.allclose(trained, stem, atol=0.05)
    for path in (tmp_path / "scans" / "train").rglob("*.png"):  # new data: its statistics would differ
        Image.fromarray((np.asarray(Image.open(path)) // 4).astype(np.uint16)).save(path)
    assert main([*TINY, "--data", str(tmp_path / "scans"), "--weights", str(encoder), "--norm-stats", "auto",
                 "--output-dir", str(out), "--epochs", "2", "--resume", "auto"]) == 0
    resumed = load_file(out / "checkpoint_last.pth")
    assert resumed["epoch"] == 2 and (resumed["config"]["mean"], resumed["config"]["std"]) == (config["mean"],
                                                                                                config["std"])
    assert "normalisation of the resumed checkpoint (--norm-stats auto)" in (out / "log_rank0.txt").read_text()
    best = load_file(shutil.copy(out / "checkpoint_best.pth", tmp_path / "best.pth"))  # carries its statistics
    assert (best["config"]["mean"], best["config"]["std"]) == (config["mean"], config["std"])
    assert main(["--eval-only", "--checkpoint", str(tmp_path / "best.pth"), "--data", str(tmp_path / "scans"),
                 "--workers", "0", "--device", "cpu"]) == 0
