"""The custom-CNN example of docs/custom_cnn.md, run as written: it pre-trains under the sparse invariants,
its encoder weights fine-tune with spark-finetune (default recipe, layer decay from its group_matcher), and
models lacking the protocol get the documented one-line errors."""
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sparkmim import build_spark
from sparkmim.benchmarks.coverage.trial import check_invariants, training_step
from sparkmim.sparse.encoder import EncoderSpecError
from tests.finetune_fixtures import make_workspace
from tests.downstream_imagenet.test_finetune_pipeline import epochs_of, run_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom_cnn.md"
SIZE = 64


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    """``my_cnn.py`` with the doc's code block, importable as ``my_cnn``."""
    text = DOC.read_text()
    section = text[text.index("## A complete example"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 25 <= len(code.strip().splitlines()) <= 45  # the "30-line example" the doc promises
    folder = tmp_path_factory.mktemp("custom_cnn")
    (folder / "my_cnn.py").write_text(code)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("my_cnn", None)


def test_doc_example_pretrains_under_the_invariants(module_dir):
    from my_cnn import tiny_cnn

    torch.manual_seed(0)
    spark = build_spark("my_cnn:tiny_cnn", input_size=SIZE, decoder_width=32)
    assert spark.encoder.feature_channels == [16, 32, 64, 128] and spark.downsample_ratio == 32
    training_step(spark, SIZE)
    assert check_invariants(spark, tiny_cnn(num_classes=0, global_pool=""), SIZE) <= 1e-4


def test_doc_example_finetunes_from_its_encoder_weights(module_dir, tmp_path, monkeypatch):
    torch.manual_seed(0)
    spark = build_spark("my_cnn:tiny_cnn", input_size=SIZE, decoder_width=32)
    torch.save(spark.encoder.model.state_dict(), tmp_path / "tiny_cnn_encoder_timm.pth")
    workspace, out = make_workspace(tmp_path / "ws"), tmp_path / "ft"
    monkeypatch.setenv("PYTHONPATH", f"{module_dir}:{Path(__file__).resolve().parents[2]}")
    run_cli("--model", "my_cnn:tiny_cnn", "--data", str(workspace / "data"), "--weights",
            str(tmp_path / "tiny_cnn_encoder_timm.pth"), "--output-dir", str(out), "--input-size", "64",
            "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--device", "cpu",
            "--no-progress")
    log = (out / "log_rank0.txt").read_text()
    assert "loaded 30 tensors" in log  # 5 x (conv weight + 5 BatchNorm tensors) and "classifier left to train: head.bias, head.weight" in log, log[-2000:]
    stem = next(line for line in log.splitlines() if "stem.0.weight" in line)
    assert f"{0.7 ** 5:.6f}" in stem  # group_matcher: stem 0, stages 1-4, head 5
    assert len(epochs_of(out)) == 1


class NoIntermediates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.feature_info = [dict(num_chs=8, reduction=2)]


class NoFeatureInfo(nn.Module):
    def forward_intermediates(self, x, indices=4, intermediates_only=True):
        return [x]


class HalvingOnce(NoIntermediates):
    def __init__(self) -> None:
        super().__init__()
        self.feature_info = [dict(num_chs=8, reduction=r) for r in (2, 4, 16, 32)]

    def forward_intermediates(self, x, indices=4, intermediates_only=True):
        return [x]


@pytest.mark.parametrize("model, message", [
    (NoIntermediates(), r"NoIntermediates has no forward_intermediates\(\); use a timm >= 1.0.3 CNN"),
    (NoFeatureInfo(), r"NoFeatureInfo has no timm feature_info; SparK needs the channels and strides"),
    (HalvingOnce(), r"SparK needs 4 feature maps whose strides double .*; HalvingOnce has strides \[2, 4, 16, 32\]"),
])
def test_models_without_the_protocol_get_the_documented_errors(model, message):
    with pytest.raises(EncoderSpecError, match=message):
        build_spark(model, input_size=SIZE)
