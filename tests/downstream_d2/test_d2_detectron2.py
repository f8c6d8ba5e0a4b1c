"""Detectron2 integration: converted weights load into our Mask R-CNN, the decayed optimizer, and a
tiny CPU training + COCO evaluation run through ``spark-d2-train``.

Skipped when Detectron2 is missing (it is not on the package registry; it is installed from source).
"""
import json
import math
import re

import numpy as np
import pytest
import timm
import torch

pytest.importorskip("detectron2", reason="Detectron2 is not installed (it is installed from source, "
                                         "see docs/detectron2.md); its integration tests are skipped")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from sparkmim.downstream_d2 import datasets, train_net  # noqa: E402
from sparkmim.downstream_d2.config import add_spark_config, resolve_config_file  # noqa: E402
from sparkmim.convert.detectron2 import timm_resnet_to_d2, write_pkl  # noqa: E402
from sparkmim.utils.synthetic import write_coco_split  # noqa: E402
from sparkmim.downstream_d2.optimizer import _scale_groups, build_optimizer, build_param_groups  # noqa: E402

# SyncBN needs several processes; a single CPU process uses plain BN, set through the config
CPU_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
            "MODEL.ROI_BOX_HEAD.NORM", "BN", "MODEL.ROI_MASK_HEAD.NORM", "BN"]

# expected lr factor of ResNet-50 Mask R-CNN parameters at LR_DECAY 0.6 (first matching pattern wins)
R50_LR_FACTORS = [(r"backbone\.bottom_up\.stem\.", 0.6 ** 6), (r"backbone\.bottom_up\.res2\.", 0.6 ** 5),
                  (r"backbone\.bottom_up\.res3\.", 0.6 ** 4), (r"backbone\.bottom_up\.res4\.[0-2]\.", 0.6 ** 3),
                  (r"backbone\.bottom_up\.res4\.[3-5]\.", 0.6 ** 2), (r"backbone\.bottom_up\.res5\.", 0.6),
                  (r"(backbone\.fpn_|proposal_generator\.|roi_heads\.)", 1.0)]


