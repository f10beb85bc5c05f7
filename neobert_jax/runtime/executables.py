"""Compiled steps kept on disk, so that a rerun skips tracing and lowering, not only XLA's compile.

JAX's persistent compilation cache finds an executable by its lowered program: every run still
traces and lowers the step to compute that key, which for the student's train step on a GPU is
seconds (most of it lowering the Pallas kernels to Triton). This cache keys an executable by what
the program is made from instead: the package's source, the library versions, the devices, the
JAX/XLA environment variables, the caller's settings (the task passes its model, train and mesh
config) and the arguments' shapes, dtypes and shardings. A hit loads the serialized executable
(jax.experimental.serialize_executable); a miss compiles as `jax.jit` would and stores it.

It lives in `<compilation_cache_dir>/executables` (the newest MAX_ENTRIES are kept) and serves every
task's train step and its evaluation programs (`for_run`) in single-process GPU and TPU runs: processes of a multi-host run must compile the same program
together, and XLA:CPU executables of the train step do not survive serialization (jax 0.10: a
loaded one fails with "Function ... not found"), so the CPU traces each run as before.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import pickle
import tempfile
from typing import Callable

import jax
from jax.experimental import serialize_executable

MAX_ENTRIES = 32
PLATFORMS = ("gpu", "tpu")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes")
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent  # neobert_jax/


@functools.cache
def _environment() -> str:
    """What every key shares: source digest, library versions, devices, JAX/XLA variables."""
    source = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        source.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    versions = {name: importlib.metadata.version(name) for name in LIBRARIES}
    devices = [(d.id, d.platform, d.device_kind, d.process_index) for d in jax.devices()]
    variables = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("JAX_", "XLA_"))}
    return json.dumps([source.hexdigest(), versions, devices, variables])


def _signature(args) -> str:
    leaves, treedef = jax.tree.flatten(args)
    return str(treedef) + repr([(getattr(x, "shape", ()), str(getattr(x, "dtype", type(x).__name__)),
                                 str(getattr(x, "sharding", None))) for x in leaves])


class CachedStep:
    """`jitted(*args)`, compiled on the first call (per shape of the arguments after the first) or
    loaded from `cache_dir`. The first argument (the state) keeps one layout for the whole run."""

    def __init__(self, jitted, name: str, settings: dict, cache_dir: str, log: Callable[[str], None],
                 codec=(serialize_executable.serialize, serialize_executable.deserialize_and_load)):
        """codec: (compiled -> (bytes, in_tree, out_tree), that triple -> executable)."""
        self.jitted, self.name, self.cache_dir, self.log = jitted, name, cache_dir, log
        self.serialize, self.deserialize = codec
        self.settings = json.dumps(settings, sort_keys=True, default=str)
        self.compiled: dict = {}  # shapes of args[1:] -> executable

    def __call__(self, *args):
        shapes = tuple((getattr(x, "shape", ()), getattr(x, "dtype", None)) for x in jax.tree.leaves(args[1:]))
        executable = self.compiled.get(shapes)
        if executable is None:
            executable = self.compiled[shapes] = self._load_or_compile(args)
        return executable(*args)

    def _load_or_compile(self, args):
        key = hashlib.sha256("\n".join([_environment(), self.name, self.settings, _signature(args)]).encode())
        path = os.path.join(self.cache_dir, f"{self.name}-{key.hexdigest()[:32]}.bin")
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    blob, in_tree, out_tree = pickle.load(f)
                executable = self.deserialize(blob, in_tree, out_tree)
                os.utime(path)  # recently used: kept by the pruning
                self.log(f"{self.name}: compiled program loaded from {path}")
                return executable
            except Exception as e:  # a stale or torn entry is recompiled and replaced, never fatal
                self.log(f"{self.name}: could not load {path} ({type(e).__name__}: {e}); compiling it again")
        executable = self.jitted.lower(*args).compile()
        try:
            self._store(path, self.serialize(executable))
        except Exception as e:  # e.g. a backend without serialization, or a full disk: run without the cache
            self.log(f"{self.name}: compiled program not cached ({type(e).__name__}: {e})")
        return executable

    def _store(self, path: str, serialized) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(serialized, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        entries = sorted(pathlib.Path(self.cache_dir).glob("*.bin"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[MAX_ENTRIES:]:
            old.unlink(missing_ok=True)


def cached(jitted, name: str, settings: dict, cache_dir: str, log: Callable[[str], None]):
    """`jitted` through the executable cache in `cache_dir` (`jitted` itself for "", several processes
or the CPU)."""
    if not cache_dir or jax.process_count() > 1 or jax.default_backend() not in PLATFORMS:
        return jitted
    return CachedStep(jitted, name, settings, os.path.join(os.path.expanduser(cache_dir), "executables"), log)


def run_settings(config, setup, **task) -> dict:
    """What a task's compiled programs are made of besides their arguments, the keys' settings: the
    model's fields but its mesh (config.mesh and the devices stand for it), train.* as far as the step
    reads it, the mesh config, what the run resolved but its length, and `task`: whatever else the
    task's programs close over (its loss, pooling, slots...)."""
    model = {k: v for k, v in dataclasses.asdict(setup.parts.config.replace(mesh=None)).items() if k != "mesh"}
    resolved = {k: v for k, v in dataclasses.asdict(setup.resolved).items() if k != "total_steps"}  # hparams
    return dict(model=model, train=setup.optimizer.program_settings(), mesh=config.mesh.to_dict(),
                resolved=resolved, **task)


def for_run(config, settings: dict, log: Callable[[str], None]) -> Callable:
    """(jitted, name, **more settings) -> `cached(jitted, name, settings + more, ...)` in the run's
    compilation cache."""

    def cache(jitted, name: str, **more):
        return cached(jitted, name, {**settings, **more}, config.compilation_cache_dir, log)

    return cache
