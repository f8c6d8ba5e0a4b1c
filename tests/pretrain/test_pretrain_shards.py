"""spark-pretrain on tar shards packed by spark-data pack: the same schedule as the folder, damaged members
and shards skipped and counted, data with its own values, an exact mid-epoch resume, two real processes."""
import io
import json
import re
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest

pytest.importorskip("webdataset", reason="tar shards need the webdataset package (sparkmim[shards])")

from sparkmim.tools.data import pack_shards  # noqa: E402
from sparkmim.utils.checkpoint import load_file  # noqa: E402
from tests.pretrain.shard_fixtures import shard_pattern  # noqa: E402
from tests.pretrain.test_pretrain_channels import encoder_loads  # noqa: E402
from tests.pretrain.test_pretrain_integrity import _wait_for_step  # noqa: E402
from tests.pretrain_fixtures import (REPO_ROOT, TINY_ARGS, environment, make_images, read_rows, run_cli,  # noqa: E402
                                     start_cli, step_losses)

SCHEDULE = re.compile(r"schedule: .*")


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory):
    """24 images as a folder and as 4 shards of 6."""
    root = tmp_path_factory.mktemp("shards")
    images = make_images(root / "images", 24)
    pack_shards(sorted(images.rglob("*.png")), root / "shards", shard_size=6)
    return images, root / "shards"


def _schedule(run_dir):
    return SCHEDULE.search((run_dir / "log_rank0.txt").read_text()).group(0)


def test_shards_train_with_the_folders_schedule_and_write_every_output(folder_and_shards, tmp_path):
    images, shards = folder_and_shards
    args = [*TINY_ARGS, "--epochs", "2", "--workers", "2"]
    from_shards = run_cli(["--data", shard_pattern(shards, 4), *args, "--output-dir", str(tmp_path / "shards")])
    assert from_shards.returncode == 0, from_shards.stderr[-3000:]
    from_folder = run_cli([str(images), *args, "--output-dir", str(tmp_path / "folder")])
    assert from_folder.returncode == 0, from_folder.stderr[-3000:]
    assert _schedule(tmp_path / "shards") == _schedule(tmp_path / "folder")  # 2 epochs x 3 steps, global batch 8
    log = (tmp_path / "shards" / "log_rank0.txt").read_text()
    assert "data: 24 samples in 4 tar shard(s)" in log and "4 shard(s) read as 2 stream(s)" in log
    # 3 micro-batches per epoch over 2 workers: one stream supplies 16 samples from its 12, the other 8
    assert "epoch 0 reads 4 sample(s) twice and leaves 4 for later (uneven shards per stream)" in log
    assert [r["step"] for r in read_rows(tmp_path / "shards" / "metrics.jsonl", "step")] == list(range(6))
    checkpoint = load_file(tmp_path / "shards" / "checkpoint_last.pth")
    assert checkpoint["sampler"]["num_images"] == 24 and checkpoint["sampler"]["data_streams"] == [1, 2]
    assert (tmp_path / "shards" / "reconstruction.png").stat().st_size > 0
    # the folder with its shards.json names the same data; read as one stream (no workers), an epoch's 6
    # micro-batches of 4 take each of the 24 samples once, and the log says nothing of uneven streams
    again = run_cli(["--data", str(shards), *args, "--epochs", "1", "--workers", "0",
                     "--output-dir", str(tmp_path / "by_folder")])
    assert again.returncode == 0, again.stderr[-3000:]
    even_log = (tmp_path / "by_folder" / "log_rank0.txt").read_text()
    assert "4 shard(s) read as 1 stream(s)" in even_log and "uneven" not in even_log


def _damage(shard, member_index: int) -> str:
    """Replace one member's bytes by a cut-short PNG; returns its name."""
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    name = members[member_index][0].name
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            data = b"\x89PNG\r\n\x1a\n cut short" if member.name == name else data
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return name


