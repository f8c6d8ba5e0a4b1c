"""A small ResNet with a total stride of 16: SparK on 64-pixel images gets a 4x4 mask grid.

The paper's encoders have a total stride of 32; on small images (Fashion-MNIST is 28x28) their mask
grid would be 1x1 or 2x2 patches, which leaves nothing to predict from context. Rather than upsample
to 128 px (16x the pixels of 32 px, too slow for a CPU benchmark), this network keeps timm's ResNet
basic block and replaces the stride-4 stem by a stride-2 one, so its four feature maps sit at strides
2, 4, 8 and 16 and SparK's hierarchical decoder uses all four.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from timm.models.resnet import BasicBlock


def _downsample(in_channels: int, out_channels: int, stride: int) -> Optional[nn.Module]:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class SmallResNet(nn.Module):
    """Stem (3x3 conv, stride 2) and four stages of timm ``BasicBlock`` s at strides 2, 4, 8, 16.

    ``widths`` are the stage channels and ``depths`` the blocks per stage. The classifier follows timm's
    conventions (``num_classes=0`` removes it, ``global_pool=''`` keeps the feature map)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (1, 1, 1, 1),
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"SmallResNet has 4 stages: give 4 widths and 4 depths, got {list(widths)} and {list(depths)}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], kernel_size=3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks_total = sum(depths)  # drop-path rate rising linearly over the blocks (plain floats: meta-safe)
        rates = [drop_path_rate * i / max(1, blocks_total - 1) for i in range(blocks_total)]
        stages: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        in_channels, block_index, reduction = widths[0], 0, 2
        for stage_index, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if stage_index == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(depth):
                block_stride = stride if i == 0 else 1
                drop_path = DropPath(rates[block_index]) if rates[block_index] > 0 else None
                blocks.append(BasicBlock(in_channels, width, stride=block_stride, drop_path=drop_path,
                                         downsample=_downsample(in_channels, width, block_stride)))
                in_channels, block_index = width, block_index + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": width, "reduction": reduction, "module": f"stages.{stage_index}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = in_channels
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(in_channels, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():  # zero-init the last BN of each residual branch, as timm's ResNet
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the outputs of the stages selected by ``indices`` (last n, or a list)."""
        if output_fmt != "NCHW":
            raise ValueError(f"SmallResNet gives NCHW features only, got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def small_resnet(**kwargs: Any) -> SmallResNet:
    """Factory in the ``package.module:factory`` form that ``spark-pretrain --model`` accepts."""
    return SmallResNet(**kwargs)


def _widths(base: int) -> Tuple[int, int, int, int]:
    return base, 2 * base, 4 * base, 8 * base


def small_resnet_w8(**kwargs: Any) -> SmallResNet:
    """Widths 8-64 (about 20k parameters): fast enough for tests."""
    return SmallResNet(widths=_widths(8), **kwargs)


def small_resnet_w24(**kwargs: Any) -> SmallResNet:
    """Widths 24-192 (about 0.7M parameters): the CPU benchmark's encoder."""
    return SmallResNet(widths=_widths(24), **kwargs)


def small_resnet_w32(**kwargs: Any) -> SmallResNet:
    """Widths 32-256, two blocks per stage (about 2.8M parameters): the GPU benchmark's encoder."""
    return SmallResNet(widths=_widths(32), depths=(2, 2, 2, 2), **kwargs)
