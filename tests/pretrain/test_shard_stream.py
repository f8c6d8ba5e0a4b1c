"""The shard streams' arithmetic and data, through torch's real DataLoader with worker processes: every
micro-batch has one stream and position, processes read disjoint samples, a resumed loader yields the
uninterrupted loader's batches bit for bit, undecodable samples are replaced and reported."""
import itertools
import sys
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("webdataset", reason="tar shards need the webdataset package (sparkmim[shards])")

from sparkmim.pretrain.data import DataError  # noqa: E402
from sparkmim.pretrain.shard_stream import (ShardStreams, StreamLayout, epoch_balance, shard_assignment,  # noqa: E402
                                           warn_if_streams_changed)
from sparkmim.utils.shards import (ShardError, count_members, is_shard_source, resolve_shards,  # noqa: E402
                                   shard_name)
from tests.pretrain.shard_fixtures import ids_of, pack_flat, shard_pattern  # noqa: E402

SIZE = (32, 32)


@pytest.mark.parametrize("workers,accumulation,start_step", [(1, 1, 0), (2, 1, 3), (3, 2, 5), (2, 3, 4)])
def test_each_micro_batch_has_one_stream_position_and_positions_are_consecutive(workers, accumulation, start_step):
    layout = StreamLayout(steps_per_epoch=5, accumulation=accumulation, micro_batch=2, rank=1, world_size=2,
                          workers=workers)
    seen = {}
    for micro in range(3 * layout.micro_per_epoch):
        epoch, index = layout.position(micro)
        key = (epoch, layout.stream_of(micro), index)
        assert key not in seen
        seen[key] = micro
    for epoch in range(3):
        for worker in range(workers):
            stream = layout.rank * workers + worker
            positions = sorted(i for e, s, i in seen if e == epoch and s == stream)
            assert positions == list(range(len(positions)))
            assert len(positions) * layout.micro_batch == layout.quota(epoch, worker)
        assert sum(layout.quota(epoch, w) for w in range(workers)) == layout.micro_per_epoch * layout.micro_batch
    # a resumed loader's physical worker p plays one logical worker for good
    resumed = StreamLayout(5, accumulation, 2, 1, 2, workers, start_step)
    for physical in range(workers):
        micros = range(resumed.start_micro + physical, 3 * resumed.micro_per_epoch, workers)
        assert len({resumed.stream_of(m) for m in micros}) == 1


