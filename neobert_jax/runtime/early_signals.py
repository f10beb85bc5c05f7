"""SIGTERM/SIGINT before a run installs its own handlers (the imports take seconds): a clean exit
0 saying there is nothing to save, not -15. The scripts import this first; it imports nothing heavy.

The handler only records the signal. An exception raised in a handler surfaces wherever Python
runs next, which may be a callback of JAX's C++ (its gc callback swallowed the exit and the run
went on; others aborted the process), so the exit happens at `exit_if_received` and the run's
StopRequest takes the request over."""

import os
import signal
import sys

_received: str | None = None


def _record(signum, frame):
    global _received
    if _received is None:
        _received = signal.Signals(signum).name
        message = f"{_received} received during start-up: stopping before the first step, nothing to save\n"
        os.write(2, message.encode())


def install() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record)


def received() -> str | None:
    """The name of the signal received since `install`, if any."""
    return _received


def exit_if_received() -> None:
    if _received is not None:
        sys.exit(0)
