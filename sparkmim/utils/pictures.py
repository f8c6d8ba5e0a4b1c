"""SparK's pictures, one home for spark-pretrain, spark-viz and the value benchmark: the loss curve and the
reconstruction grid (input | masked input | reconstruction | reconstruction with the visible patches).

Images with one channel are drawn in gray; images with more than three (multispectral bands) as a chosen
band triplet, the first three by default. RGB images are de-normalised with ImageNet's statistics (or the
given ones); other channel counts without given statistics are stretched per row, from the 1st to the
99th percentile of the input panel's drawn bands, so all four panels of a row share one scale.

Both are drawn with matplotlib's non-interactive backend, so they work on headless servers.
"""
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from sparkmim.utils.metrics import read_rows
from sparkmim.utils.output_paths import check_output_file

logger = logging.getLogger(__name__)

PANEL_TITLES = ("input", "masked input", "reconstruction", "reconstruction + visible")


def picture_path(out: Path, option: str = "--out") -> Path:
    """The file a picture asked for as ``out`` is written to: matplotlib appends ``.png`` to a name without a
    picture format's suffix (the commands printed the name as given, not the file), and writes a folder's name
    plus ``.png`` beside a folder."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    check_output_file(out, option, example="picture.png")
    if out.suffix[1:].lower() not in FigureCanvasBase.get_supported_filetypes():
        out = out.with_name(out.name + ".png")
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def read_step_losses(metrics_path: Path) -> Tuple[List[int], List[float]]:
    """Per-step losses from the JSONL log; a step logged twice (work redone after a crash and
    resume) keeps its last value."""
    losses = {}
    for row in read_rows(metrics_path):
        if row.get("kind") == "step" and isinstance(row.get("loss"), (int, float)):
            losses[int(row["step"])] = float(row["loss"])
    steps = sorted(losses)
    return steps, [losses[s] for s in steps]


def plot_loss_curve(metrics_path: Path, out_path: Path) -> Path:
    plt = _pyplot()
    steps, losses = read_step_losses(metrics_path)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if steps:
        axis.plot(steps, losses, linewidth=0.8, alpha=0.45, label="per step")
        window = max(1, len(losses) // 25)
        if window > 1:
            kernel = torch.ones(window) / window
            smooth = torch.nn.functional.conv1d(torch.tensor(losses)[None, None], kernel[None, None]).flatten()
            axis.plot(steps[window - 1:], smooth.tolist(), linewidth=1.8, label=f"mean of {window}")
        axis.legend()
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("reconstruction loss (masked patches)")
    axis.set_title("SparK pre-training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
    return out_path


@torch.no_grad()
def reconstruct(spark: torch.nn.Module, images: torch.Tensor, seed: int = 0,
                mask_ratio: Optional[float] = None) -> List[torch.Tensor]:
    """The four panels for ``images`` (B, C, H, W, normalised, on the model's device), under a
    mask drawn by SparK's own rule from ``seed`` (``mask_ratio`` overrides the model's). The reconstruction
    panel is the decoder's prediction de-normalised with each patch's own mean and std (as the loss sees
    it), on every patch. The model is run in eval mode and left in the mode it was in."""
    from sparkmim.model.patches import patchify, unpatchify
    from sparkmim.model.settings import visible_patches
    from sparkmim.model.spark import random_visible_mask

    ratio = spark.downsample_ratio
    height, width = images.shape[-2:]
    h, w = height // ratio, width // ratio
    visible = visible_patches(h, w, spark.mask_ratio if mask_ratio is None else mask_ratio)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    active = random_visible_mask(images.shape[0], h, w, max(1, visible), images.device, generator)
    was_training = spark.training
    spark.eval()
    try:
        output = spark(images, active=active)
        _, mean, std = spark.patch_targets(images)
        predicted = unpatchify(patchify(output.prediction.float(), ratio) * std + mean, ratio, h, w)
    finally:
        spark.train(was_training)
    return [p.detach().float().cpu() for p in (images, output.masked_input, predicted, output.reconstruction)]


def denormalise(images_bchw: torch.Tensor, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Back to pixel values in [0, 1] with the per-channel ``mean``/``std`` (ImageNet's by default)."""
    channels = images_bchw.shape[1]
    mean = torch.tensor(IMAGENET_MEAN if mean is None else mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD if std is None else std, dtype=torch.float32).view(1, -1, 1, 1)
    if mean.shape[1] != channels or std.shape[1] != channels:
        raise ValueError(f"{channels}-channel images need {channels} mean and std values, got "
                         f"{mean.shape[1]} and {std.shape[1]}")
    return (images_bchw.detach().float().cpu() * std + mean).clamp(0, 1)


