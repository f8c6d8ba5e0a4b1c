"""The "mask pattern vanishing" illustration: why SparK runs the CNN as a sparse network.

Zero out the masked 32 px patches of an image and pass it through a CNN-like stack: per stage a 3x3
conv and a strided 3x3 conv (fixed averaging kernels, so the effect is easy to read), down to stride
32. A dense conv smears visible pixels into the masked holes, and as the resolution drops the holes
shrink until they are filled: the network no longer sees where the mask was (and its statistics mix
real pixels with zeros). The sparse (submanifold) conv re-masks after every conv, so the masked
positions stay exactly zero at every depth: the mask pattern survives.

The measure printed on each panel is the mean magnitude inside the masked region relative to the
visible region: 0 means the holes are intact, 1 means they have vanished."""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 32
SIZE = 224
MASK_RATIO = 0.6


def load_image(path: Optional[Path], seed: int) -> torch.Tensor:
    """(1, 3, SIZE, SIZE) in [0, 1]: the given image (resized, centre-cropped) or a generated one."""
    import torchvision.transforms.functional as TF

    if path is None:
        from sparkmim.utils.synthetic import scene as render_image

        image = render_image(np.random.default_rng(seed), SIZE)
    else:
        from sparkmim.utils.images import load_rgb

        image = load_rgb(path)
    image = TF.center_crop(TF.resize(image, SIZE, interpolation=TF.InterpolationMode.BICUBIC), [SIZE, SIZE])
    return TF.to_tensor(image)[None]


def pixel_mask(seed: int) -> torch.Tensor:
    """(1, 1, SIZE, SIZE) float, 1 = visible, patches of PATCH pixels, MASK_RATIO of them masked."""
    from sparkmim.model.spark import random_visible_mask

    grid = SIZE // PATCH
    active = random_visible_mask(1, grid, grid, round(grid * grid * (1 - MASK_RATIO)), torch.device("cpu"),
                                 torch.Generator().manual_seed(seed)).float()
    return F.interpolate(active, scale_factor=PATCH, mode="nearest")


def _smooth(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    kernel = torch.full((x.shape[1], 1, 3, 3), 1.0 / 9.0)
    return F.conv2d(x, kernel, stride=stride, padding=1, groups=x.shape[1])


def masked_energy(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |x| in the masked region over mean |x| in the visible region (mask at x's resolution)."""
    mask = F.interpolate(mask, size=x.shape[-2:], mode="nearest")
    magnitude = x.abs().mean(dim=1, keepdim=True)
    inside = (magnitude * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
    outside = (magnitude * mask).sum() / mask.sum().clamp_min(1)
    return float(inside / outside.clamp_min(1e-12))


def conv_stacks(image: torch.Tensor, mask: torch.Tensor, stages: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Feature maps after 0..stages CNN stages (a 3x3 conv, then a strided 3x3 conv halving the
    resolution, as a CNN down to stride 32): dense (plain convs) and sparse (re-masked after each
    conv with the mask at that resolution)."""
    dense, sparse = [image * mask], [image * mask]
    for _ in range(stages):
        x = _smooth(_smooth(dense[-1]), stride=2)
        dense.append(x)
        y = sparse[-1]
        y = _smooth(y) * F.interpolate(mask, size=y.shape[-2:], mode="nearest")
        y = _smooth(y, stride=2)
        sparse.append(y * F.interpolate(mask, size=y.shape[-2:], mode="nearest"))
    return dense, sparse


def _depths(layers: int) -> List[int]:
    return list(range(layers + 1))


MAX_STAGES = 5  # 224 px / 2**5 = 7: one position per masked patch


def draw_demo(image_path: Optional[Path], out: Path, layers: int = MAX_STAGES, seed: int = 0) -> Path:
    """``layers``: number of CNN stages (each halves the resolution), 1 to 5."""
    if not 1 <= layers <= MAX_STAGES:
        raise ValueError(f"--layers must be between 1 and {MAX_STAGES} (stages down to stride 32)")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image, mask = load_image(image_path, seed), pixel_mask(seed)
    dense, sparse = conv_stacks(image, mask, layers)
    depths = _depths(layers)
    figure, axes = plt.subplots(2, len(depths), figsize=(2.3 * len(depths), 5.8), dpi=100, squeeze=False)
    for row, (name, maps) in enumerate((("dense conv", dense), ("sparse conv", sparse))):
        for col, depth in enumerate(depths):
            x = maps[depth][0]
            shown = (x / x.max().clamp_min(1e-12)).permute(1, 2, 0).clamp(0, 1).numpy()
            axes[row][col].imshow(shown, interpolation="nearest")
            axes[row][col].set_xticks([])
            axes[row][col].set_yticks([])
            axes[row][col].set_title(f"{name}, stride {2 ** depth}\n"
                                     f"masked/visible {masked_energy(maps[depth], mask):.2f}", fontsize=8)
    figure.suptitle("Mask pattern vanishing: dense conv fills the holes, sparse conv keeps them", fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def energy_curves(image: torch.Tensor, mask: torch.Tensor, layers: int) -> Tuple[Sequence[float], Sequence[float]]:
    """Masked/visible magnitude ratio per depth, dense and sparse."""
    dense, sparse = conv_stacks(image, mask, layers)
    return [masked_energy(x, mask) for x in dense], [masked_energy(x, mask) for x in sparse]
