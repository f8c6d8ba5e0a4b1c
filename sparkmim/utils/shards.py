"""WebDataset-style tar shards: naming a set of shards, its index (``shards.json``) and decoding a sample.

Millions of small files on a shared file system are slow to list and to open; a few hundred tar files
read sequentially are not. A shard holds samples as tar members named ``<key>.<ext>`` (the WebDataset
convention: members sharing a key form one sample); sparkmim reads one image per sample, from the first
member whose extension is an image or array format.

A streamed shard cannot say how many samples it holds without being read, but a run needs the count
up front (the steps per epoch, and so the schedule, follow from it, exactly as for a folder). So
``spark-data pack`` writes ``shards.json`` beside the shards: the sample count of every shard.
Local shards without it are counted by reading their tar headers once; remote ones need the index.

Reading uses the ``webdataset`` library (``pip install 'sparkmim[shards]'``), imported only when
shards are used.
"""
import json
import logging
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import UserError
from .images import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
INDEX_FORMAT = "sparkmim-shards"
SAMPLE_EXTENSIONS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS + ARRAY_EXTENSIONS)
INSTALL_HINT = "reading tar shards needs the webdataset package: pip install 'sparkmim[shards]'"


class ShardError(UserError, ValueError):
    """The shard argument or index cannot be used (no shards, missing index, unreadable index)."""


def is_shard_source(data: str) -> bool:
    """Whether ``--data`` names tar shards: a ``.tar`` path, brace pattern or URL (``pipe:...tar`` too),
    or a folder holding a ``shards.json`` index."""
    text = str(data).strip()
    if not is_local(text):
        return ".tar" in text
    if text.endswith(".tar") or text.endswith(".tar}"):
        return True
    return (Path(text).expanduser() / INDEX_NAME).is_file()


def shard_name(url: str) -> str:
    """The shard's file name in a path, URL or command (``pipe:aws s3 cp s3://b/train-000001.tar -``):
    the last word ending in ``.tar``; the key of its count in ``shards.json``."""
    names = re.findall(r"[^/\s]+\.tar(?![^\s/])", url)
    return names[-1] if names else url


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def webdataset_module():
    """The webdataset package, or a one-line error saying how to install it."""
    try:
        import webdataset
    except ImportError as error:
        raise ShardError(INSTALL_HINT) from error
    return webdataset


@dataclass(frozen=True)
class ShardSet:
    """The shards of a data set with their sample counts, in the order given."""
    urls: Tuple[str, ...]
    counts: Tuple[int, ...]
    source: str

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def describe(self) -> str:
        return f"{self.num_samples} samples in {len(self.urls)} tar shard(s) from {self.source}"


def expand_pattern(pattern: str) -> List[str]:
    """``train-{000000..000127}.tar`` -> the 128 names (bash-style brace expansion, as WebDataset does)."""
    webdataset_module()
    from braceexpand import braceexpand  # installed with webdataset

    return list(braceexpand(pattern))


def write_index(folder: Path, counts: Dict[str, int], source: str) -> Path:
    """``shards.json``: the sample count of every shard in ``folder`` (names relative to it)."""
    path = folder / INDEX_NAME
    payload = {"format": INDEX_FORMAT, "version": 1, "num_samples": sum(counts.values()), "source": source,
               "shards": [{"name": name, "samples": count} for name, count in counts.items()]}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def parse_index(text: str, where: str) -> Dict[str, int]:
    """Shard name -> sample count from the text of a ``shards.json``."""
    try:
        payload = json.loads(text)
        if payload.get("format") != INDEX_FORMAT:
            raise ValueError(f"format is {payload.get('format')!r}, not {INDEX_FORMAT!r}")
        return {str(entry["name"]): int(entry["samples"]) for entry in payload["shards"]}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ShardError(f"{where} is not a shard index written by spark-data pack ({error}); remove it or "
                         "pack the data again") from error


def read_index_text(location: str) -> Optional[str]:
    """The text of an index file or URL (any scheme webdataset can open), None when it does not exist."""
    if is_local(location):
        path = Path(location).expanduser()
        return path.read_text() if path.is_file() else None
    try:
        with webdataset_module().gopen(location, "rb") as stream:
            return stream.read().decode("utf-8")
    except (OSError, ValueError, RuntimeError):
        return None


