# Mask R-CNN FPN 3x with a SparK-pretrained ConvNeXt-B (mmpretrain arch 'base').
# drop path 0.5 is the SparK reference value for ConvNeXt-B.
_base_ = './mask-rcnn_spark-convnext_fpn_ms-crop-3x_coco.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5),
    neck=dict(in_channels=[128, 256, 512, 1024]))
