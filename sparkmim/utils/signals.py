"""Graceful stop on SIGTERM/SIGINT, for pre-emptible cluster jobs.

Schedulers (SLURM, Kubernetes, spot instances) announce pre-emption with SIGTERM and kill a little
later. Dying inside ``optimizer.step`` or a checkpoint write loses work, so the handler only raises a
flag; the training loop finishes its current step, saves, and exits cleanly. A second SIGINT (an
impatient Ctrl-C) falls back to the previous behaviour, i.e. ``KeyboardInterrupt``.
"""
import logging
import signal
import threading
from types import FrameType
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS: Tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Context manager: while active, SIGTERM/SIGINT set :attr:`requested` instead of killing.

    Handlers are installed only in the main thread (Python's rule) and the previous ones are
    restored on exit, so nesting and tests that use it repeatedly behave."""

    def __init__(self, signals: Tuple[int, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
                return
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = name
        logger.warning("received %s: finishing the current step, then saving and stopping "
                       "(press Ctrl-C again to abort at once)", name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        else:
            logger.info("not in the main thread: graceful stop on signals is disabled")
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def should_stop(self, device: Optional[torch.device] = None) -> bool:
        """Whether any process was asked to stop. Collective when a process group is running:
        every rank must call it at the same point, so all ranks stop after the same step."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device or torch.device("cpu"))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
