"""Mines hard negatives for (anchor, positive) pairs with an embedder, and writes the triplets the
contrastive trainer reads (docs/contrastive.md, "Hard negatives").

    python scripts/mine_negatives.py runs/embedder/st --pairs train.jsonl --out train-hard.jsonl
    python scripts/contrastive.py --config configs/contrastive.py --config.data.train_files=train-hard.jsonl ...

MODEL: a sentence-transformers folder, an HF ModernBERT dir or a project checkpoint (the embedder
the negatives are hard for; the starting model of the next run, or a finished one). The corpus the
negatives come from is every distinct positive of --pairs, plus --corpus (a .txt file, one text per
line, or .jsonl/.parquet with --corpus-column). Anchors and corpus texts get the model's query and
document prompts (config_sentence_transformers.json) or --query-prompt/--document-prompt. Guards against false negatives (the anchor's own
positives are never negatives; --skip-top, --max-score-ratio, --margin) are described in
neobert_jax/contrastive/mining.py. --format triplet writes one (anchor, positive, negative) row per
negative; n-tuple writes (anchor, positive, negative_1..N) and only for pairs with N negatives. Pairs
left without a negative are counted, never dropped silently.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from neobert_jax.contrastive.columns import open_table
from neobert_jax.contrastive.mining import SAMPLING, MiningSettings, mine
from neobert_jax.data import DataError
from neobert_jax.hf.sentence_transformers import read_sentence_transformers_prompts

FORMATS = ("triplet", "n-tuple")


def read_pairs(path: str, columns: list[str]) -> tuple[list[str], list[str], list[str]]:
    """-> (anchors, positives, the column names); columns default to the file's first two."""
    table = open_table(path)
    names = columns or table.names[:2]
    if len(names) != 2:
        raise DataError(f"{path}: needs two text columns (anchor, positive); --columns names them "
                        f"(columns: {', '.join(table.names) or 'none'})")
    return table.texts(names[0]), table.texts(names[1]), names


def read_corpus(path: str, column: str) -> list[str]:
    table = open_table(path)
    return table.texts(column or table.names[0])


def rows(anchors, positives, corpus, mined, names, fmt: str, n: int) -> tuple[list[dict], int]:
    """-> (output records, pairs written without their full N negatives: not written)."""
    out, short = [], 0
    for anchor, positive, negatives in zip(anchors, positives, mined.negatives):
        if fmt == "triplet":
            out += [{names[0]: anchor, names[1]: positive, "negative": corpus[c]} for c in negatives]
            short += not negatives
        elif len(negatives) == n:
            out.append({names[0]: anchor, names[1]: positive,
                        **{f"negative_{k + 1}": corpus[c] for k, c in enumerate(negatives)}})
        else:
            short += 1
    return out, short


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="sentence-transformers folder, HF dir or project checkpoint")
    p.add_argument("--pairs", required=True, help=".jsonl / .parquet / datasets folder with anchor and positive")
    p.add_argument("--out", required=True, help="the .jsonl to write (through a temp file)")
    p.add_argument("--columns", default="", help="anchor,positive column names (default: the first two)")
    p.add_argument("--corpus", default="", help="more candidate texts: .txt lines, or .jsonl/.parquet")
    p.add_argument("--corpus-column", default="", help="the --corpus text column (default: its first)")
    d = MiningSettings()
    p.add_argument("--num-negatives", type=int, default=d.num_negatives)
    p.add_argument("--depth", type=int, default=d.depth, help="candidates: the first DEPTH ranks (default %(default)s)")
    p.add_argument("--skip-top", type=int, default=d.skip_top, help="skip the first ranks (default %(default)s)")
    p.add_argument("--max-score-ratio", type=float, default=d.max_score_ratio,
                   help="skip candidates scoring above this share of the positive's score (default %(default)s)")
    p.add_argument("--margin", type=float, default=d.margin,
                   help="a negative scores at least this much below the positive (default: not applied)")
    p.add_argument("--sampling", choices=SAMPLING, default=d.sampling)
    p.add_argument("--format", choices=FORMATS, default="triplet")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--pooling", choices=("mean", "cls"), help="default: the folder's, else mean")
    p.add_argument("--seq-len", type=int, help="tokens per text; default: the folder's max_seq_length, else 512")
    p.add_argument("--batch-size", type=int, default=64, help="rows of seq_len tokens per encoding call (texts packed)")
    p.add_argument("--query-prompt", help="put before anchors; default: the folder's 'query' prompt")
    p.add_argument("--document-prompt", help="put before corpus texts; default: the folder's 'document' prompt")
    args = p.parse_args(argv)
    settings = MiningSettings(args.num_negatives, args.depth, args.skip_top, args.max_score_ratio, args.margin,
                              args.sampling, args.seed)
    try:
        settings.check()
        if not args.out.endswith(".jsonl"):
            raise ValueError(f"--out {args.out}: write a .jsonl file")
        columns = [c for c in args.columns.split(",") if c]
        anchors, positives, names = read_pairs(args.pairs, columns)
        if not anchors:
            raise DataError(f"{args.pairs}: no pairs")
        corpus = list(dict.fromkeys(positives + (read_corpus(args.corpus, args.corpus_column) if args.corpus else [])))
        from neobert_jax.contrastive.embedder import load_encoder

        encode, how = load_encoder(args.model, pooling=args.pooling, seq_len=args.seq_len,
                                   batch_size=args.batch_size)
        own = read_sentence_transformers_prompts(args.model)
        prompts = (own[0] if args.query_prompt is None else args.query_prompt,
                   own[1] if args.document_prompt is None else args.document_prompt)
        mined = mine(anchors, positives, corpus, encode, settings, prompts)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    records, short = rows(anchors, positives, corpus, mined, names, args.format, settings.num_negatives)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, args.out)
    found = sum(len(n) for n in mined.negatives)
    print(f"{args.model} ({how}): {len(anchors):,} pairs, {len(corpus):,} candidate texts")
    print(f"negatives: {found:,} found for {sum(bool(n) for n in mined.negatives):,} pairs; candidates skipped: "
          + ", ".join(f"{k} {v:,}" for k, v in mined.filtered.items()))
    if short:
        what = "no negative" if args.format == "triplet" else f"fewer than {settings.num_negatives} negatives"
        print(f"not written: {short:,} pairs with {what} within the first {settings.depth} ranks "
              "(loosen --max-score-ratio/--margin/--skip-top, raise --depth, or add --corpus)")
    print(f"wrote {args.out}: {len(records):,} rows ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
