"""Command-line options shared by ``spark-mmdet-train`` and ``spark-mmdet-test``, and the config they build.

mmengine/mmdet are imported inside the functions (they exist in the detection environment only);
without them the commands stop with one line saying how to create that environment.
"""
import argparse
import logging
import os
from pathlib import Path
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type

from sparkmim.utils.logging_setup import setup_command_logging

from .settings import DataSpec, SettingsError, apply_data, apply_loader, resolve_config

logger = logging.getLogger(__name__)

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


class FrameworkMissingError(RuntimeError):
    """mmdet / mmengine / mmpretrain / mmcv's compiled ops are not importable here."""


def require_mmdet(prog: str) -> None:
    """Fail with an actionable message when the MMDetection stack is not installed."""
    try:
        import mmcv.ops  # noqa: F401  (the compiled ops Mask R-CNN needs)
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
        import mmpretrain  # noqa: F401
    except ImportError as error:
        raise FrameworkMissingError(
            f"{prog} needs MMDetection 3.x with mmpretrain and mmcv's compiled ops ({error}); create the "
            f"detection environment with 'bash scripts/setup_mmdet_env.sh' and run .venv-mmdet/bin/{prog}") from error


def add_common_arguments(parser: argparse.ArgumentParser, training: bool) -> None:
    """Config, data, work dir, launcher and ``--cfg-options`` (mmengine's ``key=value`` syntax)."""
    from mmengine.config import DictAction

    parser.add_argument("config", help="packaged config: convnext-s, convnext-b, convnext-l; or a config file")
    parser.add_argument("--work-dir", type=Path, help="logs, checkpoints and results (default: work_dirs/<config>)")
    parser.add_argument("--results", type=Path,
                        help="COCO AP JSON written after each evaluation (default: <work-dir>/coco_results.json)")
    data = parser.add_argument_group("data (default: the config's data/coco/)")
    data.add_argument("--data-root", type=Path,
                      help="COCO root with annotations/instances_{train,val}2017.json, train2017/, val2017/")
    if training:
        data.add_argument("--train-json", type=Path, help="custom COCO-format instances json for training")
        data.add_argument("--train-images", type=Path, help="image folder of --train-json")
    data.add_argument("--val-json", type=Path, help="custom COCO-format instances json for evaluation")
    data.add_argument("--val-images", type=Path, help="image folder of --val-json")
    data.add_argument("--classes", help="comma-separated class names (default for custom data: the json's "
                                        "categories in id order)")
    data.add_argument("--workers", type=int, help="data-loading processes per GPU/process")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                        help="job launcher; 'pytorch' under torchrun (chosen automatically when WORLD_SIZE > 1)")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. train_cfg.max_epochs=12 optim_wrapper.optimizer.lr=1e-4")


def _classes(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise SettingsError("--classes is empty")
    return names


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def launcher(args: argparse.Namespace) -> str:
    """torchrun sets WORLD_SIZE: use the 'pytorch' launcher then unless one was chosen."""
    if args.launcher == "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    return args.launcher


def load_config(args: argparse.Namespace, training: bool) -> Any:
    """The mmengine Config for the command: file, data, loaders, launcher, work dir, then
    ``--cfg-options`` last so they win."""
    from mmengine.config import Config

    path = resolve_config(args.config)
    cfg = Config.fromfile(str(path))
    spec = DataSpec(data_root=args.data_root, train_json=getattr(args, "train_json", None),
                    train_images=getattr(args, "train_images", None), val_json=args.val_json,
                    val_images=args.val_images, classes=_classes(args.classes))
    classes = apply_data(cfg, spec, training)
    if classes is not None:
        logger.info("%d classes: %s", len(classes), ", ".join(classes))
    apply_loader(cfg, getattr(args, "batch_size", None), args.workers, training)
    cfg.launcher = launcher(args)
    if not _cuda_available() and cfg.get("env_cfg", {}).get("dist_cfg") is not None:
        cfg.env_cfg.dist_cfg.backend = "gloo"  # NCCL needs GPUs: CPU processes talk over gloo
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    work_dir = args.work_dir or Path("work_dirs") / path.stem
    cfg.work_dir = str(work_dir)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def results_path(args: argparse.Namespace, cfg: Any) -> Path:
    from .results import RESULTS_FILE

    return Path(args.results) if args.results else Path(cfg.work_dir) / RESULTS_FILE


def build_runner(cfg: Any) -> Any:
    """mmengine's Runner (or the config's ``runner_type``), as mmdet's own tools build it."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def start(prog: str, build_parser: Callable[[], argparse.ArgumentParser],
          configure: Callable[[argparse.Namespace], Any], argv: Optional[Sequence[str]],
          errors: Tuple[Type[BaseException], ...]) -> Optional[Tuple[argparse.Namespace, Any]]:
    """The common start of the two commands: logging, the framework check, the arguments and the
    config. Returns (args, cfg), or None after printing a one-line ``<prog>: error: ...`` for a
    missing framework or any of ``errors`` (the caller then exits with status 2). The parser is built
    after the framework check, since its options use mmengine's (``--help`` included)."""
    setup_command_logging(logging.INFO)
    try:
        require_mmdet(prog)
        args = build_parser().parse_args(argv)
        return args, configure(args)
    except (FrameworkMissingError,) + tuple(errors) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return None
