"""spark-finetune on data read with its own values, from encoders pre-trained on it: 5-band arrays with the
channels and statistics of the pre-training run, 16-bit grayscale with statistics from the training files,
a contradicting --in-chans refused in one line, evaluation of the fine-tuned checkpoint."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sparkmim.downstream_imagenet.main import main
from sparkmim.utils.checkpoint import load_file
from tests.pretrain_fixtures import BAND_MEANS, pretrain_multiband

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
    out = tmp_path / "run"
    assert main([*TINY, "--data", str(tmp_path / "scans"), "--in-chans", "1", "--norm-stats", "auto",
                 "--output-dir", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["mean"][0] == pytest.approx(np.mean(pixels), rel=1e-5)  # 16-bit values, from the 12 training files
    assert config["std"][0] == pytest.approx(np.std(pixels), rel=1e-4)
    assert load_file(out / "checkpoint_last.pth")["model"]["conv1.0.weight"].shape[1] == 1
