"""The settings every part receives (through JSON: each part runs in its own process)."""
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch


@dataclass(frozen=True)
class CheckOptions:
    out: str
    device: str = "cuda"
    quick: bool = False
    fixtures: Optional[str] = None      # the reference-parity fixtures (a folder of *.pt)
    value_data: Optional[str] = None    # Fashion-MNIST (or a folder data set) for the value benchmark part
    seconds: float = 0.0                # this part's time limit (the part may plan with it); 0: none
    deadline: float = 0.0               # time.time() by which the part must end, set by its process; 0: none
    keep_scratch: bool = False          # keep the generated images, run folders and checkpoints
    kernels: Optional[Tuple[str, ...]] = None  # the norm kernels to check (torch first); None: where they run

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def norm_kernels(self) -> Tuple[str, ...]:
        """The masked BatchNorm kernels to check and time here: those given (``--norm-kernels``), else the
        torch kernel everywhere, the fused triton kernel on CUDA devices when triton is installed (torch's
        CUDA wheels bring it), and on a CPU under Triton's interpreter (TRITON_INTERPRET=1: the code path
        runs, its figures mean nothing)."""
        from sparkmim.sparse.norms import check_norm_kernel
        if self.kernels:
            return tuple(self.kernels)
        try:
            check_norm_kernel("triton", self.torch_device)
        except ValueError:
            return ("torch",)
        return ("torch", "triton")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def scratch_dir(self) -> Path:
        """Where parts write bulky files (images, run folders, checkpoints): deleted after each part
        unless ``keep_scratch``, so ``out`` stays small enough to be copied back whole."""
        return self.out_dir / "scratch"

    def seconds_left(self, margin: float = 2.0, floor: float = 10.0) -> Optional[float]:
        """A sub-process's timeout: what is left of the part's limit less ``margin``, at least ``floor``
        (None when the part has no limit). Each step may use what the ones before it left over."""
        if not self.deadline:
            return None
        return max(floor, self.deadline - time.time() - margin)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CheckOptions":
        return cls(**json.loads(text))
