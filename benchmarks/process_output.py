"""Reading what a benchmark's child process printed: one home for every part that launches one."""
from typing import Union


def last_line(text: Union[str, bytes, None]) -> str:
    """The last line a finished or stopped process printed (its error, usually), for a one-line report."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no output"
