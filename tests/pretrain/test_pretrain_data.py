"""Pre-training data: discovery, bad files, deterministic resumable order, the demo set, signals."""
import logging
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from sparkmim.pretrain.data import (DataError, PretrainImages, SkipReporter, StepBatchSampler, first_readable,
                                    list_images, load_vis_images)
from sparkmim.pretrain.demo_data import ensure_demo_dataset
from sparkmim.utils.signals import GracefulStop


def _write_images(folder, count, size=(40, 48)):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_folder_is_searched_recursively_and_list_files_work(tmp_path):
    _write_images(tmp_path / "train" / "class_a", 2)
    _write_images(tmp_path / "train" / "class_b" / "deeper", 3)
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    files = list_images(str(tmp_path / "train"))
    assert len(files) == 5
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\ntrain/class_a/img0.png\n\n" + str(files[-1]) + "\n")
    assert list_images(str(listing)) == [tmp_path / "train/class_a/img0.png", files[-1]]
    listing.write_text("train/class_a/img0.png\n", encoding="utf-8-sig")  # a BOM is not part of the first path
    assert list_images(str(listing)) == [tmp_path / "train/class_a/img0.png"]
    np.save(tmp_path / "stack.npy", np.zeros((2, 8, 8), np.float32))  # a binary file was a UnicodeDecodeError
    with pytest.raises(DataError, match=r"stack\.npy is not a text file listing image paths \(not UTF-8 text\)"):
        list_images(str(tmp_path / "stack.npy"))
    with pytest.raises(DataError, match="does not exist"):
        list_images(str(tmp_path / "missing"))
    # a folder of data read another way says so: arrays need their own values, shards their index
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "0.npy", np.zeros((8, 8, 4), np.float32))
    with pytest.raises(DataError, match=r"\(it holds \.npy arrays, which are read with --in-chans N"):
        list_images(str(tmp_path / "arrays"))
    assert list_images(str(tmp_path / "arrays"), arrays=True) == [tmp_path / "arrays" / "0.npy"]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"\(it holds \.tar shards: give their shards.json folder"):
        list_images(str(tmp_path / "shards"))


def test_modes_are_converted_and_unreadable_files_are_skipped(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("L", (40, 40), 100).save(folder / "a_gray.png")
    Image.new("RGBA", (40, 40), (1, 2, 3, 128)).save(folder / "b_rgba.png")
    Image.new("CMYK", (40, 40), (1, 2, 3, 4)).save(folder / "c_cmyk.jpg")
    Image.new("P", (40, 40), 3).save(folder / "d_palette.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(folder / "e_16bit.png")
    (folder / "f_garbage.jpg").write_bytes(b"this is not a jpeg")
    good = (folder / "a_gray.png").read_bytes()
    (folder / "g_truncated.png").write_bytes(good[: len(good) // 2])
    paths = list_images(str(folder))
    dataset = PretrainImages(paths, (32, 32), seed=0)
    reporter = SkipReporter(paths)
    with caplog.at_level(logging.WARNING):
        for epoch in range(2):
            for index in range(len(paths)):
                image, failed = dataset[(epoch, index)]
                assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
                reporter.report(failed)
            assert len(reporter.pop_epoch_failed()) == 2
    warnings = [r for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(warnings) == 2  # once per file, not once per epoch


def test_no_readable_image_is_a_clear_error(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    (tmp_path / "y.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 listed files is a readable image"):
        first_readable(list_images(str(tmp_path)))


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    _write_images(tmp_path, 3, size=(64, 80))
    paths = list_images(str(tmp_path))
    dataset = PretrainImages(paths, (32, 48), seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = dataset[(2, 1)][0]
    assert torch.equal(torch.get_rng_state(), before)  # the global stream (masks) is untouched
    torch.manual_seed(999)
    assert torch.equal(dataset[(2, 1)][0], first)
    assert not torch.equal(dataset[(3, 1)][0], first)
    assert first.shape == (3, 32, 48)
    vis = load_vis_images(paths, (32, 48), 2)
    assert vis.shape == (2, 3, 32, 48)


def test_step_sampler_is_resumable_and_splits_ranks_and_micro_batches():
    full = StepBatchSampler(10, global_batch=4, micro_batch=2, rank=0, world_size=1, seed=3)
    assert full.steps_per_epoch == 3 and full.accumulation == 2
    stream = iter(full)
    batches = [next(stream) for _ in range(12)]  # 6 steps = 2 epochs
    epoch0 = [i for b in batches[:6] for (_, i) in b]
    assert sorted(epoch0[:10]) == list(range(10))  # a permutation, wrapped to fill the last step
    assert {e for b in batches[6:] for (e, _) in b} == {1}
    resumed = StepBatchSampler(10, global_batch=4, micro_batch=2, rank=0, world_size=1, seed=3, start_step=4)
    assert [next(iter(resumed)) for _ in range(1)][0] == batches[8]
    ranks = [StepBatchSampler(10, 4, 1, r, 2, seed=3) for r in (0, 1)]
    per_rank = [r.step_indices(1) for r in ranks]
    assert per_rank[0] + per_rank[1] == full.step_indices(1)
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(10, 6, 2, 0, 4, seed=0)


def test_demo_set_is_deterministic_and_cached(tmp_path):
    first = ensure_demo_dataset(num_images=6, image_size=48, seed=1, cache_dir=tmp_path / "a")
    second = ensure_demo_dataset(num_images=6, image_size=48, seed=1, cache_dir=tmp_path / "b")
    files = sorted(first.glob("*.png"))
    assert len(files) == 6
    for a, b in zip(files, sorted(second.glob("*.png"))):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    stamp = files[0].stat().st_mtime_ns
    assert ensure_demo_dataset(num_images=6, image_size=48, seed=1, cache_dir=tmp_path / "a") == first
    assert files[0].stat().st_mtime_ns == stamp  # not regenerated
    pixels = np.asarray(Image.open(files[0]))
    assert pixels.shape == (48, 48, 3) and pixels.std() > 5


def test_graceful_stop_turns_signals_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.should_stop()
    assert signal.getsignal(signal.SIGTERM) is previous  # no stop: the handlers are given back
    try:
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.should_stop() and stop.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # stopping: a late repeat changes nothing
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sample_draw_reseeds_only_the_cpu_generator(monkeypatch):
    # the GPU generator draws the masks in the training process (workers 0, device-decode fallbacks);
    # torch.manual_seed would re-seed it per sample. Spy on the call that does that on a GPU machine.
    from sparkmim.pretrain.data import sample_rng

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    before = torch.get_rng_state()
    with sample_rng(0, 1, 2):
        first = torch.rand(3)
    with sample_rng(0, 1, 2):
        assert torch.equal(torch.rand(3), first)
    assert reseeded == [] and torch.equal(torch.get_rng_state(), before)
