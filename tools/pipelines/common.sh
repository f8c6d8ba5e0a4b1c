# shellcheck shell=bash
# Shared by the SparK pipelines (sourced, not run): options, stages with logs, resume, launching.
#
# Every option is also a variable: `--pretrain-data DIR` sets PRETRAIN_DATA, and PRETRAIN_DATA=DIR in
# the environment works the same (the command line wins). A stage whose completion marker
# ($WORK/.stages/<stage>.done) and output both exist is skipped, so running the same command again
# resumes a half-finished pipeline; a stage that was interrupted is run again and continues from its
# own checkpoint (--resume). The first failing stage stops the pipeline, with the end of its log.

log() { printf '[%s %s] %s\n' "$PIPELINE" "$(date +%H:%M:%S)" "$*"; }

die() {
  printf '%s: error: %s\n' "$PIPELINE" "$*" >&2
  exit 2
}

usage() {
  # the header comment of the pipeline script is its help text
  sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
  exit 0
}

# parse_args "$@": --name VALUE for each name in $PIPELINE_OPTIONS (dashes for underscores),
# --smoke, --help. Values land in the upper-case variable of the same name.
parse_args() {
  while (($#)); do
    case "$1" in
      -h|--help) usage ;;
      --smoke) SMOKE=1; shift ;;
      --*)
        local name="${1#--}"
        name="${name//-/_}"
        if [[ " $PIPELINE_OPTIONS " != *" $name "* ]]; then
          die "unknown option $1 (options: --$(echo "$PIPELINE_OPTIONS" | sed 's/ / --/g; s/_/-/g') --smoke --help)"
        fi
        (($# >= 2)) || die "option $1 needs a value"
        printf -v "${name^^}" '%s' "$2"
        shift 2 ;;
      *) die "unexpected argument '$1' (see --help)" ;;
    esac
  done
}

# require_positive_int NAME...: each variable must be a whole number >= 1
require_positive_int() {
  local name
  for name in "$@"; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "${name,,} must be a whole number >= 1, got '${!name}'"
  done
}

# The Detectron2 and MMDetection recipes train with this many images per iteration, and their lr is for it.
DETECTION_BATCH=16

# require_detection_batch_split OTHERWISE: the recipe's batch must split evenly over the GPUS x NODES
# processes; OTHERWISE says how to choose another batch (checked before anything runs)
require_detection_batch_split() {
  local processes=$((GPUS * NODES))
  ((DETECTION_BATCH % processes == 0)) ||
    die "the recipe's $DETECTION_BATCH images per iteration do not split over $processes processes ($GPUS GPU(s) x $NODES node(s)): use 1, 2, 4, 8 or 16 GPUs in all, or $1"
}

require_dir() {  # require_dir WHAT DIR
  [[ -n "$2" ]] || die "$1 is required (see --help)"
  [[ -d "$2" ]] || die "$1 folder not found: $2"
}

# has_module PYTHON MODULE: is the module importable by that interpreter?
has_module() { "$1" -c "import $2" >/dev/null 2>&1; }

# launch_with PYTHON MODULE ARGS...: one process, or torchrun with GPUS processes per node on NODES nodes
launch_with() {
  local python="$1"
  shift
  if ((GPUS * NODES > 1)); then
    "$python" -m torch.distributed.run --nproc_per_node "$GPUS" --nnodes "$NODES" --node_rank "$NODE_RANK" \
      --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m "$@"
  else
    "$python" -m "$@"
  fi
}

launch() { launch_with "$PYTHON" "$@"; }

