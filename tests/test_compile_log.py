"""The compile log counts what JAX compiled, and what the persistent cache served, while it is open; by
its counts, a run of another learning rate, warmup and length compiles nothing that a first run did."""

import json
import os
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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
         "model.intermediate_size": 64, "model.local_attention": 16, "data.tokenizer_vocab_size": 300,
         "train.batch_size": 4, "train.seq_len": 32, "train.log_every": 1, "train.eval_every": 0,
         "train.save_every": 100, "train.export_hf": False}


def pretrain(work, output_dir: str, **overrides) -> dict:
    """The CLI from `work`, relative paths, one compilation cache; -> run_summary.json's compilation."""
    settings = {**SMALL, "data.train_files": "corpus.txt", "output_dir": output_dir, "compilation_cache_dir": "cache",
                **overrides}
    command = [sys.executable, os.path.join(REPO, "scripts", "pretrain.py"), "--config",
               os.path.join(REPO, "configs", "tiny.py"), *[f"--config.{k}={v}" for k, v in settings.items()]]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(work, output_dir, "run_summary.json")) as f:
        return json.load(f)["compilation"]


def test_a_run_of_another_learning_rate_and_length_compiles_nothing_new(tmp_path, write_corpus):
    """The schedule and optimizer numbers are the train step's data (TrainState.hparams), not constants
    of its program: a sweep's or a new corpus's run is served from the first run's cache."""
    write_corpus(tmp_path / "corpus.txt")
    first = pretrain(tmp_path, "first", **{"train.learning_rate": 1e-3, "train.max_steps": 4,
                                           "train.warmup_steps": 1, "train.weight_decay": 0.01})
    again = pretrain(tmp_path, "again", **{"train.learning_rate": 3e-4, "train.max_steps": 7,
                                           "train.warmup_steps": 3, "train.weight_decay": 0.1})
    assert first["programs"] - first["cache_hits"] > 0  # compiled
    assert again["programs"] == first["programs"] and again["programs"] - again["cache_hits"] == 0
