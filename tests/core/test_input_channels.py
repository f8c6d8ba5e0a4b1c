"""SparK on encoders with any number of input channels (grayscale, multispectral): the decoder predicts
every channel, the loss covers all of them, the encoder checkpoint loads into timm with that in_chans,
and the pictures draw gray or a chosen band triplet."""
import pytest
import timm
import torch

from sparkmim import build_spark
from sparkmim.model.patches import patchify
from sparkmim.utils.pictures import denormalise, display_bands, drawn_panels, plot_reconstructions, reconstruct
from tests.core_utils import random_mask

SIZE = 64


@pytest.mark.parametrize("name, channels", [("resnet18", 1), ("resnet18", 5), ("convnext_atto", 13)])
def test_decoder_predicts_every_input_channel_and_trains(name, channels):
    torch.manual_seed(0)
    spark = build_spark(name, input_size=SIZE, decoder_width=32, encoder_kwargs={"in_chans": channels})
    assert spark.in_chans == channels and spark.decoder.out_channels == channels
    images = torch.randn(2, channels, SIZE, SIZE)
    output = spark(images)
    assert output.prediction.shape == images.shape and output.reconstruction.shape == images.shape
    output.loss.backward()
    assert torch.isfinite(output.loss) and spark.encoder.model.state_dict()
    target = timm.create_model(name, in_chans=channels, num_classes=0)
    result = target.load_state_dict(spark.encoder.model.state_dict(), strict=False)
    assert result.unexpected_keys == [] and not [k for k in result.missing_keys if "head" not in k]


def test_loss_covers_every_channel():
    spark = build_spark("resnet18", input_size=SIZE, decoder_width=32, encoder_kwargs={"in_chans": 5})
    images = torch.randn(2, 5, SIZE, SIZE)
    active = random_mask(2, 2, 2, visible=2, seed=0)
    target, _, _ = spark.patch_targets(images)
    exact = spark.loss(target.clone(), target, active)
    assert exact.item() == 0.0
    off_in_last_band = torch.zeros(2, 5, SIZE, SIZE)
    off_in_last_band[:, 4] = 1.0  # an error of 1 in one band of five: a fifth of each patch's values
    loss = spark.loss(target + patchify(off_in_last_band, 32), target, active)
    assert loss.item() == pytest.approx(1 / 5)


def test_pictures_draw_gray_and_band_triplets(tmp_path):
    for channels, bands in ((1, None), (5, None), (5, (3, 1, 0)), (2, (1,))):
        spark = build_spark("resnet18", input_size=SIZE, decoder_width=32, encoder_kwargs={"in_chans": channels})
        panels = reconstruct(spark, torch.randn(2, channels, SIZE, SIZE))
        assert all(panel.shape == (2, channels, SIZE, SIZE) for panel in panels)
        out = plot_reconstructions(panels, tmp_path / f"rec_{channels}_{bands}.png", bands=bands)
        assert out.stat().st_size > 1000
    assert display_bands(1) == (0,) and display_bands(13) == (0, 1, 2)
    with pytest.raises(ValueError, match="draw 1 or 3 of the 5 channels"):
        display_bands(5, (0, 7, 1))
    with pytest.raises(ValueError, match="5-channel images need 5 mean and std values"):
        denormalise(torch.zeros(1, 5, 4, 4))
    gray = denormalise(torch.zeros(1, 1, 2, 2), mean=[0.5], std=[0.25])
    assert torch.equal(gray, torch.full((1, 1, 2, 2), 0.5))


def test_stretched_pictures_use_the_percentiles_of_the_drawn_bands_only():
    images = torch.rand(2, 5, 8, 8)
    images[:, 4] *= 1000.0  # a bright band that is not drawn
    drawn = drawn_panels([images, images], bands=(0, 1, 2))
    assert drawn[0].shape == (2, 3, 8, 8)
    assert drawn[0].amax() == 1.0 and drawn[0].amin() == 0.0  # the full range, not squashed towards 0
    assert drawn[0].mean() > 0.3
    bright = drawn_panels([images], bands=(4,))[0]
    assert bright.shape == (2, 1, 8, 8) and bright.mean() > 0.3
    rgb = drawn_panels([torch.zeros(1, 3, 2, 2)])[0]  # RGB is de-normalised with ImageNet's statistics
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor([0.485, 0.456, 0.406]))
