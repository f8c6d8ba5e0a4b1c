#!/usr/bin/env bash
# Run the MMDetection tests (tests/downstream_mmdet: framework and converter tests and the ConvNeXt COCO pipeline smoke run)
# inside the detection environment.
#   bash scripts/setup_mmdet_env.sh && bash scripts/run_mmdet_tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MMDET_VENV:-.venv-mmdet}"
if [ ! -x "$venv/bin/python" ]; then
  echo "run_mmdet_tests: $venv does not exist; create it with 'bash scripts/setup_mmdet_env.sh'" >&2
  exit 2
fi
# fail (not skip) when the environment lacks the stack: these tests exist to exercise real mmdet
"$venv/bin/python" -c "import mmcv.ops, mmdet, mmengine, mmpretrain, pycocotools" || {
  echo "run_mmdet_tests: $venv lacks mmcv ops / mmdet / mmengine / mmpretrain; re-run scripts/setup_mmdet_env.sh" >&2
  exit 2
}
# test_grad_scaler.py also runs here: this environment's torch 2.1 is the oldest the package supports
exec "$venv/bin/python" -m pytest tests/downstream_mmdet "tests/tools/test_tools_pipelines.py::test_convnext_coco_smoke" \
  tests/utils/test_grad_scaler.py -q "$@"
