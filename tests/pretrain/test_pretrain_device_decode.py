"""spark-pretrain --decode-on-device, on a CPU device: same crops as the PIL path, fallbacks for what
the JPEG decoder should not get, corrupt files skipped and reported, and an exact resume."""
import logging
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from sparkmim.pretrain.data import IMAGENET_MEAN, IMAGENET_STD, PretrainImages, SkipReporter, list_images, sample_seed
from sparkmim.pretrain.device_decode import DeviceDecoder, EncodedImages, collate_encoded
from tests.pretrain_fixtures import TINY_ARGS, jpeg_folder, read_rows, run_cli, start_cli, step_losses
from sparkmim.utils.checkpoint import load_file

# Why pixels differ at all: on CPU, JPEG decoding is bit-identical (libjpeg-turbo in both paths), and
# both resize uint8 with an antialiased a = -0.5 bicubic kernel, but Pillow's and torch's fixed-point
# arithmetic round differently. Measured on these images (0-255 scale): mean |difference| 0.014-0.055,
# max 2; on the sharp-edged demo pictures at 224 px, mean 0.008, 0.8 % of values off by one, max 9.
MEAN_TOLERANCE_255 = 0.15
MAX_TOLERANCE_255 = 3.0
SIZE = (48, 64)


def _to_255(images: torch.Tensor) -> torch.Tensor:
    std = torch.tensor(IMAGENET_STD).view(-1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 3, 1, 1)
    return (images * std + mean) * 255.0


def _assert_close_to_pil(device_images: torch.Tensor, pil_images: torch.Tensor) -> None:
    difference = (_to_255(device_images) - _to_255(pil_images)).abs()
    assert difference.mean().item() < MEAN_TOLERANCE_255, difference.mean().item()
    assert difference.max().item() < MAX_TOLERANCE_255, difference.max().item()


