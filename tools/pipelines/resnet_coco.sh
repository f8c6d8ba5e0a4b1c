#!/usr/bin/env bash
# SparK pipeline: pre-train a ResNet -> convert -> Detectron2 Mask R-CNN fine-tune -> COCO eval -> report.
#
# usage: bash tools/pipelines/resnet_coco.sh --pretrain-data DIR --coco DIR [options]
#        bash tools/pipelines/resnet_coco.sh --smoke        (tiny generated data, a few CPU steps)
#
#   --pretrain-data DIR   images for pre-training (e.g. ImageNet train/)
#   --coco DIR            COCO root: annotations/instances_{train,val}2017.json, train2017/, val2017/
#   --model NAME          resnet50 (default), resnet101 or resnet152 (the shipped Mask R-CNN configs)
#   --schedule S          1x (default, 90k iterations) or 2x
#   --gpus N              GPUs per node (default 8); --nodes N (default 1), --node-rank R,
#                         --master-addr HOST, --master-port PORT (pre-training; Detectron2 uses
#                         PORT+1) for several nodes: run the same command on every node, with --work
#                         on a shared file system; the recipe's 16 images per iteration are split
#                         over all GPUs, whose count must divide 16
#   --work DIR            work folder (default runs/pipeline_coco_<model>)
#   --pretrain-recipe R   spark-pretrain --recipe (default: the model name; 'none' for no recipe)
#   --pretrain-args "..." extra spark-pretrain options
#   --d2-args "..."       extra Detectron2 KEY VALUE overrides, e.g. "SOLVER.IMS_PER_BATCH 16"
#   --python PATH         interpreter with sparkmim (default: python); --d2-python PATH: the one
#                         with Detectron2 too (default: the same)
#
# Every option is also an environment variable (PRETRAIN_DATA, COCO, MODEL, GPUS, D2_ARGS, ...).
# Stages: pretrain -> convert -> detectron2 (fine-tune, ends with a COCO evaluation) -> coco_eval
# (the final model, evaluated again on its own) -> report. Run the same command again to resume.
# Detectron2 is installed from source (see the Detectron2 guide); without it a normal run stops
# before pre-training, and a smoke run skips the Detectron2 stages with a message.

set -euo pipefail
PIPELINE=resnet_coco
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PIPELINE_OPTIONS="$COMMON_OPTIONS coco schedule d2_args d2_python"
parse_args "$@"
init_common
MODEL="${MODEL:-resnet50}"
SCHEDULE="${SCHEDULE:-1x}"
PRETRAIN_ARGS="${PRETRAIN_ARGS:-}"
D2_ARGS="${D2_ARGS:-}"
D2_TRAIN_ARGS=""

if ((SMOKE)); then
  MODEL=resnet50
  GPUS="${SMOKE_GPUS:-1}"
  NODES=1
  WORK="${WORK:-runs/smoke_resnet_coco}"
  PRETRAIN_DATA="${PRETRAIN_DATA:-$WORK/data/pretrain}"
  COCO="${COCO:-$WORK/data/coco}"
  PRETRAIN_RECIPE=none
  PRETRAIN_ARGS="--input-size 64 --epochs 1 --warmup-epochs 0 --batch-size 4 --lr 0.001 --decoder-width 32
    --workers 0 --num-vis 1 --no-tensorboard --device cpu $PRETRAIN_ARGS"
  # single CPU process: plain BN instead of SyncBN, tiny images, two iterations
  D2_ARGS="MODEL.DEVICE cpu MODEL.RESNETS.NORM BN MODEL.FPN.NORM BN MODEL.ROI_BOX_HEAD.NORM BN
    MODEL.ROI_MASK_HEAD.NORM BN SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 SOLVER.WARMUP_ITERS 1
    SOLVER.CHECKPOINT_PERIOD 100 TEST.EVAL_PERIOD 0 TEST.PRECISE_BN.NUM_ITER 2 INPUT.MIN_SIZE_TRAIN (96,128)
    INPUT.MAX_SIZE_TRAIN 128 INPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 128 DATALOADER.NUM_WORKERS 0
    MODEL.RPN.PRE_NMS_TOPK_TRAIN 200 MODEL.RPN.POST_NMS_TOPK_TRAIN 100 MODEL.RPN.PRE_NMS_TOPK_TEST 200
    MODEL.RPN.POST_NMS_TOPK_TEST 100 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32 MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0
    $D2_ARGS"
  # the coco_eval stage evaluates; the training stage need not evaluate as well
  D2_TRAIN_ARGS="DATASETS.TEST () TEST.PRECISE_BN.ENABLED False"
  mkdir -p "$WORK"
  run_stage data "$COCO/annotations/instances_val2017.json" "$PYTHON" -m sparkmim.tools.smoke_data \
    "images=$PRETRAIN_DATA" "coco=$COCO" --count 8
