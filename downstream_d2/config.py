"""The packaged Detectron2 configs and the config keys this project adds to Detectron2's.

Configs can be named by file name (``mask_rcnn_R_50_FPN_1x``) instead of a path, so they work from
an installed wheel without knowing where it lives.
"""
from importlib import resources
from pathlib import Path
from typing import Any, List

PACKAGE = "sparkmim.downstream_d2"
DEFAULT_CONFIG = "mask_rcnn_R_50_FPN_1x"


def config_dir() -> Path:
    """Folder of the YAML configs shipped as package data."""
    return Path(str(resources.files(PACKAGE) / "configs"))


def available_configs() -> List[str]:
    """Names of the shipped configs that describe a full model (the base file is left out)."""
    return sorted(p.stem for p in config_dir().glob("*.yaml") if not p.stem.startswith("Base-"))


def resolve_config_file(name_or_path: str) -> Path:
    """An existing file path as is; otherwise a shipped config by name (with or without '.yaml')."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = config_dir() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(f"config '{name_or_path}' is neither a file nor a shipped config; "
                            f"shipped: {', '.join(available_configs())}")


def add_spark_config(cfg: Any) -> None:
    """Add SOLVER.OPTIMIZER and SOLVER.LR_DECAY to a Detectron2 CfgNode.

    The defaults (SGD, no decay) keep Detectron2's behaviour for configs that do not set them."""
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.LR_DECAY = 1.0
