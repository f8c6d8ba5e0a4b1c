"""The command-line options that spark-pretrain and spark-finetune share, declared once.

A flag both trainers take is spelled, typed, checked and explained the same way in both, and a fix
reaches both (before, ``--device cuda:1`` ran spark-pretrain on the second GPU but was refused by
spark-finetune's parser); in ``--help`` each group has a heading of its own. Each trainer adds its
own options (data, model, recipe, schedule) beside these. Every default is ``None``: an option given
overrides the recipe layers below it (:func:`sparkmim.utils.config.merge`), one not given leaves
them as they are."""
import argparse

from .distributed import DEVICE_NAMES
from .run import AMP_CHOICES, DEPRECATED_AMP
from .values import NORM_STATS

AMP_OPTION_CHOICES = AMP_CHOICES + tuple(DEPRECATED_AMP)  # "none": spark-finetune's old spelling of "off"


def add_run_folder_options(parser: argparse.ArgumentParser) -> None:
    """Where a run writes, how it continues, and its seed."""
    add = parser.add_argument_group('run folder and seed').add_argument
    add("--output-dir", default=None, help="run folder: config, logs, metrics, checkpoints")
    add("--resume", default=None, help="'auto' (the run folder's last checkpoint, if any) or a checkpoint path")
    add("--overwrite", action=argparse.BooleanOptionalAction, default=None,
        help="train again from the start in an --output-dir that already holds a run (without it, such a folder "
             "is refused: continue it with --resume auto)")
    add("--seed", type=int, default=None)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """The device, its precision and memory layout, and the loader processes that feed it."""
    add = parser.add_argument_group('device and precision').add_argument
    add("--device", default=None,  # checked with the recipe's value by each trainer's validate, in one line
        help=f"{DEVICE_NAMES} (auto: cuda when available; cuda:N: that GPU, for a single process)")
    add("--amp", default=None, choices=AMP_OPTION_CHOICES,
        help="autocast precision (off: float32; fp16 adds a gradient scaler)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="network and batches in channels_last (default: on for CUDA devices, off on CPU)")
    add("--workers", type=int, default=None, help="data-loading processes per training process (0: load in the training "
        "process; default: the cores this process may use / the training processes on the node, 1 to 8)")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """The global batch and how each process splits it into forward passes (sparkmim.utils.run.batch_layout)."""
    add = parser.add_argument_group('batch').add_argument
    add("--batch-size", type=int, default=None, help="global batch size (all processes)")
    add("--micro-batch", type=int, default=None,
        help="images per process per forward pass; gradients are accumulated up to --batch-size")
    add("--accum-steps", type=int, default=None,
        help="or: forward passes per optimizer step (the micro-batch is --batch-size / processes / this)")


def add_reporting_options(parser: argparse.ArgumentParser, log_interval_default: int) -> None:
    """How often the host reads the loss, and the progress bar."""
    add = parser.add_argument_group('progress and logging').add_argument
    add("--log-interval", type=int, default=None,
        help=f"optimizer steps between reads of the loss, log lines and metric records (default "
             f"{log_interval_default}); each read makes the host wait for the device, so larger keeps a GPU busier")
    add("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on the main process (default: on)")


def add_value_options(parser: argparse.ArgumentParser, in_chans_default: str) -> None:
    """Input channels and normalisation of data read with its own values (sparkmim.utils.values)."""
    add = parser.add_argument_group('channels and normalisation').add_argument
    add("--in-chans", type=int, default=None,
        help="input channels; other than 3, or --mean/--std, or --norm-stats auto read the files with their own "
             f"values: 8/16-bit grayscale PNG/TIFF, multi-band TIFF, .npy (H, W, C) (default: {in_chans_default})")
    add("--mean", type=float, nargs="+", default=None, help="per-channel mean, in the data's units")
    add("--std", type=float, nargs="+", default=None, help="per-channel std, in the data's units")
    add("--norm-stats", choices=NORM_STATS, default=None,
        help="auto: the per-channel mean and std of up to 256 training files, computed once (stored in "
             "config.yaml and the checkpoint)")


def add_shared_options(parser: argparse.ArgumentParser, log_interval_default: int, in_chans_default: str) -> None:
    """Every option both trainers take, one group after another; each trainer names its own defaults."""
    add_run_folder_options(parser)
    add_batch_options(parser)
    add_device_options(parser)
    add_value_options(parser, in_chans_default)
    add_reporting_options(parser, log_interval_default)
