"""Pre-training from tar shards: deterministic streams that keep the folder path's schedule and resume.

A folder is read by index (any image, any order); shards can only be read front to back. So the data
is cut into streams, one per (process, loader worker): each epoch the shard list is shuffled with
(seed, epoch) and stream ``i`` of ``S`` reads shards ``i, i + S, ...`` of it through a shuffling buffer.
Two processes therefore read disjoint shards, hence disjoint samples, within an epoch.

What does not change relative to folder input: the number of samples sets the steps per epoch, the
global batch is the same (each process fills its share of every step), and so is the schedule. A
process's micro-batches go to its loader workers in turn (as torch's DataLoader asks them), so each
micro-batch has a fixed stream and position: a stream that runs out of samples before the epoch's
steps are done starts over on its own shards (those samples are seen twice), one with more stops
early (the rest waits for the next epoch). Shard counts divisible by processes x workers keep this small.

Resume is exact when the number of processes and workers is unchanged: the resumed epoch's streams are
rebuilt and the samples already used are passed over (read as bytes, not decoded, so this takes a
fraction of the time those samples took to train on). With another layout the epoch's remaining samples are
drawn from the new streams after skipping the same share of each, so within that epoch some samples
may be seen twice and others not at all; later epochs are unaffected.

A sample that cannot be decoded (or has another channel count) is replaced by the next decodable one
of its stream and reported like an unreadable file; a damaged shard is reported once and the stream
goes on with its next shard.

With ``--decode-on-device`` the streams yield :class:`~sparkmim.pretrain.device_decode.EncodedBatch` es: a
member's bytes with the crop and flip the CPU path draws at its stream position (see ``device_decode``).
"""
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import functional as TF

from sparkmim.utils.images import UnreadableImageError, decode_rgb
from sparkmim.utils.signals import ignore_interrupt_in_worker
from sparkmim.utils.values import decode_values
from sparkmim.utils.shards import ShardSet, image_member, iter_raw_samples, webdataset_module

from .data import DataError, ValueSpec, augmentation, collate, eval_image, eval_values, sample_rng
from .device_decode import CropDraw, DeviceDecoder, EncodedBatch, EncodedSample, encoded_view, read_for_device

logger = logging.getLogger(__name__)

STREAM_STRIDE = 2 ** 40  # positions of one stream's epoch never reach this: stream ids and positions stay apart


