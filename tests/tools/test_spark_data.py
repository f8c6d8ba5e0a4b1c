"""``spark-data pack``: real files into real tar shards, read back with Python's tarfile and WebDataset."""
import json
import subprocess
import sys
import tarfile

import pytest

pytest.importorskip("webdataset", reason="tar shards need the webdataset package (sparkmim[shards])")

from sparkmim.tools.data import main, pack_shards  # noqa: E402
from sparkmim.utils.shards import resolve_shards  # noqa: E402
from tests.pretrain.shard_fixtures import write_flat_images  # noqa: E402
from tests.pretrain_fixtures import REPO_ROOT, environment  # noqa: E402


def _members(shard):
    with tarfile.open(shard) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers()}


def test_pack_keeps_every_file_byte_for_byte_in_shuffled_shards_with_an_index(tmp_path):
    paths = write_flat_images(tmp_path / "images", 10)
    (tmp_path / "images" / "scan.npy").write_bytes((tmp_path / "images" / "0000.png").read_bytes())  # any bytes
    result = subprocess.run([sys.executable, "-m", "sparkmim.tools.data", "pack", str(tmp_path / "images"),
                             str(tmp_path / "shards"), "--shard-size", "4", "--no-progress"],
                            cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "11 images in 3 shard(s), 0 file(s) left out" in result.stdout
    assert f"spark-pretrain --data '{tmp_path / 'shards'}/train-{{000000..000002}}.tar'" in result.stdout

    index = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert index["num_samples"] == 11 and [s["samples"] for s in index["shards"]] == [4, 4, 3]
    members = {}
    for shard in sorted((tmp_path / "shards").glob("train-*.tar")):
        members.update(_members(shard))
    assert len(members) == 11 and sum(name.endswith(".npy") for name in members) == 1
    originals = sorted([p.read_bytes() for p in paths] + [(tmp_path / "images" / "scan.npy").read_bytes()])
    assert sorted(members.values()) == originals  # bytes unchanged, nothing lost or doubled
    # shuffled: the first shard is not the first four files in sorted order
    first = _members(tmp_path / "shards" / "train-000000.tar")
    assert sorted(first.values()) != sorted(p.read_bytes() for p in paths[:4])
    assert not list((tmp_path / "shards").glob("*.partial"))
    assert resolve_shards(str(tmp_path / "shards")).counts == (4, 4, 3)


def test_same_seed_same_shards_and_no_shuffle_keeps_the_order(tmp_path):
    paths = write_flat_images(tmp_path / "images", 6)
    pack_shards(paths, tmp_path / "a", shard_size=3, seed=7)
    pack_shards(paths, tmp_path / "b", shard_size=3, seed=7)
    assert (tmp_path / "a" / "train-000000.tar").read_bytes() == (tmp_path / "b" / "train-000000.tar").read_bytes()
    pack_shards(paths, tmp_path / "c", shard_size=3, seed=None)
    assert list(_members(tmp_path / "c" / "train-000000.tar").values()) == [p.read_bytes() for p in paths[:3]]


def test_verify_leaves_out_files_that_do_not_decode(tmp_path):
    paths = write_flat_images(tmp_path / "images", 5)
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    kept = pack_shards(paths + [broken], tmp_path / "plain", shard_size=10)
    assert sum(kept.counts.values()) == 6 and not kept.skipped  # bytes only: the loader skips it later
    checked = pack_shards(paths + [broken], tmp_path / "checked", shard_size=10, verify=True)
    assert sum(checked.counts.values()) == 5 and len(checked.skipped) == 1 and "broken.png" in checked.skipped[0]


def test_an_existing_pack_is_not_mixed_with_a_new_one(tmp_path, capsys):
    write_flat_images(tmp_path / "images", 4)
    assert main(["pack", str(tmp_path / "images"), str(tmp_path / "shards"), "--shard-size", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["pack", str(tmp_path / "images"), str(tmp_path / "shards"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith("already holds shards (train-000000.tar, ...); choose another DST "
                                                    "or pass --overwrite")
    assert main(["pack", str(tmp_path / "images"), str(tmp_path / "shards"), "--no-progress", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shards.json", "train-000000.tar"]
    assert main(["pack", str(tmp_path / "nowhere"), str(tmp_path / "x"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_prefix_with_a_folder_is_one_line_before_anything_is_written(tmp_path, capsys):
    # webdataset's FileNotFoundError for DST/a/b-000000.tar.partial ended the command with a traceback
    write_flat_images(tmp_path / "images", 2)
    assert main(["pack", str(tmp_path / "images"), str(tmp_path / "shards"), "--prefix", "a/b", "--no-progress"]) == 2
    assert "--prefix 'a/b' must be a file name without a folder" in capsys.readouterr().err
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def test_a_source_without_images_names_the_commands_own_argument(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pack", str(tmp_path / "empty"), str(tmp_path / "shards"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "point SRC at a folder of images" in error and "DATA" not in error  # spark-pretrain's name for it
    assert not (tmp_path / "shards").exists()


def test_a_repack_keeps_the_old_pack_until_the_new_one_is_complete_and_touches_nothing_else(tmp_path, capsys):
    paths = write_flat_images(tmp_path / "images", 4)
    shards = tmp_path / "shards"
    assert main(["pack", str(tmp_path / "images"), str(shards), "--shard-size", "2", "--no-progress"]) == 0
    pack = {p.name: p.read_bytes() for p in shards.iterdir()}
    (shards / "train-notes.tar").write_bytes(b"the user's own")  # matched the old 'train-*.tar' and was deleted
    missing = tmp_path / "missing.txt"
    missing.write_text("gone1.png\ngone2.png\n")
    # --overwrite deleted the old pack first; a pack that then wrote nothing left the folder empty
    assert main(["pack", str(missing), str(shards), "--overwrite", "--no-progress"]) == 2
    assert "nothing was packed (the old pack is kept)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in shards.iterdir() if p.name != "train-notes.tar"} == pack
    # a second pack with another prefix replaced the index, leaving the first pack's shards unlisted
    assert main(["pack", str(tmp_path / "images"), str(shards), "--prefix", "val", "--overwrite", "--no-progress"]) == 2
    assert "holds another pack (train-000000.tar, ... in shards.json); one pack per folder" in capsys.readouterr().err
    # entries of a list file that are no image were packed and counted as samples; one without a suffix was a traceback
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "noext").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in [*paths, tmp_path / "notes.txt", tmp_path / "noext"]) + "\n")
    (shards / "train-000009.tar.partial").write_bytes(b"an interrupted pack's")
    assert main(["pack", str(listing), str(shards), "--overwrite", "--no-progress"]) == 0
    assert "4 images in 1 shard(s), 2 file(s) left out" in capsys.readouterr().out
    assert sorted(p.name for p in shards.iterdir()) == ["shards.json", "train-000000.tar", "train-notes.tar"]
    assert (shards / "train-notes.tar").read_bytes() == b"the user's own"
    assert main(["pack", str(tmp_path / "images"), str(listing), "--no-progress"]) == 2  # DST is a file
    assert f"DST {listing} cannot be made a folder" in capsys.readouterr().err