# run_stage NAME OUTPUT COMMAND...: skip when done before, else run with a log, stop on failure
run_stage() {
  local name="$1" output="$2"
  shift 2
  local marker="$WORK/.stages/$name.done" logfile="$WORK/logs/$name.log"
  if [[ -f "$marker" && -e "$output" ]]; then
    log "stage $name: already done ($output), skipped"
    return 0
  fi
  mkdir -p "$WORK/.stages" "$WORK/logs"
  rm -f "$marker"
  log "stage $name: running; log $logfile"
  printf '\n===== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logfile"
  local status=0
  "$@" >>"$logfile" 2>&1 || status=$?
  if ((status != 0)); then
    log "stage $name FAILED (exit status $status). Last lines of $logfile:" >&2
    tail -n 25 "$logfile" >&2
    printf '%s: stopped at stage %s; fix the cause and run the same command again to resume\n' \
      "$PIPELINE" "$name" >&2
    exit "$status"
  fi
  if [[ ! -e "$output" ]]; then
    log "stage $name finished but did not produce $output; see $logfile" >&2
    exit 1
  fi
  date -u +%FT%TZ >"$marker"
  log "stage $name: done -> $output"
}

# skip_rest REASON: the remaining stages need a framework that is not installed (smoke mode only)
skip_rest() {
  log "SKIPPED the remaining stages: $1"
  mkdir -p "$WORK"
  printf '%s\n' "$1" >"$WORK/SKIPPED"
}

report_stage() {
  # always rerun: cheap, and it should reflect every stage done so far
  if ((NODE_RANK == 0)); then
    mkdir -p "$WORK/logs"
    if "$PYTHON" -m sparkmim.tools.report "$WORK" --output "$WORK/report.md" --plot "$WORK/report.png" \
      >"$WORK/logs/report.log" 2>&1; then
      log "report: $WORK/report.md, chart $WORK/report.png"
    else
      log "report: nothing to report yet (see $WORK/logs/report.log)"
    fi
  fi
}

# require_coco_layout: $COCO has the annotation files of the COCO layout (checked before anything runs)
require_coco_layout() {
  local split
  for split in train val; do
    [[ -f "$COCO/annotations/instances_${split}2017.json" ]] ||
      die "$COCO/annotations/instances_${split}2017.json not found (expected the COCO layout)"
  done
}

# convert_stage OUTPUT FRAMEWORK_PYTHON FRAMEWORK HAVE: the encoder converted for FRAMEWORK (d2 or
# mmdet); when HAVE is 1 (FRAMEWORK_PYTHON has the framework) by that interpreter, which loads the
# result into the framework to check it, otherwise by $PYTHON without the check (smoke runs)
convert_stage() {
  local output="$1" python="$2" framework="$3" have="$4"
  local check=(--check)
  if ((!have)); then
    python="$PYTHON"
    check=()
  fi
  mkdir -p "$(dirname "$output")"
  run_stage convert "$output" "$python" -m sparkmim.tools.convert "$ENCODER" "$output" --to "$framework" \
    --model "$MODEL" "${check[@]}"
}

# finish_without_framework HAVE REASON: when HAVE is 0 (smoke runs only: a normal run stops earlier),
# skip the framework's stages with REASON, write the report and end the pipeline
finish_without_framework() {
  if (($1)); then
    return 0
  fi
  skip_rest "$2"
  report_stage
  exit 0
}

# common defaults (the pipeline scripts set theirs first)
init_common() {
  SMOKE="${SMOKE:-0}"
  PYTHON="${PYTHON:-python}"
  GPUS="${GPUS:-8}"
  NODES="${NODES:-1}"
  NODE_RANK="${NODE_RANK:-0}"
  MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  MASTER_PORT="${MASTER_PORT:-29500}"
}

COMMON_OPTIONS="work model gpus nodes node_rank master_addr master_port python pretrain_data pretrain_recipe pretrain_args"

# pretrain_stage: spark-pretrain into $WORK/pretrain (resumes from its own checkpoint)
pretrain_stage() {
  local args=("$PRETRAIN_DATA" --model "$MODEL" --output-dir "$WORK/pretrain" --resume auto --no-progress)
  if [[ "$PRETRAIN_RECIPE" != none ]]; then
    args+=(--recipe "$PRETRAIN_RECIPE")
  fi
  # shellcheck disable=SC2206  # word splitting of the extra options is intended
  args+=($PRETRAIN_ARGS)
  ENCODER="$WORK/pretrain/${MODEL}_encoder_timm.pth"
  run_stage pretrain "$ENCODER" launch sparkmim.pretrain "${args[@]}"
}
