"""``spark-mmdet-train``: fine-tune Mask R-CNN with a SparK-pretrained ConvNeXt on COCO (MMDetection 3.x).

Runs on mmengine's ``Runner`` (single process; ``torchrun --nproc_per_node N`` or mmdet's
``dist_train.sh``/slurm launchers for several). The pretrained file may be any ConvNeXt checkpoint
the project reads (converted on the fly into the work dir) or an already converted one; it is
checked key by key against the configured backbone before training starts. The COCO AP of every
validation is written to ``<work-dir>/coco_results.json``.

Example: ``spark-mmdet-train convnext-b --pretrained convnextB_1kpretrained.pth --data-root data/coco``
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from sparkmim.convert import KeyAccountingError
from sparkmim.utils.checkpoint import UnsafeCheckpointError

from .cli import add_common_arguments, build_runner, load_config, results_path, start
from .settings import (AMP_CHOICES, SettingsError, apply_amp, apply_pretrained, apply_resume, off_recipe_batch,
                       use_amp)

PROG = "spark-mmdet-train"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    add_common_arguments(parser, training=True)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--pretrained", type=Path,
                         help="ConvNeXt weights: sparkmim checkpoint, timm or facebookresearch names, or a "
                              "spark-mmdet-convert output")
    weights.add_argument("--from-scratch", action="store_true", help="random backbone initialisation (baseline)")
    parser.add_argument("--resume", nargs="?", const="auto",
                        help="continue training: from the newest checkpoint in the work dir, or from PATH")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="mixed precision: auto = on with CUDA, off on CPU (default auto)")
    parser.add_argument("--batch-size", type=int, help="images per process (config default 2; 16 in all is the recipe)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the lr linearly from the recipe's 16 images per iteration to the actual batch")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="load a pretrained file that needs full (code-executing) unpickling; trusted files only")
    return parser


def configure(args: argparse.Namespace):
    """The run's Config: data, loaders, AMP, pretrained backbone (converted and checked), resume."""
    import torch

    from .pretrained import check_backbone_file, prepare_pretrained

    cfg = load_config(args, training=True)
    apply_amp(cfg, use_amp(args.amp, torch.cuda.is_available()))
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    checkpoint = None
    if args.pretrained is not None:
        checkpoint = prepare_pretrained(args.pretrained, Path(cfg.work_dir), allow_unsafe=args.allow_unsafe)
        check_backbone_file(cfg.model.backbone, checkpoint)
    apply_pretrained(cfg, checkpoint)
    apply_resume(cfg, args.resume)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = start(PROG, build_parser, configure, argv,
                    (SettingsError, KeyAccountingError, UnsafeCheckpointError, FileNotFoundError, ValueError))
    if started is None:
        return 2
    args, cfg = started
    from .hooks import CocoResultsHook

    runner = build_runner(cfg)
    # the process count is known only now: a slurm launch sets up its processes inside the runner
    mismatch = off_recipe_batch(cfg, runner.world_size)
    if mismatch and runner.rank == 0:
        logger.warning("%s", mismatch)
    weights = str(args.pretrained) if args.pretrained else "from scratch"
    runner.register_hook(CocoResultsHook(results_path(args, cfg), {"config": str(args.config), "weights": weights}))
    runner.train()
    if runner.rank == 0:
        print(f"{PROG}: finished {runner.epoch} epochs; results in {results_path(args, cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
