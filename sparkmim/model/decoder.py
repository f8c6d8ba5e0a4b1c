"""The light UNet decoder of SparK: dense, hierarchical, upsampling by 2 per stage."""
import math
from typing import List, Optional, Type

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..sparse.norms import CrossProcessBatchNorm2d


def densify_projection(level: int, channels: int, width: int) -> nn.Module:
    """Maps encoder level ``level`` (0 = coarsest), of ``channels`` channels, to ``width``, the decoder's width
    at that level. The reference's layout, which its released weights are shaped by: nothing when the coarsest
    level already has that width, a 1x1 conv at the coarsest level, 3x3 convs at the finer ones."""
    if level == 0 and channels == width:
        return nn.Identity()
    kernel = 1 if level == 0 else 3
    return nn.Conv2d(channels, width, kernel_size=kernel, padding=kernel // 2, bias=True)


class UpBlock(nn.Module):
    """ConvTranspose2d (k4, s2, p1) doubling the resolution, then two 3x3 conv + BN with ReLU6 between."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: Type[nn.Module]) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = norm_layer(in_channels)
        self.act = nn.ReLU6(inplace=True)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(x))


class LightDecoder(nn.Module):
    """Width ``width`` at the coarsest scale, halving per stage, log2(upsample_ratio) stages.

    ``forward(features)`` takes the densified features coarsest first; feature i is added before stage i
    (stages beyond the given features get none), and a 1x1 conv maps to ``out_channels`` (the encoder's input
    channels: 3 for RGB, 1 for grayscale, N for multispectral bands) at full resolution."""

    def __init__(self, upsample_ratio: int = 32, width: int = 768, sync_bn: bool = False, out_channels: int = 3) -> None:
        super().__init__()
        stages = round(math.log2(upsample_ratio))
        if 2 ** stages != upsample_ratio:
            raise ValueError(f"the decoder upsamples by powers of 2; got a ratio of {upsample_ratio}")
        if width % 2 ** stages:
            raise ValueError(f"decoder width {width} must be divisible by {2 ** stages} (it halves {stages} times)")
        self.width = width
        channels = [width // 2 ** i for i in range(stages + 1)]
        norm_layer = CrossProcessBatchNorm2d if sync_bn else nn.BatchNorm2d  # see its docstring: not SyncBatchNorm
        self.stages = nn.ModuleList(UpBlock(c_in, c_out, norm_layer) for c_in, c_out in zip(channels[:-1], channels[1:]))
        if out_channels < 1:
            raise ValueError(f"the decoder must predict at least one channel, got out_channels={out_channels}")
        self.out_channels = out_channels
        self.proj = nn.Conv2d(channels[-1], out_channels, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: trunc-normal(.02) convs, Kaiming (fan-out) transposed convs, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: List[Optional[torch.Tensor]]) -> torch.Tensor:
        x: torch.Tensor = 0  # type: ignore[assignment]
        for i, stage in enumerate(self.stages):
            if i < len(features) and features[i] is not None:
                x = x + features[i]
            x = stage(x)
        return self.proj(x)
