"""Test hooks, read from the environment, that hold a run still at a known point."""

import os
import signal


def hold_for_test(variable: str, count: int) -> None:
    """A test hook: when the environment variable `variable` (CMT_TEST_PAUSE_AFTER_SHARDS in generation,
    CMT_TEST_PAUSE_AFTER_STEP in training) equals `count`, hold still here until a signal ends the process (its
    handler raises out of the wait: Ctrl-C, SIGTERM; SIGKILL ends it), so that a test interrupts a run at a known
    point, however loaded the machine, instead of racing a timed poll against the run's end."""
    if count and os.environ.get(variable) == str(count):
        while True:
            signal.pause()
