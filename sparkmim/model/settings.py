"""The rules SparK's settings obey, in one place: the model enforces them, and the commands
(spark-pretrain, spark-finetune, spark-viz) ask these functions instead of re-encoding the rules, so a
rule and its message can change in one file."""
from typing import Tuple

from sparkmim.utils.errors import UserError


class SparKSettingError(UserError, ValueError):
    """A SparK setting that cannot work; the message says what would."""


class InputSizeError(SparKSettingError):
    """The input is not a whole number of mask patches; ``suggestion`` is the nearest size that is."""

    def __init__(self, height: int, width: int, stride: int) -> None:
        self.size, self.stride = (height, width), stride
        self.suggestion = nearest_input_size(height, width, stride)
        positive = "" if height > 0 and width > 0 else "positive "
        self.problem = f"input size {height}x{width} is not a {positive}multiple of the encoder's total stride {stride}"
        super().__init__(f"{self.problem}; use e.g. {self.suggestion[0]}x{self.suggestion[1]}")


def nearest_input_size(height: int, width: int, stride: int) -> Tuple[int, int]:
    """The closest (height, width) made of whole ``stride`` x ``stride`` patches (at least one)."""
    return max(stride, round(height / stride) * stride), max(stride, round(width / stride) * stride)


def check_input_size(height: int, width: int, stride: int) -> None:
    """Each side a positive multiple of the encoder's total stride (the side of one mask patch)."""
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise InputSizeError(height, width, stride)


def check_mask_ratio(ratio: float) -> None:
    """Some patches must stay visible and some be masked."""
    if not 0.0 < float(ratio) < 1.0:
        raise SparKSettingError(f"mask ratio must be strictly between 0 and 1, got {ratio} (the paper uses 0.6)")


def visible_patches(grid_h: int, grid_w: int, ratio: float) -> int:
    """How many of a ``grid_h`` x ``grid_w`` grid of patches stay visible: round(h*w*(1-ratio)), the same
    number for every image of a batch."""
    return round(grid_h * grid_w * (1 - float(ratio)))


def check_mask_fits(grid_h: int, grid_w: int, ratio: float) -> None:
    """The mask leaves some patches visible and some masked on this grid: with none visible the encoder sees
    nothing (NaN features), with none masked the loss is 0 and nothing is learned. A small input on a
    stride-32 encoder (a 1x1 or 2x1 grid) is the usual cause."""
    patches, visible = grid_h * grid_w, visible_patches(grid_h, grid_w, ratio)
    if not 0 < visible < patches:
        raise SparKSettingError(
            f"mask ratio {ratio} leaves {visible} of the {grid_h}x{grid_w} = {patches} patches visible; SparK "
            "needs at least one visible and one masked patch: use a larger input size or a mask ratio nearer 0.5")
