"""Our classification fine-tuning against the users' transformers Trainer, from one starting model and
one task, judged by one evaluator through `AutoModelForSequenceClassification.from_pretrained(dir)`
(docs/classification_bench.md).

    python scripts/bench_classify.py --init runs/student/mlm/hf --task builtin --work-dir runs/bench-classify
    python scripts/bench_classify.py --init runs/tiny/hf --task builtin --tiny     # CPU-sized, minutes

Task (`--task`): `builtin` (stdlib-family: a docstring -> its package's family, 8 labels, written
with neobert_jax.data.builtin_glue into the work dir) or a folder with `train.*` and `dev.*`
(.csv, .tsv, .jsonl) holding `text` and `label`. The examples used (`--max-train`/`--max-eval`
subsample them, keeping file order) go to WORK/task/{train,dev}.jsonl, which every side reads, and
one label list (the builtin task's, else train and dev labels sorted) is given to both sides.

Shared settings: batch 32, 3 epochs, lr 5e-5, a linear warmup over 10% of the steps then a linear
decay to 0, texts cut to seq_len 512 tokens, AdamW, clipping at 1.0, seed 0; `--tiny`: seq_len 128,
512 training and 256 dev examples.

Sides (`--sides`): `hf` (scripts/classify_hf_trainer.py: Trainer, AutoModelForSequenceClassification,
DataCollatorWithPadding, weight decay 0), `hf-bf16` (the trainer's bf16 autocast), `ours`
(`scripts/finetune.py --config configs/classify.py` as shipped, its weight decay included, plus
`--ours KEY=VALUE` overrides), `ours-bf16` (train.precision=bf16). Each side runs as its own
command, timed from outside; ours evaluates the dev set before and after training and that time is
taken out of its whole-command seconds. The exported models are scored by one evaluator: the model
and tokenizer from the dir, the dev set in padded batches, accuracy and macro-F1 (scikit-learn).
The table and `results.json` go to the work dir, with `--name` to docs/results/classify_<name>.json too.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import types

import numpy as np

from bench_embedder import run_timings, table, timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("accuracy", "macro_f1")
SIDES = {"hf": "transformers Trainer, fp32", "hf-bf16": "transformers Trainer, bf16 autocast",
         "ours": "ours (configs/classify.py)", "ours-bf16": "ours, train.precision=bf16"}
SUFFIXES = (".csv", ".tsv", ".jsonl")
SINGLE = "single_label_classification"
COLUMNS = types.SimpleNamespace(text_column="text", text_pair_column="", label_column="label")
BUILTIN = "stdlib-family"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="", help="required: the HF ModernBERT (MLM) dir both sides start from")
    p.add_argument("--task", default="builtin", help="builtin | a folder with train.* and dev.* (text, label)")
    p.add_argument("--work-dir", default="runs/bench-classify")
    p.add_argument("--tiny", action="store_true", help="CPU-sized: seq_len 128, 512 train and 256 dev examples")
    p.add_argument("--sides", default="hf,ours", help=f"comma list of {', '.join(SIDES)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5, help="both sides' peak learning rate")
    p.add_argument("--seq-len", type=int, default=0, help="tokens per text (default 512; --tiny 128)")
    p.add_argument("--max-train", type=int, default=-1, help="subsample the training set (0 = all; --tiny 512)")
    p.add_argument("--max-eval", type=int, default=-1, help="subsample the dev set (0 = all; --tiny 256)")
    p.add_argument("--seeds", default="0", help="comma list: each side runs once per seed (run-to-run noise)")
    p.add_argument("--ours", action="append", default=[], help="KEY=VALUE override of configs/classify.py")
    p.add_argument("--name", default="", help="also write docs/results/classify_<name>.json")
    return p.parse_args(argv)


def check(args) -> tuple[list[str], list[int]]:
    """-> (sides, seeds); a bad argument exits with one line before anything is written."""
    if not args.init:
        sys.exit("error: --init: required, an HF ModernBERT dir (e.g. a pretraining run's output_dir/hf)")
    if not os.path.isfile(os.path.join(args.init, "config.json")):
        sys.exit(f"error: --init {args.init}: no config.json there (an HF model dir)")
    if args.task != "builtin":
        for split in ("train", "dev"):
            if not task_file(args.task, split):
                sys.exit(f"error: --task {args.task}: no {split}{{{','.join(SUFFIXES)}}} there")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or not sides:
        sys.exit(f"error: --sides: {'unknown ' + str(unknown) if unknown else 'none given'} (choose from "
                 f"{', '.join(SIDES)})")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"error: --seeds {args.seeds!r}: expected comma-separated integers")
    bad = [kv for kv in args.ours if "=" not in kv]
    if bad:
        sys.exit(f"error: --ours {bad[0]!r}: expected KEY=VALUE")
    return sides, seeds


# --- the task


def task_file(folder: str, split: str) -> str:
    found = [p for suffix in SUFFIXES for p in sorted(glob.glob(os.path.join(folder, split + suffix)))]
    return found[0] if found else ""


def prepare_task(args, work: str) -> dict:
    """WORK/task/{train,dev}.jsonl (subsampled), -> their paths, sizes and the label list."""
    from neobert_jax.classify.data import label_names, read_examples
    from neobert_jax.data.errors import DataError

    given = []
    folder = args.task
    if args.task == "builtin":
        from neobert_jax.data.builtin_glue import write_builtin_tasks

        built = os.path.join(work, "builtin")
        if not os.path.isdir(built):
            print(f"building the built-in tasks in {built}: {write_builtin_tasks(built)}", flush=True)
        folder = os.path.join(built, BUILTIN)
        given = json.load(open(os.path.join(folder, "task.json")))["config"]["data.labels"].split(",")
    out = {"source": folder, "dir": os.path.join(work, "task")}
    os.makedirs(out["dir"], exist_ok=True)
    try:
        for split, limit in (("train", args.max_train), ("dev", args.max_eval)):
            examples = read_examples([task_file(folder, split)], COLUMNS, SINGLE)
            keep = range(len(examples.texts))
            if 0 < limit < len(keep):
                keep = sorted(np.random.default_rng(0).choice(len(keep), limit, replace=False))
            out[split] = os.path.join(out["dir"], f"{split}.jsonl")
            with open(out[split], "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": examples.texts[i], "label": examples.labels[i]}) + "\n" for i in keep)
            out[f"{split}_examples"] = len(keep)
        out["labels"] = label_names(read_examples([out["train"], out["dev"]], COLUMNS, SINGLE), SINGLE, given)
    except DataError as e:
        sys.exit(f"error: {e}")
    return out


# --- the sides


def run_hf(side: str, args, init: str, task: dict, out: str, seed: int) -> dict:
    stats = out + ".json"
    command = [sys.executable, "scripts/classify_hf_trainer.py", "--model", init, "--train-files", task["train"],
               "--output", out, "--labels", ",".join(task["labels"]), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--lr", str(args.lr), "--seq-len", str(args.seq_len),
               "--seed", str(seed), "--precision", "bf16" if side.endswith("bf16") else "fp32", "--json", stats]
    wall = timed(command)
    r = json.load(open(stats))
    return {"command": " ".join(command), "steps": r["steps"], "whole_s": wall,
            "training_after_first_step_s": r["training_after_first_step_s"], "examples_per_s": r["examples_per_s"],
            "device": r["device"], "model": out}


def run_ours(side: str, args, init: str, task: dict, out: str, seed: int) -> dict:
    command = [sys.executable, "scripts/finetune.py", "--config", "configs/classify.py",
               f"--config.init_from={init}", f"--config.data.train_files={task['train']}",
               f"--config.data.eval_files={task['dev']}", f"--config.data.labels={','.join(task['labels'])}",
               f"--config.output_dir={out}", "--config.resume=False", f"--config.train.batch_size={args.batch_size}",
               f"--config.train.epochs={args.epochs}", f"--config.train.learning_rate={args.lr}",
               f"--config.train.seq_len={args.seq_len}", f"--config.seed={seed}",
               f"--config.train.precision={'bf16' if side.endswith('bf16') else 'fp32'}",
               *[f"--config.{kv}" for kv in args.ours]]
    wall = timed(command)
    run = run_timings(out)
    after_first = run["training_after_first_step_s"]
    examples = args.batch_size * run["timed_steps"]
    train = json.load(open(os.path.join(out, "run_config.json")))["train"]
    return {"command": " ".join(command), "steps": run["steps"], "whole_s": wall - run["evaluation_s"],
            "training_after_first_step_s": after_first, "examples_per_s": examples / after_first if after_first > 0
            else None, "evaluation_s": run["evaluation_s"], "weight_decay": train["weight_decay"],
            "own_eval": {k: run["curve"][-1].get(k) for k in ("step", *METRICS)}, "model": os.path.join(out, "hf")}


# --- one evaluator, through transformers


def score(model_dir: str, dev: str, seq_len: int, batch_size: int = 64) -> dict:
    """Accuracy and macro-F1 of an exported model on the dev set, loaded as users load it."""
    import torch
    from sklearn import metrics as sk
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(line) for line in open(dev, encoding="utf-8") if line.strip()]
    texts, gold = [r["text"] for r in records], [r["label"] for r in records]
    predicted = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=seq_len,
                              return_tensors="pt").to(device)
            predicted += model(**batch).logits.argmax(-1).tolist()
    names = [model.config.id2label[i] for i in predicted]
    return {"accuracy": float(sk.accuracy_score(gold, names)),
            "macro_f1": float(sk.f1_score(gold, names, average="macro"))}


# --- report


def settings(args, seeds: list[int]) -> str:
    return (f"batch {args.batch_size}, {args.epochs} epoch(s), lr {args.lr:g}, warmup 10% then linear decay, "
            f"seq_len {args.seq_len}, seeds {seeds}")


def main(argv=None) -> None:
    args = parse_args(argv)
    sides, seeds = check(args)
    args.seq_len = args.seq_len or (128 if args.tiny else 512)
    args.max_train = args.max_train if args.max_train >= 0 else (512 if args.tiny else 0)
    args.max_eval = args.max_eval if args.max_eval >= 0 else (256 if args.tiny else 0)
    init = os.path.abspath(args.init)
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    task = prepare_task(args, work)
    rows = []
    for side in sides:
        runs = []
        for seed in seeds:
            out = os.path.join(work, f"{side}-seed{seed}")
            shutil.rmtree(out, ignore_errors=True)
            run = (run_hf if side.startswith("hf") else run_ours)(side, args, init, task, out, seed)
            run.update(score(run["model"], task["dev"], args.seq_len), seed=seed)
            runs.append(run)
        name = SIDES[side] + (f" + {' '.join(args.ours)}" if side.startswith("ours") and args.ours else "")
        rows.append({"name": name, "side": side, "runs": runs})
    decay = sorted({run["weight_decay"] for row in rows for run in row["runs"] if "weight_decay" in run})
    head = (f"task {task['source']} ({task['train_examples']} train, {task['dev_examples']} dev, "
            f"{len(task['labels'])} labels), start {init}; {settings(args, seeds)}; weight decay: hf 0"
            + (f", ours {', '.join(map(str, decay))}" if decay else ""))
    report = table(rows, list(METRICS), rate=("examples_per_s", "examples/s"))
    print(f"\n{head}\n{report}")
    results = {"args": vars(args), "task": task, "init": init, "settings": head, "rows": rows, "table": report}
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.name:
        os.makedirs(os.path.join(REPO, "docs", "results"), exist_ok=True)
        shutil.copy(os.path.join(work, "results.json"), os.path.join(REPO, "docs", "results", f"classify_{args.name}.json"))


if __name__ == "__main__":
    main()
