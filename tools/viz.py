"""``spark-viz``: what a pre-trained SparK model reconstructs, and why the sparse conv matters.

``spark-viz CHECKPOINT IMAGE... --out grid.png [--mask-ratio R --seed S]`` loads a full checkpoint
(``spark-pretrain``'s ``checkpoint_last.pth``, a ``spark-convert --to sparkmim`` file, or the
reference release ``*_withdecoder_1kpretrained_spark_style.pth``) and draws one row per image:
input | masked input | reconstruction | reconstruction with the visible patches pasted back. Runs
on CPU; images of any size are resized and centre-cropped to the model's input size.

``spark-viz --spconv-demo [IMAGE] --out demo.png`` draws the paper's "mask pattern vanishing"
illustration (see :mod:`sparkmim.tools.spconv_demo`).
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sparkmim.convert import KeyAccountingError
from sparkmim.model.settings import (InputSizeError, SparKSettingError, check_input_size, check_mask_fits,
                                     check_mask_ratio)
from sparkmim.utils.checkpoint import UnsafeCheckpointError, load_file
from sparkmim.utils.images import UnreadableImageError, load_rgb
from sparkmim.utils.errors import UserError, run_command
from sparkmim.utils.logging_setup import setup_command_logging
from sparkmim.utils.values import ChannelMismatchError
from sparkmim.pretrain.data import ValueSpec

logger = logging.getLogger("sparkmim.tools.viz")


class VizError(UserError, ValueError):
    """A problem the user can fix; reported in one line (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-viz",
        description="Draw SparK reconstructions (input | masked | reconstruction | reconstruction + visible) "
                    "from a full checkpoint, or the sparse-vs-dense conv illustration (--spconv-demo).")
    parser.add_argument("inputs", nargs="*", metavar="CHECKPOINT IMAGE",
                        help="the checkpoint, then one or more images (with --spconv-demo: at most one image)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--mask-ratio", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="PX",
                        help="one size or HEIGHT WIDTH, multiples of 32 (default: the checkpoint's)")
    parser.add_argument("--model", default=None, help="timm model name, when the file does not say")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="load a checkpoint that needs full (code-executing) unpickling; only for files you trust")
    parser.add_argument("--bands", type=int, nargs="+", default=None, metavar="I",
                        help="the 1 or 3 channels drawn, for images with more than 3 (default: the first three)")
    parser.add_argument("--spconv-demo", action="store_true",
                        help="draw the 'mask pattern vanishing' illustration instead (no checkpoint needed)")
    parser.add_argument("--layers", type=int, default=5, help="--spconv-demo: CNN stages, each halving the "
                        "resolution (1-5)")
    return parser


def _build_kwargs(info: Any) -> Dict[str, Any]:
    config = dict(info.spark_config)
    if "reference" in config:
        from sparkmim.convert import build_kwargs_from_reference_config

        return build_kwargs_from_reference_config(config["reference"])
    kwargs = {k: config[k] for k in ("input_size", "mask_ratio", "decoder_width", "densify_norm") if k in config}
    if isinstance(kwargs.get("input_size"), list):
        kwargs["input_size"] = tuple(kwargs["input_size"])
    return kwargs


def load_spark(path: Path, model: Optional[str], allow_unsafe: bool) -> torch.nn.Module:
    """A SparK model with every tensor from the file (only modules the forward never runs may be absent)."""
    return read_checkpoint(path, model, allow_unsafe)[0]


def read_checkpoint(path: Path, model: Optional[str], allow_unsafe: bool
                    ) -> Tuple[torch.nn.Module, Optional[ValueSpec]]:
    """:func:`load_spark`'s model, and how its images are read: None for 8-bit RGB, else the pre-training's
    channels and statistics."""
    from sparkmim import build_spark
    from sparkmim.convert import load_state_dict_checked

    from sparkmim.convert.formats import recognise

    try:
        obj = load_file(path, allow_unsafe=allow_unsafe)
    except UnsafeCheckpointError as error:
        raise VizError(str(error).replace("pass the allow-unsafe option", "pass --allow-unsafe")) from error
    except FileNotFoundError as error:
        raise VizError(str(error)) from error
    try:
        info = recognise(obj, model)
    except (ValueError, KeyAccountingError) as error:
        raise VizError(f"{path} is not a checkpoint spark-viz can read ({error})") from error
    if not info.has_decoder:
        raise VizError(f"{path} holds no decoder ({info.description}); spark-viz needs a full checkpoint: "
                       "spark-pretrain's checkpoint_last.pth or a *_withdecoder_* release file")
    if not info.model:
        raise VizError(f"{path} does not say which timm model it holds; pass --model NAME")
    kwargs = _build_kwargs(info)
    if info.model_kwargs:  # a channel count other than 3, or architecture arguments a converted file records
        kwargs["encoder_kwargs"] = dict(info.model_kwargs)
    spark = build_spark(info.model, **kwargs)
    try:
        load_state_dict_checked(spark, info.spark_state, str(path),
                                allowed_missing=["encoder.model." + k for k in spark.encoder.unused_state_keys])
    except KeyAccountingError as error:
        raise VizError(f"--model {info.model}: {info.override_note}: {error}" if info.override_note else str(error)
                       ) from error
    return spark.eval(), value_spec_of(info)


