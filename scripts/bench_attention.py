"""Checks the Pallas attention kernel against the XLA reference, then times forward+backward.

Why: the kernel's speed and its GPU numerics can only be seen on a GPU; the same script runs on
CPU with --interpret (tiny shapes, kernels interpreted) so it keeps working where CI runs.

    python scripts/bench_attention.py              # GPU: checks + student-shape table
    python scripts/bench_attention.py --interpret  # CPU: tiny shapes, timings meaningless

Throughput is dense-equivalent: forward 4·B·N·T²·H FLOPs, forward+backward 3.5 times that, whatever
the masks let a kernel skip.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from neobert_jax.model.attention import xla_attention
from neobert_jax.model.attention_pallas import _tile_ranges, pallas_attention


def packed_segments(B, T, docs, rng):
    """(B, T) ids: `docs` documents of random lengths per row, then 0-31 padding tokens (0 if docs == 1)."""
    seg_BT = np.zeros((B, T), np.int32)
    for b in range(B):
        used = T - (rng.integers(0, 32) if docs > 1 else 0)
        cuts = np.sort(rng.choice(np.arange(1, used), docs - 1, replace=False))
        seg_BT[b, :used] = np.searchsorted(cuts, np.arange(used), side="right") + 1
    return jnp.asarray(seg_BT)


def loss_and_grads(attn):
    """jit'd (q, k, v, seg, w) -> d/d(q, k, v) sum(attn(q, k, v, seg) * w), and the jit'd forward."""
    loss = lambda q, k, v, seg, w: jnp.sum(attn(q, k, v, seg).astype(jnp.float32) * w)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), jax.jit(lambda q, k, v, seg, w: attn(q, k, v, seg))


def inputs(shape, dtype, seed):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, shape, jnp.float32) for key in keys)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), w


def check(B, T, N, H, dtype, docs, window, interpret, blocks, tf32x3=False):
    """Max abs and relative-L2 error of o, dq, dk, dv against the float32 XLA reference."""
    seg_BT = packed_segments(B, T, docs, np.random.default_rng(T + docs))
    q, k, v, w = inputs((B, T, N, H), dtype, seed=T)
    kern = lambda q, k, v, seg: pallas_attention(q, k, v, seg, window=window, block_q=blocks[0],
                                                 block_k=blocks[1], interpret=interpret, tf32x3=tf32x3)
    ref = lambda q, k, v, seg: xla_attention(q, k, v, seg, window=window, scale=H**-0.5)
    got = [kern(q, k, v, seg_BT), *loss_and_grads(kern)[0](q, k, v, seg_BT, w)]
    with jax.default_matmul_precision("highest"):
        up = [x.astype(jnp.float32) for x in (q, k, v)]
        want = [ref(*up, seg_BT), *loss_and_grads(ref)[0](*up, seg_BT, w)]
    errs = []
    for a, b in zip(got, want):
        a = a.astype(jnp.float32)
        errs.append((float(jnp.max(jnp.abs(a - b))), float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)),
                     bool(jnp.all(jnp.isfinite(a)))))
    worst_rel = max(e[1] for e in errs)
    ok = all(e[2] for e in errs) and worst_rel < (1e-5 if dtype == jnp.float32 else 2e-2)
    detail = "  ".join(f"{n} {e[0]:.1e}/{e[1]:.1e}" for n, e in zip(("o", "dq", "dk", "dv"), errs))
    print(f"check {'PASS' if ok else 'FAIL'} {jnp.dtype(dtype).name:8s} B={B} T={T} N={N} H={H} docs={docs} "
          f"window={window}{' tf32x3' if tf32x3 else ''}: max-abs/rel-L2 {detail}", flush=True)
    return ok


def timeit(f, args, iters, reps):
    """Median seconds per call over `reps` batches of `iters` back-to-back calls, after a warm-up."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(iters):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def parse_config(text: str) -> tuple:
    """'64x32:4:2' -> (64, 32, 4, 2); warps and stages optional (None: the kernel's choice, 2 stages)."""
    blocks, *rest = text.split(":")
    bq, bk = (int(x) for x in blocks.split("x"))
    return bq, bk, int(rest[0]) if rest else None, int(rest[1]) if len(rest) > 1 else 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--interpret", action="store_true", help="CPU: interpret the kernels, tiny shapes")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="timed inputs; float32 times exact and 3-pass TF32 kernel dots")
    parser.add_argument("--configs", help="GPU: kernel tilings to time, e.g. 64x64,64x32:4:2 (block_q x block_k"
                                          "[:num_warps[:num_stages]]); default: a fixed sweep")
    parser.add_argument("--exact-fp32", action=argparse.BooleanOptionalAction, default=True,
                        help="with --dtype float32, also time exact-fp32 kernel dots (slow)")
    parser.add_argument("--checks", action=argparse.BooleanOptionalAction, default=True,
                        help="run the correctness checks first")
    args = parser.parse_args()
    interp = args.interpret
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)

    if interp:
        checks = [(1, 256, 2, 64, jnp.float32, 3, None), (1, 256, 2, 64, jnp.float32, 3, 32),
                  (1, 256, 2, 64, jnp.bfloat16, 3, 32)]
        check_blocks, (B, T, N, H), iters, reps = (64, 32), (2, 256, 2, 64), 1, 1
        configs = [(64, 32, None, 2)]
    else:
        checks = [(2, 1024, 3, 64, dt, 5, w) for dt in (jnp.float32, jnp.bfloat16) for w in (None, 64)]
        checks += [(1, 8192, 2, 64, jnp.bfloat16, 3, w) for w in (None, 64)]
        checks += [(2, 512, 2, h, jnp.bfloat16, 4, 64) for h in (32, 128)]
        checks += [(2, 1024, 3, 64, jnp.float32, 5, w, True) for w in (None, 64)]
        check_blocks, (B, T, N, H), iters, reps = (64, 64), (64, 512, 6, 64), 20, 5
        # (block_q, block_k, num_warps, num_stages)
        configs = [(64, 64, None, 2), (64, 64, None, 3), (128, 64, None, 2), (64, 128, None, 2), (64, 32, None, 2),
                   (32, 32, None, 2)]
        if args.configs:
            configs = [parse_config(c) for c in args.configs.split(",")]
    all_ok = True
    for c in checks if args.checks else []:
        try:
            all_ok &= check(*c[:7], interpret=interp, blocks=check_blocks, tf32x3=c[7] if len(c) > 7 else False)
        except Exception as e:  # keep going: one bad configuration must not hide the others
            all_ok = False
            print(f"check ERROR {c}: {type(e).__name__}: {str(e)[:400]}", flush=True)

    dtype = jnp.float32 if interp else jnp.dtype(args.dtype)
    fp32_dots = ([False] if args.exact_fp32 else []) + [True] if dtype == jnp.float32 and not interp else [False]
    q, k, v, w = inputs((B, T, N, H), dtype, seed=0)
    dense = 4 * B * N * T * T * H
    layouts = {"unpacked": packed_segments(B, T, 1, np.random.default_rng(0)),
               "packed4": packed_segments(B, T, 4, np.random.default_rng(1))}
    rows = []

    def run(name, window, attn, tile_blocks=None):
        """Times one implementation on every row layout; compiled once, since the ids are an input."""
        bwd, fwd = loss_and_grads(attn)
        for layout, seg_BT in layouts.items():
            tiles = ""
            if tile_blocks:
                lo, flo, fhi, hi = jnp.moveaxis(_tile_ranges(seg_BT, *tile_blocks, window), 1, 0)
                share = lambda n: 100 * float(jnp.sum(n)) / (B * (T // tile_blocks[0]) * (T // tile_blocks[1]))
                tiles = f"{share(hi - lo):5.1f}% ({share(fhi - flo):4.1f}% full)"
            try:
                t_f = timeit(fwd, (q, k, v, seg_BT, w), iters, reps)
                t_fb = timeit(bwd, (q, k, v, seg_BT, w), iters, reps)
                rows.append((name, layout, str(window), tiles, f"{t_f * 1e3:8.3f}", f"{dense / t_f / 1e12:7.1f}",
                             f"{t_fb * 1e3:8.3f}", f"{3.5 * dense / t_fb / 1e12:7.1f}"))
            except Exception as e:  # a configuration Triton rejects must not hide the others
                rows.append((name, layout, str(window), tiles, "error", "", "", f"{type(e).__name__}: {str(e)[:300]}"))
            print("  ".join(rows[-1]), flush=True)

    for window in (None, 64):
        for (bq, bk, warps, stages), x3 in ((c, x3) for c in configs for x3 in fp32_dots):
            run(f"pallas {bq}x{bk} w{warps or 'auto'} s{stages}{' tf32x3' if x3 else ''}", window,
                lambda q, k, v, seg: pallas_attention(q, k, v, seg, window=window, block_q=bq, block_k=bk,
                                                      interpret=interp, num_warps=warps, num_stages=stages,
                                                      tf32x3=x3),
                tile_blocks=(bq, bk))
        run("xla reference", window, lambda q, k, v, seg: xla_attention(q, k, v, seg, window=window, scale=H**-0.5))
        # cuDNN takes no segment ids (its rows are mask-free) and refuses a two-sided window (jax 0.11.2)
        if jax.default_backend() == "gpu" and window is None:
            run("cudnn (no segments)", window,
                lambda q, k, v, seg: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))

    header = ("impl", "rows", "window", "tiles", "fwd ms", "TFLOP/s", "fwd+bwd ms", "TFLOP/s")
    print(f"\nB={B} T={T} N={N} H={H} {jnp.dtype(dtype).name}; tiles: share of (q, k) tiles visited "
          f"(in brackets: visited without a mask); TFLOP/s dense-equivalent")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(" | ".join(str(x).ljust(wd) for x, wd in zip(r, widths)))
    print(f"\nchecks {'all passed' if all_ok else 'FAILED'}")
    raise SystemExit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
