"""Graceful stop on SIGTERM/SIGINT, for pre-emptible cluster jobs.

Schedulers (SLURM, Kubernetes, spot instances) announce pre-emption with SIGTERM and kill a little
later. Dying inside ``optimizer.step`` or a checkpoint write loses work, so the handler only raises a
flag; the training loop finishes its current step, saves, and exits cleanly. A second signal (an
impatient Ctrl-C, a scheduler that repeats its SIGTERM) changes nothing but a log line: the save goes
on. A third one forces the exit with :class:`ForcedExit`, which interrupts any write (atomic writes
leave the previous checkpoint intact) and ends the command with one line, not a traceback.

Where no save can be made mid-epoch (``spark-finetune`` checkpoints whole epochs), :func:`stop_at_once`
turns SIGTERM into the same interrupt as Ctrl-C and ignores further signals once it has stopped, so
either ends the command with one line.

DataLoader workers ignore SIGINT and SIGTERM (:func:`ignore_interrupt_in_worker`): a Ctrl-C in a terminal
reaches the whole process group, as does the SIGTERM of SLURM, Kubernetes or ``timeout``, and a worker that
died of it would leave the main process unable to finish the step it is asked to finish. Workers still end
with the main process: the DataLoader stops them when it is done, and they exit when their parent is gone.
"""
import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS: Tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
SIGNALS_TO_FORCE = 3


class ForcedExit(KeyboardInterrupt):
    """A third stop signal: leave now, without the save (the last checkpoint is kept)."""


def ignore_interrupt_in_worker(_worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: the main process alone decides how to stop on Ctrl-C or SIGTERM."""
    for signum in DEFAULT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class GracefulStop:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`requested` instead of killing.

    Handlers are installed only in the main thread (Python's rule) and the previous ones are
    restored on exit, so nesting and tests that use it repeatedly behave."""

    def __init__(self, signals: Tuple[int, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: Optional[str] = None
        self.received = 0
        self._previous: Dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        self.received += 1
        if self.received >= SIGNALS_TO_FORCE:
            raise ForcedExit(f"stopped at once by a third stop signal ({name}), without saving; the last "
                             "checkpoint written is kept: continue with --resume auto")
        if self.requested:
            logger.warning("received %s again: still finishing the step and saving, then stopping "
                           "(one more signal stops at once, without saving)", name)
            return
        self.requested = True
        self.signal_name = name
        logger.warning("received %s: finishing the current step, then saving and stopping", name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        else:
            logger.info("not in the main thread: graceful stop on signals is disabled")
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            # after a stop the process is ending: a late repeat must not interrupt its last writes or exit
            signal.signal(signum, signal.SIG_IGN if self.requested else previous)
        self._previous.clear()

    def should_stop(self, device: Optional[torch.device] = None) -> bool:
        """Whether any process was asked to stop. Collective when a process group is running:
        every rank must call it at the same point, so all ranks stop after the same step."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device or torch.device("cpu"))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


@contextlib.contextmanager
def stop_at_once(signals: Tuple[int, ...] = DEFAULT_SIGNALS) -> Iterator[None]:
    """While active, SIGTERM and SIGINT raise ``KeyboardInterrupt("stopped by SIGTERM")`` at once; after
    the first, further ones are ignored, also after the context is left (the process is ending; a late
    repeat must not turn its exit into a traceback or a death by signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Optional[FrameType]) -> None:
        for other in signals:
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    except KeyboardInterrupt:
        for signum in signals:
            signal.signal(signum, signal.SIG_IGN)
        raise
    else:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