def test_a_damaged_member_and_a_truncated_shard_are_skipped_and_counted(tmp_path):
    images = make_images(tmp_path / "images", 24)
    shards = tmp_path / "shards"
    pack_shards(sorted(images.rglob("*.png")), shards, shard_size=6)
    damaged = _damage(shards / "train-000001.tar", 2)
    whole = (shards / "train-000003.tar").read_bytes()
    (shards / "train-000003.tar").write_bytes(whole[:len(whole) // 2 + 100])  # cut inside a member
    run_dir = tmp_path / "run"
    done = run_cli(["--data", shard_pattern(shards, 4), *TINY_ARGS, "--epochs", "1", "--shuffle-buffer", "0",
                    "--output-dir", str(run_dir)])
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run_dir / "log_rank0.txt").read_text()
    assert re.search(rf"skipping unreadable sample \S*train-000001\.tar:{damaged}: cannot identify image file "
                     r"\(replaced by the next readable one\)", log)
    assert re.search(r"skipping damaged shard \S*train-000003\.tar: ReadError: unexpected end of data \(the rest of "
                     r"this shard is not read\)", log)
    assert [row["skipped_images"] for row in read_rows(run_dir / "metrics.jsonl", "epoch")] == [2]


def test_multiband_arrays_in_shards_pretrain_with_statistics_from_the_shards(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "bands"
    folder.mkdir()
    arrays = [rng.normal(1000.0 * (1 + np.arange(5)), 50.0, size=(40, 40, 5)).astype(np.float32) for _ in range(12)]
    for index, array in enumerate(arrays):
        np.save(folder / f"{index:02d}.npy", array)
    pack_shards(sorted(folder.glob("*.npy")), tmp_path / "shards", shard_size=4)
    run_dir = tmp_path / "run"
    done = run_cli(["--data", str(tmp_path / "shards"), *TINY_ARGS, "--epochs", "1", "--batch-size", "4",
                    "--in-chans", "5", "--norm-stats", "auto", "--output-dir", str(run_dir)])
    assert done.returncode == 0, done.stderr[-3000:]
    saved = load_file(run_dir / "checkpoint_last.pth")["config"]
    stacked = np.stack(arrays).reshape(-1, 5).astype(np.float64)
    assert saved["mean"] == pytest.approx(stacked.mean(axis=0).tolist(), rel=1e-5)  # every sample of the 3 shards
    assert saved["std"] == pytest.approx(stacked.std(axis=0).tolist(), rel=1e-4)
    encoder_loads(run_dir, 5)
    assert (run_dir / "reconstruction.png").stat().st_size > 0


@pytest.mark.parametrize("extra,expected", [
    (["--workers", "3"], r"2 shard\(s\) cannot feed 1 process\(es\) x 3 loader worker\(s\) = 3 streams"),
    (["--decode-on-device", "--in-chans", "1", "--norm-stats", "auto"], "--decode-on-device decodes 8-bit RGB"),
])
def test_shard_mistakes_are_one_line_errors(folder_and_shards, tmp_path, extra, expected):
    _, shards = folder_and_shards
    pattern = shard_pattern(shards, 4) if "--workers" not in extra else str(shards / "train-{000000..000001}.tar")
    done = run_cli(["--data", pattern, *TINY_ARGS, "--epochs", "1", *extra, "--output-dir", str(tmp_path / "run")])
    assert done.returncode == 2
    assert re.search(expected, done.stderr.strip().splitlines()[-1]), done.stderr[-2000:]


@pytest.mark.slow
def test_a_mid_epoch_stop_resumes_exactly_from_shards(tmp_path):
    """Two workers, a SIGTERM mid-epoch, then --resume auto: every step's loss equals the uninterrupted run's."""
    images = make_images(tmp_path / "images", 48)
    pack_shards(sorted(images.rglob("*.png")), tmp_path / "shards", shard_size=6)
    args = ["--data", str(tmp_path / "shards"), *TINY_ARGS, "--epochs", "2", "--workers", "2", "--seed", "5",
            "--log-interval", "1", "--num-vis", "0", "--shuffle-buffer", "4"]
    reference = tmp_path / "reference"
    done = run_cli([*args, "--output-dir", str(reference)])
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "run"
    process = start_cli([*args, "--output-dir", str(run_dir)], tmp_path / "stopped.log")
    _wait_for_step(run_dir / "metrics.jsonl", 8, process)  # 6 steps per epoch: inside epoch 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    saved = load_file(run_dir / "checkpoint_last.pth")["step"]
    assert saved % 6 != 0, "the stop fell on an epoch end: not the case under test"
    resumed = run_cli([*args, "--output-dir", str(run_dir), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = step_losses(reference / "metrics.jsonl"), step_losses(run_dir / "metrics.jsonl")
    assert sorted(got) == list(range(12))
    assert [got[s] for s in range(12)] == pytest.approx([expected[s] for s in range(12)], rel=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_keep_the_global_batch_and_read_disjoint_shards(folder_and_shards, tmp_path):
    images, shards = folder_and_shards
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [*TINY_ARGS, "--epochs", "1", "--device", "cpu", "--workers", "1"]
    runs = {}
    for name, data in (("shards", shard_pattern(shards, 4)), ("folder", str(images))):
        out = tmp_path / name
        result = subprocess.run([*torchrun, "-m", "sparkmim.pretrain", "--data", data, *args, "--output-dir", str(out)],
                                cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = out
    assert _schedule(runs["shards"]) == _schedule(runs["folder"])
    assert "global batch 8 = 2 process(es) x 4 micro-batch" in _schedule(runs["shards"])
    assert [r["step"] for r in read_rows(runs["shards"] / "metrics.jsonl", "step")] == [0, 1, 2]

    # what each rank's real loader yields in an epoch, read back from the pixels (flat images)
    result = subprocess.run([*torchrun, "-m", "tests.pretrain.shard_disjoint_worker", str(tmp_path / "ids")],
                            cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ids = [json.loads((tmp_path / "ids" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 24
    assert set(ids[0]).isdisjoint(ids[1]) and set(ids[0]) | set(ids[1]) == set(range(48))
