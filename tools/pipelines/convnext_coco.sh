#!/usr/bin/env bash
# SparK pipeline: pre-train a ConvNeXt -> convert -> MMDetection Mask R-CNN fine-tune -> COCO eval -> report.
#
# usage: bash tools/pipelines/convnext_coco.sh --pretrain-data DIR --coco DIR [options]
#        bash tools/pipelines/convnext_coco.sh --smoke      (tiny generated data, a few CPU steps)
#
#   --pretrain-data DIR   images for pre-training (e.g. ImageNet train/)
#   --coco DIR            COCO root: annotations/instances_{train,val}2017.json, train2017/, val2017/
#   --model NAME          convnext_base (default), convnext_small or convnext_large
#   --gpus N              GPUs per node (default 8); --nodes N (default 1), --node-rank R,
#                         --master-addr HOST, --master-port PORT for several nodes (run the same
#                         command on every node, with --work on a shared file system); the recipe's
#                         16 images per iteration are split over all GPUs, whose count must divide 16
#   --work DIR            work folder (default runs/pipeline_coco_<model>)
#   --pretrain-recipe R   spark-pretrain --recipe (default: the model name; 'none' for no recipe)
#   --pretrain-args "..." extra spark-pretrain options
#   --mmdet-config C      spark-mmdet-train config (default: convnext-s/-b/-l after the model)
#   --mmdet-args "..."    extra spark-mmdet-train options, e.g. "--cfg-options train_cfg.max_epochs=12"
#   --python PATH         interpreter with sparkmim (default: python); --mmdet-python PATH: the
#                         MMDetection environment's (default: .venv-mmdet/bin/python when it exists,
#                         made by scripts/setup_mmdet_env.sh, else the same as --python)
#
# Every option is also an environment variable (PRETRAIN_DATA, COCO, MODEL, GPUS, MMDET_ARGS, ...).
# Stages: pretrain -> convert -> mmdet (3x schedule, evaluates on val) -> mmdet_eval (the final
# checkpoint, spark-mmdet-test) -> report. Run the same command again to resume. Without the
# MMDetection environment a normal run stops before pre-training, and a smoke run skips the
# MMDetection stages with a message.

set -euo pipefail
PIPELINE=convnext_coco
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PIPELINE_OPTIONS="$COMMON_OPTIONS coco mmdet_config mmdet_args mmdet_python"
parse_args "$@"
init_common
MODEL="${MODEL:-convnext_base}"
PRETRAIN_ARGS="${PRETRAIN_ARGS:-}"
MMDET_ARGS="${MMDET_ARGS:-}"
repo_venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv-mmdet/bin/python"
if [[ -z "${MMDET_PYTHON:-}" ]]; then
  if [[ -x "$repo_venv" ]]; then MMDET_PYTHON="$repo_venv"; else MMDET_PYTHON="$PYTHON"; fi
fi

if ((SMOKE)); then
  MODEL=convnext_tiny
  GPUS="${SMOKE_GPUS:-1}"
  NODES=1
  WORK="${WORK:-runs/smoke_convnext_coco}"
  PRETRAIN_DATA="${PRETRAIN_DATA:-$WORK/data/pretrain}"
  COCO="${COCO:-$WORK/data/coco}"
  PRETRAIN_RECIPE=none
  PRETRAIN_ARGS="--input-size 64 --epochs 1 --warmup-epochs 0 --batch-size 4 --lr 0.001 --decoder-width 32
    --workers 0 --num-vis 1 --no-tensorboard --device cpu $PRETRAIN_ARGS"
  MMDET_CONFIG="$WORK/mmdet_smoke_config.py"
  MMDET_ARGS="--workers 0 $MMDET_ARGS"
  mkdir -p "$WORK"
  run_stage data "$COCO/annotations/instances_val2017.json" "$PYTHON" -m sparkmim.tools.smoke_data \
    "images=$PRETRAIN_DATA" "coco=$COCO" --count 4
