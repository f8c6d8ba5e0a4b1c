"""``spark-data pack SRC DST``: a folder of images (or a list of paths) packed into tar shards once.

A cluster job that opens millions of small files on a shared file system spends its time in metadata
lookups; the same images in a few hundred tar files stream at the disks' speed. Each image becomes one
member ``<9-digit index>.<its extension>`` of a WebDataset-style shard, its bytes unchanged (no
re-encoding, so packing is I/O-bound and nothing is lost); the file order is shuffled first (``--seed``)
because a shuffling buffer only mixes samples that are near each other. ``shards.json`` records every
shard's sample count, which ``spark-pretrain`` needs to plan its epochs.

The output is read by ``spark-pretrain --data 'DST/train-{000000..000127}.tar'`` (or ``--data DST``),
and by any WebDataset reader.
"""
import argparse
import os
import logging
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from sparkmim.utils.errors import UserError, run_command
from sparkmim.utils.images import UnreadableImageError
from sparkmim.utils.shards import INDEX_NAME, SAMPLE_EXTENSIONS, ShardError, parse_index, webdataset_module, write_index
from sparkmim.utils.values import read_values

logger = logging.getLogger("sparkmim.tools.data")

PARTIAL_SUFFIX = ".partial"


@dataclass
class PackResult:
    """What a pack wrote: shard name -> sample count, the files left out, the pattern to train on."""
    folder: Path
    counts: Dict[str, int] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    prefix: str = "train"

    @property
    def pattern(self) -> str:
        last = len(self.counts) - 1
        names = f"{{000000..{last:06d}}}" if last > 0 else "000000"
        return str(self.folder / f"{self.prefix}-{names}.tar")


