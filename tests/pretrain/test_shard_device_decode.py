"""--decode-on-device with tar shards, on a CPU device: the loader workers hand over each sample's bytes with
the crop and flip the CPU path draws for it, so the decoded batches match the CPU path's; a resumed loader
yields the uninterrupted batches; a member neither decoder can read is replaced and reported; spark-pretrain
runs end to end and resumes exactly after a stop mid-epoch."""
import io
import itertools
import signal
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("webdataset", reason="tar shards need the webdataset package (sparkmim[shards])")

from sparkmim.pretrain.device_decode import DeviceDecoder  # noqa: E402
from sparkmim.pretrain.shard_stream import ShardStreams, StreamLayout  # noqa: E402
from sparkmim.tools.data import pack_shards  # noqa: E402
from sparkmim.utils.checkpoint import load_file  # noqa: E402
from sparkmim.utils.shards import resolve_shards  # noqa: E402
from tests.pretrain.shard_fixtures import shard_pattern  # noqa: E402
from tests.pretrain.test_pretrain_device_decode import SIZE, _assert_close_to_pil  # noqa: E402
from tests.pretrain.test_pretrain_integrity import _wait_for_step  # noqa: E402
from tests.pretrain_fixtures import TINY_ARGS, jpeg_folder, make_images, run_cli, start_cli, step_losses  # noqa: E402


def _pack(root, jpegs=12, pngs=2, shard_size=4):
    """JPEGs of varied shapes (some greyscale) and a few PNGs, which the workers decode themselves."""
    paths = jpeg_folder(root / "images", jpegs) + sorted(make_images(root / "images" / "png", pngs, size=72).rglob("*.png"))
    pack_shards(paths, root / "shards", shard_size=shard_size, source=str(root / "images"))
    return resolve_shards(shard_pattern(root / "shards", -(-len(paths) // shard_size)))


def _streams(shards, encoded, workers=2, start_step=0, steps_per_epoch=7):
    layout = StreamLayout(steps_per_epoch, accumulation=1, micro_batch=2, rank=0, world_size=1, workers=workers,
                          start_step=start_step)
    return ShardStreams(shards, layout, SIZE, seed=4, shuffle_buffer=4, encoded=encoded), layout


def _batches(dataset, workers, count):
    return list(itertools.islice(iter(DataLoader(dataset, batch_size=None, num_workers=workers)), count))


def test_device_decoded_shards_match_the_cpu_path(tmp_path):
    shards = _pack(tmp_path)
    cpu, _ = _streams(shards, encoded=False)
    device, _ = _streams(shards, encoded=True)
    decoder = DeviceDecoder(device, "cpu")
    expected = _batches(cpu, 2, 14)  # two epochs of 7 micro-batches of 2 (14 samples each)
    got = _batches(device, 2, 14)
    samples = [sample for batch in got for sample in batch.samples]
    assert all(sample.encoded != sample.name.endswith(".png") for sample in samples)  # PNGs decoded in the workers
    assert {sample.encoded for sample in samples} == {True, False}
    for (images, failed), batch in zip(expected, got):
        decoded, device_failed = decoder(batch)
        assert failed == device_failed == []
        _assert_close_to_pil(decoded, images)  # the same crops and flips: only rounding differs


def test_a_resumed_device_loader_yields_the_uninterrupted_batches(tmp_path):
    shards = _pack(tmp_path)
    full, _ = _streams(shards, encoded=True)
    reference = _batches(full, 2, 12)
    resumed, _ = _streams(shards, encoded=True, start_step=5)
    for expected, got in zip(reference[5:], _batches(resumed, 2, 7)):
        assert [(s.name, s.box, s.flip) for s in expected.samples] == [(s.name, s.box, s.flip) for s in got.samples]
        assert all(torch.equal(a.data, b.data) for a, b in zip(expected.samples, got.samples))


def test_a_member_no_decoder_reads_is_replaced_within_its_micro_batch_and_reported(tmp_path):
    shards = _pack(tmp_path, jpegs=4, pngs=0, shard_size=4)
    shard = shards.urls[0]
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w") as archive:
        for position, (member, data) in enumerate(members):
            if position == 1:  # valid header and end marker, broken data: passes the worker, fails both decoders
                data = data[: len(data) // 2] + b"\xff\xc4\x00\x03\x00" + data[len(data) // 2:]
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    layout = StreamLayout(1, accumulation=1, micro_batch=4, rank=0, world_size=1, workers=1)
    dataset = ShardStreams(resolve_shards(shard), layout, SIZE, seed=0, shuffle_buffer=0, encoded=True)
    batch = _batches(dataset, 0, 1)[0]
    assert batch.failed == [] and all(sample.encoded for sample in batch.samples)
    images, failed = DeviceDecoder(dataset, "cpu")(batch)
    assert len(failed) == 1 and members[1][0].name in failed[0]
    assert "replaced by another sample of its micro-batch" in failed[0]
    assert images.shape == (4, 3, *SIZE) and torch.equal(images[1], images[0])


@pytest.mark.slow
def test_spark_pretrain_decodes_shards_on_the_device_and_resumes_exactly(tmp_path):
    """JPEG shards, two workers, a SIGTERM mid-epoch, then --resume auto: every step's loss equals the
    uninterrupted run's."""
    shards = _pack(tmp_path, jpegs=44, pngs=4, shard_size=6)
    args = ["--data", shard_pattern(tmp_path / "shards", len(shards.urls)), *TINY_ARGS, "--epochs", "2", "--workers",
            "2", "--seed", "5", "--log-interval", "1", "--num-vis", "0", "--shuffle-buffer", "4", "--decode-on-device"]
    reference = tmp_path / "reference"
    done = run_cli([*args, "--output-dir", str(reference)])
    assert done.returncode == 0, done.stderr[-3000:]
    log = (reference / "log_rank0.txt").read_text()
    assert "JPEGs decoded on cpu" in log and "8 shard(s) read as 2 stream(s)" in log

    run_dir = tmp_path / "run"
    process = start_cli([*args, "--output-dir", str(run_dir)], tmp_path / "stopped.log")
    _wait_for_step(run_dir / "metrics.jsonl", 8, process)  # 6 steps per epoch: inside epoch 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert load_file(run_dir / "checkpoint_last.pth")["step"] % 6 != 0, "the stop fell on an epoch end"
    resumed = run_cli([*args, "--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = step_losses(reference / "metrics.jsonl"), step_losses(run_dir / "metrics.jsonl")
    assert sorted(got) == list(range(12))
    assert [got[s] for s in range(12)] == pytest.approx([expected[s] for s in range(12)], rel=1e-6)
