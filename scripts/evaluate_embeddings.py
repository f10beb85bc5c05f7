"""STS and retrieval evaluation of any exported embedding model, from local files.

    python scripts/evaluate_embeddings.py runs/embedder/st --retrieval eval/stdlib-test --sts sts-dev.jsonl

MODEL is a sentence-transformers folder (its pooling is read from 1_Pooling), an HF ModernBERT
dir or a project checkpoint (--pooling, default mean). The default backend encodes with this
project's JAX model on all local devices; `--backend sentence-transformers` encodes with that
library instead (any model it loads). Metrics are those of the contrastive run's evaluation.

--retrieval takes BEIR folders, or a folder of them (NanoBEIR-style: one subfolder per task), and
prints one row per task and their mean. Prompts: --query-prompt / --document-prompt, by default
the folder's prompts "query" and "document" (config_sentence_transformers.json), as training set
them. --mteb TASKS runs those MTEB tasks through the `mteb` package when it is installed (optional,
not tested here) with the sentence-transformers backend.
"""

from __future__ import annotations

import argparse
import json
import sys

from neobert_jax.contrastive.config import as_list
from neobert_jax.contrastive.evaluation import evaluate, load_eval_sets, retrieval_table
from neobert_jax.runtime.reporting import format_comparison
from neobert_jax.data import DataError
from neobert_jax.hf.sentence_transformers import read_sentence_transformers_prompts

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


def run_mteb(model_dir: str, tasks: list[str], output: str | None, prompts: tuple[str, str]) -> None:
    """MTEB's own evaluation of `tasks` on the exported folder (needs `pip install mteb`)."""
    try:
        import mteb
    except ImportError:
        raise DataError("--mteb needs the mteb package (pip install mteb); it is an optional dependency") from None
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu",
                                prompts={name: p for name, p in zip(("query", "document"), prompts) if p})
    results = mteb.MTEB(tasks=mteb.get_tasks(tasks=tasks)).run(model, output_folder=output or "mteb_results")
    for result in results:
        print(f"mteb {result.task_name}: {result.get_score():.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="sentence-transformers folder, HF dir or project checkpoint")
    parser.add_argument("--sts", default="", help="STS files (sentence1, sentence2, score); glob or comma list")
    parser.add_argument("--retrieval", default="", help="retrieval folders (corpus.jsonl, queries.jsonl, qrels.tsv) "
                        "or folders of them (one row per task, and the mean)")
    parser.add_argument("--query-prompt", help="prepended to queries and sentence1; default: the folder's 'query' prompt")
    parser.add_argument("--document-prompt", help="prepended to documents and sentence2; default: the folder's "
                        "'document' prompt")
    parser.add_argument("--mteb", default="", help="comma list of MTEB task names (needs the optional mteb package)")
    parser.add_argument("--pooling", choices=("mean", "cls"), help="default: the folder's, else mean")
    parser.add_argument("--seq-len", type=int, help="tokens per text; default: the folder's max_seq_length, else 512")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="jax: rows of seq_len tokens per call, texts packed several a row; sentence-transformers: texts")
    parser.add_argument("--backend", choices=BACKENDS, default="jax")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        if not args.sts and not as_list(args.retrieval) and not args.mteb:
            raise DataError("nothing to evaluate: pass --sts, --retrieval and/or --mteb")
        own = read_sentence_transformers_prompts(args.model)
        prompts = (own[0] if args.query_prompt is None else args.query_prompt,
                   own[1] if args.document_prompt is None else args.document_prompt)
        if args.mteb:
            run_mteb(args.model, as_list(args.mteb), args.json and args.json + ".mteb", prompts)
            if not args.sts and not as_list(args.retrieval):
                return
        sts_sets, retrieval_sets = load_eval_sets(args.sts, args.retrieval)
        if args.backend == "jax":
            encode, how = jax_encoder(args.model, args.pooling, args.seq_len, args.batch_size)
        else:
            encode, how = st_encoder(args.model, args.seq_len, args.batch_size)
        results = evaluate(encode, sts_sets, retrieval_sets, *prompts)
    except (DataError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if any(prompts):
        how += f", prompts query {prompts[0]!r}, document {prompts[1]!r}"
    print(f"{args.model} ({how})\n{format_comparison(None, results)}")
    names = [r.name for r in retrieval_sets]
    if len(names) > 1:  # several tasks (a NanoBEIR-style folder): one row each, and their mean
        table, means = retrieval_table(results, names)
        print(f"retrieval, {len(names)} tasks:\n{table}")
        results.update(means)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
