"""Our contrastive recipe against the users' sentence-transformers training, from one starting model
and one pair set, judged by one evaluator through `SentenceTransformer(path)` (docs/embedder.md).

    python scripts/bench_embedder.py --pairs stdlib --work-dir runs/bench-embedder [--init HF_DIR]
    python scripts/bench_embedder.py --tiny --pairs info          # CPU-sized, minutes

Pair sets: `stdlib` (neobert_jax.data.builtin_retrieval), `info` (GNU info manuals,
neobert_jax.data.info_retrieval), or a folder with `train.jsonl` (anchor, positive) and `test/`
(BEIR layout); `--repeat N` trains on N shuffled copies of the pairs (a larger set for timing).
Without `--init`, the starting model is ours: `scripts/pretrain.py` for 10 epochs on the pairs'
passages (the student; `--tiny`: configs/tiny.py), reused when `WORK/mlm/hf` exists.

Sides (`--sides`): `st` (SentenceTransformerTrainer; its plain-loop twin `st-manual` where
`datasets` is missing), `st-manual`, `st-bf16`, `ours` (`scripts/contrastive.py --config
configs/contrastive.py` as shipped, plus `--ours KEY=VALUE` overrides), `ours-bf16`. Each side runs as
its own command, timed from outside; both evaluate `--eval-points` times during the run with the
same evaluator (neobert_jax.contrastive.evaluation) and report that time apart, so the times in
the table and the curve exclude evaluation. The table, `results.json` and `embedder_curve.png`
(nDCG@10 against seconds since the command started) go to the work dir, and with `--name` to
docs/results/embedder_<name>.json and docs/embedder_<name>.png as well.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="stdlib", help="stdlib | info | a folder with train.jsonl and test/")
    p.add_argument("--work-dir", default="runs/bench-embedder")
    p.add_argument("--init", default="", help="HF ModernBERT dir both sides start from (default: pretrain ours)")
    p.add_argument("--tiny", action="store_true", help="CPU-sized: configs/tiny.py start, seq_len 128")
    p.add_argument("--sides", default="st,ours", help="comma list of st, st-manual, st-bf16, ours, ours-bf16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=0, help="tokens per text (default 256; --tiny 128)")
    p.add_argument("--st-lr", type=float, default=5e-5, help="the users' learning rate (ST docs: 2e-5 to 5e-5)")
    p.add_argument("--seeds", default="0", help="comma list: each side runs once per seed (run-to-run noise)")
    p.add_argument("--eval-points", type=int, default=5)
    p.add_argument("--sts", default="", help="a scored-pair file (sentence1, sentence2, score) for Spearman")
    p.add_argument("--repeat", type=int, default=1, help="train on this many shuffled copies of the pairs")
    p.add_argument("--ours", action="append", default=[], help="KEY=VALUE override of configs/contrastive.py")
    p.add_argument("--pretrain", action="append", default=[], help="KEY=VALUE override of the pretraining config")
    p.add_argument("--name", default="", help="also write docs/results/embedder_<name>.json and its PNG")
    return p.parse_args(argv)


# --- data and the starting model


def pair_set(spec: str, work: str, repeat: int) -> tuple[str, str]:
    """-> (train.jsonl, test dir), built under `work` for the named sets."""
    if spec in ("stdlib", "info"):
        folder = os.path.join(work, f"pairs-{spec}")
        if not os.path.isdir(folder):
            if spec == "stdlib":
                from neobert_jax.data.builtin_retrieval import write_task
            else:
                from neobert_jax.data.info_retrieval import write_task
            print(f"building the {spec} pair set in {folder}: {write_task(folder)}", flush=True)
    else:
        folder = spec
    train, test = os.path.join(folder, "train.jsonl"), os.path.join(folder, "test")
    if repeat > 1:
        lines = [line for line in open(train, encoding="utf-8") if line.strip()]
        rng, out = random.Random(0), []
        for _ in range(repeat):
            rng.shuffle(lines)
            out += lines
        train = os.path.join(work, f"train-x{repeat}.jsonl")
        with open(train, "w", encoding="utf-8") as f:
            f.writelines(out)
    return train, test


def starting_model(args, train: str, work: str) -> str:
    if args.init:
        return args.init
    mlm = os.path.join(work, "mlm")
    if os.path.isdir(os.path.join(mlm, "hf")):
        print(f"starting model: {mlm}/hf (reused)", flush=True)
        return os.path.join(mlm, "hf")
    passages = os.path.join(work, "passages.txt")
    with open(train, encoding="utf-8") as f, open(passages, "w", encoding="utf-8") as out:
        out.writelines(" ".join(json.loads(line)["positive"].split()) + "\n" for line in f if line.strip())
    config = "configs/tiny.py" if args.tiny else "configs/student.py"
    command = [sys.executable, "scripts/pretrain.py", "--config", config, f"--config.data.train_files={passages}",
               f"--config.output_dir={mlm}", "--config.train.epochs=10", "--config.train.max_steps=0",
               "--config.train.eval_every=0", *[f"--config.{kv}" for kv in args.pretrain]]
    print("starting model:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return os.path.join(mlm, "hf")


# --- the sides


def run_st(side: str, args, init: str, train: str, test: str, out: str, seed: int) -> dict:
    loop = "manual" if side == "st-manual" or not _has_datasets() else "trainer"
    stats = os.path.join(out + ".json")
    command = [sys.executable, "scripts/embedder_st_trainer.py", "--model", init, "--train-files", train,
               "--output", out, "--loop", loop, "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--lr", str(args.st_lr), "--seq-len", str(args.seq_len), "--seed", str(seed),
               "--precision", "bf16" if side.endswith("bf16") else "fp32", "--eval-dir", test,
               "--eval-points", str(args.eval_points), "--json", stats]
    wall = timed(command)
    r = json.load(open(stats))
    return {"command": " ".join(command), "loop": loop, "steps": r["steps"], "whole_s": wall - r["evaluation_s"],
            "training_after_first_step_s": r["training_after_first_step_s"], "texts_per_s": r["texts_per_s"],
            "evaluation_s": r["evaluation_s"], "curve": r["curve"], "model": out}


def run_ours(side: str, args, init: str, train: str, test: str, out: str, seed: int) -> dict:
    n_pairs = sum(1 for line in open(train, encoding="utf-8") if line.strip())
    steps = args.epochs * (n_pairs // args.batch_size)
    command = [sys.executable, "scripts/contrastive.py", "--config", "configs/contrastive.py",
               f"--config.init_from={init}", f"--config.data.train_files={train}",
               f"--config.eval.retrieval_dirs={test}", f"--config.output_dir={out}", "--config.resume=False",
               f"--config.train.batch_size={args.batch_size}", f"--config.train.epochs={args.epochs}",
               f"--config.train.seq_len={args.seq_len}", f"--config.seed={seed}",
               f"--config.train.eval_every={max(round(steps / max(args.eval_points, 1)), 1)}",
               f"--config.train.precision={'bf16' if side.endswith('bf16') else 'fp32'}",
               *[f"--config.{kv}" for kv in args.ours]]
    wall = timed(command)
    run = run_timings(out)
    after_first = run["training_after_first_step_s"]
    texts = 2 * args.batch_size * run["timed_steps"]
    with open(os.path.join(out, "run_summary.json")) as f:
        summary = json.load(f)  # compilation: the whole run's, evaluations' programs included
    return {"command": " ".join(command), "steps": run["steps"], "whole_s": wall - run["evaluation_s"],
            "training_after_first_step_s": after_first, "texts_per_s": texts / after_first if after_first > 0 else None,
            "evaluation_s": run["evaluation_s"], "curve": run["curve"], "model": os.path.join(out, "st"),
            "compilation": summary["compilation"], "host_s": summary["host_s"]}


def run_timings(out: str) -> dict:
    """One of our runs, from its metrics.jsonl with evaluation taken out of `elapsed_s`: steps,
    evaluation_s, training_after_first_step_s, timed_steps (those after the first) and its
    evaluations against time (curve)."""
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    evaluation = np.cumsum([r.get("evaluation_s") or 0.0 for r in records])
    curve = [{"step": r["step"], "elapsed_s": r["elapsed_s"] - spent,
              **{k.removeprefix("eval_"): v for k, v in r.items() if k.startswith("eval_")}}
             for r, spent in zip(records, evaluation) if "evaluation_s" in r]
    first = next(i for i, r in enumerate(records) if r["step"] >= 1)
    after_first = (records[-1]["elapsed_s"] - evaluation[-1]) - (records[first]["elapsed_s"] - evaluation[first])
    return {"steps": records[-1]["step"], "evaluation_s": float(evaluation[-1]),
            "training_after_first_step_s": float(after_first),
            "timed_steps": records[-1]["step"] - records[first]["step"], "curve": curve}


def _has_datasets() -> bool:
    import importlib.util

    return importlib.util.find_spec("datasets") is not None


def timed(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True)
    return time.time() - started


# --- one evaluator, through sentence-transformers


def score(model_path: str, test: str, sts: str, seq_len: int, mean_pooling: bool = False) -> dict:
    """nDCG@10, recall@100, MRR@10 (and Spearman) of an exported model, loaded as users load it."""
    from sentence_transformers import SentenceTransformer, models

    from neobert_jax.contrastive.evaluation import evaluate, load_retrieval, load_sts
    from neobert_jax.hf.sentence_transformers import read_sentence_transformers_prompts

    if mean_pooling:  # a plain HF dir: the users' models.Transformer + mean models.Pooling
        from embedder_st_trainer import embedding_dimension

        transformer = models.Transformer(model_path, max_seq_length=seq_len)
        model = SentenceTransformer(modules=[transformer, models.Pooling(
            embedding_dimension(transformer), pooling_mode="mean")], device="cpu")
    else:
        model = SentenceTransformer(model_path, device="cpu")
    prompts = ("", "") if mean_pooling else read_sentence_transformers_prompts(model_path)  # as it was trained
    per_query = {}
    found = evaluate(lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True),
                     [load_sts(sts)] if sts else [], [load_retrieval(test)], *prompts, per_query=per_query)
    ndcg = next(values for key, values in per_query.items() if key.endswith("_ndcg@10"))
    return {**{key.split("_", 1)[1]: value for key, value in found.items()}, "per_query_ndcg@10": ndcg.tolist()}


def paired_difference(ours: list[list[float]], theirs: list[list[float]], resamples: int = 10_000):
    """Mean per-query nDCG@10 difference (each side's seeds averaged per query) and its 95% interval
    from a paired bootstrap over the queries: how much the test set's sampling alone could move it."""
    d = np.mean(ours, axis=0) - np.mean(theirs, axis=0)
    means = d[np.random.default_rng(0).integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(low), float(high)


# --- report


def table(rows: list[dict], metrics: list[str], rate: tuple[str, str] = ("texts_per_s", "texts/s")) -> str:
    """One line per row: the mean of its runs (± their std for the metrics); rate: (key, heading)."""
    head = ["run", "steps", "whole command s", "training after step 1 s", rate[1], *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        def cell(key, fmt):
            values = [r[key] for r in row["runs"] if r.get(key) is not None]
            if not values:
                return "—"
            return fmt.format(np.mean(values)) + (f" ± {np.std(values):.3f}" if len(values) > 1 and fmt == "{:.3f}"
                                                  else "")
        quality = [cell(m, "{:.3f}") for m in metrics]
        lines.append("| " + " | ".join([row["name"], cell("steps", "{:.0f}"), cell("whole_s", "{:.1f}"),
                                         cell("training_after_first_step_s", "{:.1f}"), cell(rate[0], "{:,.0f}"),
                                         *quality]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        for i, run in enumerate(row.get("runs", [])):
            points = [(p["elapsed_s"], p[k]) for p in run.get("curve", []) for k in p if k.endswith("_ndcg@10")]
            if points:
                ax.plot(*zip(*points), marker="o", label=row["name"] if i == 0 else None,
                        color=f"C{rows.index(row)}", alpha=0.8)
    ax.set_xlabel("seconds since the command started (evaluation excluded)")
    ax.set_ylabel("held-out nDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.seq_len = args.seq_len or (128 if args.tiny else 256)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - {"st", "st-manual", "st-bf16", "ours", "ours-bf16"}
    if unknown:
        sys.exit(f"error: --sides: unknown {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.pairs not in ("stdlib", "info"):  # a folder: checked before anything is written
        for part in ("train.jsonl", "test"):
            if not os.path.exists(os.path.join(args.pairs, part)):
                sys.exit(f"error: --pairs {args.pairs}: no {os.path.join(args.pairs, part)}")
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    train, test = pair_set(args.pairs, work, args.repeat)
    init = starting_model(args, train, work)
    rows = [{"name": "starting model (mean pooling)",
             "runs": [score(init, test, args.sts, args.seq_len, mean_pooling=True)]}]
    for side in sides:
        runs = []
        for seed in seeds:
            out = os.path.join(work, f"{side}-seed{seed}")
            shutil.rmtree(out, ignore_errors=True)
            runner = run_st if side.startswith("st") else run_ours
            run = runner(side, args, init, train, test, out, seed)
            run.update(score(run["model"], test, args.sts, args.seq_len), seed=seed)
            runs.append(run)
        label = {"st": f"sentence-transformers ({runs[0]['loop'] if runs[0].get('loop') else ''}), lr {args.st_lr:g}",
                 "st-manual": f"sentence-transformers (manual loop), lr {args.st_lr:g}",
                 "st-bf16": f"sentence-transformers bf16 autocast, lr {args.st_lr:g}",
                 "ours": "ours (configs/contrastive.py)", "ours-bf16": "ours, train.precision=bf16"}[side]
        rows.append({"name": label + (f" + {' '.join(args.ours)}" if side.startswith("ours") and args.ours else ""),
                     "side": side, "runs": runs})
    report = table(rows, [*METRICS, *(["spearman"] if args.sts else [])])
    print(f"\npairs {train} ({args.pairs}), test {test}, start {init}; batch {args.batch_size}, "
          f"{args.epochs} epoch(s), seq_len {args.seq_len}, seeds {seeds}\n{report}")
    users = next((row for row in rows if row.get("side") == "st"), None)
    for row in rows[1:]:
        if users is not None and row is not users:
            mean, low, high = paired_difference([r["per_query_ndcg@10"] for r in row["runs"]],
                                                [r["per_query_ndcg@10"] for r in users["runs"]])
            row["ndcg@10_minus_st"] = {"mean": mean, "low": low, "high": high}
            print(f"nDCG@10, {row['name']} minus {users['name']}: {mean:+.3f}, 95% interval [{low:+.3f}, "
                  f"{high:+.3f}] over {len(users['runs'][0]['per_query_ndcg@10'])} queries (paired bootstrap)")
    for row in rows:
        for run in row["runs"]:
            if "compilation" in run:
                c = run["compilation"]
                print(f"compilation, {row['name']}, seed {run['seed']}: {c['programs']} programs, {c['cache_hits']} "
                      f"from the persistent cache; tracing {c['tracing_s']:.1f} s, lowering {c['lowering_s']:.1f} s, "
                      f"XLA {c['xla_s']:.1f} s; after the first step, the host's batches and dispatch "
                      f"{run['host_s']['batches_and_dispatch']:.2f} s, its waits on the device "
                      f"{run['host_s']['waiting_on_device']:.2f} s")
    results = {"args": vars(args), "train": train, "test": test, "init": init, "rows": rows, "table": report}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(rows, os.path.join(work, "embedder_curve.png"))
    if args.name:
        os.makedirs(os.path.join(REPO, "docs", "results"), exist_ok=True)
        shutil.copy(os.path.join(work, "results.json"), os.path.join(REPO, "docs", "results", f"embedder_{args.name}.json"))
        shutil.copy(os.path.join(work, "embedder_curve.png"), os.path.join(REPO, "docs", f"embedder_{args.name}.png"))


if __name__ == "__main__":
    main()
