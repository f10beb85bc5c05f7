"""STS and retrieval evaluation of any exported embedding model, from local files.

    python scripts/evaluate_embeddings.py runs/embedder/st --retrieval eval/stdlib-test --sts sts-dev.jsonl

MODEL is a sentence-transformers folder (its pooling is read from 1_Pooling), an HF ModernBERT
dir or a project checkpoint (--pooling, default mean). The default backend encodes with this
project's JAX model on all local devices; `--backend sentence-transformers` encodes with that
library instead (any model it loads). Metrics are those of the contrastive run's evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys

from neobert_jax.contrastive.config import as_list
from neobert_jax.contrastive.evaluation import evaluate, load_eval_sets
from neobert_jax.runtime.reporting import format_comparison
from neobert_jax.data import DataError

BACKENDS = ("jax", "sentence-transformers")


def jax_encoder(model_dir: str, pooling: str | None, seq_len: int | None, batch_size: int):
    from neobert_jax.contrastive.embedder import load_encoder

    return load_encoder(model_dir, pooling=pooling, seq_len=seq_len, batch_size=batch_size)


def st_encoder(model_dir: str, seq_len: int | None, batch_size: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    if seq_len:
        model.max_seq_length = seq_len

    def encode(texts):
        return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    return encode, f"sentence-transformers, {model.max_seq_length} tokens"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="sentence-transformers folder, HF dir or project checkpoint")
    parser.add_argument("--sts", default="", help="STS files (sentence1, sentence2, score); glob or comma list")
    parser.add_argument("--retrieval", default="", help="retrieval folders (corpus.jsonl, queries.jsonl, qrels.tsv)")
    parser.add_argument("--pooling", choices=("mean", "cls"), help="default: the folder's, else mean")
    parser.add_argument("--seq-len", type=int, help="tokens per text; default: the folder's max_seq_length, else 512")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", choices=BACKENDS, default="jax")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        if not args.sts and not as_list(args.retrieval):
            raise DataError("nothing to evaluate: pass --sts and/or --retrieval")
        sts_sets, retrieval_sets = load_eval_sets(args.sts, args.retrieval)
        if args.backend == "jax":
            encode, how = jax_encoder(args.model, args.pooling, args.seq_len, args.batch_size)
        else:
            encode, how = st_encoder(args.model, args.seq_len, args.batch_size)
        results = evaluate(encode, sts_sets, retrieval_sets)
    except (DataError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.model} ({how})\n{format_comparison(None, results)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
