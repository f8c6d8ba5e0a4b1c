"""``computed_on_main``: the main process computes, every process gets its result, and an error on the main
process reaches the others instead of leaving them waiting (a real 2-process gloo group under torchrun)."""
import json
import subprocess
import sys

import pytest

from sparkmim.utils.distributed import computed_on_main
from tests.pretrain_fixtures import REPO_ROOT, environment

pytestmark = [pytest.mark.distributed]


def test_one_process_computes_in_place():
    assert computed_on_main(lambda: [1.5, 2.5], "a sum") == [1.5, 2.5]


def test_two_processes_get_the_main_result_and_its_error(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.main_computes_worker", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment({"PYTHONPATH": str(REPO_ROOT)}),
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    main, other = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert main["got"] == other["got"] == {"computed_by": 0}
    assert main["ran"] == [0] and other["ran"] == []  # the other process never computed
    assert main["error"] == "OSError: none of the sampled files is readable"
    assert other["error"] == ("UserError: the main process failed at the failing computation "
                              "(OSError: none of the sampled files is readable)")
