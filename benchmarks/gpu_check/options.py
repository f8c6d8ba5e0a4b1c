"""The settings every part receives (through JSON: each part runs in its own process)."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch


@dataclass(frozen=True)
class CheckOptions:
    out: str
    device: str = "cuda"
    quick: bool = False
    fixtures: Optional[str] = None      # the reference-parity fixtures (a folder of *.pt)
    value_data: Optional[str] = None    # Fashion-MNIST (or a folder data set) for the value benchmark part
    seconds: float = 0.0                # this part's time limit (the part may plan with it)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CheckOptions":
        return cls(**json.loads(text))
