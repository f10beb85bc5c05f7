"""The runner's clocks: a log interval's sums and timing, and where the host's time goes between steps."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass
class Interval:
    """Host-side sums over the steps since the last log line."""

    steps: int = 0
    finite_steps: int = 0
    loss_sum: float = 0.0
    counters: dict = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.perf_counter)
    untimed: int = 0  # leading steps before `started`: a process's first, mostly compilation

    def saved(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("started", "untimed")}

    def elapsed(self) -> float | None:
        """Seconds the interval's steps took, the untimed ones counted at the timed steps' mean;
        None while every step is untimed."""
        timed = self.steps - self.untimed
        return (time.perf_counter() - self.started) * self.steps / timed if timed > 0 else None

    @classmethod
    def restored(cls, saved: dict) -> "Interval":
        """From a checkpoint's `saved()`; one of the release before the runner kept the MLM counters
        as fields (real_tokens, predicted_tokens, flops)."""
        counters = dict(saved.get("counters", {}))
        legacy = {"real_tokens": "tokens", "predicted_tokens": "predicted_tokens", "flops": "flops"}
        counters.update({new: saved[old] for old, new in legacy.items() if old in saved})
        return cls(saved.get("steps", 0), saved.get("finite_steps", 0), saved.get("loss_sum", 0.0), counters)


class HostTime:
    """Seconds of the host's own work for the steps (batches, dispatch) and of its waits on the
    device (reading metrics back, a step awaited), counted while `counting()`: after the first
    step, whose time is mostly compilation. A host that mostly waits is device-bound; one that
    mostly works starves the device."""

    def __init__(self, counting: Callable[[], bool]):
        self.counting = counting
        self.seconds = {"batches_and_dispatch": 0.0, "waiting_on_device": 0.0}

    def count(self, key: str, started: float) -> None:
        if self.counting():
            self.seconds[key] += time.perf_counter() - started

    def timed(self, key: str, fn, *args):
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.count(key, started)
