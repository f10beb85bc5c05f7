"""Packed tokens/s of one process of the MLM pipeline, from raw text and from preprocessed shards.

A GPU step of the student consumes ~2M tokens/s, so one process must assemble at least that from
shards. Raw text is tokenized at startup (setup_s), then streams from memory like shards do; the
first-epoch figure includes that setup. Tokens are non-padding tokens of packed rows.

    python scripts/bench_data.py                          # built-in corpus, trains a tokenizer
    python scripts/bench_data.py --train-files 'corpus/*.txt' --tokenizer runs/x/tokenizer --seconds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from neobert_jax.data import DataError, build_mlm_iterator, default_data_config, get_tokenizer
from neobert_jax.data import sources
from neobert_jax.data.token_store import write_store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-files", default="", help="path, glob or comma list; empty = built-in corpus")
    parser.add_argument("--tokenizer", default="", help="HF tokenizer folder; empty = train one (cached in work dir)")
    parser.add_argument("--work-dir", default="", help="where the tokenizer and shards go; default: a temp folder")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per process per step")
    parser.add_argument("--packing", default="best_fit", choices=("first_fit", "best_fit", "none"))
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--process-count", type=int, default=1, help="measure process 0 of this many")
    parser.add_argument("--seconds", type=float, default=5.0, help="streaming time per source")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, args.work_dir or tmp)
    except DataError as e:
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace, work_dir: str) -> None:
    tokenizer = get_tokenizer(args.tokenizer or None, args.train_files, work_dir)
    cfg = default_data_config()
    cfg.train_files, cfg.packing, cfg.num_threads = args.train_files, args.packing, args.num_threads
    raw = measure(cfg, tokenizer, args)

    shards_dir = os.path.join(work_dir, "shards")
    start = time.perf_counter()
    stats = sources.ReadStats()
    files = sources.resolve_files(args.train_files)
    texts = sources.read_documents(files, text_field=cfg.text_field, stats=stats)
    meta = write_store(shards_dir, texts, tokenizer, stats, sources=sources.describe_files(files), overwrite=True)
    preprocess_s = time.perf_counter() - start
    cfg.train_files, cfg.preprocessed_dir = "", shards_dir
    shards = measure(cfg, tokenizer, args)

    print(
        f"process 0 of {args.process_count}: seq_len {args.seq_len}, {args.batch_size} rows/step, {args.packing}, "
        f"{args.num_threads} threads; packing efficiency {raw['efficiency']:.4f}"
    )
    print(f"{'source':<12} {'setup_s':>8} {'tokens/epoch':>13} {'stream tok/s':>13} {'1st epoch tok/s':>16}")
    for name, row in (("raw text", raw), ("shards", shards)):
        print(
            f"{name:<12} {row['setup_s']:>8.2f} {row['epoch_tokens']:>13,} {row['stream']/1e6:>12.2f}M "
            f"{row['first_epoch']/1e6:>15.2f}M"
        )
    rate = meta["tokens"] / preprocess_s / 1e6
    print(f"preprocessing once: {preprocess_s:.2f}s for {meta['tokens']:,} tokens ({rate:.2f}M tok/s)")


def measure(cfg, tokenizer, args) -> dict:
    """Setup time, tokens/s while streaming for args.seconds, and first-epoch tokens/s with setup."""
    start = time.perf_counter()
    iterator = build_mlm_iterator(
        cfg, tokenizer=tokenizer, seq_len=args.seq_len, batch_size=args.batch_size,
        process_count=args.process_count, num_epochs=None,
    )
    setup_s = time.perf_counter() - start
    tokens = epoch_tokens = steps = 0
    first_epoch_s = None
    stream_start = time.perf_counter()
    while (elapsed := time.perf_counter() - stream_start) < args.seconds or first_epoch_s is None:
        tokens += int((next(iterator)["segment_ids"] > 0).sum())
        steps += 1
        if steps == iterator.steps_per_epoch:
            first_epoch_s, epoch_tokens = time.perf_counter() - stream_start, tokens
    return {
        "setup_s": setup_s,
        "epoch_tokens": epoch_tokens,
        "stream": tokens / elapsed,
        "first_epoch": epoch_tokens / (setup_s + first_epoch_s),
        "efficiency": iterator.stats.packing_efficiency,
    }


if __name__ == "__main__":
    main()
