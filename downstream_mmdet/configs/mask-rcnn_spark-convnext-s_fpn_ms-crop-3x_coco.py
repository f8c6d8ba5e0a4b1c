# Mask R-CNN FPN 3x with a SparK-pretrained ConvNeXt-S (mmpretrain arch 'small').
# drop path: the reference gives only ConvNeXt-B (0.5); S 0.4 and L 0.6 follow model size (not tuned).
_base_ = './mask-rcnn_spark-convnext_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.4),
    neck=dict(in_channels=[96, 192, 384, 768]))
