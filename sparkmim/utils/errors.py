"""One family for the mistakes a user can fix, and one way every command reports them.

Every command-line tool ends a :class:`UserError` (a bad option, a missing or unusable file, data that
cannot be read, weights of another model) with one line, ``prog: error: message``, and exit status 2,
through :func:`run_command`. The project's specific error classes derive from it, so a command needs
no list of them; errors that mean something else (a diverging loss, failed key accounting) can be given
their own exit status. An interrupt (Ctrl-C outside a trainer's graceful stop, or a forced stop) also
ends with one line, and status 130 as shells expect."""
import os
import sys
from typing import Callable, Mapping, Optional, Type


class UserError(Exception):
    """A mistake the user can fix; the message says what to do."""


def _message_line(error: BaseException, limit: int) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters, or the error's type name when it
    has no message: enough to name a failure inside a one-line error, where some messages run to pages
    (Triton's, CUDA's)."""
    return _message_line(error, limit) or type(error).__name__


def describe_error(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, or the type's name alone for an empty message."""
    line = _message_line(error, limit)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _interrupt_behind(error: BaseException) -> Optional[KeyboardInterrupt]:
    """The KeyboardInterrupt that ``error`` was raised while handling, if any: a stop signal that lands in
    torch.save's zip writer surfaces as the writer's RuntimeError from its ``__exit__``, with the interrupt as
    its context."""
    seen = set()
    cause = error.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def report_interrupt(prog: str, interrupt: KeyboardInterrupt) -> int:
    """Say on one line that ``prog`` was interrupted and return the shells' status for it, 130."""
    print(f"{prog}: interrupted{': ' + str(interrupt) if str(interrupt) else ''}", file=sys.stderr)
    return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's own flush at exit does not fail on the closed pipe
    a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_command(prog: str, body: Callable[[], int], statuses: Optional[Mapping[Type[BaseException], int]] = None,
                cleanup: Optional[Callable[[], None]] = None) -> int:
    """``body()``, with a :class:`UserError` (exit 2) or an error listed in ``statuses`` (its status)
    turned into one line on stderr; ``cleanup`` runs in every case (e.g. leaving a process group)."""
    try:
        return body()
    except KeyboardInterrupt as interrupt:
        return report_interrupt(prog, interrupt)
    except BrokenPipeError:  # the reader went away (`spark-convert --inspect F | head`): nothing more to say
        _silence_stdout()
        return 141
    except BaseException as error:  # noqa: B036 - re-raised unless it is one of ours
        interrupt = _interrupt_behind(error)
        if interrupt is not None:  # a stop signal inside a library's code that then failed on its way out
            return report_interrupt(prog, interrupt)
        status = next((code for kind, code in (statuses or {}).items() if isinstance(error, kind)), None)
        if status is None and isinstance(error, UserError):
            status = 2
        if status is None:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return status
    finally:
        if cleanup is not None:
            cleanup()
