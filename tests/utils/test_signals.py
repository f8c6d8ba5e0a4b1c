"""Stop signals: the first asks for a save and a stop, a second only says the save goes on, a third
forces the exit (a real signal to this process each time)."""
import logging
import os
import signal
import time

import pytest

from sparkmim.utils.signals import ForcedExit, GracefulStop, ignore_interrupt_in_worker, stop_at_once


def deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # let the interpreter run the handler before the next one


@pytest.fixture
def restore_handlers():
    """A stop leaves its signals ignored (the process is ending); give the test process its handlers back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield saved
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_second_signal_keeps_saving_third_forces_the_exit(caplog, restore_handlers):
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ForcedExit, match="without saving"):
            with GracefulStop() as stop:
                deliver(signal.SIGINT)
                assert stop.requested and stop.signal_name == "SIGINT"
                deliver(signal.SIGTERM)  # the impatient second: no exception, the save goes on
                assert "still finishing the step and saving" in caplog.text
                deliver(signal.SIGINT)
                pytest.fail("the third signal did not stop the run")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a fourth cannot break the way out


def test_forced_exit_is_an_interrupt_for_the_commands():
    assert issubclass(ForcedExit, KeyboardInterrupt)


def test_loader_workers_ignore_interrupts():
    previous = signal.getsignal(signal.SIGINT)
    try:
        ignore_interrupt_in_worker(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stop_at_once_turns_sigterm_into_an_interrupt_then_ignores_repeats(restore_handlers):
    with stop_at_once():
        pass
    assert signal.getsignal(signal.SIGTERM) is restore_handlers[signal.SIGTERM]  # no stop: handlers restored
    with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM"):
        with stop_at_once():
            deliver(signal.SIGTERM)
            pytest.fail("SIGTERM did not stop the block")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
