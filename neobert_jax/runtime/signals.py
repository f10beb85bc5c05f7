"""Graceful stop: SIGTERM/SIGINT finish the current step, save, and exit 0.

A preempted job (SIGTERM) or a Ctrl-C then resumes exactly where it stopped. A second
signal only says so: an interrupt mid-save lost the steps since the last checkpoint. On several hosts a signal to any process (a preemption
notice often reaches one host only) stops all of them after the same step, since they
must save together.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neobert_jax.runtime import early_signals

# Steps slower than this are awaited before the next is dispatched (see StopRequest.requested).
SLOW_STEP_S = 1.0


@functools.cache
def _any_device_flag():
    """(sharding of one flag per device, jitted any() to a replicated scalar) over all devices."""
    mesh = Mesh(np.asarray(jax.devices()), ("devices",))
    any_flag = jax.jit(jnp.any, out_shardings=NamedSharding(mesh, PartitionSpec()))
    return NamedSharding(mesh, PartitionSpec("devices")), any_flag


def write_stderr(text: str) -> None:
    """One line straight to file descriptor 2: a signal handler that wrote through sys.stderr while the
    interrupted code was writing there (the progress bar) would raise "reentrant call"."""
    os.write(2, (text + "\n").encode())


class StopRequest:
    def __init__(self, on_signal=write_stderr):
        self._requested = False
        self._previous = {}
        self._on_signal = on_signal
        self._pending = None  # several processes: the agreement started by the previous `requested()`
        self._last_call: float | None = None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self._requested:  # interrupting now would lose the steps since the last checkpoint
            self._on_signal(f"{name} received again: still finishing the step and saving (SIGKILL aborts without "
                            "saving)")
            return
        self._requested = True
        self._on_signal(f"{name} received: finishing the step, saving, then exiting")

    def __enter__(self) -> "StopRequest":
        self._requested = self._requested or early_signals.received() is not None  # one before the handlers
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, running=None) -> bool:
        """Whether to stop now, before dispatching the next step; call once per step on every process.

        `running`: outputs of the step dispatched last. Loops read metrics one step late, so the
        next step is queued while this one runs and a signal arriving now would also wait for
        that one (minutes with the student config on a CPU). When the previous call was
        more than SLOW_STEP_S ago, the step is awaited first and a signal during it stops the run
        right after it; what that costs is the host's batch and dispatch work no longer hidden
        behind the device, milliseconds against a step of seconds. Faster steps keep the overlap,
        their two steps of latency being short.

        On several processes every call starts an any() of all processes' flags on the devices,
        queued behind the step just dispatched, and returns the one the previous call started:
        all processes get the same answer at the same step whether or not each waited, and the
        host never waits for the device beyond the step before (the stop comes one step later).
        """
        now = time.perf_counter()
        if running is not None and self._last_call is not None and now - self._last_call > SLOW_STEP_S:
            jax.block_until_ready(running)  # the time between calls stays the step time: `now` is kept
        self._last_call = now
        if jax.process_count() == 1:
            return self._requested
        sharding, any_flag = _any_device_flag()
        flags = jax.make_array_from_process_local_data(sharding, np.full(jax.local_device_count(), self._requested))
        previous, self._pending = self._pending, any_flag(flags)
        return previous is not None and bool(np.asarray(previous.addressable_data(0)))