def test_shard_assignment_is_a_partition_that_changes_with_the_epoch():
    first, second = shard_assignment(10, 4, seed=0, epoch=0), shard_assignment(10, 4, seed=0, epoch=1)
    assert sorted(itertools.chain(*first)) == list(range(10))
    assert first != second and first == shard_assignment(10, 4, seed=0, epoch=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 flat images in 8 shards of 6."""
    folder = pack_flat(tmp_path_factory.mktemp("stream"), 48, 6)
    return resolve_shards(shard_pattern(folder, 8))


def _loader(shards, rank, world_size, workers, start_step=0, steps_per_epoch=6, micro_batch=2, accumulation=2,
            buffer=8):
    layout = StreamLayout(steps_per_epoch, accumulation, micro_batch, rank, world_size, max(1, workers), start_step)
    dataset = ShardStreams(shards, layout, SIZE, seed=3, shuffle_buffer=buffer)
    return DataLoader(dataset, batch_size=None, num_workers=workers), layout


def _epoch_ids(shards, rank, world_size, workers):
    loader, layout = _loader(shards, rank, world_size, workers)
    ids = []
    for images, failed in itertools.islice(iter(loader), layout.micro_per_epoch):
        assert failed == []
        ids += ids_of(images)
    return ids


def test_two_processes_read_disjoint_samples_covering_the_epoch(shards):
    # 48 samples, global batch 8 = 2 processes x 2 micro-batches of 2: 6 steps, 24 samples per process
    rank0, rank1 = _epoch_ids(shards, 0, 2, 2), _epoch_ids(shards, 1, 2, 2)
    assert len(rank0) == len(rank1) == 24
    assert set(rank0).isdisjoint(rank1)
    assert set(rank0) | set(rank1) == set(range(48))  # 8 shards of 6 over 4 streams of 12: nothing twice
    assert epoch_balance(shards, _loader(shards, 0, 2, 2)[1], seed=3, epoch=0) == (0, 0)


def test_the_shuffle_buffer_mixes_samples_within_a_stream(shards):
    unshuffled = _loader(shards, 0, 1, 0, buffer=0)[0]
    shuffled = _loader(shards, 0, 1, 0, buffer=8)[0]
    first = [ids_of(images) for images, _ in itertools.islice(iter(unshuffled), 6)]
    second = [ids_of(images) for images, _ in itertools.islice(iter(shuffled), 6)]
    assert sorted(sum(first, [])) != sum(first, []) or first != second
    assert first != second


@pytest.mark.parametrize("start_step", [1, 4, 7])
def test_a_resumed_loader_yields_the_uninterrupted_batches(shards, start_step):
    """Mid-epoch (1, 4) and in the next epoch (7); with 2 workers and one micro-batch per step, so the
    resumed loader's worker 0 plays logical worker 1 when the start step is odd."""
    full, layout = _loader(shards, 0, 2, 2, micro_batch=4, accumulation=1)
    reference = list(itertools.islice(iter(full), 10 * layout.accumulation))
    resumed, _ = _loader(shards, 0, 2, 2, start_step=start_step, micro_batch=4, accumulation=1)
    rest = list(itertools.islice(iter(resumed), (10 - start_step) * layout.accumulation))
    for (expected, _), (got, _) in zip(reference[start_step * layout.accumulation:], rest):
        assert torch.equal(expected, got)


def test_an_undecodable_member_is_replaced_and_reported(tmp_path):
    folder = pack_flat(tmp_path, 12, 12)
    shard = folder / "train-000000.tar"
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    victim = members[5][0].name
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            data = b"\x89PNG\r\n\x1a\n cut short" if member.name == victim else data
            member.size = len(data)
            import io
            archive.addfile(member, io.BytesIO(data))
    shards = resolve_shards(str(shard))
    loader, layout = _loader(shards, 0, 1, 0, steps_per_epoch=3, micro_batch=4, accumulation=1, buffer=0)
    batches = list(itertools.islice(iter(loader), 3))
    failed = [name for _, names in batches for name in names]
    assert len(failed) == 1 and victim in failed[0]
    ids = [i for images, _ in batches for i in ids_of(images)]
    assert len(ids) == 12 and len(set(ids)) == 11  # the next decodable sample fills the damaged one's place


def test_too_few_shards_for_the_streams_is_one_line(shards):
    layout = StreamLayout(6, 1, 2, 0, world_size=4, workers=3)
    with pytest.raises(DataError, match=r"8 shard\(s\) cannot feed 4 process\(es\) x 3 loader worker\(s\) = 12 "
                                        r"streams: pack more, smaller shards"):
        ShardStreams(shards, layout, SIZE, seed=0)


def test_counts_come_from_the_index_or_the_tar_headers(tmp_path):
    folder = pack_flat(tmp_path, 10, 4)
    assert resolve_shards(shard_pattern(folder, 3)).counts == (4, 4, 2)
    assert resolve_shards(str(folder)).num_samples == 10  # the folder with its shards.json
    assert count_members(folder / "train-000002.tar") == 2
    (folder / "shards.json").unlink()
    assert resolve_shards(shard_pattern(folder, 3)).counts == (4, 4, 2)  # from the headers
    with pytest.raises(ShardError, match=r"1 of the 4 shard\(s\) named by .* do not exist"):
        resolve_shards(shard_pattern(folder, 4))
    with pytest.raises(ShardError, match="holds no shards.json"):
        resolve_shards(str(folder))
    with pytest.raises(ShardError, match="sample counts of remote shards come from their index"):
        resolve_shards("pipe:cat /nowhere/train-{000000..000002}.tar")


def test_piped_shards_take_their_counts_from_the_named_index(tmp_path):
    folder = pack_flat(tmp_path, 10, 4)
    piped = resolve_shards(f"pipe:cat {folder}/train-{{000000..000002}}.tar", index=str(folder / "shards.json"))
    assert piped.counts == (4, 4, 2) and piped.urls[0] == f"pipe:cat {folder}/train-000000.tar"
    assert shard_name("pipe:aws s3 cp s3://bucket/train-000001.tar -") == "train-000001.tar"
    assert is_shard_source("pipe:aws s3 cp s3://bucket/train-{000000..000009}.tar -")
    assert is_shard_source(str(folder)) and not is_shard_source(str(tmp_path / "images"))
    loader, _ = _loader(piped, 0, 1, 0, steps_per_epoch=5, micro_batch=2, accumulation=1, buffer=0)
    assert sorted(i for images, _ in itertools.islice(iter(loader), 5) for i in ids_of(images)) == list(range(10))


def test_without_webdataset_shards_are_refused_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset now raises ImportError
    with pytest.raises(ShardError, match=r"^reading tar shards needs the webdataset package: pip install "
                                         r"'sparkmim\[shards\]'$"):
        resolve_shards(str(tmp_path / "train-{000000..000001}.tar"))


def test_a_mid_epoch_resume_with_other_streams_is_warned_about(caplog):
    mid_epoch = StreamLayout(6, 1, 2, rank=0, world_size=2, workers=4, start_step=3)
    for saved, layout, warned in (([2, 4], mid_epoch, False), ([1, 4], mid_epoch, True), (None, mid_epoch, False),
                                  ([1, 4], StreamLayout(6, 1, 2, 0, 2, 4, start_step=12), False)):
        caplog.clear()
        warn_if_streams_changed(saved, layout)
        assert ("keep --workers and the process count for an exact resume" in caplog.text) == warned, (saved, layout)