fi
WORK="${WORK:-runs/pipeline_coco_$MODEL}"
PRETRAIN_RECIPE="${PRETRAIN_RECIPE:-$MODEL}"
require_positive_int GPUS NODES
if ((!SMOKE)) && [[ "$MMDET_ARGS" != *--batch-size* ]]; then  # spark-mmdet-train's --batch-size is per process
  require_detection_batch_split "pass --mmdet-args '--batch-size N --auto-scale-lr'"
  MMDET_ARGS="--batch-size $((DETECTION_BATCH / (GPUS * NODES))) $MMDET_ARGS"
fi
require_dir --pretrain-data "${PRETRAIN_DATA:-}"
require_dir --coco "${COCO:-}"
if [[ -z "${MMDET_CONFIG:-}" ]]; then
  case "$MODEL" in
    convnext_small) MMDET_CONFIG=convnext-s ;;
    convnext_base) MMDET_CONFIG=convnext-b ;;
    convnext_large) MMDET_CONFIG=convnext-l ;;
    *) die "--model $MODEL: the MMDetection configs are for convnext_small/base/large (or pass --mmdet-config)" ;;
  esac
fi
require_coco_layout
have_mmdet=1
has_module "$MMDET_PYTHON" "mmdet, mmpretrain, mmcv.ops, sparkmim.downstream_mmdet.train" || have_mmdet=0
if ((!have_mmdet && !SMOKE)); then
  die "MMDetection (mmdet, mmpretrain, mmcv ops) is not importable by $MMDET_PYTHON; create its environment with 'bash scripts/setup_mmdet_env.sh' or pass --mmdet-python"
fi
mkdir -p "$WORK"
log "model $MODEL, MMDetection config $MMDET_CONFIG, $GPUS GPU(s) x $NODES node(s), work folder $WORK"

pretrain_stage

BACKBONE="$WORK/convert/${MODEL}_mmdet.pth"
convert_stage "$BACKBONE" "$MMDET_PYTHON" mmdet "$have_mmdet"

finish_without_framework "$have_mmdet" "MMDetection is not installed for $MMDET_PYTHON (create its environment with scripts/setup_mmdet_env.sh)"

if ((SMOKE)); then
  # the packaged recipe with small images and proposal counts, one epoch (CPU)
  config_dir="$("$MMDET_PYTHON" -c 'from sparkmim.downstream_mmdet.settings import CONFIG_DIR; print(CONFIG_DIR)')"
  cat >"$MMDET_CONFIG" <<PYCONFIG
_base_ = '$config_dir/mask-rcnn_spark-convnext_fpn_ms-crop-3x_coco.py'
model = dict(train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
             test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, filter_cfg=dict(filter_empty_gt=True, min_size=4)))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
PYCONFIG
fi

if ((SMOKE)); then
  # the generated set has its own classes: pass it as a custom COCO-format dataset (classes from the json)
  mmdet_eval_data=(--val-json "$COCO/annotations/instances_val2017.json" --val-images "$COCO/val2017")
  mmdet_data=(--train-json "$COCO/annotations/instances_train2017.json" --train-images "$COCO/train2017"
              "${mmdet_eval_data[@]}")
else
  mmdet_data=(--data-root "$COCO")
  mmdet_eval_data=("${mmdet_data[@]}")
fi
# shellcheck disable=SC2206
mmdet_opts=($MMDET_ARGS)
run_stage mmdet "$WORK/mmdet/last_checkpoint" launch_with "$MMDET_PYTHON" sparkmim.downstream_mmdet.train \
  "$MMDET_CONFIG" --pretrained "$BACKBONE" "${mmdet_data[@]}" --work-dir "$WORK/mmdet" --resume auto "${mmdet_opts[@]}"
final_checkpoint="$(cat "$WORK/mmdet/last_checkpoint")"
test_opts=()
if ((SMOKE)); then test_opts=(--workers 0); fi
run_stage mmdet_eval "$WORK/mmdet_eval/coco_results.json" launch_with "$MMDET_PYTHON" sparkmim.downstream_mmdet.test \
  "$MMDET_CONFIG" "$final_checkpoint" "${mmdet_eval_data[@]}" --work-dir "$WORK/mmdet_eval" "${test_opts[@]}"

report_stage
log "finished; COCO AP in $WORK/mmdet_eval/coco_results.json"
