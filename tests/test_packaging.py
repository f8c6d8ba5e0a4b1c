"""A built wheel contains every module of every subpackage, under the sparkmim import root."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"sparkmim": "sparkmim", "pretrain": "sparkmim/pretrain", "downstream_imagenet": "sparkmim/downstream_imagenet",
           "downstream_d2": "sparkmim/downstream_d2", "downstream_mmdet": "sparkmim/downstream_mmdet",
           "tools": "sparkmim/tools", "benchmarks": "sparkmim/benchmarks"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_contains_every_module(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("sparkmim-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, package in FOLDERS.items():
        for module in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in module.parts or any(part.startswith(".") for part in module.relative_to(ROOT).parts):
                continue
            expected.add(f"{package}/{module.relative_to(ROOT / folder).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    assert not [n for n in names if n.startswith(("sparkmim/tests/", "tests/"))], "the test suite is not shipped"
    assert any(n.startswith("sparkmim/pretrain/recipes/") and n.endswith(".yaml") for n in names)
    for script in (ROOT / "tools" / "pipelines").glob("*.sh"):
        assert f"sparkmim/tools/pipelines/{script.name}" in names, script.name