def make_cfg(*opts):
    cfg = get_cfg()
    add_spark_config(cfg)
    cfg.merge_from_file(str(resolve_config_file("mask_rcnn_R_50_FPN_1x")))
    cfg.merge_from_list(CPU_OPTS + list(opts))
    return cfg


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A ResNet-50 with random values in every tensor (buffers included), converted to a .pkl."""
    generator = torch.Generator().manual_seed(0)
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        else:
            value.fill_(7)
    conversion = timm_resnet_to_d2(state)
    path = write_pkl(conversion, tmp_path_factory.mktemp("weights") / "r50.pkl")
    return conversion, path


@pytest.fixture(scope="module")
def r50_model():
    torch.manual_seed(0)
    return build_model(make_cfg())


def test_converted_weights_cover_the_backbone(converted, r50_model):
    conversion, path = converted
    DetectionCheckpointer(r50_model).load(str(path))
    prefix = "backbone.bottom_up."
    backbone = {k[len(prefix):]: v for k, v in r50_model.state_dict().items() if k.startswith(prefix)}
    assert sorted(backbone) == sorted(conversion.model)  # nothing missing, nothing left over
    for key, value in backbone.items():
        np.testing.assert_array_equal(value.numpy(), conversion.model[key], err_msg=key)


@pytest.mark.parametrize("depth", [101, 152])
def test_deeper_configs_take_converted_weights(tmp_path, depth):
    conversion = timm_resnet_to_d2(timm.create_model(f"resnet{depth}", pretrained=False).state_dict())
    path = write_pkl(conversion, tmp_path / f"r{depth}.pkl")
    cfg = get_cfg()
    add_spark_config(cfg)
    cfg.merge_from_file(str(resolve_config_file(f"mask_rcnn_R_{depth}_FPN_1x")))
    cfg.merge_from_list(CPU_OPTS)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(path))
    prefix = "backbone.bottom_up."
    backbone = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert sorted(backbone) == sorted(conversion.model)
    key = "res4.20.conv2.weight"
    np.testing.assert_array_equal(backbone[key].numpy(), conversion.model[key])
    assert build_optimizer(cfg, model) is not None


def test_optimizer_lr_factors(r50_model):
    cfg = make_cfg()
    optimizer = build_optimizer(cfg, r50_model)
    assert type(optimizer) is torch.optim.AdamW
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    modules = dict(r50_model.named_modules())
    for name, param in r50_model.named_parameters():
        factor = next(f for pattern, f in R50_LR_FACTORS if re.match(pattern, name))
        lr, weight_decay = lr_of[id(param)]
        assert lr == pytest.approx(cfg.SOLVER.BASE_LR * factor), name
        is_norm = isinstance(modules[name.rsplit(".", 1)[0]], torch.nn.BatchNorm2d)
        assert weight_decay == (cfg.SOLVER.WEIGHT_DECAY_NORM if is_norm else cfg.SOLVER.WEIGHT_DECAY), name
    assert len(lr_of) == sum(1 for _ in r50_model.parameters())
    # the route for Detectron2 releases without lr_factor_func gives the same lrs
    from detectron2.solver.build import get_default_optimizer_params
    plain = get_default_optimizer_params(r50_model, base_lr=cfg.SOLVER.BASE_LR,
                                         weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
    fallback = _scale_groups(r50_model, plain, lambda n: next(f for p, f in R50_LR_FACTORS if re.match(p, n)))
    assert {id(p): g["lr"] for g in fallback for p in g["params"]} == \
           {id(p): g["lr"] for g in build_param_groups(cfg, r50_model) for p in g["params"]}
    sgd = build_optimizer(make_cfg("SOLVER.OPTIMIZER", "SGD", "SOLVER.LR_DECAY", 1.0), r50_model)
    assert type(sgd) is torch.optim.SGD and {g["lr"] for g in sgd.param_groups} == {cfg.SOLVER.BASE_LR}
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(make_cfg("SOLVER.OPTIMIZER", "LAMB"), r50_model)


def write_tiny_coco(root, name, num_images, seed):
    """128 px images with a box and a triangle and their COCO annotations (the project's one generator)."""
    return write_coco_split(root / name, root / f"{name}.json", num_images, 128, np.random.default_rng(seed))


TINY_RUN = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0", "TEST.PRECISE_BN.NUM_ITER", "2",
            "INPUT.MIN_SIZE_TRAIN", "(96, 128)", "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
            "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


@pytest.mark.slow
def test_train_and_evaluate_on_tiny_coco(tmp_path, converted):
    _, weights = converted
    train_json, train_images = write_tiny_coco(tmp_path, "train", 4, seed=1)
    val_json, val_images = write_tiny_coco(tmp_path, "val", 2, seed=2)
    output = tmp_path / "run"
    data_args = ["--dataset-name", "tiny", "--train-json", str(train_json), "--train-images", str(train_images),
                 "--val-json", str(val_json), "--val-images", str(val_images)]
    assert train_net.main(["--config-file", "mask_rcnn_R_50_FPN_1x", *data_args, "MODEL.WEIGHTS", str(weights),
                           "OUTPUT_DIR", str(output), *CPU_OPTS, *TINY_RUN]) == 0
    results = json.loads((output / "coco_results.json").read_text())
    assert results["iteration"] == 2 and results["weights"] == str(weights)
    for task in ("bbox", "segm"):
        assert math.isfinite(results[task]["AP"]) and math.isfinite(results[task]["AP50"]), results[task]
        assert {"AP-box", "AP-triangle"} <= set(results[task])
    final = output / "model_final.pth"
    assert final.is_file()

    # --resume continues from the checkpoint, optimizer state included (evaluation left out here)
    assert train_net.main(["--resume", *data_args, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(output),
                           *CPU_OPTS, *TINY_RUN, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()",
                           "TEST.PRECISE_BN.ENABLED", "False"]) == 0
    assert torch.load(final, map_location="cpu", weights_only=False)["iteration"] == 2
    assert "Starting training from iteration 2" in (output / "log.txt").read_text()

    # --eval-only with the trained model (3 iterations now), into a fresh folder
    evaluation = tmp_path / "eval"
    assert train_net.main(["--eval-only", *data_args, "MODEL.WEIGHTS", str(final), "OUTPUT_DIR", str(evaluation),
                           *CPU_OPTS, *TINY_RUN]) == 0
    again = json.loads((evaluation / "coco_results.json").read_text())
    assert again["iteration"] == 3
    assert math.isfinite(again["bbox"]["AP"]) and math.isfinite(again["segm"]["AP"])


def test_bad_dataset_option_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="annotation file not found"):
        train_net.main(["--train-json", str(tmp_path / "missing.json"), "--train-images", str(tmp_path)])
    with pytest.raises(SystemExit, match="shipped:"):
        train_net.main(["--config-file", "no_such_config"])
    # a custom dataset may not silently take over a registered name (here Detectron2's own COCO)
    json_file, images = write_tiny_coco(tmp_path, "mine", 1, seed=0)
    with pytest.raises(datasets.DatasetSpecError, match="already registered"):
        datasets.register(datasets.custom_datasets("coco_2017", json_file, images, None, None))
