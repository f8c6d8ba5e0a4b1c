"""Pre-train a model that is neither ResNet nor ConvNeXt with ``spark-pretrain``, then fine-tune it with
``spark-finetune`` given nothing but the model, data, weights and a run folder (plus tiny sizes): the
default recipe applies, layer decay follows timm's stage grouping and the encoder weights load."""
import re

import pytest
import yaml

from tests.finetune_fixtures import make_workspace
from tests.pretrain_fixtures import make_images, run_cli as run_pretrain
from tests.downstream_imagenet.test_finetune_pipeline import epochs_of, run_cli as run_finetune

MODEL = "mobilenetv3_small_050"


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_any")
    out = root / "run"
    result = run_pretrain([str(make_images(root / "images", 16)), "--model", MODEL, "--input-size", "64",
                           "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--decoder-width", "32",
                           "--workers", "0", "--num-vis", "0", "--no-progress", "--output-dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return out / f"{MODEL}_encoder_timm.pth"


def test_pretrained_efficient_cnn_finetunes_with_the_default_recipe(encoder_file, tmp_path):
    workspace, out = make_workspace(tmp_path), tmp_path / "finetune"
    run_finetune("--model", MODEL, "--data", str(workspace / "data"), "--weights", str(encoder_file),
                          "--output-dir", str(out),
                          # tiny sizes only: every hyper-parameter comes from the default recipe
                          "--input-size", "64", "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0",
                          "--workers", "0", "--device", "cpu", "--no-progress")
    log = (out / "log_rank0.txt").read_text()
    assert f"no built-in recipe for {MODEL}: using the default recipe" in log
    loaded = re.search(r"loaded (\d+) tensors from .*encoder_timm\.pth; classifier left to train", log)
    assert loaded and int(loaded.group(1)) > 100, log[-3000:]
    # timm's stages: conv_stem at 0.7 ** 7 (6 block stages, conv_head, classifier)
    stem_row = next(line for line in log.splitlines() if "conv_stem.weight" in line)
    assert f"{0.7 ** 7:.6f}" in stem_row, stem_row
    rows = epochs_of(out)
    assert len(rows) == 1 and rows[0]["train_loss"] == rows[0]["train_loss"]  # finite, not NaN
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["model_recipe"], config["layer_decay"], config["opt"]) == ("default", 0.7, "lamb")
    assert config["channels_last"] is False  # the default resolved for the device (off on CPU) is recorded
