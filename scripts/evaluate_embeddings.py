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

import jax

from neobert_jax.contrastive.config import as_list
from neobert_jax.contrastive.evaluation import evaluate, load_eval_sets
from neobert_jax.runtime.reporting import format_comparison
from neobert_jax.data import DataError, load_tokenizer

BACKENDS = ("jax", "sentence-transformers")


def jax_encoder(model_dir: str, pooling: str | None, seq_len: int | None, batch_size: int):
    from neobert_jax.contrastive.embedder import Embedder
    from neobert_jax.contrastive.setup import load_model_parts
    from neobert_jax.contrastive.tokenized import TextTokenizer
    from neobert_jax.hf.paths import locate
    from neobert_jax.hf.sentence_transformers import read_sentence_transformers_pooling
    from neobert_jax.runtime import sharding
    from neobert_jax.runtime.config import base_config

    st = read_sentence_transformers_pooling(model_dir) or {}
    pooling = pooling or st.get("pooling") or "mean"
    seq_len = seq_len or st.get("max_seq_length") or 512
    tokenizer_dir = locate(model_dir).tokenizer
    if tokenizer_dir is None:
        raise DataError(f"{model_dir}: no tokenizer files beside the model")
    mesh = sharding.make_mesh(base_config().mesh)
    parts, params = load_model_parts(model_dir, seed=0, runtime={"mesh": mesh}, config_changes={}, log=lambda _: None)
    params = jax.device_put(params, sharding.param_shardings(parts.abstract_params, parts.axes, mesh))
    embedder = Embedder(parts, TextTokenizer(load_tokenizer(tokenizer_dir), seq_len), pooling_mode=pooling,
                        mesh=mesh, batch_size=batch_size)
    return lambda texts: embedder.encode(params, texts), f"jax, {pooling} pooling, {seq_len} tokens"


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
