"""Run under torchrun (2 processes, gloo): only rank 1's loss turns NaN; each rank writes how its epoch
ended to ``<folder>/rank<r>.txt``."""
import sys
from pathlib import Path

import torch.distributed as dist

from sparkmim.downstream_imagenet.engine import DivergenceError, train_one_epoch
from tests.downstream_imagenet.engine_fixtures import STEPS, NanAt, tiny_batches, tiny_trainer


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    trainer = tiny_trainer(log_interval=2, criterion=NanAt(call=2 if rank == 1 else None))
    try:
        train_one_epoch(trainer, tiny_batches(STEPS), 0, 0, STEPS, rank == 0)
        outcome = "finished"
    except DivergenceError as error:
        outcome = f"stopped: {error}"
    (Path(sys.argv[1]) / f"rank{rank}.txt").write_text(outcome)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
