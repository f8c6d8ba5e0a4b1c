"""spark-viz on tiny real checkpoints (ours and the reference layout), and the sparse-conv demo."""
import numpy as np
import pytest
import torch
from PIL import Image

from sparkmim import build_spark
from tests.core_utils import reference_release
from tests.tools.test_tools_convert import our_full_checkpoint
from sparkmim.tools import spconv_demo
from sparkmim.tools.viz import load_images, load_spark, main
from sparkmim.utils.pictures import reconstruct


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    torch.manual_seed(0)
    spark = build_spark("test_resnet", input_size=64, decoder_width=32)
    our_full_checkpoint(spark, "test_resnet", root / "checkpoint_last.pth")
    torch.save(reference_release(spark, "test_resnet", 64), root / "ref_withdecoder_1kpretrained_spark_style.pth")
    torch.save(spark.encoder.model.state_dict(), root / "encoder.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 201, 3), dtype=np.uint8)).save(root / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 61), dtype=np.uint8)).save(root / "small_gray.png")
    return root


@pytest.mark.parametrize("checkpoint", ["checkpoint_last.pth", "ref_withdecoder_1kpretrained_spark_style.pth"])
def test_grid_png_has_one_row_per_image(workspace, tmp_path, checkpoint):
    out = tmp_path / "grid.png"
    assert main([str(workspace / checkpoint), str(workspace / "wide.jpg"), str(workspace / "small_gray.png"),
                 "--out", str(out), "--mask-ratio", "0.75", "--seed", "3"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (900, 490)  # 4 panels x 2 rows of 2.2 in at 100 dpi, plus margins
    assert main([str(workspace / checkpoint), str(workspace / "wide.jpg"), "--out", str(tmp_path / "one.png")]) == 0
    with Image.open(tmp_path / "one.png") as image:
        assert image.size == (900, 270)


def test_panels_are_consistent(workspace):
    """Visible patches of the last panel are the input; masked ones are the reconstruction panel."""
    spark = load_spark(workspace / "checkpoint_last.pth", None, allow_unsafe=False)
    images = load_images([workspace / "wide.jpg", workspace / "small_gray.png"], (64, 96))
    assert images.shape == (2, 3, 64, 96)
    original, masked, predicted, pasted = reconstruct(spark, images, seed=1, mask_ratio=0.5)
    visible = masked.ne(0).any(dim=1, keepdim=True).expand_as(original)
    assert 0.3 < visible.float().mean() < 0.7
    torch.testing.assert_close(pasted[visible], original[visible])
    torch.testing.assert_close(pasted[~visible], predicted[~visible])
    again = reconstruct(spark, images, seed=1, mask_ratio=0.5)
    torch.testing.assert_close(again[3], pasted)  # the seed fixes the mask


def test_errors_are_one_line(workspace, tmp_path, capsys):
    assert main([str(workspace / "encoder.pth"), str(workspace / "wide.jpg"), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds no decoder" in capsys.readouterr().err
    assert main([str(workspace / "checkpoint_last.pth"), "--out", str(tmp_path / "x.png")]) == 2
    assert "at least one image" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert main([str(workspace / "checkpoint_last.pth"), str(tmp_path / "bad.jpg"), "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main([str(workspace / "checkpoint_last.pth"), str(workspace / "wide.jpg"), "--out", str(tmp_path / "x.png"),
                 "--input-size", "70"]) == 2
    assert "multiple of the encoder's total stride 32; use e.g. --input-size 64 64" in capsys.readouterr().err
    assert main([str(workspace / "checkpoint_last.pth"), str(workspace / "wide.jpg"), "--out", str(tmp_path / "x.png"),
                 "--mask-ratio", "1.0"]) == 2
    assert "mask ratio must be strictly between 0 and 1" in capsys.readouterr().err
    assert main([str(workspace / "checkpoint_last.pth"), str(workspace / "wide.jpg"), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; give a file name" in capsys.readouterr().err
    # a picture that replaced its input photo, one with nothing masked, an --out under a file (a traceback)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((workspace / "wide.jpg").read_bytes())
    assert main([str(workspace / "checkpoint_last.pth"), str(photo), "--out", str(photo)]) == 2
    assert f"--out {photo} is one of the inputs" in capsys.readouterr().err
    assert photo.read_bytes() == (workspace / "wide.jpg").read_bytes()
    assert main([str(workspace / "checkpoint_last.pth"), str(photo), "--out", str(tmp_path / "m.png"),
                 "--input-size", "64", "--mask-ratio", "0.05"]) == 2
    assert "--mask-ratio 0.05: mask ratio 0.05 leaves 4 of the 2x2 = 4 patches visible" in capsys.readouterr().err
    assert main([str(workspace / "checkpoint_last.pth"), str(photo), "--out", str(tmp_path / "m.png"),
                 "--input-size", "64", "64", "64"]) == 2
    assert "--input-size takes one or two numbers (PX or H W), got 3" in capsys.readouterr().err
    assert main([str(workspace / "checkpoint_last.pth"), str(photo), "--out", str(photo / "x.png")]) == 2
    assert f"--out {photo / 'x.png'}: {photo} is a file, not a folder" in capsys.readouterr().err
    # another model than the checkpoint records: the conflict, not only the unmatched keys
    assert main([str(workspace / "checkpoint_last.pth"), str(photo), "--out", str(tmp_path / "m.png"),
                 "--model", "resnet18"]) == 2
    assert ("spark-viz: error: --model resnet18: the file itself records 'test_resnet' in the checkpoint's config; "
            "leave --model out: ") in capsys.readouterr().err


def test_the_path_printed_is_the_file_written(workspace, tmp_path, capsys):
    # matplotlib appends .png to a name without a picture suffix; the command printed the name as given
    for out, written in ((tmp_path / "grid", tmp_path / "grid.png"), (tmp_path / "grid.v2", tmp_path / "grid.v2.png"),
                         (tmp_path / "grid.pdf", tmp_path / "grid.pdf")):
        assert main([str(workspace / "checkpoint_last.pth"), str(workspace / "wide.jpg"), "--out", str(out)]) == 0
        assert capsys.readouterr().out == f"spark-viz: wrote {written}\n" and written.is_file()


def test_spconv_demo(workspace, tmp_path):
    dense, sparse = spconv_demo.energy_curves(spconv_demo.load_image(workspace / "wide.jpg", 0),
                                              spconv_demo.pixel_mask(0), 5)
    assert all(value == 0.0 for value in sparse)  # the mask pattern survives every stage
    assert dense[0] == 0.0 and dense[-1] > 0.3 and list(dense) == sorted(dense)  # and vanishes in the dense net
    out = tmp_path / "demo.png"
    assert main(["--spconv-demo", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1380, 580)
