#!/usr/bin/env bash
# SparK pipeline: pre-train -> ImageNet fine-tune -> evaluate -> report (paper settings by default).
#
# usage: bash tools/pipelines/imagenet.sh --pretrain-data DIR --imagenet DIR [options]
#        bash tools/pipelines/imagenet.sh --smoke          (tiny generated data, a few CPU steps)
#
#   --pretrain-data DIR   images for pre-training (e.g. ImageNet train/; labels are ignored)
#   --imagenet DIR        ImageNet root with train/<class>/ and val/<class>/
#   --model NAME          timm model (default resnet50); the paper's recipes are used for it
#   --gpus N              processes (GPUs) per node (default 8); --nodes N (default 1),
#                         --node-rank R, --master-addr HOST, --master-port PORT for several nodes
#                         (run the same command on every node)
#   --work DIR            work folder: stage outputs, logs/, report.md (default runs/pipeline_imagenet_<model>)
#   --pretrain-recipe R   spark-pretrain --recipe (default: the model name; 'none' for no recipe)
#   --pretrain-args "..." extra spark-pretrain options, e.g. "--epochs 800 --amp bf16"
#   --finetune-args "..." extra spark-finetune options, e.g. "--amp bf16 --channels-last"
#   --python PATH         interpreter with sparkmim installed (default: python)
#
# Every option is also an environment variable (PRETRAIN_DATA, IMAGENET, MODEL, GPUS, ...).
# Stages: pretrain -> finetune -> eval -> report. Run the same command again to resume: finished
# stages are skipped and an interrupted stage continues from its checkpoint. Logs: WORK/logs/.

set -euo pipefail
PIPELINE=imagenet
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PIPELINE_OPTIONS="$COMMON_OPTIONS imagenet finetune_args"
parse_args "$@"
init_common
MODEL="${MODEL:-resnet50}"
PRETRAIN_ARGS="${PRETRAIN_ARGS:-}"
FINETUNE_ARGS="${FINETUNE_ARGS:-}"

if ((SMOKE)); then
  MODEL=test_resnet
  GPUS="${SMOKE_GPUS:-1}"
  NODES=1
  WORK="${WORK:-runs/smoke_imagenet}"
  PRETRAIN_DATA="${PRETRAIN_DATA:-$WORK/data/pretrain}"
  IMAGENET="${IMAGENET:-$WORK/data/imagenet}"
  PRETRAIN_RECIPE=none
  PRETRAIN_ARGS="--input-size 64 --epochs 1 --warmup-epochs 0 --batch-size 8 --lr 0.002 --decoder-width 32
    --workers 0 --num-vis 2 --no-tensorboard --device cpu $PRETRAIN_ARGS"
  mkdir -p "$WORK"
  cat >"$WORK/finetune_smoke.yaml" <<'EOF'
input_size: 32
batch_size: 8
epochs: 1
warmup_epochs: 0
opt: adamw
base_lr: 0.01
layer_decay: 0.7
weight_decay: 0.05
mixup: 0.0
cutmix: 0.0
repeated_aug: 0
drop_path: 0.0
ema: 0.0
auto_augment: none
reprob: 0.0
workers: 0
progress: false
device: cpu
EOF
  FINETUNE_ARGS="--recipe $WORK/finetune_smoke.yaml $FINETUNE_ARGS"
  run_stage data "$IMAGENET/val" "$PYTHON" -m sparkmim.tools.smoke_data "images=$PRETRAIN_DATA" \
    "imagefolder=$IMAGENET"
fi
WORK="${WORK:-runs/pipeline_imagenet_$MODEL}"
PRETRAIN_RECIPE="${PRETRAIN_RECIPE:-$MODEL}"
require_positive_int GPUS NODES
require_dir --pretrain-data "${PRETRAIN_DATA:-}"
require_dir --imagenet "${IMAGENET:-}"
mkdir -p "$WORK"
log "model $MODEL, $GPUS process(es) x $NODES node(s), work folder $WORK"

pretrain_stage

# shellcheck disable=SC2206
finetune_args=(--model "$MODEL" --data "$IMAGENET" --weights "$ENCODER" --output-dir "$WORK/finetune"
  --resume auto --no-progress $FINETUNE_ARGS)
run_stage finetune "$WORK/finetune/summary.json" launch sparkmim.downstream_imagenet "${finetune_args[@]}"

best="$WORK/finetune/checkpoint_best_ema.pth"
[[ -f "$best" ]] || best="$WORK/finetune/checkpoint_best.pth"
run_stage eval "$WORK/eval/eval.jsonl" launch sparkmim.downstream_imagenet --eval-only --checkpoint "$best" \
  --data "$IMAGENET" --output-dir "$WORK/eval" --no-progress

report_stage
log "finished; top-1 in $WORK/finetune/summary.json and $WORK/eval/eval.jsonl"
