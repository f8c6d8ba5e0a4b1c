"""Detectron2 transfer of SparK-pretrained ResNets: weight converter, Mask R-CNN configs, trainer.

Only ``trainer`` (and what ``train_net`` loads at run time) imports Detectron2; the converter, the
configs, the layer-wise lr decay and the dataset/result helpers work without it.
"""