fi
WORK="${WORK:-runs/pipeline_coco_$MODEL}"
PRETRAIN_RECIPE="${PRETRAIN_RECIPE:-$MODEL}"
D2_PYTHON="${D2_PYTHON:-$PYTHON}"
require_positive_int GPUS NODES
if [[ "$D2_ARGS" != *SOLVER.IMS_PER_BATCH* ]]; then  # Detectron2's IMS_PER_BATCH is the total over all GPUs
  require_detection_batch_split "set SOLVER.IMS_PER_BATCH (and scale SOLVER.BASE_LR with it) in --d2-args"
fi
require_dir --pretrain-data "${PRETRAIN_DATA:-}"
require_dir --coco "${COCO:-}"
case "$MODEL" in
  resnet50 | resnet101 | resnet152) depth="${MODEL#resnet}" ;;
  *) die "--model $MODEL: the Detectron2 configs are for resnet50, resnet101 and resnet152" ;;
esac
case "$SCHEDULE" in
  1x | 2x) ;;
  *) die "--schedule must be 1x or 2x, got '$SCHEDULE'" ;;
esac
require_coco_layout
have_d2=1
has_module "$D2_PYTHON" detectron2 || have_d2=0
if ((!have_d2 && !SMOKE)); then
  die "Detectron2 is not importable by $D2_PYTHON; install it from source (see the Detectron2 guide) or pass --d2-python"
fi
mkdir -p "$WORK"
log "model $MODEL, schedule $SCHEDULE, $GPUS GPU(s) x $NODES node(s), work folder $WORK"

pretrain_stage

PKL="$WORK/convert/${MODEL}_d2.pkl"
convert_stage "$PKL" "$D2_PYTHON" d2 "$have_d2"

finish_without_framework "$have_d2" "Detectron2 is not installed for $D2_PYTHON (it is installed from source, see the Detectron2 guide)"

d2_launch=(--num-gpus "$GPUS" --num-machines "$NODES" --machine-rank "$NODE_RANK")
if ((GPUS * NODES > 1)); then  # without it Detectron2 picks a fixed port per user: two runs would collide
  d2_launch+=(--dist-url "tcp://$MASTER_ADDR:$((MASTER_PORT + 1))")
fi
d2_data=(--dataset-name spark_coco --train-json "$COCO/annotations/instances_train2017.json"
  --train-images "$COCO/train2017" --val-json "$COCO/annotations/instances_val2017.json"
  --val-images "$COCO/val2017")
config="mask_rcnn_R_${depth}_FPN_${SCHEDULE}"
# shellcheck disable=SC2206
d2_opts=($D2_ARGS)
# shellcheck disable=SC2206
d2_train_opts=($D2_TRAIN_ARGS)
run_stage detectron2 "$WORK/coco/model_final.pth" "$D2_PYTHON" -m sparkmim.downstream_d2.train_net \
  "${d2_launch[@]}" --config-file "$config" "${d2_data[@]}" --resume \
  MODEL.WEIGHTS "$PKL" OUTPUT_DIR "$WORK/coco" "${d2_opts[@]}" "${d2_train_opts[@]}"
run_stage coco_eval "$WORK/coco_eval/coco_results.json" "$D2_PYTHON" -m sparkmim.downstream_d2.train_net \
  "${d2_launch[@]}" --config-file "$config" "${d2_data[@]}" --eval-only \
  MODEL.WEIGHTS "$WORK/coco/model_final.pth" OUTPUT_DIR "$WORK/coco_eval" "${d2_opts[@]}"

report_stage
log "finished; COCO AP in $WORK/coco_eval/coco_results.json"
