"""Without the MMDetection environment the commands say how to create it, --help included (the main test
environment has no mmdet; the detection environment runs the rest of this folder)."""
import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mmengine") is not None,
                                reason="mmengine is installed here: the missing-framework message cannot show")


@pytest.mark.parametrize("command", ["train", "test"])
@pytest.mark.parametrize("args", [["--help"], ["convnext-b", "--from-scratch"]])
def test_a_missing_framework_is_one_line_that_names_the_set_up_script(command, args):
    done = subprocess.run([sys.executable, "-m", f"sparkmim.downstream_mmdet.{command}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spark-mmdet-{command}: error:") and "setup_mmdet_env.sh" in lines[0]
