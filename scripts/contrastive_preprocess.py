"""Tokenizes a contrastive training set once, into a folder `data.preprocessed_dir` reads directly.

    python scripts/contrastive_preprocess.py --train-files 'pairs/*.jsonl' --model runs/student/hf \
        --output data/pairs-tokenized [--loss mnrl] [--columns anchor,positive] [--seq-len 256] \
        [--query-prompt 'query: ' --document-prompt 'passage: ']

The tokenizer is the one stored with --model (the model you will fine-tune, ModernBERT or NeoBERT);
the run checks it is the same. Of the model only its config's width is read (mse's teacher vectors
must match it). Texts are cut to --seq-len tokens; a run may use a smaller train.seq_len, not a larger.
Prompts are prepended before tokenizing, so the run must set the same data.query_prompt and
data.document_prompt (it checks). The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from neobert_jax.contrastive.columns import read_training_columns, with_prompts
from neobert_jax.contrastive.config import LOSSES, as_list
from neobert_jax.contrastive.tokenized import TextTokenizer, save_preprocessed, tokenize_columns
from neobert_jax.data import DataError, load_tokenizer, sources
from neobert_jax.hf import locate, read_model_config


def preprocess(args: argparse.Namespace) -> tuple[dict, float]:
    if os.path.exists(args.output) and not args.overwrite:  # before the slow part, not after it
        raise DataError(f"{os.path.abspath(args.output)} already exists; pass --overwrite to replace it")
    start = time.perf_counter()
    tokenizer_dir = args.tokenizer or locate(args.model).tokenizer
    if not tokenizer_dir:
        raise DataError(f"--model {args.model}: no tokenizer files beside it; pass --tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    try:
        dim = read_model_config(args.model).hidden_size  # either family; a run or checkpoint dir's config too
    except (OSError, ValueError) as e:
        raise DataError(f"--model: {e}") from None
    files = sources.resolve_files(args.train_files, what="--train-files")
    columns = read_training_columns(files, loss=args.loss, columns=as_list(args.columns),
                                    label_column=args.label_column, vector_dim=dim,
                                    score_columns=as_list(args.score_columns))
    prompts = (args.query_prompt, args.document_prompt)
    data = tokenize_columns(with_prompts(columns, *prompts), TextTokenizer(tokenizer, args.seq_len))
    meta = save_preprocessed(args.output, data, tokenizer, loss=args.loss, seq_len=args.seq_len,
                             label_column=args.label_column, sources=sources.describe_files(files),
                             overwrite=args.overwrite, prompts=prompts)
    return meta, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-files", required=True, help="path, glob or comma list (.jsonl/.parquet/datasets/.txt)")
    parser.add_argument("--model", required=True, help="the model to fine-tune (HF dir or project checkpoint)")
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--tokenizer", default="", help="tokenizer folder; default: the one beside --model")
    parser.add_argument("--loss", default="mnrl", choices=LOSSES)
    parser.add_argument("--columns", default="", help="text columns in order; default: the files' own order")
    parser.add_argument("--label-column", default="label", help="mse: the teacher-vector column")
    parser.add_argument("--score-columns", default="", help="cosent/margin_mse/distill_kl: the score column(s); "
                        "default: score, else label")
    parser.add_argument("--query-prompt", default="", help="prepended to the first text column")
    parser.add_argument("--document-prompt", default="", help="prepended to the other text columns")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per text, [CLS] and [SEP] included")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        meta, seconds = preprocess(args)
    except (DataError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.output}: {meta['examples']} examples, columns {meta['columns']}, {meta['tokens']} tokens "
          f"({seconds:.1f}s)")


if __name__ == "__main__":
    main()
