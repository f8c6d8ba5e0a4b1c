"""Command logging writes to the stderr of the moment, so repeated runs in one process never hit a closed stream."""
import io
import logging
import sys

from sparkmim.utils.logging_setup import setup_command_logging, setup_logging


def test_command_logging_follows_the_current_stderr(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_command_logging(logging.WARNING)
    setup_command_logging(logging.WARNING)  # a second command in the same process replaces the handler
    logger = logging.getLogger("sparkmim.test_logging")
    logger.warning("to the first")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logger.warning("to the second")
    logger.info("below the level")
    assert second.getvalue() == "WARNING sparkmim.test_logging: to the second\n"
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "_sparkmim", False)]
    assert len(handlers) == 1


def test_trainer_logging_follows_the_current_stdout(monkeypatch, tmp_path):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    setup_logging(tmp_path, rank=0)
    first.close()
    monkeypatch.setattr(sys, "stdout", second)
    logging.getLogger("sparkmim.test_logging").info("after the first stream closed")
    assert "after the first stream closed" in second.getvalue()
    assert "after the first stream closed" in (tmp_path / "log_rank0.txt").read_text()


def test_a_command_after_a_trainer_prints_only_its_own_output(monkeypatch, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    setup_logging(tmp_path, rank=0)  # e.g. spark-pretrain run in this process before
    setup_command_logging(logging.WARNING)
    logging.getLogger("sparkmim.test_logging").info("progress of the command")
    assert out.getvalue() == "" and err.getvalue() == ""  # --json output on stdout stays clean
