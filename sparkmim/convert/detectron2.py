"""timm ResNet names -> Detectron2 ResNet names (the ``.pkl`` Detectron2 loads as ``MODEL.WEIGHTS``).

Detectron2 names the parts of a ResNet differently from timm (``stem.conv1.norm`` for ``bn1``,
``res2`` for ``layer1``, ``shortcut`` for ``downsample.0``) and loads ``.pkl`` files carrying
``matching_heuristics`` by name suffix, so a converted key such as ``res2.0.conv1.weight`` lands on
``backbone.bottom_up.res2.0.conv1.weight`` of any ResNet-based model. Variants Detectron2's ResNet
cannot represent (the deep 3-conv stem and the average-pool shortcut of ResNet-C/D) are refused
rather than loaded half-way. Needs no Detectron2: the file is plain pickled numpy arrays."""
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np
import torch

from sparkmim.utils.checkpoint import save_atomic

from .key_rules import Drop, KeyTable, Refuse, Rename

AUTHOR = "sparkmim"
_BN = "weight|bias|running_mean|running_var|num_batches_tracked"
_BLOCK = r"layer([1-4])\.(\d+)"


def _stage(match) -> str:
    return f"res{int(match[1]) + 1}.{match[2]}"


TIMM_RESNET_TO_D2 = KeyTable(
    "timm ResNet -> Detectron2 ResNet",
    renames=(
        Rename(r"conv1\.weight", "stem.conv1.weight"),
        Rename(rf"bn1\.({_BN})", r"stem.conv1.norm.\1"),
        Rename(_BLOCK + r"\.conv([1-3])\.weight", lambda m: f"{_stage(m)}.conv{m[3]}.weight"),
        Rename(_BLOCK + rf"\.bn([1-3])\.({_BN})", lambda m: f"{_stage(m)}.conv{m[3]}.norm.{m[4]}"),
        Rename(_BLOCK + r"\.downsample\.0\.weight", lambda m: f"{_stage(m)}.shortcut.weight"),
        Rename(_BLOCK + rf"\.downsample\.1\.({_BN})", lambda m: f"{_stage(m)}.shortcut.norm.{m[3]}"),
    ),
    drops=(Drop(r"fc\.(weight|bias)", "ImageNet classifier"),),
    refusals=(
        Refuse(r"conv1\.\d+\..*", "deep stem (three 3x3 convs, ResNet-C/D): Detectron2's BasicStem has a single 7x7 conv"),
        Refuse(_BLOCK + r"\.downsample\.2\..*",
               "average-pool shortcut (avg-down, ResNet-D): Detectron2's shortcut is a strided 1x1 conv"),
    ),
    required=(("stem.conv1.weight", "no ResNet stem ('conv1.weight') found: is this a timm ResNet state dict?"),),
)


@dataclass
class D2Conversion:
    """Result of a conversion: Detectron2-named numpy arrays plus the key accounting."""

    model: Dict[str, np.ndarray]
    renamed: Dict[str, str] = field(default_factory=dict)  # timm key -> Detectron2 key
    dropped: List[str] = field(default_factory=list)  # timm keys left out on purpose (classifier)

    def checkpoint(self) -> Dict[str, Any]:
        """The object Detectron2's ``DetectionCheckpointer`` expects inside a ``.pkl`` file."""
        return {"model": self.model, "__author__": AUTHOR, "matching_heuristics": True}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy().copy()


def timm_resnet_to_d2(state_dict: Mapping[str, torch.Tensor]) -> D2Conversion:
    """Rename a timm ResNet state dict to Detectron2's ResNet naming and convert the values to
    numpy, accounting for every key. Raises :class:`~sparkmim.convert.KeyAccountingError` (its
    :class:`~sparkmim.convert.key_rules.RefusedKeysError` subclass for a variant Detectron2 cannot
    hold) naming the keys."""
    renamed, report = TIMM_RESNET_TO_D2.convert(state_dict)
    return D2Conversion(model={k: _to_numpy(v) for k, v in renamed.items()}, renamed=report.renamed,
                        dropped=report.dropped)


def check_d2_target(path: Path) -> None:
    """Detectron2 picks its loader by the file extension: converted weights must be a ``.pkl``."""
    if Path(path).suffix != ".pkl":
        raise ValueError(f"Detectron2 reads converted weights from a '.pkl' file; name the target e.g. "
                         f"{Path(path).with_suffix('.pkl')}")


def write_pkl(conversion: D2Conversion, path: Path) -> Path:
    """Write the ``.pkl`` atomically (a crash never leaves a truncated file behind)."""
    check_d2_target(path)
    return save_atomic(conversion.checkpoint(), path, dump=pickle.dump)
