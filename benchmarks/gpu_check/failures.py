"""A check that raises becomes a failed check, so one failure does not cost a part its other findings.

Why: the fused triton norm kernel runs on a GPU for the first time in this command. Were its first
compile or launch to raise inside a part, the part would end there, and the torch kernel's checks and
throughput rows after it would be lost with it, on a visit of a few minutes. Each kernel's check or row
therefore records its own failure and the part goes on. An error that leaves the CUDA context unusable
(an illegal address, a device-side assert) is sticky: every later CUDA call fails too, so the part
stops there with a message; the runner starts the next part in a fresh process."""
from typing import Optional

import torch

from sparkmim.utils.errors import describe_error

from .results import PartResult


class DeviceLost(RuntimeError):
    """The CUDA device no longer answers in this process after a failed check."""


def device_answers(device: torch.device) -> bool:
    """Whether a CUDA device still computes after an error (a sticky error fails every later call)."""
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


def record_failure(result: PartResult, name: str, error: BaseException, device: torch.device,
                   passed: Optional[bool] = False) -> None:
    """``error`` as the check ``name`` (``passed`` False; None where it only shows that something does not
    apply here); raises :class:`DeviceLost` when a CUDA device stopped answering, ending the part."""
    described = describe_error(error)
    result.add(name, passed, described)
    if device.type == "cuda" and not device_answers(device):
        raise DeviceLost(f"the CUDA device stopped answering after '{name}' ({described}); the part's "
                         "remaining checks need a fresh process (the next part gets one)")
