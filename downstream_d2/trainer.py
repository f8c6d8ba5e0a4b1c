"""Detectron2 side of ``spark-d2-train``: the trainer class and one training/evaluation run.

This module imports Detectron2 at the top; ``train_net`` imports it only after checking that
Detectron2 is installed, so the rest of the package works without it.
"""
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import datasets
from .config import add_spark_config
from .optimizer import build_optimizer
from .results import evaluation_tasks, write_results

logger = logging.getLogger(__name__)


class SparKTrainer(DefaultTrainer):
    """Detectron2's DefaultTrainer (hooks, checkpointing, precise BN, periodic evaluation) with the
    AdamW/SGD + layer-wise lr decay optimizer and COCO evaluation (box and mask AP)."""

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> COCOEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=evaluation_tasks(cfg.MODEL.MASK_ON), output_dir=output_folder)


def setup(args: Any) -> CfgNode:
    """Config = Detectron2 defaults + our keys -> config file -> custom datasets -> command-line opts."""
    custom = datasets.custom_datasets(args.dataset_name, args.train_json, args.train_images,
                                      args.val_json, args.val_images)
    cfg = get_cfg()
    add_spark_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(datasets.config_overrides(custom))
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # our modules log next to Detectron2's (stdout on the main process, OUTPUT_DIR/log.txt*)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sparkmim", abbrev_name="spark")
    datasets.register(custom)
    return cfg


def _save_results(cfg: CfgNode, args: Any, results: Optional[Mapping[str, Any]],
                  iteration: Optional[int]) -> Optional[Path]:
    """Write the AP table (main process only); ``iteration`` = training iterations completed."""
    if results is None or not comm.is_main_process():
        return None
    path = write_results(results, Path(cfg.OUTPUT_DIR), tasks=evaluation_tasks(cfg.MODEL.MASK_ON),
                         config=str(args.config_file),
                         weights=cfg.MODEL.WEIGHTS, iteration=iteration)
    logger.info("COCO results written to %s", path)
    return path


def run(args: Any) -> Dict[str, Any]:
    """One process of a training (or ``--eval-only``) run; called by Detectron2's ``launch``."""
    cfg = setup(args)
    if args.eval_only:
        model = SparKTrainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = SparKTrainer.test(cfg, model)
        last = checkpoint.get("iteration")  # index of the last finished iteration, if saved by training
        _save_results(cfg, args, results, iteration=None if last is None else int(last) + 1)
    else:
        trainer = SparKTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer keeps the results of its last evaluation (the final one after training)
        results = getattr(trainer, "_last_eval_results", None) or {}
        _save_results(cfg, args, results, iteration=trainer.iter)
    if results and comm.is_main_process():
        verify_results(cfg, results)
    return dict(results)
