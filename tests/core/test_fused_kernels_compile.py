"""The fused norm kernels compile for the GPUs users train on (A100: sm_80, H100/H200: sm_90), checked
without a GPU: Triton compiles to PTX and cubin on any machine. The numerical tests run the kernels
through Triton's interpreter, which accepts code the compiler refuses (on the first try, a helper
returning from both branches of a constexpr ``if`` compiled for bf16 but not for float64)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the triton norm kernel needs the triton package")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_every_kernel_compiles_for_a100_and_h100_in_every_dtype_and_layout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "tests.triton_compile_worker", "80", "90"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    outcomes = report["outcomes"]
    assert len(outcomes) == 2 * 4 * 4 * 2  # architectures x kernels x dtypes x layouts
    failed = {name: outcome for name, outcome in outcomes.items() if outcome != "ok"}
    assert not failed, failed
    # memory-bound kernels: the bf16 activation (and gradient) is read several elements per instruction
    scalar = [name for name, vector in report["vector_loads"].items() if " bf16 " in name and not vector]
    assert not scalar, scalar
    # ptxas reports each kernel's registers and spills; none may spill (local-memory traffic)
    usage = report["resources"]
    assert len(usage) == len(outcomes)
    spilled = {name: used for name, used in usage.items() if used["spill_bytes"] != 0 or not used["registers"]}
    assert not spilled, spilled
