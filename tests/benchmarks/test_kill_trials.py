"""spark-bench kill-trials: a real kill-and-resume trial end to end, and the counting of its figures."""
import json
import subprocess
import sys

import pytest

from sparkmim.benchmarks.faults.kill_trials import TrialResult, all_clean, format_kill_trials


def _result(**problems) -> dict:
    fields = dict(trial=0, kill_after_s=1.0, steps_logged_at_kill=3, checkpoint_step_at_kill=3,
                  temporary_files_at_kill=0, corrupt_checkpoint=False, resume_failed=False, duplicated_rows=0,
                  missing_rows=0, summary_mismatches=0, max_weight_difference=0.0, weights_differ=False,
                  temporary_files_left=0)
    fields.update(problems)
    return TrialResult(**fields).__dict__


@pytest.mark.parametrize("problem", [{"duplicated_rows": 2}, {"missing_rows": 1}, {"summary_mismatches": 1},
                                     {"corrupt_checkpoint": True}, {"resume_failed": True},
                                     {"weights_differ": True, "max_weight_difference": 1e-3},
                                     {"temporary_files_left": 1}])
def test_any_counted_problem_makes_the_trials_fail(problem):
    report = {"trainer": "pretrain", "trials": 2, "reference_seconds": 5.0, "kill_window_s": [1.0, 4.0], "reference_steps": 42, "torch": "x",
              "results": [_result(), _result(**problem)]}
    assert all_clean({**report, "results": [_result()]})
    assert not all_clean(report)
    assert "| NO |" in format_kill_trials(report)


@pytest.mark.slow
def test_one_real_trial_of_spark_pretrain(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sparkmim.benchmarks.cli", "kill-trials", "--work-dir",
                           str(tmp_path / "work"), "--trials", "1", "--json", str(tmp_path / "trials.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "trials.json").read_text())
    assert report["reference_steps"] == 42 and len(report["results"]) == 1
    assert "| duplicated metric rows | 0 |" in done.stdout
