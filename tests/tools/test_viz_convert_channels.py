"""spark-viz and spark-convert with an encoder pre-trained on 5-band arrays: pictures drawn from the data's own
values with a chosen band triplet, timm and whole-model conversions that keep in_chans, detection transfers
refused in one line."""
import json

import numpy as np
import pytest

from sparkmim.tools.convert import main as convert_main
from sparkmim.tools.viz import main as viz_main
from tests.pretrain_fixtures import pretrain_multiband


@pytest.fixture(scope="module")
def multiband_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiband")
    pretrain_multiband(root)
    return root


def test_viz_draws_a_band_triplet_of_a_multiband_checkpoint(multiband_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert viz_main([str(multiband_run / "run" / "checkpoint_last.pth"), str(multiband_run / "bands" / "0.npy"),
                     str(multiband_run / "bands" / "1.npy"), "--out", str(out), "--bands", "3", "1", "0"]) == 0
    assert out.stat().st_size > 1000
    assert viz_main([str(multiband_run / "run" / "checkpoint_last.pth"), str(multiband_run / "bands" / "0.npy"),
                     "--out", str(out), "--bands", "7", "1", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--bands: draw 1 or 3 of the 5 channels (indices 0-4), got [7, 1, 0]")


def test_viz_names_the_checkpoints_channels_for_an_image_with_other_ones(multiband_run, tmp_path, capsys):
    rgb = tmp_path / "photo.npy"
    np.save(rgb, np.zeros((72, 72, 3), dtype=np.float32))
    assert viz_main([str(multiband_run / "run" / "checkpoint_last.pth"), str(rgb), "--out", str(tmp_path / "g.png")]) == 2
    # spark-viz has no --in-chans to point at: the checkpoint decides the channels
    assert capsys.readouterr().err.strip().endswith(
        f"cannot draw {rgb}: it has 3 channel(s), the checkpoint was pre-trained on 5")


def test_convert_keeps_the_channels_and_refuses_the_rgb_detection_transfers(multiband_run, tmp_path, capsys):
    run = multiband_run / "run"
    assert convert_main([str(run / "checkpoint_last.pth"), str(tmp_path / "enc.pth"), "--to", "timm", "--check"]) == 0
    assert "check      ok: loaded into timm test_resnet" in capsys.readouterr().out
    # the encoder-only file has no config: its stem's 5 input channels are found from the weights
    assert convert_main([str(run / "test_resnet_encoder_timm.pth"), str(tmp_path / "enc2.pth"), "--to", "timm",
                         "--model", "test_resnet", "--check"]) == 0
    capsys.readouterr()
    assert convert_main(["--inspect", str(run / "test_resnet_encoder_timm.pth"), "--model", "test_resnet",
                         "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["in_chans"] == 5 and facts["fits_model"] and facts["convertible_to"] == ["timm", "sparkmim"]
    # without --model too: the models are matched with the stem's channel count (they were built with 3)
    assert convert_main(["--inspect", str(run / "test_resnet_encoder_timm.pth"), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert (facts["model"], facts["in_chans"], facts["fits_model"]) == ("test_resnet", 5, True)
    assert convert_main([str(run / "test_resnet_encoder_timm.pth"), str(tmp_path / "enc3.pth"), "--to", "timm",
                         "--check"]) == 0
    assert "check      ok: loaded into timm test_resnet" in capsys.readouterr().out
    for target, suffix in (("d2", "pkl"), ("mmdet", "pth")):
        assert convert_main([str(run / "checkpoint_last.pth"), str(tmp_path / f"out.{suffix}"), "--to", target]) == 2
        assert capsys.readouterr().err.strip().endswith(
            f"--to {target}: the detection transfer takes RGB (3-channel) encoders, this one takes 5 channel(s); "
            "fine-tune it with spark-finetune --in-chans 5 or convert it --to timm")
    # the whole model, rebuilt with in_chans from the written file, then drawn from it
    assert convert_main([str(run / "checkpoint_last.pth"), str(tmp_path / "whole.pth"), "--to", "sparkmim",
                         "--check"]) == 0
    assert "loaded into a sparkmim SparK(test_resnet)" in capsys.readouterr().out
    assert viz_main([str(tmp_path / "whole.pth"), str(multiband_run / "bands" / "2.npy"),
                     "--out", str(tmp_path / "whole.png")]) == 0
