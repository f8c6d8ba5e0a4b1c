"""Find host-device synchronisations in a training step, on any device.

Why: on a GPU, an op whose result size or value the host must know (``nonzero``, boolean indexing,
``.item()``, ``unique``, ...) stalls the CPU until the GPU has caught up, so the host can no longer
queue work ahead. CUDA's own detector (``torch.cuda.set_sync_debug_mode('error')``) needs a GPU;
this module records the same class of ops at the dispatcher level, so a CPU run (and a test) can
show that a step contains none. On CUDA, :func:`cuda_sync_debug_passes` runs the step under the
CUDA detector as well.
"""
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparkmim.utils.errors import first_line

# ATen ops that need the host to read device memory (their output shape or value is data-dependent)
SYNCING_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), float(t), bool(t), int(t)
    "aten.is_nonzero",  # if tensor:
    "aten.nonzero",  # nonzero / argwhere / boolean indexing
    "aten.masked_select",
    "aten.masked_scatter",
    "aten.unique_dim",
    "aten._unique2",
    "aten.unique_consecutive",
    "aten.equal",
    "aten.allclose",
    "aten.bincount",
    "aten.histc",
})
# ``torch.tensor(value, device=...)`` and its kin: the data is copied from pageable host memory with a
# blocking copy on a GPU (the dispatcher sees the new tensor as ``aten.lift_fresh``); counted on any
# device, since a step needs no such tensor
HOST_DATA = "tensor from host data (torch.tensor, as_tensor)"


def _op_name(func: Any) -> str:
    """'aten.nonzero' for the overload aten.nonzero.default."""
    return f"{func.namespace}.{func._schema.name.split('::')[-1]}"


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class HostSyncRecorder(TorchDispatchMode):
    """Counts, by op name, every syncing op dispatched while active (autograd's backward included).

    Boolean-mask indexing and ``repeat_interleave`` with a tensor of repeats and no output size are
    counted too (they compute their output size on the host), and so is every tensor made from
    Python data (:data:`HOST_DATA`). ``host_resident``: tensors that live
    on the CPU whatever the training device (e.g. an optimizer's step counter); reading them never
    synchronises with a GPU, so they are not counted (on a CPU run nothing else tells them apart)."""

    def __init__(self, host_resident: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.host_resident = {id(t) for t in host_resident}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        name = _op_name(func)
        if name in SYNCING_OPS:
            if not (args and id(args[0]) in self.host_resident):
                self.counts[name] += 1
        elif name in ("aten.index", "aten.index_put", "aten.index_put_") and _has_bool_index(args):
            self.counts[f"{name} with a boolean mask"] += 1
        elif name == "aten.repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") and \
                kwargs.get("output_size") is None:
            self.counts["aten.repeat_interleave with tensor repeats, no output_size"] += 1
        elif name == "aten.lift_fresh":
            self.counts[HOST_DATA] += 1
        return func(*args, **kwargs)


def optimizer_host_scalars(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    """The per-group step counters that optimizers such as timm's LAMB keep as CPU tensors."""
    return [group["step"] for group in optimizer.param_groups
            if isinstance(group.get("step"), torch.Tensor) and group["step"].device.type == "cpu"]


def record_host_syncs(step: Callable[[], Any], host_resident: Iterable[torch.Tensor] = ()) -> Dict[str, int]:
    """Run ``step`` once and return the syncing ops it dispatched ({} when there are none)."""
    recorder = HostSyncRecorder(host_resident)
    with recorder:
        step()
    return dict(recorder.counts)


def step_sync_report(variant: str, config: Any) -> Dict[str, Any]:
    """Build one benchmark variant, run a warm-up step, then record one full training step
    (forward, backward, LAMB step); on CUDA also run one under the CUDA sync detector."""
    from .step import build_step
    device = torch.device(config.device)
    built = build_step(variant, config)
    step = built.step
    step()
    report: Dict[str, Any] = {"variant": variant,
                              "syncing_ops": record_host_syncs(step, optimizer_host_scalars(built.optimizer))}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        report["cuda_sync_debug_error"] = cuda_sync_debug_passes(step)
    return report


def cuda_sync_debug_passes(step: Callable[[], Any]) -> Optional[str]:
    """Run ``step`` under ``torch.cuda.set_sync_debug_mode('error')``; None if it passed, else the error."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as error:
        return first_line(error)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return None
