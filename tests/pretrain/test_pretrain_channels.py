"""spark-pretrain on data read with its own values: 16-bit grayscale PNGs (one channel, statistics from the
data) and 5-band arrays (given statistics; a 3-band file among them skipped and counted); the encoder loads
into timm with that in_chans and the pictures are written. Readers keep 16-bit values and read multi-band
TIFFs in both channel layouts; bad options get one line."""
import re

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from sparkmim.utils.images import UnreadableImageError
from sparkmim.utils.values import ChannelMismatchError, estimate_norm_stats, load_values, read_values
from tests.pretrain_fixtures import read_rows, run_cli

TINY = ["--model", "test_resnet", "--input-size", "64", "--batch-size", "4", "--epochs", "2", "--warmup-epochs", "0",
        "--decoder-width", "32", "--workers", "0", "--num-vis", "2", "--no-progress"]


def gray16(folder, count):
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:72, 0:72]
    for i in range(count):
        values = 30000 + 20000 * np.sin(xx / (5 + i) + i) * np.cos(yy / 7)
        Image.fromarray(values.astype(np.uint16)).save(folder / f"{i:02d}.png")
    return folder


def bands(folder, count, channels=5):
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:72, 0:72]
    for i in range(count):
        cube = np.stack([np.sin(xx / (4 + b) + i) * (b + 1) * 100 + 1000 * b + yy for b in range(channels)], -1)
        np.save(folder / f"{i:02d}.npy", cube.astype(np.float32))
    return folder


def encoder_loads(run, channels):
    state = torch.load(run / "test_resnet_encoder_timm.pth", weights_only=True)
    result = timm.create_model("test_resnet", in_chans=channels).load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("fc.") for k in result.missing_keys), result


def test_16_bit_grayscale_with_statistics_from_the_data(tmp_path):
    data = gray16(tmp_path / "gray", 12)
    run = tmp_path / "run"
    done = run_cli([str(data), *TINY, "--in-chans", "1", "--norm-stats", "auto", "--output-dir", str(run)])
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in sorted(data.glob("*.png"))])
    assert config["in_chans"] == 1 and config["mean"][0] == pytest.approx(pixels.mean(), rel=1e-5)
    assert config["std"][0] == pytest.approx(pixels.std(), rel=1e-4)  # 16-bit values, not rescaled to 8 bits
    checkpoint = torch.load(run / "checkpoint_last.pth", weights_only=False)
    assert checkpoint["config"]["mean"] == config["mean"]
    encoder_loads(run, 1)
    assert (run / "reconstruction.png").stat().st_size > 1000