def member_extension(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def old_pack(folder: Path, prefix: str) -> List[Path]:
    """The files of a pack with ``prefix`` in ``folder``: its shards ``<prefix>-NNNNNN.tar`` (an interrupted
    pack's ``.partial`` ones too) and the index. Other files, such as ``train-notes.tar``, are not part of it."""
    if not folder.is_dir():
        return []
    shard = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar(?:{re.escape(PARTIAL_SUFFIX)})?")
    found = sorted(path for path in folder.iterdir() if shard.fullmatch(path.name))
    return found + ([folder / INDEX_NAME] if (folder / INDEX_NAME).exists() else [])


def check_destination(folder: Path, prefix: str, overwrite: bool) -> List[Path]:
    """Refuse to mix a new pack with an old one, unless asked to replace it; the prefix names files in it.
    Returns the old pack's files, which the caller deletes only once the new pack is complete (an
    interrupted or failed pack leaves the old one as it was)."""
    if not prefix or "/" in prefix or (os.sep in prefix) or prefix in (".", ".."):
        raise UserError(f"--prefix {prefix!r} must be a file name without a folder (the shards go into DST: "
                        f"give the folder as DST, e.g. DST/sub and --prefix {Path(prefix).name or 'train'})")
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            indexed = list(parse_index(index.read_text(), str(index)))
        except (OSError, ShardError):
            indexed = []
        others = [name for name in indexed if not name.startswith(f"{prefix}-")]
        if others:  # one index per folder: replacing it would leave the other pack's shards unlisted
            raise UserError(f"{folder} holds another pack ({others[0]}, ... in {INDEX_NAME}); one pack per folder: "
                            f"give --prefix {prefix} its own DST")
    old = old_pack(folder, prefix)
    if old and not overwrite:
        state = ("an interrupted pack" if all(path.name.endswith(PARTIAL_SUFFIX) for path in old)
                 else "shards")
        raise UserError(f"{folder} already holds {state} ({old[0].name}, ...); choose another DST or pass --overwrite")
    return old


def make_destination(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"DST {folder} cannot be made a folder ({error.strerror or error})") from None


def pack_shards(paths: Sequence[Path], folder: Path, shard_size: int = 1000, prefix: str = "train",
                seed: Optional[int] = 0, verify: bool = False, overwrite: bool = False, source: str = "",
                progress: bool = False) -> PackResult:
    """Write ``paths`` into ``folder/<prefix>-NNNNNN.tar`` shards of ``shard_size`` samples and the index.

    ``seed``: shuffle the order first (None keeps it). ``verify``: decode every file and leave out the
    ones that do not decode (otherwise only unreadable files are left out, and damaged images are
    skipped and counted at training time). Files of no image or array type are left out. The shards are
    written under temporary names and renamed when all are complete, and the index last, so an interrupted
    pack never looks finished; with ``overwrite``, the old pack is deleted only then."""
    if shard_size <= 0:
        raise UserError(f"--shard-size must be positive, got {shard_size}")
    wds = webdataset_module()
    make_destination(folder)
    old = check_destination(folder, prefix, overwrite)
    for leftover in [path for path in old if path.name.endswith(PARTIAL_SUFFIX)]:
        leftover.unlink()  # an interrupted pack's: its names are the ones this pack writes
    order = list(paths)
    if seed is not None:
        random.Random(seed).shuffle(order)
    result = PackResult(folder=folder, prefix=prefix)
    written: List[Path] = []
    writer, in_shard = None, 0

    def close_shard() -> None:
        writer.close()
        result.counts[written[-1].with_suffix("").name] = in_shard

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(order), desc="packing", unit="img", dynamic_ncols=True, mininterval=1.0)
    for index, path in enumerate(order):
        if bar is not None:
            bar.update(1)
        try:
            if member_extension(path) not in SAMPLE_EXTENSIONS:
                raise UnreadableImageError(f"not an image or array file (its type, {path.suffix or 'none'}, is "
                                           "not one the trainers read)")
            data = path.read_bytes()
            if verify:
                read_values(path)
        except (UnreadableImageError, OSError) as error:
            result.skipped.append(f"{path} ({error})")
            logger.warning("left out %s: %s", path, error)
            continue
        if writer is None or in_shard >= shard_size:
            if writer is not None:
                close_shard()
            written.append(folder / f"{prefix}-{len(written):06d}.tar{PARTIAL_SUFFIX}")
            writer, in_shard = wds.TarWriter(str(written[-1]), encoder=False, mtime=0.0), 0
        writer.write({"__key__": f"{index:09d}", member_extension(path): data})
        in_shard += 1
    if bar is not None:
        bar.close()
    if writer is None:
        raise UserError(f"none of the {len(order)} files could be read; nothing was packed"
                        f"{' (the old pack is kept)' if old else ''}")
    close_shard()
    for path in sorted(old, key=lambda p: p.name != INDEX_NAME):  # the index first: never one naming a mix
        path.unlink(missing_ok=True)
    for path in written:
        path.rename(path.with_suffix(""))  # drop .partial
    write_index(folder, result.counts, source)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spark-data", description="Data tools for sparkmim.")
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser(
        "pack", help="pack a folder of images (or a text file of paths) into tar shards for spark-pretrain",
        description="Pack images into WebDataset-style tar shards (bytes unchanged, order shuffled) and write "
                    f"{INDEX_NAME} with each shard's sample count.")
    pack.add_argument("source", metavar="SRC", help="image folder (searched recursively) or a text file of paths")
    pack.add_argument("destination", metavar="DST", help="folder for the shards and the index")
    pack.add_argument("--shard-size", type=int, default=1000,
                      help="samples per shard (default 1000: ~110 MB of ImageNet JPEGs). Aim for at least "
                           "processes x loader workers shards, and a multiple of it")
    pack.add_argument("--prefix", default="train", help="shard names: PREFIX-000000.tar, ... (default train)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the shuffled order (default 0)")
    pack.add_argument("--no-shuffle", action="store_true", help="keep the sorted file order")
    pack.add_argument("--verify", action="store_true",
                      help="decode every file and leave out those that do not decode (slower)")
    pack.add_argument("--overwrite", action="store_true", help="replace shards already in DST")
    pack.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def run_pack(args: argparse.Namespace) -> int:
    from sparkmim.pretrain.data import list_images

    if args.shard_size <= 0:  # before SRC is listed, which can take minutes on a large tree
        raise UserError(f"--shard-size must be positive, got {args.shard_size}")
    paths = list_images(args.source, arrays=True, argument="SRC")
    logger.info("packing %d files from %s into shards of %d", len(paths), args.source, args.shard_size)
    result = pack_shards(paths, Path(args.destination).expanduser(), args.shard_size, args.prefix,
                         None if args.no_shuffle else args.seed, args.verify, args.overwrite, str(args.source),
                         args.progress)
    total = sum(result.counts.values())
    print(f"spark-data pack: {total} images in {len(result.counts)} shard(s), {len(result.skipped)} file(s) left out.\n"
          f"  index   {(result.folder / INDEX_NAME).resolve()}\n"
          f"  train   spark-pretrain --data '{result.pattern}'")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command("spark-data", lambda: run_pack(args))


if __name__ == "__main__":
    sys.exit(main())
