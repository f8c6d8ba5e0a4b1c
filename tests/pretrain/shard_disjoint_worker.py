"""Run under ``torchrun --nproc_per_node 2``: each process joins a gloo group, builds spark-pretrain's shard
loader for its rank (two loader workers) and writes the ids of the samples it yields in one epoch.

48 flat images in 8 shards (global batch 8, so 6 steps of 4 samples per process); the ids are read back
from the pixels (see shard_fixtures)."""
import itertools
import json
import sys
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader

from sparkmim.pretrain.shard_stream import ShardStreams, StreamLayout
from sparkmim.utils.shards import resolve_shards
from tests.pretrain.shard_fixtures import ids_of, pack_flat, shard_pattern


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        pack_flat(out, 48, 6)
    dist.barrier()
    shards = resolve_shards(shard_pattern(out / "shards", 8))
    layout = StreamLayout(steps_per_epoch=6, accumulation=2, micro_batch=2, rank=rank, world_size=world_size, workers=2)
    loader = DataLoader(ShardStreams(shards, layout, (32, 32), seed=11, shuffle_buffer=8), batch_size=None,
                        num_workers=2)
    ids = [i for images, _ in itertools.islice(iter(loader), layout.micro_per_epoch) for i in ids_of(images)]
    (out / f"rank{rank}.json").write_text(json.dumps(ids))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
