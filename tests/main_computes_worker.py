"""Run under torchrun (2 processes, gloo): each process calls ``computed_on_main`` with a computation whose
result names the process that ran it, then with one that fails on the main process. Each rank writes what it
got to ``rank<N>.json`` in the folder given as argument."""
import json
import sys
from pathlib import Path

import torch.distributed as dist

from sparkmim.utils.distributed import computed_on_main
from sparkmim.utils.errors import UserError


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ran = []

    def compute():
        ran.append(rank)
        return {"computed_by": rank}

    def fail():
        raise OSError("none of the sampled files is readable")

    got = computed_on_main(compute, "the test computation")
    try:
        computed_on_main(fail, "the failing computation")
        error = None
    except (UserError, OSError) as raised:
        error = f"{type(raised).__name__}: {raised}"
    (out / f"rank{rank}.json").write_text(json.dumps({"got": got, "ran": ran, "error": error}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