def test_same_crop_and_flip_as_the_pil_path_and_close_pixels(tmp_path):
    paths = jpeg_folder(tmp_path / "data", 8)
    cpu = PretrainImages(paths, SIZE, seed=5)
    encoded = EncodedImages(paths, SIZE, seed=5)
    decoder = DeviceDecoder(encoded, "cpu")
    keys = [(epoch, index) for epoch in range(3) for index in range(len(paths))]
    flips = set()
    for epoch, index in keys:
        sample = encoded[(epoch, index)]
        assert sample.encoded and sample.data.dim() == 1 and not sample.failed
        # the box and flip are exactly those the CPU transform draws: redoing the CPU path's pixel
        # work with them in PIL reproduces its output bit for bit
        top, left, height, width = sample.box
        with Image.open(paths[index]) as image:
            view = TF.resized_crop(image.convert("RGB"), top, left, height, width, list(SIZE),
                                   TF.InterpolationMode.BICUBIC)
        view = TF.hflip(view) if sample.flip else view
        expected = TF.normalize(TF.to_tensor(view), IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(cpu[(epoch, index)][0], expected), (epoch, index)
        flips.add(sample.flip)
    assert flips == {True, False}

    torch.manual_seed(11)
    before = torch.get_rng_state()
    images, failed = decoder(collate_encoded([encoded[key] for key in keys]))
    assert torch.equal(torch.get_rng_state(), before)  # masks' RNG stream untouched
    assert images.shape == (len(keys), 3, *SIZE) and images.dtype == torch.float32 and not failed
    _assert_close_to_pil(images, torch.stack([cpu[key][0] for key in keys]))
    # the seed matters as in the CPU path
    other = EncodedImages(paths, SIZE, seed=6)
    assert [other[key].box for key in keys] != [encoded[key].box for key in keys]
    assert sample_seed(5, 0, 1) != sample_seed(6, 0, 1)


def test_png_and_cmyk_jpeg_fall_back_to_worker_decoding(tmp_path):
    folder = tmp_path / "data"
    jpeg_folder(folder, 4)
    rng = np.random.default_rng(1)
    smooth = np.clip(np.cumsum(rng.normal(0, 4, (70, 90, 4)), axis=1) + 120, 0, 255).astype(np.uint8)
    Image.fromarray(smooth[..., :3]).save(folder / "z_rgb.png")
    Image.frombytes("CMYK", (90, 70), smooth.tobytes()).save(folder / "z_cmyk.jpg", quality=95)
    (folder / "z_disguised_png.jpg").write_bytes((folder / "z_rgb.png").read_bytes())
    paths = list_images(str(folder))
    cpu = PretrainImages(paths, SIZE, seed=0)
    encoded = EncodedImages(paths, SIZE, seed=0)
    keys = [(1, index) for index in range(len(paths))]
    samples = [encoded[key] for key in keys]
    kinds = {paths[s.key[2]].name: s.encoded for s in samples}
    assert kinds["z_rgb.png"] is False and kinds["z_cmyk.jpg"] is False and kinds["z_disguised_png.jpg"] is False
    assert sum(kinds.values()) == 4  # the RGB and greyscale JPEGs go to the device decoder
    assert all(s.data.shape[0] == 3 and s.data.dtype == torch.uint8 for s in samples if not s.encoded)
    images, failed = DeviceDecoder(encoded, "cpu")(collate_encoded(samples))
    assert not failed
    _assert_close_to_pil(images, torch.stack([cpu[key][0] for key in keys]))


def test_corrupt_jpegs_are_skipped_and_reported(tmp_path, caplog):
    paths = jpeg_folder(tmp_path / "data", 6)
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[: len(raw) // 2])  # truncated: no end-of-image marker, PIL decides in the worker
    raw = paths[3].read_bytes()
    # valid header and end marker, broken data: passes the worker's checks, fails in the batched decode
    paths[3].write_bytes(raw[: len(raw) // 2] + b"\xff\xc4\x00\x03\x00" + raw[len(raw) // 2:])
    cpu = PretrainImages(paths, SIZE, seed=2)
    encoded = EncodedImages(paths, SIZE, seed=2)
    decoder = DeviceDecoder(encoded, "cpu")
    reporter = SkipReporter(paths)
    keys = [(0, index) for index in range(len(paths))]
    samples = [encoded[key] for key in keys]
    assert samples[1].failed == [1] and samples[1].key == (0, 1, 2)  # replaced by the next file
    assert samples[3].encoded and not samples[3].failed
    with caplog.at_level(logging.WARNING):
        images, failed = decoder(collate_encoded(samples))
        reporter.report(failed)
    assert sorted(failed) == [1, 3]
    assert len(reporter.pop_epoch_failed()) == 2
    assert len([r for r in caplog.records if "skipping unreadable image" in r.getMessage()]) == 2
    assert images.shape == (6, 3, *SIZE) and torch.isfinite(images).all()
    # replacements are what the CPU path gives for those indices: the next readable file, same draw
    expected = torch.stack([cpu[key][0] for key in keys])
    assert [cpu[key][1] for key in keys] == [[], [1], [], [3], [], []]
    _assert_close_to_pil(images, expected)


def _wait_for_step(metrics: Path, step: int, process, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not any(row["step"] >= step for row in read_rows(metrics, "step")):
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before step {step}"
        assert time.time() < deadline, f"timed out waiting for step {step}"
        time.sleep(0.05)


@pytest.mark.slow
def test_cli_run_with_device_decoding_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    jpeg_folder(data, 14)
    Image.new("CMYK", (72, 72), (10, 80, 160, 20)).save(data / "cmyk.jpg")
    broken = sorted(data.rglob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # 16 files: 2 steps per epoch at batch 8
    args = [str(data), *TINY_ARGS, "--epochs", "4", "--seed", "4", "--no-tensorboard", "--num-vis", "0"]

    cpu = run_cli(args + ["--output-dir", str(tmp_path / "cpu")])
    assert cpu.returncode == 0, cpu.stderr
    reference = run_cli(args + ["--decode-on-device", "--output-dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr
    expected = step_losses(tmp_path / "reference" / "metrics.jsonl")
    assert sorted(expected) == list(range(8))
    # same images up to resampling rounding, same masks and weights: the losses nearly agree
    cpu_losses = step_losses(tmp_path / "cpu" / "metrics.jsonl")
    assert expected[0] == pytest.approx(cpu_losses[0], rel=2e-2)
    log = (tmp_path / "reference" / "log_rank0.txt").read_text()
    assert "JPEGs decoded on cpu" in log and log.count("skipping unreadable image") == 1
    assert load_file(tmp_path / "reference" / "checkpoint_last.pth")["config"]["decode_on_device"] is True

    run_dir = tmp_path / "interrupted"
    process = start_cli(args + ["--decode-on-device", "--workers", "1", "--output-dir", str(run_dir)],
                        tmp_path / "interrupted.log")
    _wait_for_step(run_dir / "metrics.jsonl", 1, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    saved_step = load_file(run_dir / "checkpoint_last.pth")["step"]
    assert 2 <= saved_step < 8, "the run ended before the signal; make it longer"
    resumed = run_cli(args + ["--decode-on-device", "--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    got = step_losses(run_dir / "metrics.jsonl")
    assert sorted(got) == list(range(8))
    for step in range(8):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
