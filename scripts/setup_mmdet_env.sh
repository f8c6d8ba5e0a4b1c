#!/usr/bin/env bash
# Create (or check) the pinned MMDetection 3.x environment in .venv-mmdet and install sparkmim into it.
#
#   bash scripts/setup_mmdet_env.sh          # CPU: builds mmcv 2.1.0 with its CPU ops (about 11 min on 2 cores, once)
#   bash scripts/setup_mmdet_env.sh gpu      # CUDA 12.1: OpenMMLab's prebuilt mmcv 2.1.0 wheel for torch 2.1
#
# Why a separate environment: mmdet 3.3 refuses mmcv >= 2.2, Mask R-CNN needs mmcv's compiled ops
# (mmcv-lite is not enough), and mmcv 2.1.0 only compiles against torch <= 2.1-era headers (C++17).
# The environment is therefore pinned to torch 2.1.2. pip caches the built mmcv wheel, so rebuilding
# the environment on the same machine is quick, and a second run of this script that finds the
# environment complete returns in seconds.
#
# Environment variables:
#   MMDET_VENV   where to create the environment (default: .venv-mmdet in the repository root)
#   MAX_JOBS     parallel compile jobs for mmcv (default: number of cores)
#   MMCV_FIND_LINKS  a pip --find-links URL with prebuilt mmcv wheels (gpu mode sets OpenMMLab's cu121 index)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-cpu}"
case "$mode" in
  cpu|gpu) ;;
  *) echo "usage: bash scripts/setup_mmdet_env.sh [cpu|gpu]" >&2; exit 2 ;;
esac
venv="${MMDET_VENV:-.venv-mmdet}"
py="$venv/bin/python"
stamp="$venv/.sparkmim-mmdet-$mode"

# Pinned versions: one place, used as a pip constraints file for every install below.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
cat > "$constraints" <<'EOF'
torch==2.1.2
torchvision==0.16.2
numpy<2
setuptools<70
opencv-python<4.12
mmcv==2.1.0
mmengine==0.10.7
mmdet==3.3.0
mmpretrain==1.2.0
timm==1.0.31
EOF

check() {
  "$py" - <<'EOF'
import os, sys
import torch, mmcv, mmengine, mmdet, mmpretrain, timm, pycocotools, sparkmim
from mmcv.ops import roi_align, nms  # the compiled ops (mmcv._ext) Mask R-CNN needs
here = os.path.realpath(os.getcwd())
if not os.path.realpath(sparkmim.__file__).startswith(here + os.sep):
    sys.exit(f"sparkmim in this environment is not this checkout: {sparkmim.__file__}")
print(f"mmdet environment ready: torch {torch.__version__}, mmcv {mmcv.__version__}, "
      f"mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, mmpretrain {mmpretrain.__version__}, "
      f"timm {timm.__version__}")
EOF
}

# mmcv's ops compiled for CUDA? (a CPU build imports just as well, then fails at the first RoIAlign on a GPU)
has_cuda_ops() {
  "$py" -c "import sys; from mmcv.ops import get_compiling_cuda_version as v; sys.exit(v() == 'not available')" 2>/dev/null
}

if [ -f "$stamp" ] && check 2>/dev/null && { [ "$mode" = cpu ] || has_cuda_ops; }; then
  exit 0
fi

pipq() { "$py" -m pip install -q -c "$constraints" "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

[ -x "$py" ] || python3 -m venv "$venv"
"$py" -m pip install -q --upgrade "pip>=23" 2>&1 | { grep -v "^WARNING: Location" || true; }
pipq torch torchvision numpy setuptools wheel ninja
if [ "$mode" = gpu ] && "$py" -c "import mmcv.ops" 2>/dev/null && ! has_cuda_ops; then
  echo "mmcv in $venv has CPU ops only (made by the cpu mode): replacing it with the prebuilt CUDA wheel"
  "$py" -m pip uninstall -q -y mmcv
fi
if ! "$py" -c "import mmcv.ops" 2>/dev/null; then
  if [ "$mode" = gpu ]; then
    links="${MMCV_FIND_LINKS:-https://download.openmmlab.com/mmcv/dist/cu121/torch2.1/index.html}"
    pipq --no-cache-dir --only-binary mmcv -f "$links" mmcv  # never the CPU wheel the cpu mode built and cached
  else
    # Build from source with the CPU ops only (the registry carries mmcv as source). mmcv builds its CUDA ops
    # whenever torch sees a GPU, whatever FORCE_CUDA says: hide the GPUs from the build.
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" CUDA_VISIBLE_DEVICES="" FORCE_CUDA=0 MMCV_WITH_OPS=1 pipq --no-build-isolation mmcv
  fi
fi
pipq opencv-python mmengine mmdet mmpretrain timm pycocotools
pipq -e ".[test]"
check
if [ "$mode" = gpu ] && ! has_cuda_ops; then
  echo "mmcv's ops in $venv are not compiled for CUDA: Mask R-CNN would fail on a GPU; set MMCV_FIND_LINKS to" \
    "OpenMMLab's wheel index for your CUDA and torch 2.1" >&2
  exit 1
fi
touch "$stamp"