def test_a_resumed_run_keeps_the_statistics_it_was_trained_with(tmp_path):
    data = gray16(tmp_path / "gray", 8)
    run = tmp_path / "run"
    args = [str(data), *TINY, "--in-chans", "1", "--norm-stats", "auto", "--output-dir", str(run)]
    done = run_cli([*args, "--epochs", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    first = torch.load(run / "checkpoint_last.pth", weights_only=False)["config"]
    for path in data.glob("*.png"):  # the data changes before the resume: its statistics would differ
        Image.fromarray((np.asarray(Image.open(path)) // 4).astype(np.uint16)).save(path)
    done = run_cli([*args, "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = torch.load(run / "checkpoint_last.pth", weights_only=False)
    assert resumed["step"] == 4 and (resumed["config"]["mean"], resumed["config"]["std"]) == (first["mean"], first["std"])
    log = (run / "log_rank0.txt").read_text()
    assert "normalisation of the resumed checkpoint (--norm-stats auto)" in log
    assert "options changed" not in log


def test_multispectral_arrays_skip_a_file_with_other_bands(tmp_path):
    data = bands(tmp_path / "bands", 12)
    np.save(data / "rgb.npy", np.zeros((72, 72, 3), np.float32))
    nodata = np.ones((72, 72, 5), np.float32)
    nodata[3, 4, 1] = np.nan  # one no-data pixel made every later loss NaN
    np.save(data / "nodata.npy", nodata)
    run = tmp_path / "run"
    done = run_cli([str(data), *TINY, "--in-chans", "5", "--mean", "0", "1000", "2000", "3000", "4000",
                    "--std", "100", "200", "300", "400", "500", "--output-dir", str(run)])
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = read_rows(run / "metrics.jsonl", "epoch")
    assert [row["skipped_images"] for row in epochs] == [2, 2]
    log = (run / "log_rank0.txt").read_text()
    assert re.search(r"skipping unreadable image \S*rgb\.npy: 3 channel\(s\), the run expects 5 \(--in-chans\)", log)
    assert re.search(r"skipping unreadable image \S*nodata\.npy: holds NaN or infinite values", log)
    assert all(np.isfinite(row["loss_mean"]) for row in epochs)
    encoder_loads(run, 5)
    assert (run / "reconstruction.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--in-chans", "5"], "--in-chans 5 needs its normalisation: --mean and --std"),
    (["--in-chans", "2", "--mean", "1", "--std", "1"], "--mean and --std need 2 values each"),
    (["--in-chans", "1", "--norm-stats", "auto", "--decode-on-device"], "--decode-on-device decodes 8-bit RGB"),
    (["--mean", "1", "2", "3"], "give --mean and --std together"),
    (["--in-chans", "1", "--mean", "nan", "--std", "1"], "--mean and --std must be finite numbers, got [nan] and [1.0]"),
    (["--in-chans", "0", "--norm-stats", "auto"], "--in-chans must be positive, got 0"),
    # the given values were used without a word, and config.yaml said norm_stats: auto beside them
    (["--in-chans", "1", "--norm-stats", "auto", "--mean", "1", "--std", "1"],
     "--norm-stats auto computes the mean and std from the data: give it or --mean/--std, not both"),
])
def test_channel_options_are_checked_in_one_line(tmp_path, extra, message):
    done = run_cli([str(tmp_path), *TINY, *extra, "--output-dir", str(tmp_path / "run")])
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_readers_keep_values_and_band_layouts(tmp_path):
    import tifffile

    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    assert read_values(tmp_path / "deep.png").max() == 40000
    Image.fromarray(np.full((8, 8), 50000, np.uint16)).save(tmp_path / "deep.tif")
    assert read_values(tmp_path / "deep.tif").shape == (8, 8, 1) and read_values(tmp_path / "deep.tif").max() == 50000
    cube = np.arange(4 * 8 * 10, dtype=np.uint16).reshape(8, 10, 4)
    tifffile.imwrite(tmp_path / "contig.tif", cube)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(cube, -1, 0))
    for name in ("contig.tif", "planar.tif"):
        assert torch.equal(load_values(tmp_path / name, 4), torch.from_numpy(cube.astype(np.float32)).permute(2, 0, 1))
    with pytest.raises(ChannelMismatchError, match="4 channel\\(s\\), the run expects 13"):
        load_values(tmp_path / "contig.tif", 13)
    (tmp_path / "damaged.npy").write_bytes(b"not an array")  # numpy's advice: load it with allow_pickle
    with pytest.raises(UnreadableImageError, match=r"damaged\.npy: not a numeric \.npy array \(damaged, or an object"):
        read_values(tmp_path / "damaged.npy")
    np.save(tmp_path / "nodata.npy", np.full((8, 10, 4), np.inf, np.float32))
    mean, std = estimate_norm_stats([tmp_path / "contig.tif", tmp_path / "deep.png", tmp_path / "nodata.npy"], 4)
    assert mean == pytest.approx(cube.reshape(-1, 4).mean(0).tolist()) and len(std) == 4
    with pytest.raises(UnreadableImageError, match=r"none of the sampled files has 4 readable channel\(s\) "
                                                   r"\(the first: \S*nodata\.npy: holds NaN or infinite values"):
        estimate_norm_stats([tmp_path / "nodata.npy", tmp_path / "deep.png"], 4)


def test_a_checkpoint_from_before_the_channel_options_resumes_without_a_changed_warning():
    from sparkmim.pretrain.checkpointing import changed_options

    older = {"model": "resnet50", "mask_ratio": 0.6}  # written before in_chans / mean / std existed
    current = {"model": "resnet50", "mask_ratio": 0.6, "in_chans": 3, "mean": None, "norm_stats": "given"}
    assert changed_options(older, current, list(current)) is None
    assert changed_options({**older, "in_chans": 1}, current, list(current)) == ("--in-chans 1", "--in-chans 3")
