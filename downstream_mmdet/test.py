"""``spark-mmdet-test``: COCO box and mask AP of a trained Mask R-CNN checkpoint (MMDetection 3.x).

Evaluates on the config's val split (or ``--data-root`` / ``--val-json`` + ``--val-images``) and
writes the AP table to ``<work-dir>/coco_results.json`` (``--results`` to choose). Several
processes: ``torchrun --nproc_per_node N`` (the 'pytorch' launcher is picked automatically).

Example: ``spark-mmdet-test convnext-b work_dirs/mask-rcnn_spark-convnext-b_fpn_ms-crop-3x_coco/epoch_36.pth
--data-root data/coco``
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .cli import add_common_arguments, build_runner, load_config, results_path, start
from .settings import SettingsError

PROG = "spark-mmdet-test"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    add_common_arguments(parser, training=False)
    parser.add_argument("checkpoint", type=Path, help="trained detector checkpoint (e.g. work_dirs/.../epoch_36.pth)")
    return parser


def configure(args: argparse.Namespace):
    """The evaluation Config: the detector weights come from the checkpoint, not the backbone file."""
    if not args.checkpoint.is_file():
        raise SettingsError(f"checkpoint not found: {args.checkpoint}")
    cfg = load_config(args, training=False)
    cfg.model.backbone.pop("init_cfg", None)  # no backbone file needed
    cfg.load_from = str(args.checkpoint)
    cfg.resume = False
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = start(PROG, build_parser, configure, argv, (SettingsError, FileNotFoundError, ValueError))
    if started is None:
        return 2
    args, cfg = started
    from .hooks import CocoResultsHook

    runner = build_runner(cfg)
    path = results_path(args, cfg)
    runner.register_hook(CocoResultsHook(path, {"config": str(args.config), "weights": str(args.checkpoint)}))
    runner.test()
    if runner.rank == 0:
        table = json.loads(path.read_text())
        summary = ", ".join(f"{task} AP {table[task]['AP']}" for task in ("bbox", "segm") if task in table)
        print(f"{PROG}: {summary}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
