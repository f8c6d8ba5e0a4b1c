"""``spark-d2-train``: Mask R-CNN fine-tuning and COCO evaluation of SparK-pretrained ResNets.

Detectron2's own command line (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``KEY VALUE`` overrides)
plus options that register a custom COCO-format dataset. ``--config-file`` also accepts the name of a
shipped config (``mask_rcnn_R_50_FPN_1x``, ...). Also runnable as
``python -m sparkmim.downstream_d2.train_net``.
"""
import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import DEFAULT_CONFIG, available_configs, resolve_config_file
from .datasets import DatasetSpecError, custom_datasets

INSTALL_HINT = ("Detectron2 is not installed; install it from source: "
                "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
                "(see docs/detectron2.md)")

EPILOG = f"shipped configs: {', '.join(available_configs())}"


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for fine-tuning on one's own COCO-format data without writing code."""
    group = parser.add_argument_group("custom COCO-format dataset (overrides DATASETS.* and NUM_CLASSES)")
    group.add_argument("--dataset-name", default="custom", help="registry name prefix: <name>_train, <name>_val")
    group.add_argument("--train-json", type=Path, help="COCO instances json of the training split")
    group.add_argument("--train-images", type=Path, help="image folder of the training split")
    group.add_argument("--val-json", type=Path, help="COCO instances json of the evaluation split")
    group.add_argument("--val-images", type=Path, help="image folder of the evaluation split")


def build_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` extended with the dataset options."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(epilog=EPILOG)
    parser.prog = "spark-d2-train"
    parser.set_defaults(config_file=DEFAULT_CONFIG)
    add_dataset_arguments(parser)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Fail before launching any process on a bad config name or dataset option (one-line errors);
    a shipped config name becomes its path (Detectron2 reads ``args.config_file`` itself)."""
    try:
        args.config_file = str(resolve_config_file(args.config_file))
        custom_datasets(args.dataset_name, args.train_json, args.train_images, args.val_json, args.val_images)
    except (FileNotFoundError, DatasetSpecError) as error:
        sys.exit(f"spark-d2-train: error: {error}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    if importlib.util.find_spec("detectron2") is None:
        sys.exit(f"spark-d2-train: error: {INSTALL_HINT}")
    from detectron2.engine import launch

    from .trainer import run

    args = build_parser().parse_args(argv)
    check_arguments(args)
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
