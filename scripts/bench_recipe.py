"""Our main command against the users' HF Trainer recipe: same data, same init, one evaluator.

    python scripts/bench_recipe.py --work-dir runs/recipe --sides users            # GPU, ~8 min
    python scripts/bench_recipe.py --work-dir runs/recipe --sides ours-fp32,ours-bf16
    python scripts/bench_recipe.py --work-dir runs/recipe --report                 # merge: table + PNG
    python scripts/bench_recipe.py --work-dir runs/recipe --sides ours-bf16 --name bs64 \
        --ours-extra 'train.batch_size=64 train.warmup_steps=100 train.warmup_fraction=0'  # a sweep point
    python scripts/bench_recipe.py --work-dir /tmp/recipe --tiny                    # CPU, a few minutes

The corpus (built-in, or the non-empty lines of --train-files) is shuffled with random.Random(0); the
first 500 paragraphs go to WORK/heldout.txt, the rest to WORK/train.txt. One tokenizer is trained on
train.txt and saved with one random-init student (torch.manual_seed(seed)) as WORK/init: both sides
start from it. "users" is scripts/recipe_hf_trainer.py (the users' settings); "ours-<precision>" is
`scripts/pretrain.py --config configs/student.py` with only paths, precision and checkpoint cadence
overridden (its checkpoints, converted with convert/flax_to_torch.py, give the curve). Every model is
scored by neobert_jax.hf.mlm_eval on heldout.txt. Each side's figures go to WORK/results/<side>.json,
so sides run in separate invocations (a GPU call is limited to 10 minutes) merge into one table,
WORK/results.json and WORK/recipe_curve.png.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HELD_OUT = 500
STUDENT = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=768)
TINY = dict(shape=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
            train=2000, heldout=200, vocab_size=2048, seq_len=128, epochs=3, snapshots=4)
SIDES = ("users", "ours-fp32", "ours-bf16")
# On a shared CPU, torch's OpenMP threads spin on busy cores: measured 20x slower per step with 2
# threads than with 1 on a 2-core machine running other work. --tiny gives torch one thread.
TINY_TORCH_ENV = {"OMP_NUM_THREADS": "1"}


class BenchError(Exception):
    """A one-line reason the benchmark cannot go on."""


# ---------------------------------------------------------------- setup: split, tokenizer, init
def split_corpus(args) -> tuple[list[str], list[str], str]:
    """-> (train, held-out, corpus name): shuffled with random.Random(0), the first 500 held out."""
    if args.train_files:
        docs = []
        for path in args.train_files:
            if not os.path.isfile(path):
                raise BenchError(f"--train-files: {path}: no such file")
            with open(path, encoding="utf-8") as f:
                docs += [line.strip() for line in f if line.strip()]
        name = ",".join(os.path.abspath(p) for p in args.train_files)
    else:
        from neobert_jax.data.builtin_corpus import NAME, builtin_documents

        docs, name = [" ".join(d.split("\n")) for d in builtin_documents()], NAME
    if len(docs) <= HELD_OUT:
        raise BenchError(f"{name}: {len(docs)} paragraphs; the split needs more than {HELD_OUT}")
    random.Random(0).shuffle(docs)
    heldout, train = docs[:HELD_OUT], docs[HELD_OUT:]
    if args.tiny:
        heldout, train = heldout[:TINY["heldout"]], train[:TINY["train"]]
    return train, heldout, name


def prepare(args, work: str) -> dict:
    """Writes train.txt, heldout.txt and init/ once; a later invocation reuses them if made alike."""
    shape = TINY["shape"] if args.tiny else STUDENT
    setup = dict(corpus=args.train_files or "builtin", tiny=args.tiny, vocab_size=args.vocab_size, seed=args.seed,
                 shape=shape)
    marker = os.path.join(work, "prepared.json")
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if {k: done.get(k) for k in setup} != setup:
            raise BenchError(f"{work} was prepared with other settings ({marker}); use another --work-dir")
        return done
    train, heldout, name = split_corpus(args)
    os.makedirs(work, exist_ok=True)
    for fname, docs in (("train.txt", train), ("heldout.txt", heldout)):
        with open(os.path.join(work, fname), "w", encoding="utf-8") as f:
            f.write("\n".join(docs) + "\n")
    build_init(os.path.join(work, "train.txt"), os.path.join(work, "init"), shape, args.vocab_size, args.seed)
    done = dict(setup, corpus_name=name, train_paragraphs=len(train), heldout_paragraphs=len(heldout))
    with open(marker, "w") as f:
        json.dump(done, f, indent=1)
    return done


def build_init(train_file: str, out: str, shape: dict, vocab_size: int, seed: int) -> None:
    """The project's tokenizer trained on train_file, saved with one random-init HF student."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from neobert_jax.data.tokenizer import save_tokenizer, train_tokenizer
    from neobert_jax.runtime.model_init import padded_vocab_size

    shutil.rmtree(out, ignore_errors=True)
    tokenizer = train_tokenizer([train_file], vocab_size=vocab_size)
    save_tokenizer(tokenizer, out)
    config = ModernBertConfig(
        vocab_size=padded_vocab_size(len(tokenizer)), max_position_embeddings=1024, **shape,
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(seed)
    ModernBertForMaskedLM(config).save_pretrained(out)


# ---------------------------------------------------------------- running the sides
def run_logged(cmd: list[str], log_path: str, env: dict | None = None) -> float:
    """Runs cmd from the repo root, output to log_path; -> wall seconds. Fails with the log's last line."""
    print("+ " + " ".join(cmd), flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode
    wall = time.time() - start
    if code:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
        raise BenchError(f"{cmd[1]} exited with {code}: {lines[-1] if lines else 'no output'} (log: {log_path})")
    return wall


def run_users(args, work: str, out: str) -> dict:
    cmd = [sys.executable, "scripts/recipe_hf_trainer.py", "--init", os.path.join(work, "init"),
           "--train-file", os.path.join(work, "train.txt"), "--output-dir", out, "--snapshots", str(args.snapshots)]
    if args.tiny:
        cmd += ["--epochs", str(TINY["epochs"]), "--no-compile", "--report-to", "none"]
    wall = run_logged(cmd, os.path.join(work, "logs", "users.log"), env=TINY_TORCH_ENV if args.tiny else None)
    with open(os.path.join(out, "timeline.json")) as f:
        tl = json.load(f)
    return dict(command=cmd, wall_s=wall - tl["snapshot_s"], start_to_first_step_s=tl["start_to_first_step_s"],
                train_s=tl["train_s"], optimizer_steps=tl["optimizer_steps"], tokens_seen=tl["tokens_seen"],
                final_dir=out, timing="timeline.json (snapshot saving excluded)",
                snapshots=[(s["step"], s["elapsed_s"], s["dir"]) for s in tl["snapshots"]])


def ours_overrides(args, work: str, out: str, precision: str) -> dict:
    overrides = {"init_from": os.path.join(work, "init"), "data.train_files": os.path.join(work, "train.txt"),
                 "data.eval_files": os.path.join(work, "heldout.txt"), "output_dir": out,
                 "train.precision": precision}
    if args.tiny:
        overrides.update({f"model.{k}": v for k, v in TINY["shape"].items()})
        overrides.update({"train.seq_len": TINY["seq_len"], "train.epochs": TINY["epochs"]})
    for item in args.ours_extra.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise BenchError(f"--ours-extra: {item!r} is not key=value")
        overrides[key.removeprefix("--config.")] = value
    return overrides


def estimated_steps(work: str, overrides: dict) -> int:
    """Our run's optimizer steps, estimated before it starts so that save_every gives ~K checkpoints:
    the corpus's tokens over seq_len (rows packed full), the config's batch (for 0, its auto rule on
    one device)."""
    from neobert_jax.data.tokenizer import TextEncoder, load_tokenizer
    from neobert_jax.runtime import optim
    from neobert_jax.runtime.config import load_config_file

    config = load_config_file(os.path.join(REPO, "configs", "student.py"))
    t = config.train
    for key, value in overrides.items():
        if key.startswith("train.") and key[6:] in t:
            t[key[6:]] = type(t[key[6:]])(_literal(value))
    encoder = TextEncoder(load_tokenizer(os.path.join(work, "init")))
    with open(os.path.join(work, "train.txt"), encoding="utf-8") as f:
        _, lengths = encoder.encode([line.rstrip("\n") for line in f])
    rows = max(1, -(-int(lengths.sum() + 2 * len(lengths)) // t.seq_len))  # each paragraph gets [CLS] and [SEP]
    batch = t.batch_size or optim.auto_batch_size(rows, t.epochs, t, t.grad_accum_steps)
    return t.max_steps or t.epochs * max(1, rows // batch)


def _literal(value):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def flax_to_torch(ckpt: str, out: str) -> None:
    """What convert/flax_to_torch.py does, in this process (one start-up for all snapshots) and on
    the CPU: the GPU stays the trainers'."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    from neobert_jax.hf.convert import flax_to_torch as convert

    convert(ckpt, out, overwrite=True)


def run_ours(args, work: str, out: str, precision: str) -> dict:
    overrides = ours_overrides(args, work, out, precision)
    every = max(1, round(estimated_steps(work, overrides) / args.snapshots))
    overrides.update({"train.save_every": every, "train.keep_checkpoints": args.snapshots + 2})
    cmd = [sys.executable, "scripts/pretrain.py", "--config", "configs/student.py"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    side = os.path.basename(out)
    wall = run_logged(cmd, os.path.join(work, "logs", f"{side}.log"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(out, "run_config.json")) as f:
        run_train = json.load(f)["train"]  # the batch actually used (train.batch_size=0 is resolved there)
    rows_x_len = run_train["batch_size"] * run_train["seq_len"]
    steps = records[-1]["step"]
    tokens, previous = 0.0, 0
    for r in records:
        tokens += r["packing_efficiency"] * (r["step"] - previous) * rows_x_len
        previous = r["step"]
    logged = all("elapsed_s" in r for r in records)
    if logged:
        points, timing = [(r["step"], r["elapsed_s"]) for r in records], "metrics.jsonl elapsed_s"
    else:  # older trainer: only the process's start and end are known
        points = [(0, 0.0), (steps, wall)]
        timing = "estimated: metrics.jsonl has no elapsed_s; steps spread evenly over the command's wall time"
    snapshots = []
    saved = [int(name) for name in os.listdir(os.path.join(out, "checkpoints")) if name.isdigit()]
    for step in sorted(saved):
        ckpt = os.path.join(out, "checkpoints", str(step))
        hf = os.path.join(out, "hf") if step == steps else os.path.join(out, "snapshots", f"step-{step}")
        if step != steps:
            flax_to_torch(ckpt, hf)
        snapshots.append((step, _interpolate(points, step), hf))
    return dict(command=cmd, wall_s=wall, start_to_first_step_s=points[0][1] if logged else None,
                train_s=points[-1][1] - points[0][1], optimizer_steps=steps, tokens_seen=int(round(tokens)),
                final_dir=os.path.join(out, "hf"), timing=timing, snapshots=snapshots)


def _interpolate(points: list[tuple[int, float]], step: int) -> float:
    """Seconds at `step`, linear between the logged steps around it."""
    for (s0, t0), (s1, t1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
    return points[-1][1]


def score(side: dict, heldout, init_loss: float) -> dict:
    """Held-out loss of the final model and of every snapshot, by the shared evaluator; the curve
    starts from the shared init at second 0."""
    import torch

    from neobert_jax.hf.mlm_eval import mlm_loss

    final = mlm_loss(side["final_dir"], heldout)
    curve = [dict(step=0, elapsed_s=0.0, loss=init_loss)]
    for step, t, path in side["snapshots"]:  # the last one holds the final weights, scored above
        loss = final["loss"] if step == side["optimizer_steps"] else mlm_loss(path, heldout)["loss"]
        curve.append(dict(step=step, elapsed_s=t, loss=loss))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next side's trainer gets the memory back
    steps = max(side["optimizer_steps"], 1)  # train_s starts at the end of step 1: leave its tokens out
    tokens_per_s = side["tokens_seen"] * (steps - 1) / steps / side["train_s"] if side["train_s"] else None
    return {**{k: v for k, v in side.items() if k != "snapshots"}, "tokens_per_s": tokens_per_s, "heldout": final,
            "curve": curve}


# ---------------------------------------------------------------- report
def report(work: str) -> None:
    paths = sorted(glob.glob(os.path.join(work, "results", "*.json")))
    if not paths:
        raise BenchError(f"no results in {work}/results; run some --sides first")
    sides = {}
    for path in paths:
        with open(path) as f:
            sides[os.path.basename(path)[:-5]] = json.load(f)
    with open(os.path.join(work, "prepared.json")) as f:
        setup = json.load(f)
    print(f"\n{setup['corpus_name']}: {setup['train_paragraphs']} train / {setup['heldout_paragraphs']} held-out "
          f"paragraphs; held-out MLM loss by neobert_jax.hf.mlm_eval (float32, 30% masked, seed 0)\n")
    print("| side | wall s | start→1st step s | train s | steps | tokens seen | tokens/s | held-out loss | ppl |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in sides.items():
        first = "n/a" if r["start_to_first_step_s"] is None else f"{r['start_to_first_step_s']:.1f}"
        rate = "n/a" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        print(f"| {name} | {r['wall_s']:.1f} | {first} | {r['train_s']:.1f} | {r['optimizer_steps']:,} | "
              f"{r['tokens_seen']:,} | {rate} | {r['heldout']['loss']:.4f} | {r['heldout']['perplexity']:.2f} |")
    for name, r in sides.items():
        if r["timing"].startswith("estimated"):
            print(f"note: {name}: {r['timing']}")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"setup": setup, "sides": sides}, f, indent=1)
    plot(sides, os.path.join(work, "recipe_curve.png"))
    print(f"\nwrote {os.path.join(work, 'results.json')} and {os.path.join(work, 'recipe_curve.png')}")


def plot(sides: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in sides.items():
        ax.plot([p["elapsed_s"] for p in r["curve"]], [p["loss"] for p in r["curve"]], "o-", label=name)
    ax.set_xlabel("seconds since process start")
    ax.set_ylabel("held-out MLM loss")
    ax.set_title("Held-out loss against wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--sides", default="", help=f"comma-separated subset of {', '.join(SIDES)} "
                   "(default: all; --tiny: users,ours-fp32)")
    p.add_argument("--report", action="store_true", help="only merge WORK/results/*.json into the table and PNG")
    p.add_argument("--train-files", nargs="+", help="corpus files, one paragraph per line (default: built-in)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary (default 32768; --tiny 2048)")
    p.add_argument("--snapshots", type=int, default=None, help="points per side on the curve (default 8; --tiny 4)")
    p.add_argument("--ours-extra", default="", help="extra 'key=value ...' --config. overrides for our side")
    p.add_argument("--name", default="", help="record the ours side under this name (one ours side only)")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the shared random init")
    p.add_argument("--tiny", action="store_true", help="CPU mode: tiny model and corpus subset, fp32, no compile")
    args = p.parse_args()
    args.vocab_size = args.vocab_size or (TINY["vocab_size"] if args.tiny else 32768)
    args.sides = args.sides or ("users,ours-fp32" if args.tiny else ",".join(SIDES))
    args.snapshots = args.snapshots or (TINY["snapshots"] if args.tiny else 8)
    work = os.path.abspath(args.work_dir)
    try:
        if not args.report:
            run_sides(args, work)
        report(work)
    except BenchError as e:
        sys.exit(f"error: {e}")


def run_sides(args, work: str) -> None:
    sides = [s for s in args.sides.split(",") if s]
    if unknown := [s for s in sides if s not in SIDES]:
        raise BenchError(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(SIDES)}")
    if args.tiny and "ours-bf16" in sides:
        raise BenchError("--tiny is fp32 only: drop ours-bf16 from --sides")
    ours = [s for s in sides if s != "users"]
    if (args.name or args.ours_extra) and len(ours) != 1:
        raise BenchError("--name / --ours-extra need exactly one ours-* side in --sides")
    if args.ours_extra and not args.name:
        raise BenchError("--ours-extra needs --name, so the sweep point does not overwrite the plain side")
    setup = prepare(args, work)
    import torch

    from neobert_jax.hf.mlm_eval import mlm_loss, prepare_heldout

    if args.tiny:
        torch.set_num_threads(int(TINY_TORCH_ENV["OMP_NUM_THREADS"]))

    heldout = prepare_heldout(os.path.join(work, "init"), os.path.join(work, "heldout.txt"))
    init_loss = mlm_loss(os.path.join(work, "init"), heldout)["loss"]
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    os.makedirs(os.path.join(work, "results"), exist_ok=True)
    for side in sides:
        name = args.name if side != "users" and args.name else side
        out = os.path.join(work, name)
        shutil.rmtree(out, ignore_errors=True)
        raw = run_users(args, work, out) if side == "users" else run_ours(args, work, out, side.split("-")[1])
        result = {**score(raw, heldout, init_loss), "side": side, "ours_extra": args.ours_extra if side != "users" else "",
                  "setup": setup}
        with open(os.path.join(work, "results", f"{name}.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(f"{name}: held-out loss {result['heldout']['loss']:.4f} after {result['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
