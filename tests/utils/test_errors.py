"""One family of user errors, one way every command reports them."""
import shlex
import subprocess
import sys

import pytest

from sparkmim.benchmarks.value.data import BenchmarkDataError
from sparkmim.pretrain.checkpointing import CheckpointError as PretrainCheckpointError
from sparkmim.pretrain.data import DataError as PretrainDataError
from sparkmim.tools.convert import UsageError
from sparkmim.tools.viz import VizError
from sparkmim.utils.checkpoint import CheckpointReadError, NoStateDictError, UnsafeCheckpointError
from sparkmim.utils.config import ConfigError
from sparkmim.utils.disk import WriteFailedError
from sparkmim.utils.errors import UserError, run_command


@pytest.mark.parametrize("kind", [ConfigError, PretrainDataError, PretrainCheckpointError, UnsafeCheckpointError,
                                  VizError, UsageError, BenchmarkDataError, WriteFailedError,
                                  CheckpointReadError, NoStateDictError])
def test_the_project_errors_are_user_errors(kind):
    assert issubclass(kind, UserError)


def test_run_command_reports_one_line_and_the_status(capsys):
    cleaned = []

    def fail(error):
        def body():
            raise error
        return body

    assert run_command("prog", fail(ConfigError("bad option")), cleanup=lambda: cleaned.append(1)) == 2
    assert capsys.readouterr().err == "prog: error: bad option\n"
    assert run_command("prog", fail(FloatingPointError("loss is nan")), statuses={FloatingPointError: 1}) == 1
    assert capsys.readouterr().err.strip() == "prog: error: loss is nan"
    with pytest.raises(KeyError):  # not a user error: a traceback, not a one-liner
        run_command("prog", fail(KeyError("bug")), cleanup=lambda: cleaned.append(2))
    assert run_command("prog", lambda: 0, cleanup=lambda: cleaned.append(3)) == 0
    assert cleaned == [1, 2, 3]


def test_an_interrupt_is_one_line_and_status_130(capsys):
    def interrupted(message):
        def body():
            raise KeyboardInterrupt(*([message] if message else []))
        return body

    assert run_command("prog", interrupted("")) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"
    assert run_command("prog", interrupted("the last checkpoint is kept")) == 130
    assert capsys.readouterr().err == "prog: interrupted: the last checkpoint is kept\n"


class _WriterFailingOnExit:
    """As torch.save's zip writer behaves when a stop signal lands while it writes: its ``__exit__`` finishes
    the archive, finds it inconsistent and raises, so the interrupt is only the RuntimeError's context."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 2646400 vs 2646296")


def test_an_interrupt_behind_a_library_error_on_its_way_out_is_still_an_interrupt(capsys):
    def body():
        with _WriterFailingOnExit():
            raise KeyboardInterrupt("stopped by SIGTERM")

    assert run_command("prog", body) == 130
    assert capsys.readouterr().err == "prog: interrupted: stopped by SIGTERM\n"
    with pytest.raises(RuntimeError):  # the same library error without an interrupt is a bug: a traceback
        run_command("prog", _WriterFailingOnExit().__exit__)


def test_a_closed_output_pipe_ends_quietly():
    # `spark-convert --inspect FILE | head` ended in a BrokenPipeError traceback
    script = ("import sys\nfrom sparkmim.utils.errors import run_command\n"
              "def body():\n    for _ in range(100000):\n        print('x' * 100)\n    return 0\n"
              "sys.exit(run_command('prog', body))\n")
    reader = subprocess.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} | head -1", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert reader.stdout == "x" * 100 + "\n" and reader.stderr == ""


def test_an_error_is_described_in_one_line_even_without_a_message():
    from sparkmim.utils.errors import describe_error, first_line

    # str(error).splitlines()[0] would raise IndexError inside the handler that reports the error
    assert describe_error(RuntimeError()) == "RuntimeError" and first_line(RuntimeError()) == "RuntimeError"
    assert first_line(ValueError("bad size\n  (traceback of a library)")) == "bad size"
    assert describe_error(ValueError("bad size\n  (traceback of a library)\n")) == "ValueError: bad size"
    assert describe_error(OSError("x" * 1000), limit=20) == "OSError: " + "x" * 20