@dataclass(frozen=True)
class StreamLayout:
    """Which stream and position each of a process's micro-batches comes from.

    Micro-batch ``g`` (counted from the start of training on this process) belongs to epoch
    ``g // micro_per_epoch`` and to logical worker ``g % workers``, as the DataLoader hands micro-batches
    to its workers in turn. A resumed loader starts with its worker 0 at ``start_micro``, so physical
    worker ``p`` plays logical worker ``(start_micro + p) % workers``."""
    steps_per_epoch: int
    accumulation: int
    micro_batch: int
    rank: int
    world_size: int
    workers: int
    start_step: int = 0

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accumulation

    @property
    def start_micro(self) -> int:
        return self.start_step * self.accumulation

    @property
    def streams(self) -> int:
        return self.world_size * self.workers

    def stream_of(self, micro: int) -> int:
        return self.rank * self.workers + micro % self.workers

    def position(self, micro: int) -> Tuple[int, int]:
        """(epoch, index of this micro-batch among its stream's micro-batches of that epoch)."""
        epoch = micro // self.micro_per_epoch
        first = epoch * self.micro_per_epoch
        first_of_worker = first + (micro - first) % self.workers
        return epoch, (micro - first_of_worker) // self.workers

    def quota(self, epoch: int, logical_worker: int) -> int:
        """Samples the stream of ``logical_worker`` supplies in ``epoch``."""
        first = epoch * self.micro_per_epoch
        offset = (logical_worker - first) % self.workers
        micro_batches = max(0, -(-(self.micro_per_epoch - offset) // self.workers))
        return micro_batches * self.micro_batch


def shard_assignment(num_shards: int, streams: int, seed: int, epoch: int) -> List[List[int]]:
    """Each stream's shard indices for ``epoch``: a (seed, epoch) permutation dealt out in turn."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_shards, generator=generator).tolist()
    return [order[stream::streams] for stream in range(streams)]


def check_stream_count(shards: ShardSet, world_size: int, workers: int) -> None:
    """Every stream (process x loader worker) needs a shard of its own; say what to change otherwise."""
    streams = world_size * max(1, workers)
    if len(shards.urls) < streams:
        raise DataError(f"{len(shards.urls)} shard(s) cannot feed {world_size} process(es) x {max(1, workers)} loader "
                        f"worker(s) = {streams} streams: pack more, smaller shards (spark-data pack --shard-size) or "
                        "lower --workers")


def epoch_balance(shards: ShardSet, layout: StreamLayout, seed: int, epoch: int) -> Tuple[int, int]:
    """(samples read twice, samples left out) in ``epoch`` over all processes, from the shard counts."""
    twice = left_out = 0
    for stream, indices in enumerate(shard_assignment(len(shards.urls), layout.streams, seed, epoch)):
        available = sum(shards.counts[i] for i in indices)
        quota = layout.quota(epoch, stream % layout.workers)
        twice += max(0, quota - available)
        left_out += max(0, available - quota)
    return twice, left_out


class ShardStreams(IterableDataset):
    """Batches ``(images, failed)`` of one process, micro-batch after micro-batch, forever (see the module
    docstring); ``failed`` names the samples and shards that could not be used."""

    def __init__(self, shards: ShardSet, layout: StreamLayout, size: Tuple[int, int], seed: int,
                 values: Optional[ValueSpec] = None, shuffle_buffer: int = 1000, encoded: bool = False) -> None:
        super().__init__()
        webdataset_module()  # fail at construction, in the main process, when it is missing
        check_stream_count(shards, layout.world_size, layout.workers)
        if encoded and values is not None:
            raise ValueError("device decoding reads 8-bit RGB JPEGs, not data with its own values")
        self.shards, self.layout, self.seed = shards, layout, seed
        self.values, self.shuffle_buffer = values, shuffle_buffer
        self.size = (int(size[0]), int(size[1]))
        self.transform = augmentation(size, values)
        # --decode-on-device: batches of EncodedSample for a DeviceDecoder, crops drawn as the CPU path draws them
        self.crop_draw = CropDraw.for_size(self.size) if encoded else None

    def decode(self, data: bytes, name: str) -> Any:
        if self.crop_draw is not None:
            return read_for_device(data, name)
        return self.values.decode(data, name) if self.values is not None else decode_rgb(data, name)

    def view(self, data: bytes, image: Any, name: str, epoch: int, stream: int, position: int) -> Any:
        """The training view of sample ``position`` of a stream's epoch: the augmented tensor, or for device
        decoding the bytes with their crop and flip (the same draw)."""
        with sample_rng(self.seed, epoch, stream * STREAM_STRIDE + position):
            if self.crop_draw is not None:
                return encoded_view(data, image, self.crop_draw, (epoch, position, stream), name)
            return self.transform(image)

    def decode_on_cpu(self, sample: EncodedSample) -> EncodedSample:
        """A sample the device decoder refused, decoded by PIL from its bytes (same crop and flip); a sample
        PIL cannot decode either raises :class:`UnreadableImageError` (a stream cannot be read back)."""
        image = TF.pil_to_tensor(decode_rgb(sample.data.numpy().tobytes(), sample.name))
        return EncodedSample(image, False, sample.box, sample.flip, sample.key, name=sample.name)

    def describe(self, sample: EncodedSample) -> str:
        return sample.name

    def _raw(self, epoch: int, stream: int, errors: List[str]) -> Iterator[Tuple[str, bytes]]:
        """(name, bytes) of the stream's samples: passes over its shards of the epoch, each pass through
        its own shuffling buffer (drained at the pass's end, so a pass yields each sample once)."""
        indices = shard_assignment(len(self.shards.urls), self.layout.streams, self.seed, epoch)[stream]
        urls = [self.shards.urls[i] for i in indices]

        def one_pass() -> Iterator[Tuple[str, bytes]]:
            for sample in iter_raw_samples(urls, lambda error: errors.append(_shard_error(error, urls))):
                member = image_member(sample)
                if member is not None:
                    yield f"{sample.get('__url__', '?')}:{member[0]}", member[1]

        for repeat in itertools.count():
            found = False
            samples = one_pass()
            if self.shuffle_buffer > 1:
                seed = ((self.seed * 1_000_003 + epoch) * 10_007 + stream) * 101 + repeat
                samples = webdataset_module().shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                                      seed=seed)(samples)
            for sample in samples:
                found = True
                yield sample
            if not found:
                raise DataError(f"the shard(s) {', '.join(urls[:3])} hold no image sample that can be read")

    def samples(self, epoch: int, stream: int, skip: int = 0) -> Iterator[Tuple[str, torch.Tensor, List[str]]]:
        """(name, augmented tensor, failures since the previous sample) of one stream's epoch, from
        position ``skip`` (the positions before it are read but not decoded)."""
        errors: List[str] = []
        raw = self._raw(epoch, stream, errors)
        for _ in range(skip):
            next(raw)
        errors.clear()  # failures before the resume point were counted by the run that read them
        position, waiting = skip, 0
        while True:
            name, data = next(raw)
            try:
                image = self.decode(data, name)
            except (UnreadableImageError, OSError) as error:
                errors.append(f"unreadable sample {error} (replaced by the next readable one)")
                waiting += 1
                if waiting > 10_000:
                    raise DataError(f"10000 samples in a row cannot be decoded (last: {error}); check the shards "
                                    "and --in-chans") from error
                continue
            # the decodable sample fills the positions of the undecodable ones before it, then its own
            for _ in range(waiting + 1):
                tensor = self.view(data, image, name, epoch, stream, position)
                position += 1
                reported = list(errors)
                errors.clear()  # the same list the raw reader appends shard failures to
                yield name, tensor, reported
            waiting = 0

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, List[str]]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.layout.workers:
            raise RuntimeError(f"the loader has {workers} workers, the stream layout {self.layout.workers}")
        micro = self.layout.start_micro + physical
        stream: Optional[Iterator] = None
        current_epoch = -1
        size = self.layout.micro_batch
        while True:
            epoch, index = self.layout.position(micro)
            if epoch != current_epoch:
                stream, current_epoch = self.samples(epoch, self.layout.stream_of(micro), skip=index * size), epoch
            batch = [next(stream) for _ in range(size)]
            if self.crop_draw is not None:
                yield EncodedBatch([sample for _, sample, _ in batch], [line for *_, failed in batch for line in failed])
            else:
                yield collate([(tensor, failed) for _, tensor, failed in batch])
            micro += self.layout.workers


def shard_loader(shards: ShardSet, layout: StreamLayout, size: Tuple[int, int], seed: int, values: Optional[ValueSpec],
                 shuffle_buffer: int, workers: int, device: torch.device, decode_on_device: bool = False
                 ) -> Tuple[DataLoader, Optional[DeviceDecoder]]:
    """spark-pretrain's DataLoader over tar shards: each worker yields whole micro-batches of its own stream,
    in the order the DataLoader asks its workers (``workers`` 0: one stream read in this process); and, with
    ``decode_on_device``, the decoder that turns its batches into images on ``device`` (else None)."""
    dataset = ShardStreams(shards, layout, size, seed, values, shuffle_buffer, encoded=decode_on_device)
    epoch = layout.start_step // layout.steps_per_epoch
    twice, left_out = epoch_balance(shards, layout, seed, epoch)
    uneven = (f"; epoch {epoch} reads {twice} sample(s) twice and leaves {left_out} for later (uneven shards per "
              "stream)") if twice or left_out else ""
    logger.info("data: %d shard(s) read as %d stream(s) (%d process(es) x %d worker(s)), shuffle buffer %d%s",
                len(shards.urls), layout.streams, layout.world_size, layout.workers, shuffle_buffer, uneven)
    if decode_on_device:
        logger.info("data: JPEGs decoded on %s (workers read bytes and draw crops; other formats decoded in the "
                    "workers)", device)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda" and not decode_on_device,
                        worker_init_fn=ignore_interrupt_in_worker)
    return loader, DeviceDecoder(dataset, device) if decode_on_device else None


