"""Tokenizes a corpus once into memory-mapped shards that the pipeline reads directly.

Raw text is tokenized by every process at every start; a preprocessed folder is read as it is, and
each process pages in only the tokens of its own rows. Set `data.preprocessed_dir` to the folder,
and use the tokenizer saved inside it (OUTPUT/tokenizer). The folder is written under a temporary
name and renamed when complete, so an interrupted run leaves nothing half-written behind.

    python scripts/preprocess.py --output data/shards --train-files 'corpus/*.txt' --tokenizer runs/x/tokenizer
    python scripts/preprocess.py --output data/builtin        # built-in corpus, trains a tokenizer
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from neobert_jax.data import DataError, load_tokenizer
from neobert_jax.data import sources
from neobert_jax.data.token_store import DEFAULT_SHARD_TOKENS, write_store
from neobert_jax.data.tokenizer import DEFAULT_VOCAB_SIZE, check_vocab_size, train_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--train-files", default="", help="path, glob or comma list; empty = built-in corpus")
    parser.add_argument("--tokenizer", default="", help="HF tokenizer folder; empty = train one on the corpus")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="for a trained tokenizer")
    parser.add_argument("--text-field", default="text", help="text field of .jsonl/.parquet/datasets inputs")
    parser.add_argument("--skip-bad-records", action="store_true", help="count and skip bad records")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        meta, seconds = preprocess(args)
    except (DataError, OSError) as e:  # a full disk's OSError names no file: name the output
        where = "" if isinstance(e, DataError) or e.filename else f"{os.path.abspath(args.output)}: "
        sys.exit(f"error: {where}{e}")
    read = meta["read_stats"]
    print(
        f"{args.output}: {meta['documents']} documents, {meta['tokens']} tokens in {len(meta['shards'])} shard(s) "
        f"({seconds:.1f}s, {meta['tokens'] / seconds / 1e6:.2f}M tokens/s); skipped {read['empty_skipped']} empty, "
        f"{read['bad_records_skipped']} bad records; {read['invalid_utf8_replaced']} with invalid UTF-8 replaced"
    )


def preprocess(args: argparse.Namespace) -> tuple[dict, float]:
    if args.shard_tokens <= 0:
        raise DataError(f"--shard-tokens {args.shard_tokens}: must be positive")
    if not args.tokenizer:
        check_vocab_size(args.vocab_size)
    if os.path.exists(args.output) and not args.overwrite:  # before the slow part, not after it
        raise DataError(f"{os.path.abspath(args.output)} already exists; pass overwrite to replace it")
    files = sources.resolve_files(args.train_files)
    options = dict(text_field=args.text_field, skip_bad_records=args.skip_bad_records)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        tokenizer = train_tokenizer(files, vocab_size=args.vocab_size, **options)
    start = time.perf_counter()
    stats = sources.ReadStats()
    texts = sources.read_documents(files, stats=stats, **options)
    meta = write_store(
        args.output, texts, tokenizer, stats,
        sources=sources.describe_files(files), shard_tokens=args.shard_tokens, overwrite=args.overwrite,
    )
    return meta, time.perf_counter() - start


if __name__ == "__main__":
    main()
