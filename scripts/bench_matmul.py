"""float32 matrix products at the student's step shapes, by algorithm: where fp32's gap to torch could close.

Our fp32 step multiplies in three TF32 passes (XLA's TF32_TF32_F32_X3), which XLA runs as Triton GEMM
fusions; docs/performance.md finds the weight gradients among them far below what three TF32 passes
allow. This times each way of getting a float32-accurate product, with its error against float64:

    ieee       F32_F32_F32 (torch's fp32 with TF32 off)
    x3         TF32_TF32_F32_X3, as the step runs it
    x3-split   the three passes written out (hi = x rounded to TF32, lo = x - hi; hi·hi + hi·lo + lo·hi),
               three single-pass TF32 products that XLA may give to cuBLAS
    x3-concat  the three passes as one TF32 product along a K three times as long
    tf32       one TF32 pass: the speed bound, not float32-accurate

    python scripts/bench_matmul.py                                     # GPU: as shipped, and without Triton GEMMs
    python scripts/bench_matmul.py --tiny                              # CPU: TF32 emulated, small shapes

Each XLA flag set runs in its own process (XLA_FLAGS are read once per process). On the CPU, which has
no TF32, a TF32 pass is emulated (operands rounded to TF32, then a float32 product), and x3 is not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

METHODS = ("ieee", "x3", "x3-split", "x3-concat", "tf32")
FLAG_SETS = ("", "--xla_gpu_enable_triton_gemm=false")


def shapes(tokens: int, hidden: int, intermediate: int, predicted: int, vocab: int) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of (M, K) @ (K, N): the step's forward products and their weight gradients."""
    return [
        ("qkv forward", tokens, hidden, 3 * hidden),
        ("mlp in forward", tokens, hidden, 2 * intermediate),
        ("mlp out forward", tokens, intermediate, hidden),
        ("qkv weight grad", hidden, tokens, 3 * hidden),
        ("mlp in weight grad", hidden, tokens, 2 * intermediate),
        ("mlp out weight grad", intermediate, tokens, hidden),
        ("head logits", predicted, hidden, vocab),
    ]


def product(method: str, emulate: bool):
    """(a, b) -> a @ b in float32 by `method` (the passes are neobert_jax.model.tf32's, as the model runs them)."""
    import jax
    import jax.numpy as jnp

    from neobert_jax.model import tf32

    preset = jax.lax.DotAlgorithmPreset
    if method == "ieee":
        return lambda a, b: jax.lax.dot(a, b, precision=preset.F32_F32_F32)
    if method == "x3":
        return lambda a, b: jax.lax.dot(a, b, precision=preset.TF32_TF32_F32_X3)
    if method == "tf32":
        return lambda a, b: tf32.one_pass(a, b, emulate)
    if method == "x3-split":
        return lambda a, b: tf32.three_pass(a, b, emulate)
    if method == "x3-concat":
        def concat(a, b):
            (a_hi, a_lo), (b_hi, b_lo) = tf32.split(a), tf32.split(b)
            return tf32.one_pass(jnp.concatenate([a_lo, a_hi, a_hi], axis=1),
                                 jnp.concatenate([b_hi, b_lo, b_hi], axis=0), emulate)
        return concat
    raise ValueError(f"unknown method {method!r}; one of {METHODS}")


def relative_error(out, a, b, rows: int) -> float:
    """Relative L2 error of the first `rows` rows of `out` against float64."""
    ref = a[:rows].astype(np.float64) @ b.astype(np.float64)
    return float(np.linalg.norm(np.asarray(out[:rows], np.float64) - ref) / np.linalg.norm(ref))


def measure(method: str, m: int, k: int, n: int, reps: int, emulate: bool, seed: int = 0) -> dict:
    import jax

    rng = np.random.default_rng(seed)
    a_host = rng.standard_normal((m, k), np.float32)
    b_host = (rng.standard_normal((k, n), np.float32) / np.sqrt(k)).astype(np.float32)
    a, b = jax.device_put(a_host), jax.device_put(b_host)
    run = jax.jit(product(method, emulate))
    out = run(a, b).block_until_ready()  # compiles
    error = relative_error(np.asarray(out), a_host, b_host, rows=min(m, 64))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"ms": seconds * 1e3, "tflops": 2 * m * k * n / seconds / 1e12, "error": error}


def worker(args) -> None:
    import jax

    emulate = jax.default_backend() != "gpu"
    for name, m, k, n in shapes(*args.dims):
        for method in args.methods.split(","):
            if method == "x3" and emulate:
                continue  # XLA offers TF32_TF32_F32_X3 on the GPU only
            row = {"flags": args.xla_flags, "shape": name, "m": m, "k": k, "n": n, "method": method,
                   **measure(method, m, k, n, args.reps, emulate)}
            print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes, a CPU smoke run")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--flag-sets", default="|".join(FLAG_SETS), help="XLA_FLAGS sets, '|'-separated")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", help="JSON lines of every row")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--xla-flags", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dims", type=int, nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"--methods: {sorted(unknown)} are not among {METHODS}")
    # tokens (128 rows x 512), hidden, intermediate, predicted tokens (30%), vocab: the student's step
    dims = (256, 32, 64, 77, 1000) if args.tiny else (65536, 384, 768, 19661, 50368)
    rows = []
    for flags in args.flag_sets.split("|"):
        command = [sys.executable, os.path.abspath(__file__), "--worker", f"--xla-flags={flags}", "--methods",
                   args.methods, "--reps", str(args.reps), "--dims", *map(str, dims)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": flags})
        if done.returncode != 0:
            sys.exit(f"error: the worker with XLA_FLAGS={flags!r} failed: {done.stderr[-2000:]}")
        rows += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    print(f"float32 products, (M, K) @ (K, N), median of {args.reps}; TFLOP/s counts 2MKN once")
    print("| XLA flags | product | M x K x N | method | ms | TFLOP/s | error vs float64 |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['flags'] or 'as shipped'} | {r['shape']} | {r['m']} x {r['k']} x {r['n']} | {r['method']} | "
              f"{r['ms']:.3f} | {r['tflops']:.3g} | {r['error']:.1e} |")
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
