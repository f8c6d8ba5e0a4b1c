"""Helpers for the MMDetection tests: a tiny ConvNeXt, a generated COCO-format dataset, a small config.

Everything is real: a timm ConvNeXt supplies the weights, images are PNG files with drawn objects,
annotations carry polygons and boxes that pycocotools evaluates.
"""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from sparkmim.utils.synthetic import write_coco_split

TINY_DEPTHS = (1, 1, 2, 1)
TINY_DIMS = (16, 32, 64, 128)
CLASSES = ("square", "triangle")
PACKAGED_B = "mask-rcnn_spark-convnext-b_fpn_ms-crop-3x_coco.py"


def tiny_timm_convnext(seed: int = 0) -> torch.nn.Module:
    """A small timm ConvNeXt (Linear MLPs, layer scale) whose weights are all non-trivial."""
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(seed)
    model = ConvNeXt(depths=TINY_DEPTHS, dims=TINY_DIMS, num_classes=5, ls_init_value=0.5)
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb them so a skipped load is visible
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def make_coco_split(root: Path, split: str, count: int, size: int = 96, seed: int = 0) -> Tuple[Path, Path]:
    """``count`` PNG images with a drawn square and triangle and their COCO instances json (the project's
    one generator, :func:`sparkmim.utils.synthetic.write_coco_split`)."""
    return write_coco_split(root / split, root / f"{split}.json", count, size, np.random.default_rng(seed),
                            names=CLASSES, suffix=".png")


def small_config(path: Path, base: Path, max_epochs: int = 1, scale: int = 128) -> Path:
    """A config inheriting a packaged one: tiny ConvNeXt arch and small image scales for CPU tests
    (the recipe's own structure, optimizer and schedule stay)."""
    path.write_text(f"""
_base_ = {str(base)!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, depths={list(TINY_DEPTHS)}, channels={list(TINY_DIMS)}),
                  drop_path_rate=0.1),
    neck=dict(in_channels={list(TINY_DIMS)}),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[({scale}, {scale}), ({scale + 32}, {scale + 32})], keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({scale}, {scale}), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, filter_cfg=dict(filter_empty_gt=True, min_size=4)))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={max_epochs})
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1))
""")
    return path


def backbone_tensors(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected_backbone_keys(keys: Sequence[str]) -> List[str]:
    return sorted(k for k in keys if not k.startswith(("norm0.", "norm1.", "norm2.")))