def display_bands(channels: int, bands: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The channels drawn: one (gray) or three (as RGB); default the first three, or the first alone."""
    chosen = tuple(bands) if bands is not None else ((0, 1, 2) if channels >= 3 else (0,))
    if len(chosen) not in (1, 3) or not all(0 <= band < channels for band in chosen):
        raise ValueError(f"draw 1 or 3 of the {channels} channels (indices 0-{channels - 1}), got {list(chosen)}")
    return chosen


def _stretch_rows(panels: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Per row (image), the input panel's 1st-99th percentile mapped to [0, 1] on every panel of the row."""
    reference = panels[0].detach().float().cpu().flatten(1)
    low = torch.quantile(reference, 0.01, dim=1).view(-1, 1, 1, 1)
    high = torch.quantile(reference, 0.99, dim=1).view(-1, 1, 1, 1)
    scale = (high - low).clamp_min(1e-6)
    return [((p.detach().float().cpu() - low) / scale).clamp(0, 1) for p in panels]


def drawn_panels(panels: Sequence[torch.Tensor], mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, bands: Optional[Sequence[int]] = None,
                 stretch: Optional[bool] = None) -> List[torch.Tensor]:
    """The panels as drawn, values in [0, 1]: the chosen 1 or 3 bands, de-normalised, or stretched from
    the input's percentiles of those bands alone (a bright band that is not drawn does not dim the others)."""
    channels = panels[0].shape[1]
    chosen = list(display_bands(channels, bands))
    if stretch is None:
        stretch = mean is None and std is None and channels != 3
    if stretch:
        return _stretch_rows([p[:, chosen] for p in panels])
    return [denormalise(p, mean, std)[:, chosen] for p in panels]


def plot_reconstructions(panels: Sequence[torch.Tensor], out_path: Path, titles: Sequence[str] = PANEL_TITLES,
                         mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                         bands: Optional[Sequence[int]] = None, stretch: Optional[bool] = None) -> Path:
    """One row per image, one column per panel (each B x C x H x W, normalised with ``mean``/``std``, which
    default to ImageNet's for 3 channels). ``bands``: the 1 or 3 channels drawn (see :func:`display_bands`).
    ``stretch``: draw each row from its input's percentiles instead of de-normalising (default: when the
    images are not RGB and no statistics are given)."""
    plt = _pyplot()
    chosen = list(display_bands(panels[0].shape[1], bands))
    shown = drawn_panels(panels, mean, std, chosen, stretch)
    rows, cols = shown[0].shape[0], len(shown)
    height, width = shown[0].shape[-2:]
    cell = 2.2
    figure, axes = plt.subplots(rows, cols, figsize=(cell * cols * width / max(height, width) + 0.2,
                                                     cell * rows * height / max(height, width) + 0.5),
                                dpi=100, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            picture = shown[c][r].permute(1, 2, 0).numpy()
            if picture.shape[-1] == 1:
                axes[r][c].imshow(picture[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axes[r][c].imshow(np.ascontiguousarray(picture))
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(titles[c] if len(chosen) != 3 or chosen == [0, 1, 2] or c
                                     else f"{titles[c]} (bands {', '.join(map(str, chosen))})", fontsize=9)
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)
    return out_path
