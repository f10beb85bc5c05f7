"""The executable cache (neobert_jax/runtime/executables.py): a later run finds the compiled
program by its settings and argument shapes, other settings or shapes miss, a torn entry is
recompiled instead of failing, and the oldest entries are pruned.

The cache serves GPU/TPU runs only: XLA:CPU executables do not survive serialization (a loaded
one fails with "Function ... not found" unless this process compiled it itself). So here the
codec keeps the executables in memory and the file holds the name of one; everything else
(keys, files, pruning, fallbacks) is the cache's own code. The GPU path is measured by
scripts/bench_recipe.py (docs/recipe.md: a rerun loads both steps).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neobert_jax.runtime import executables
from neobert_jax.runtime.executables import CachedStep


class InMemoryCodec:
    def __init__(self):
        self.kept, self.loads = {}, 0

    def serialize(self, compiled):
        name = f"executable-{len(self.kept)}".encode()
        self.kept[name] = compiled
        return name, None, None

    def deserialize(self, blob, in_tree, out_tree):
        self.loads += 1
        return self.kept[blob]


@pytest.fixture
def codec():
    return InMemoryCodec()


def step_fn():
    return jax.jit(lambda s, x: ({"w": s["w"] * x}, jnp.sum(s["w"] * x)), donate_argnums=0)


def run(cache_dir, codec, settings=None, shape=(3,)):
    said = []
    step = CachedStep(step_fn(), "toy_step", settings or {"lr": 1.0}, str(cache_dir), said.append,
                      codec=(codec.serialize, codec.deserialize))
    state = {"w": jnp.arange(float(np.prod(shape))).reshape(shape)}
    state, total = step(state, np.float32(2.0))
    state, total = step(state, np.float32(2.0))  # the in-memory executable
    return said, np.asarray(state["w"]), float(total)


def entries(cache_dir) -> list[str]:
    return sorted(os.listdir(cache_dir))


def test_a_second_run_loads_what_the_first_compiled(tmp_path, codec):
    said, w, total = run(tmp_path, codec)
    assert said == [] and len(entries(tmp_path)) == 1
    said_again, w_again, total_again = run(tmp_path, codec)
    assert len(said_again) == 1 and "loaded from" in said_again[0] and codec.loads == 1
    np.testing.assert_array_equal(w_again, w)
    assert total_again == total == np.sum(np.arange(3.0) * 4)


def test_other_settings_or_shapes_compile_their_own(tmp_path, codec):
    run(tmp_path, codec)
    said, _, _ = run(tmp_path, codec, settings={"lr": 2.0})
    assert said == [] and len(entries(tmp_path)) == 2
    said, w, _ = run(tmp_path, codec, shape=(2, 2))
    assert said == [] and len(entries(tmp_path)) == 3
    np.testing.assert_array_equal(w, np.arange(4.0).reshape(2, 2) * 4)


def test_a_torn_entry_is_compiled_again_and_replaced(tmp_path, codec):
    _, w, _ = run(tmp_path, codec)
    (name,) = entries(tmp_path)
    with open(tmp_path / name, "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / name) // 2)
    said, w_again, _ = run(tmp_path, codec)
    assert len(said) == 1 and "could not load" in said[0] and "compiling it again" in said[0]
    np.testing.assert_array_equal(w_again, w)
    assert "loaded from" in run(tmp_path, codec)[0][0] and codec.loads == 1


def test_the_newest_entries_are_kept(tmp_path, codec, monkeypatch):
    monkeypatch.setattr(executables, "MAX_ENTRIES", 2)
    for lr in (1.0, 2.0, 3.0):
        run(tmp_path, codec, settings={"lr": lr})
    assert len(entries(tmp_path)) == 2
    assert run(tmp_path, codec, settings={"lr": 1.0})[0] == []  # the oldest went
    assert "loaded from" in run(tmp_path, codec, settings={"lr": 3.0})[0][0]


def test_the_cpu_and_several_processes_use_jit_itself():
    jitted = step_fn()
    assert executables.cached(jitted, "toy_step", {}, "~/cache", print) is jitted  # these tests run on CPU
    assert executables.cached(jitted, "toy_step", {}, "", print) is jitted


BOUNDED_CACHE = """
import sys
import jax, jax.numpy as jnp, ml_collections
from neobert_jax.runtime.cli import use_compilation_cache
use_compilation_cache(ml_collections.ConfigDict({"compilation_cache_dir": sys.argv[1],
                                                 "compilation_cache_max_gb": 50e3 / 2**30}))
for i in range(30):
    jax.jit(lambda x: jnp.sin(x) * i + jnp.cos(x) ** i)(jnp.ones(8)).block_until_ready()
"""


def test_the_compilation_cache_stays_within_its_bound(tmp_path):
    """30 programs of about 3 kB into a 50 kB cache: before, it grew without bound (27 MB after one harness run)."""
    done = subprocess.run([sys.executable, "-c", BOUNDED_CACHE, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = [path.stat().st_size for path in tmp_path.glob("*-cache")]
    assert 0 < len(entries) < 30 and sum(entries) <= 50e3, entries


def test_a_cache_written_without_a_bound_takes_one_without_warnings(tmp_path):
    """Entries of an unbounded cache (an earlier release) lack JAX's last-use files; the bounded
    cache then failed every write with a warning naming a missing file."""
    (tmp_path / "jit_old-0123-cache").write_bytes(b"x" * 100)
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", BOUNDED_CACHE, str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "Error writing persistent compilation cache" not in done.stderr, done.stderr[-2000:]
    assert len(list(tmp_path.glob("*-cache"))) > 1  # the new programs were written
