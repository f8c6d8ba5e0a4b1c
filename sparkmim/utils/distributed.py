"""Process-group setup from the ``torchrun`` environment, and the few collectives the jobs need.

Plain ``python`` launches run as a single process with no process group; ``torchrun`` (single or
multi node) sets RANK/WORLD_SIZE/LOCAL_RANK and gets NCCL on GPUs, gloo on CPU."""
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Type, TypeVar

import torch
import torch.distributed as dist

from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)


class DeviceError(UserError, RuntimeError):
    """The asked-for device is not one the jobs know, or is not there."""


T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICE_NAMES = "auto, cuda, cuda:N or cpu"


def is_device_name(device: str) -> bool:
    """Whether ``device`` is one of :data:`DEVICE_NAMES` (checked before any CUDA call, and by the
    trainers' option parsers, so a misspelt device fails at once rather than after the data is read)."""
    kind, _, index = device.partition(":")
    return kind in ("auto", "cuda", "cpu") and (not index or (kind == "cuda" and index.isdigit()))


def check_device_name(device: object, error: Type[Exception]) -> None:
    """Raise ``error`` (the caller's own kind: a config error in the trainers' option checks, a device
    error at process-group setup) with the one-line message every command gives for a misspelt device."""
    if not is_device_name(str(device)):
        raise error(f"--device must be {DEVICE_NAMES}, got {str(device)!r}")


def check_cuda_visible(device: str, error: Type[Exception], hint: str = "") -> None:
    """Raise ``error`` with the one line every command gives when ``device`` asks for CUDA that torch cannot
    see (``hint``: what else to try, after "use --device cpu")."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise error(f"--device {device} was asked for but no CUDA device is visible to torch {torch.__version__}; "
                    f"use --device cpu{hint}, or check the driver and CUDA_VISIBLE_DEVICES")


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Initialise the default process group when launched by torchrun; pick the device.

    ``device`` is 'auto' (cuda when available), 'cuda', 'cuda:N' or 'cpu'. Under torchrun each process
    takes the GPU of its local rank (see :func:`cuda_index`); 'cuda:N' chooses the GPU of a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_device_name(device, DeviceError)
    kind, _, index = str(device).partition(":")
    use_cuda = torch.cuda.is_available() if kind == "auto" else kind == "cuda"
    check_cuda_visible(device, DeviceError)
    if use_cuda:
        visible = torch.cuda.device_count()
        gpu = int(index) if index and world_size == 1 else cuda_index(local_rank, visible)
        if gpu >= visible:
            raise DeviceError(f"--device {device}: GPU {gpu} asked for, {visible} visible")
        chosen = torch.device("cuda", gpu)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        # NCCL: name the process's own GPU; older torch guessed rank % GPU count, another GPU than
        # cuda_index() chose when a node runs fewer processes than it has GPUs
        nccl = dist.get_backend() == "nccl"
        dist.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)


def cuda_index(local_rank: int, visible: int) -> int:
    """The GPU of a process: its local rank, or 0 when each process sees one GPU of its own (schedulers
    such as SLURM with one GPU per task set CUDA_VISIBLE_DEVICES per process)."""
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise RuntimeError(f"LOCAL_RANK is {local_rank} but only {visible} GPUs are visible; start at most "
                           f"{visible} processes per node (torchrun --nproc_per_node {visible})")
    return local_rank


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor across processes (a copy; the input is untouched)."""
    value = value.detach().clone()
    if is_dist():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def gather_objects(obj: Any) -> List[Any]:
    """Every process's picklable ``obj``, in rank order (collective; ``[obj]`` without a process group). For
    small values only: each is pickled and sent to every process."""
    if not is_dist():
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def computed_on_main(compute: Callable[[], T], what: str) -> T:
    """``compute()`` run by the main process alone and its result handed to every process: work whose result
    every process needs but which costs reading data (statistics over a sample of remote shards, say) is done
    once. An error on the main process is raised there and reported to the others as a :class:`UserError`
    naming ``what``, so that no process waits for a value that never comes."""
    if not is_dist():
        return compute()
    from sparkmim.utils.errors import UserError

    box: List[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, compute())
        except BaseException as error:
            dist.broadcast_object_list([(False, f"{type(error).__name__}: {error}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    succeeded, value = box[0]
    if not succeeded:
        raise UserError(f"the main process failed at {what} ({value})")
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
