"""last_line: the one-line reason every benchmark part gives when a process it launched fails."""
from sparkmim.benchmarks.process_output import last_line


def test_the_last_printed_line_is_reported_from_text_or_bytes():
    assert last_line("loading\nRuntimeError: CUDA out of memory\n\n") == "RuntimeError: CUDA out of memory"
    assert last_line(b"step 1\nKilled\n") == "Killed"
    assert last_line(b"\xff bad byte") == "\ufffd bad byte"


def test_a_silent_process_says_so():
    assert last_line(None) == last_line("") == last_line("  \n") == "no output"
