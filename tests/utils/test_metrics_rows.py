"""``metrics.jsonl`` after a crash: cut back to the rows the checkpoint covers, so each step appears once."""
import json

from sparkmim.utils.metrics import MetricsLogger, keep_first_rows, read_rows


def write_rows(path, steps, torn_tail=True):
    text = "".join(json.dumps({"kind": "step", "step": s}) + "\n" for s in steps)
    path.write_text(text + ('{"kind": "st' if torn_tail else ""))


def test_rows_after_the_checkpoint_and_a_torn_line_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, range(6))
    assert keep_first_rows(path, 4) == 3  # rows 4, 5 and the line a kill cut short
    assert [row["step"] for row in read_rows(path)] == [0, 1, 2, 3]
    assert path.read_text().endswith("\n") and not list(tmp_path.glob(".*.tmp"))
    assert keep_first_rows(path, 10) == 0  # fewer rows than recorded: nothing to drop


def test_logger_counts_rows_and_resumes_at_the_recorded_count(tmp_path):
    first = MetricsLogger(tmp_path, tensorboard=False, keep_rows=0)
    for step in range(3):
        first.log({"kind": "step", "loss": 1.0}, step=step)
    recorded = first.rows
    first.log({"kind": "step", "loss": 1.0}, step=3)  # logged after the "checkpoint", then a crash
    assert recorded == 3
    resumed = MetricsLogger(tmp_path, tensorboard=False, keep_rows=recorded)
    assert resumed.rows == 3
    resumed.log({"kind": "step", "loss": 0.5}, step=3)
    assert [(row["step"], row["loss"]) for row in read_rows(tmp_path / "metrics.jsonl")] == \
        [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.5)]


def test_unknown_row_count_keeps_the_file(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", range(3), torn_tail=False)
    assert MetricsLogger(tmp_path, tensorboard=False, keep_rows=None).rows == 3
    assert MetricsLogger(tmp_path, tensorboard=False, keep_rows=0).rows == 0  # a fresh start