def value_spec_of(info: Any) -> Optional[ValueSpec]:
    """Files are read with their own values when the pre-training did (another channel count, or its own
    statistics); statistics missing from the file are taken from the images drawn (see load_images)."""
    mean, std = info.spark_config.get("mean"), info.spark_config.get("std")
    if info.in_chans == 3 and mean is None:
        return None
    return ValueSpec(info.in_chans, tuple(mean) if mean else (), tuple(std) if std else ())


def load_images(paths: Sequence[Path], size: Tuple[int, int], values: Optional[ValueSpec] = None) -> torch.Tensor:
    from sparkmim.pretrain.data import eval_image, eval_values
    from sparkmim.utils.values import norm_stats_of

    loaded = []
    for path in paths:
        try:
            loaded.append(values.load(path) if values is not None else load_rgb(path))
        except ChannelMismatchError as error:  # spark-viz has no --in-chans: the checkpoint decides
            raise VizError(f"cannot draw {path}: it has {error.found} channel(s), the checkpoint was pre-trained on "
                           f"{error.expected}") from error
        except (UnreadableImageError, OSError) as error:
            raise VizError(f"cannot read image {path} ({error})") from error
    if values is None:
        return torch.stack([eval_image(image, size) for image in loaded])
    if not values.mean:
        mean, std = norm_stats_of(loaded, values.in_chans)
        logger.warning("the checkpoint holds no normalisation statistics: using the drawn images' own (mean %s, "
                       "std %s)", mean, std)
        values = ValueSpec(values.in_chans, tuple(mean), tuple(std))
    return torch.stack([eval_values(image, size, values) for image in loaded])


def _size(value: Optional[List[int]], default: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """``--input-size``, checked against the model's own total stride."""
    if not value:
        return default
    if len(value) > 2:  # a third number was dropped without a word
        raise VizError(f"--input-size takes one or two numbers (PX or H W), got {len(value)}")
    height, width = (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    try:
        check_input_size(height, width, stride)
    except InputSizeError as error:
        raise VizError(f"{error.problem}; use e.g. --input-size {error.suggestion[0]} {error.suggestion[1]}") from None
    return height, width


def run(args: argparse.Namespace) -> Path:
    from sparkmim.utils.pictures import picture_path

    out = picture_path(args.out)
    if args.spconv_demo:
        from .spconv_demo import draw_demo

        if len(args.inputs) > 1:
            raise VizError("--spconv-demo takes at most one image")
        try:
            return draw_demo(Path(args.inputs[0]) if args.inputs else None, out, layers=args.layers, seed=args.seed)
        except (ValueError, OSError) as error:
            raise VizError(str(error)) from error
    if len(args.inputs) < 2:
        raise VizError("give a checkpoint and at least one image: spark-viz CHECKPOINT IMAGE... --out grid.png")
    if any(Path(name).resolve() == out.resolve() for name in args.inputs):  # the picture replaced the photo
        raise VizError(f"--out {out} is one of the inputs; give the picture another file name")
    spark, values = read_checkpoint(Path(args.inputs[0]), args.model, args.allow_unsafe)
    size = _size(args.input_size, tuple(spark.input_size), spark.downsample_ratio)
    mask_ratio = spark.mask_ratio if args.mask_ratio is None else args.mask_ratio
    check_mask_ratio(mask_ratio)
    try:  # a picture with nothing masked (or nothing visible) shows nothing of the method
        check_mask_fits(size[0] // spark.downsample_ratio, size[1] // spark.downsample_ratio, mask_ratio)
    except SparKSettingError as error:
        raise VizError(f"--input-size {size[0]} {size[1]} with --mask-ratio {mask_ratio}: {error}") from None
    images = load_images([Path(p) for p in args.inputs[1:]], size, values)
    from sparkmim.utils.pictures import plot_reconstructions, reconstruct

    panels = reconstruct(spark, images, seed=args.seed, mask_ratio=mask_ratio)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return plot_reconstructions(panels, out, bands=args.bands, stretch=values is not None)
    except ValueError as error:  # bands that the images do not have
        raise VizError(f"--bands: {error}") from error
    except OSError as error:  # a folder that cannot be made or written
        raise VizError(f"--out {out}: {error.strerror or error}") from error


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_command_logging(logging.WARNING)
    def body() -> int:
        print(f"spark-viz: wrote {run(args)}")
        return 0

    return run_command("spark-viz", body)


if __name__ == "__main__":
    sys.exit(main())