def warn_if_streams_changed(saved: Optional[Sequence[int]], layout: StreamLayout) -> None:
    """A mid-epoch resume is exact only with the streams it was saved with: [processes, workers]."""
    current = [layout.world_size, layout.workers]
    if saved is None or list(saved) == current or layout.start_step % layout.steps_per_epoch == 0:
        return
    logger.warning("the checkpoint was written with %d process(es) x %d loader worker(s), this run has %d x %d: the "
                   "rest of this epoch is drawn from other streams (some samples may be seen twice, others not at "
                   "all, until the epoch ends); keep --workers and the process count for an exact resume",
                   saved[0], saved[1], current[0], current[1])


def _shard_error(error: Exception, urls: Sequence[str]) -> str:
    """A shard-level failure as one line naming the shard. webdataset reports a damaged shard up to twice
    (for the member being read, then for the shard), with the shard in the arguments or in the message's
    ``@ <stream>`` part; both become the same line, so it is counted once."""
    args = getattr(error, "args", ()) or (type(error).__name__,)
    message, _, where = str(args[0]).partition(" @ ")
    url = next((str(arg) for arg in args[1:] if isinstance(arg, str) and arg in urls), None)
    url = url or next((candidate for candidate in urls if candidate in where), "a shard")
    return f"damaged shard {url}: {type(error).__name__}: {message} (the rest of this shard is not read)"