def count_members(path: Path) -> int:
    """Samples in a local shard: distinct keys of its image members, from the tar headers alone."""
    keys = set()
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                key, ext = split_member_name(member.name)
                if member.isfile() and ext in SAMPLE_EXTENSIONS:
                    keys.add(key)
    except (tarfile.TarError, OSError) as error:
        raise ShardError(f"cannot read the shard {path} ({error}); repack it or leave it out of --data") from error
    return len(keys)


def split_member_name(name: str) -> Tuple[str, str]:
    """``dir/key.ext`` -> (``dir/key``, ``ext``): the key ends at the first dot of the file name, as in WebDataset."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def resolve_shards(data: str, index: Optional[str] = None) -> ShardSet:
    """The shards named by ``--data`` (a pattern, one ``.tar``, or a folder with ``shards.json``) and their
    sample counts: from ``index`` (``--shard-index``), else ``shards.json`` beside the shards, else (local
    shards only) counted from their tar headers."""
    text = str(data).strip()
    local_folder = is_local(text) and Path(text).expanduser().is_dir()
    if local_folder:
        folder = Path(text).expanduser()
        index_text = read_index_text(str(folder / INDEX_NAME))
        if index_text is None:
            raise ShardError(f"{folder} holds no {INDEX_NAME}; give the shards as a pattern, e.g. "
                             f"'{folder}/train-{{000000..000009}}.tar'")
        counts = parse_index(index_text, str(folder / INDEX_NAME))
        urls = [str(folder / name) for name in counts]
        return ShardSet(tuple(urls), tuple(counts.values()), str(folder))
    urls = expand_pattern(text)
    if is_local(text):
        urls = [str(Path(url).expanduser()) for url in urls]
        missing = [url for url in urls if not Path(url).is_file()]
        if missing:
            raise ShardError(f"{len(missing)} of the {len(urls)} shard(s) named by {text} do not exist (first: "
                             f"{missing[0]}); check the pattern's range")
    counts = counts_from_index(urls, index)
    if counts is None:
        if not all(is_local(url) for url in urls):
            raise ShardError(f"the sample counts of remote shards come from their index: put the {INDEX_NAME} "
                             f"written by spark-data pack beside them or name it with --shard-index")
        started = time.time()
        counts = [count_members(Path(url)) for url in urls]
        logger.info("counted the samples of %d shard(s) from their tar headers in %.1f s (no %s; spark-data "
                    "pack writes one)", len(urls), time.time() - started, INDEX_NAME)
    if sum(counts) == 0:
        raise ShardError(f"the shards named by {text} hold no image samples ({', '.join(SAMPLE_EXTENSIONS[:4])}, "
                         "...); pack a folder of images with spark-data pack")
    return ShardSet(tuple(urls), tuple(counts), text)


def counts_from_index(urls: Sequence[str], index: Optional[str]) -> Optional[List[int]]:
    """Each shard's count from the index (given, or ``shards.json`` in the first shard's folder or URL
    folder); None when there is no index. An index that lacks one of the shards is an error (it belongs to other shards)."""
    if index is None and urls[0].startswith("pipe:"):
        return None  # a command has no folder to look in
    location = index or f"{urls[0].rpartition('/')[0] or '.'}/{INDEX_NAME}"
    text = read_index_text(location)
    if text is None:
        if index:
            raise ShardError(f"--shard-index {index}: cannot be read")
        return None
    counts = parse_index(text, location)
    names = [shard_name(url) for url in urls]
    unknown = [name for name in names if name not in counts]
    if unknown:
        raise ShardError(f"{location} does not list the shard {unknown[0]} ({len(unknown)} unlisted); pack the "
                         "data again or name the right index with --shard-index")
    return [counts[name] for name in names]


def image_member(sample: Dict[str, Any]) -> Optional[Tuple[str, bytes]]:
    """(``key.ext``, bytes) of a WebDataset sample's image, None when it has no image member."""
    for ext in SAMPLE_EXTENSIONS:
        if ext in sample:
            return f"{sample.get('__key__', '?')}.{ext}", sample[ext]
    return None


def iter_raw_samples(urls: Iterable[str], on_error) -> Iterable[Dict[str, Any]]:
    """WebDataset samples (dicts of raw member bytes, ``__key__``, ``__url__``) of the shards in order;
    ``on_error(exception)`` is told of each unreadable shard or member and the reading goes on."""
    webdataset_module()
    from webdataset.tariterators import tarfile_samples

    def handler(error: Exception) -> bool:
        on_error(error)
        return True

    return tarfile_samples(({"url": url} for url in urls), handler=handler)
