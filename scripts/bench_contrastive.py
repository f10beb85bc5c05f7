"""Packed vs bucketed rows for contrastive training: steady-state texts/s of the real train step.

    python scripts/bench_contrastive.py --model runs/tiny/hf --train-files pairs.jsonl [--steps 20]

For each layout the same `--steps` batches run twice: the first pass compiles every shape they
need, the second is timed (compilation excluded, as in a long run where it amortizes).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax

from neobert_jax.contrastive.config import contrastive_config
from neobert_jax.contrastive.setup import setup_contrastive
from neobert_jax.contrastive.step import make_contrastive_step
from neobert_jax.runtime.sharding import place_groups


def bench(args, layout: str) -> dict:
    c = contrastive_config()
    c.init_from, c.data.train_files, c.data.layout = args.model, args.train_files, layout
    c.train.update(batch_size=args.batch_size, seq_len=args.seq_len, grad_accum_steps=args.accum,
                   precision=args.precision, max_steps=args.steps)
    with tempfile.TemporaryDirectory() as output_dir:
        c.output_dir = output_dir
        s = setup_contrastive(c, log=lambda _: None)
        step = make_contrastive_step(s.parts, s.optimizer, s.objective, slots=s.batches.layout.slots,
                                     pooling_mode="mean", accum=args.accum, has_targets=False,
                                     state_sh=s.shardings, mesh=s.mesh)
        batches = [next(s.batches) for _ in range(args.steps)]
        state, shapes = s.state, set()
        for batch, stats in batches:  # compile every shape
            state, metrics = step(state, place_groups(batch, stats["rows"], s.mesh))
            shapes.add(tuple(g["input_ids"].shape for g in batch["groups"]))
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for batch, stats in batches:
            state, metrics = step(state, place_groups(batch, stats["rows"], s.mesh))
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        s.checkpointer.close()
    texts = sum(stats["texts"] for _, stats in batches)
    tokens = sum(stats["tokens"] for _, stats in batches)
    slots = sum(stats["slots"] for _, stats in batches)
    return {"layout": layout, "texts_per_s": texts / seconds, "tokens_per_s": tokens / seconds,
            "padding_efficiency": tokens / slots, "compiled_shapes": len(shapes)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF dir or project checkpoint (with its tokenizer)")
    parser.add_argument("--train-files", required=True, help="(anchor, positive[, negative...]) pairs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--accum", type=int, default=1, help="GradCache micro-batches")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layouts", default="pack,bucket")
    args = parser.parse_args(argv)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, batch {args.batch_size}, seq_len {args.seq_len}")
    for layout in args.layouts.split(","):
        r = bench(args, layout)
        print(f"{r['layout']:>6}: {r['texts_per_s']:9.1f} texts/s {r['tokens_per_s']:11.0f} tokens/s  padding "
              f"efficiency {r['padding_efficiency']:.3f}  ({r['compiled_shapes']} compiled shapes)")


if __name__ == "__main__":
    main()
