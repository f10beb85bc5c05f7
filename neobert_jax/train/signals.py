"""Graceful stop: SIGTERM/SIGINT finish the current step, save, and exit 0.

A preempted job (SIGTERM) or a Ctrl-C then resumes exactly where it stopped. A second
signal interrupts immediately. On several hosts any process's signal stops all of them at
the same step, since they must save together.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopRequest:
    def __init__(self, on_signal=print):
        self._requested = False
        self._previous = {}
        self._on_signal = on_signal

    def _handle(self, signum, frame):
        if self._requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without saving")
        self._requested = True
        self._on_signal(f"{signal.Signals(signum).name} received: finishing the step, saving, then exiting")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """Whether any process got a signal (a collective call on multi-host runs)."""
        if jax.process_count() == 1:
            return self._requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self._requested], dtype=np.int32))
        return bool(np.any(flags))
