"""scripts/bench_matmul.py: its written-out three-pass TF32 products (model/tf32.py's, one concatenated
pass too) are float32-accurate where one TF32 pass is not (TF32 emulated on the CPU), and the CLI prints a
row per product and method."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_matmul", os.path.join(REPO, "scripts", "bench_matmul.py"))
bench_matmul = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_matmul)


def test_three_tf32_passes_are_float32_accurate_and_one_is_not():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 256), np.float32), rng.standard_normal((256, 48), np.float32)
    errors = {m: bench_matmul.relative_error(np.asarray(jax.jit(bench_matmul.product(m, emulate=True))(a, b)), a, b, 64)
              for m in ("ieee", "x3-split", "x3-concat", "tf32")}
    assert errors["ieee"] < 1e-6 and errors["x3-split"] < 1e-6 and errors["x3-concat"] < 1e-6, errors
    assert errors["tf32"] > 1e-4, errors


def test_tiny_cli_prints_every_product_and_method(tmp_path):
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_matmul.py"), "--tiny", "--reps", "1",
                           "--flag-sets", "", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    cpu_methods = [m for m in bench_matmul.METHODS if m != "x3"]  # XLA's X3 preset is the GPU's alone
    assert [(r["shape"], r["method"]) for r in rows] == [(s[0], m) for s in bench_matmul.shapes(256, 32, 64, 77, 1000)
                                                         for m in cpu_methods]
    assert all(r["ms"] > 0 and r["error"] < (1e-3 if r["method"] == "tf32" else 1e-6) for r in rows)
    assert done.stdout.count("| as shipped |") == len(rows)
