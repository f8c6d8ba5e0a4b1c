"""``spark-bench value``: does SparK pre-training make a downstream model better? SparK vs scratch on real data.

    spark-bench value --preset cpu                       # Fashion-MNIST, 2 CPU cores, under an hour
    spark-bench value --preset gpu                       # one GPU, a few minutes, also 100% labels
    spark-bench value --smoke                            # every stage in seconds on generated data
    spark-bench value --preset cpu --data my_dataset     # train/<class>/*, test|val/<class>/* (or IDX files)

See docs/value.md for the protocol and the measured tables.
"""
import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from sparkmim.utils.errors import run_command
from sparkmim.utils.output_paths import check_output_folder
from .presets import PRESETS, get_preset

logger = logging.getLogger(__name__)


def _fractions(text: str) -> tuple:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _seeds(text: str) -> tuple:
    return tuple(int(part) for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spark-bench value", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget (default: cpu)")
    parser.add_argument("--smoke", action="store_true", help="same as --preset smoke (generated data unless --data)")
    parser.add_argument("--data", default=None,
                        help="fashion-mnist (default; the dataset-fashion-mnist package), a folder of the four IDX "
                             "files, or a folder with train/<class>/ and test/<class>/ (or val/<class>/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/value_<preset>)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    parser.add_argument("--model", default=None, help="override the encoder (timm name or package.module:factory)")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--pretrain-images", type=int, default=None, help="pre-train on this many training images")
    parser.add_argument("--decoder-width", type=int, default=None)
    parser.add_argument("--fractions", type=_fractions, default=None, help="label fractions, e.g. 0.01,0.1")
    parser.add_argument("--seeds", type=_seeds, default=None, help="fine-tuning seeds, e.g. 0,1,2")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from sparkmim.utils.logging_setup import setup_logging

    from .protocol import run_value_benchmark

    args = build_parser().parse_args(argv)
    setup_logging()
    name = "smoke" if args.smoke else args.preset
    overrides = {"model": args.model, "input_size": args.input_size, "pretrain_epochs": args.pretrain_epochs,
                 "pretrain_images": args.pretrain_images, "decoder_width": args.decoder_width,
                 "fractions": args.fractions, "seeds": args.seeds}

    def body() -> int:
        preset = get_preset(name, **overrides)
        missing = [f for f in preset.fractions if f not in preset.finetune_epochs]
        if missing:
            raise ValueError(f"no fine-tuning epochs for label fraction(s) {missing}; the preset '{name}' knows "
                             f"{sorted(preset.finetune_epochs)}")
        out = args.out or Path("runs") / f"value_{name}"
        check_output_folder(out, "--out")
        run_value_benchmark(preset, args.data, out, device_name=args.device, smoke=name == "smoke")
        return 0

    return run_command("spark-bench value", body, statuses={ValueError: 2})
