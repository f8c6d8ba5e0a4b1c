"""seed_streams on resume: a checkpoint written without a GPU still gives every GPU rank its own masks."""
import torch

from sparkmim.pretrain.checkpointing import gather_rng_states
from sparkmim.pretrain.main import seed_streams
from sparkmim.utils.distributed import DistInfo


def _gpu_rank(rank: int) -> DistInfo:
    return DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cuda", rank))


def test_a_cpu_checkpoint_resumed_on_gpus_seeds_each_rank_s_gpu_stream_apart(monkeypatch):
    # the masks are drawn from the GPU generator; a CPU run saved no state for it, and left alone it starts
    # from torch's fixed default seed on every rank. Spy on the call that seeds it on a GPU machine.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    states = gather_rng_states() * 2
    assert all("cuda" not in state for state in states)
    for rank in (0, 1):
        seed_streams(states, seed=0, dist_info=_gpu_rank(rank), start_step=40)
    assert len(seeded) == 2 and seeded[0] != seeded[1]


def test_a_saved_gpu_stream_or_a_cpu_run_is_not_reseeded(monkeypatch):
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: None)
    with_gpu_state = [{**state, "cuda": torch.zeros(16, dtype=torch.uint8)} for state in gather_rng_states() * 2]
    seed_streams(with_gpu_state, seed=0, dist_info=_gpu_rank(1), start_step=40)
    cpu_only = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    seed_streams(gather_rng_states(), seed=0, dist_info=cpu_only, start_step=40)
    assert seeded == []
