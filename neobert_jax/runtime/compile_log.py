"""What a run spent compiling, from JAX's own monitoring events.

A GPU run's start-up is mostly compilation (XLA's autotuning of the matrix products included), and a
rerun's is mostly loading from the persistent compilation cache. The start-up line and
run_summary.json say which, so a slow first run and a fast rerun explain themselves. Programs that a
task loads from its own cache of executables (runtime/executables.py) are not compiled and are not
counted.
"""

from __future__ import annotations

from jax import monitoring

DURATIONS = {  # JAX's event -> our total; one backend compilation (or cache load) per program
    "/jax/core/compile/jaxpr_trace_duration": "tracing_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lowering_s",
    "/jax/core/compile/backend_compile_duration": "xla_s",
}
CACHE_HIT = "/jax/compilation_cache/cache_hits"


class CompileLog:
    """Totals of the compilations while it is open (`with CompileLog() as compiles:`): programs, how
    many of them the persistent cache served, and the seconds of tracing, lowering and XLA
    (for a cache hit, XLA's seconds are the loading)."""

    def __init__(self):
        self.totals = {"programs": 0, "cache_hits": 0, "tracing_s": 0.0, "lowering_s": 0.0, "xla_s": 0.0}

    def _duration(self, event: str, seconds: float, **_) -> None:
        key = DURATIONS.get(event)
        if key is not None:
            self.totals[key] += seconds
            self.totals["programs"] += key == "xla_s"

    def _event(self, event: str, **_) -> None:
        self.totals["cache_hits"] += event == CACHE_HIT

    def __enter__(self) -> "CompileLog":
        monitoring.register_event_duration_secs_listener(self._duration)
        monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_duration_listener(self._duration)
        monitoring.unregister_event_listener(self._event)

    def snapshot(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.totals.items()}

    def describe(self) -> str:
        t = self.totals
        compiled = t["programs"] - t["cache_hits"]
        return (f"{t['programs']} programs ({compiled} compiled, {t['cache_hits']} from the persistent cache): "
                f"tracing {t['tracing_s']:.1f} s, lowering {t['lowering_s']:.1f} s, XLA {t['xla_s']:.1f} s")
