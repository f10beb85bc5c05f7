"""The compile log counts what JAX compiled, and what the persistent cache served, while it is open."""

import json
import subprocess
import sys

COMPILE = """
import json, random, sys
import jax, jax.numpy as jnp, ml_collections
from neobert_jax.runtime.cli import use_compilation_cache
from neobert_jax.runtime.compile_log import CompileLog
use_compilation_cache(ml_collections.ConfigDict({"compilation_cache_dir": sys.argv[1], "compilation_cache_max_gb": 1}))
with CompileLog() as compiles:
    for i in range(3):
        jax.jit(lambda x: jnp.sin(x) * i)(jnp.ones(8)).block_until_ready()
jax.jit(lambda x: jnp.cos(x) + random.random())(jnp.ones(8)).block_until_ready()  # a new program, after the log closed
print(json.dumps({**compiles.snapshot(), "line": compiles.describe()}))
"""


def run(cache_dir) -> dict:
    done = subprocess.run([sys.executable, "-c", COMPILE, str(cache_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_a_first_run_compiles_and_a_rerun_loads_from_the_persistent_cache(tmp_path):
    first, again = run(tmp_path), run(tmp_path)
    assert first["programs"] == again["programs"] >= 3  # the three programs, with the arrays they stage
    assert first["cache_hits"] == 0 and first["xla_s"] > 0
    assert again["cache_hits"] == again["programs"]  # the program compiled after the log closed is not counted
    assert f"{first['programs']} programs ({first['programs']} compiled, 0 from the persistent cache)" in first["line"]
    assert f"(0 compiled, {again['programs']} from the persistent cache)" in again["line"]
