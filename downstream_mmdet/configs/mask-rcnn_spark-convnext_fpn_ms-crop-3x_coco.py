# Shared settings of the SparK ConvNeXt Mask R-CNN FPN 3x recipe (MMDetection 3.x, mmengine style).
#
# Built on MMDetection's own ConvNeXt Mask R-CNN 3x config (mmpretrain.ConvNeXt backbone, FPN,
# multi-scale 480-800 training with the DETR-style crop branch, 36 epochs, AMP optimizer wrapper),
# changed to the SparK reference settings for ConvNeXt-B:
#   AdamW lr 2e-4, weight decay 0.05, layer-wise lr decay 0.65 over 12 layer groups
#   (MMDetection's LearningRateDecayOptimizerConstructor), steps at epochs 27 and 33 with gamma 0.2.
# The size configs (-s/-b/-l) set the architecture, drop path and FPN input widths.
# The pretrained backbone file (converted with spark-mmdet-convert) is set by spark-mmdet-train
# --pretrained, or with --cfg-options model.backbone.init_cfg.checkpoint=FILE.
_base_ = 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'

max_epochs = 36
model = dict(
    backbone=dict(
        layer_scale_init_value=1.0,
        gap_before_final_norm=False,
        out_indices=[0, 1, 2, 3],
        init_cfg=dict(type='Pretrained', checkpoint=None, prefix='backbone.')))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.65, decay_type='layer_wise', num_layers=12),
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))

train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.2),
]

# 16 images per iteration (8 processes x 2); --auto-scale-lr rescales lr to the actual batch
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))