def decoded_samples(shards: ShardSet, decode: Callable[[bytes, str], Any], limit: int,
                    shard_limit: Optional[int] = None) -> List[Any]:
    """Up to ``limit`` decodable samples, read in order from up to ``shard_limit`` shards spread over the
    set (for pictures and statistics: no shuffling, undecodable samples passed over)."""
    count = len(shards.urls) if shard_limit is None else min(shard_limit, len(shards.urls))
    chosen = [shards.urls[round(i * len(shards.urls) / count)] for i in range(count)]
    per_shard = max(1, -(-limit // count))
    found: List[Any] = []
    for url in chosen:
        taken = 0
        for sample in iter_raw_samples([url], lambda error: None):
            member = image_member(sample)
            if member is None:
                continue
            try:
                found.append(decode(member[1], f"{url}:{member[0]}"))
            except (UnreadableImageError, OSError):
                continue
            taken += 1
            if taken >= per_shard or len(found) >= limit:
                break
        if len(found) >= limit:
            break
    return found


def shard_vis_images(shards: ShardSet, size: Tuple[int, int], count: int,
                     values: Optional[ValueSpec] = None) -> Optional[torch.Tensor]:
    """The first ``count`` decodable samples of the first shard, in the deterministic eval view."""
    if count <= 0:
        return None
    decode = values.decode if values is not None else decode_rgb
    images = decoded_samples(ShardSet(shards.urls[:1], shards.counts[:1], shards.source), decode, count)
    views = [eval_values(image, size, values) if values is not None else eval_image(image, size) for image in images]
    return torch.stack(views) if views else None


def first_shard_readable(shards: ShardSet, in_chans: Optional[int]) -> None:
    """Some sample of the first shard decodes (with ``in_chans`` channels when the data is read with its own
    values): checked before a model is built."""
    decode = (lambda data, name: decode_values(data, name, in_chans)) if in_chans is not None else decode_rgb
    if not decoded_samples(ShardSet(shards.urls[:1], shards.counts[:1], shards.source), decode, 1):
        wanted = f" with {in_chans} channel(s)" if in_chans is not None else ""
        raise DataError(f"no sample of the first shard {shards.urls[0]} is a readable image{wanted}; check the "
                        "shards and --in-chans")
