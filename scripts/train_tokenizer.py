"""Trains the run's byte-level BPE tokenizer on a corpus and caches it in OUTPUT_DIR/tokenizer.

The pretraining run does the same automatically when no tokenizer is given; running it first lets
you inspect the tokenizer, or train it once for several runs.

    python scripts/train_tokenizer.py --output-dir runs/demo                       # built-in corpus
    python scripts/train_tokenizer.py --output-dir runs/x --train-files 'data/*.txt' --vocab-size 32768
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from neobert_jax.data import DataError, get_tokenizer
from neobert_jax.data.tokenizer import DEFAULT_VOCAB_SIZE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="run folder; the tokenizer goes to OUTPUT_DIR/tokenizer")
    parser.add_argument("--train-files", default="", help="path, glob or comma list; empty = built-in corpus")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--text-field", default="text", help="text field of .jsonl/.parquet/datasets inputs")
    parser.add_argument("--skip-bad-records", action="store_true", help="count and skip bad records")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        tokenizer = get_tokenizer(
            None, args.train_files, args.output_dir, args.vocab_size,
            text_field=args.text_field, skip_bad_records=args.skip_bad_records,
        )
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")
    path = os.path.join(args.output_dir, "tokenizer")
    print(f"tokenizer: {path} ({len(tokenizer)} tokens, {time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
