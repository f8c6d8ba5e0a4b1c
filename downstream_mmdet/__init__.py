"""MMDetection 3.x transfer of SparK-pretrained ConvNeXts: converter, Mask R-CNN configs, train/test.

``convert``, ``settings`` and ``results`` run without mmdet; ``cli``, ``pretrained``' checks,
``hooks``, ``train`` and ``test`` need the pinned detection environment (scripts/setup_mmdet_env.sh)
and import mmdet/mmengine only when run.
"""
