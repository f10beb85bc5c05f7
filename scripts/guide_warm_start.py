"""Does GUIDE initialization help? Teacher -> GUIDE student vs random student, same data and seed.

    python scripts/guide_warm_start.py --work-dir runs/guide_study          # on a GPU, ~5 minutes
    python scripts/guide_warm_start.py --work-dir /tmp/g --tiny             # CPU smoke run

Only the project's own commands are used: `scripts/pretrain.py` trains a teacher (768 wide, 6 layers) on
the built-in corpus, `convert/guide_init.py` shrinks its HF export into the 384 x 12 student, and
`scripts/pretrain.py` trains that student and a randomly initialized one with identical settings.
`--train-files` points all three runs at your corpus. Prints the MLM loss at chosen steps, the step at which the random run first matches the GUIDE run's
loss at the reference step, and writes `warm_start.png` and `summary.json` into the work dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1152)
STUDENT = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=768)
TINY_TEACHER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
TINY_STUDENT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def pretrain(args, out: str, shape: dict, steps: int, extra: list[str]) -> None:
    overrides = {
        "output_dir": out, "resume": False, "seed": args.seed, "train.max_steps": steps,
        "train.precision": args.precision, "train.log_every": 10,
        "train.batch_size": args.batch_size, "train.grad_accum_steps": 1, "train.seq_len": args.seq_len,
        "train.save_every": steps, "model.remat": "none", "data.eval_samples": 0,
        **{f"model.{k}": v for k, v in shape.items()},
    }
    if args.train_files:
        overrides["data.train_files"] = args.train_files
    if args.tiny:
        overrides["data.tokenizer_vocab_size"] = 512
    run([sys.executable, "scripts/pretrain.py", "--config", "configs/student.py"]
        + [f"--config.{k}={v}" for k, v in overrides.items()] + extra)


def losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def loss_at(curve: dict[int, float], step: int) -> float:
    """The logged loss at the last logged step <= `step` (logs are every 10 steps, plus step 1)."""
    return curve[max(s for s in curve if s <= step)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--teacher-steps", type=int, default=2000)
    p.add_argument("--student-steps", type=int, default=1000)
    p.add_argument("--reference-step", type=int, default=500, help="whose GUIDE loss the random run must reach")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--selection", default="prefix", choices=("prefix", "uniform"))
    p.add_argument("--train-files", default="", help="corpus for all three runs (default: the built-in one)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and steps: a CPU smoke run")
    args = p.parse_args()
    if args.tiny:
        args.teacher_steps, args.student_steps, args.reference_step, args.seq_len = 30, 40, 20, 64
    work = os.path.abspath(args.work_dir)
    teacher, guide = os.path.join(work, "teacher"), os.path.join(work, "guide_init")
    runs = {"guide": os.path.join(work, "student_guide"), "random": os.path.join(work, "student_random")}
    student = TINY_STUDENT if args.tiny else STUDENT

    pretrain(args, teacher, TINY_TEACHER if args.tiny else TEACHER, args.teacher_steps, [])
    run([sys.executable, "convert/guide_init.py", "--teacher", os.path.join(teacher, "hf"), "--out", guide,
         "--overwrite", "--selection", args.selection, "--seed", str(args.seed)]
        + [f"--{k}={v}" for k, v in (("hidden-size", student["hidden_size"]),
                                       ("num-layers", student["num_hidden_layers"]),
                                       ("num-heads", student["num_attention_heads"]),
                                       ("intermediate-size", student["intermediate_size"]))])
    pretrain(args, runs["guide"], student, args.student_steps, [f"--config.init_from={guide}"])
    pretrain(args, runs["random"], student, args.student_steps,
             [f"--config.tokenizer={os.path.join(teacher, 'tokenizer')}"])

    curves = {name: losses(d) for name, d in runs.items()}
    marks = sorted({1, 100, args.reference_step, args.student_steps} & set(range(1, args.student_steps + 1)))
    target = loss_at(curves["guide"], args.reference_step)
    reached = next((s for s in sorted(curves["random"]) if curves["random"][s] <= target), None)
    summary = {"steps": marks, "target_loss": target, "random_steps_to_target": reached,
               **{name: [loss_at(c, s) for s in marks] for name, c in curves.items()}}
    print(f"\n{'step':>6} {'GUIDE':>9} {'random':>9}")
    for i, s in enumerate(marks):
        print(f"{s:6d} {summary['guide'][i]:9.3f} {summary['random'][i]:9.3f}")
    print(f"random init first reaches GUIDE's step-{args.reference_step} loss ({target:.3f}) at step "
          f"{reached if reached is not None else f'> {args.student_steps} (never within the run)'}")
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump({**summary, "curves": curves}, f)
    plot(curves, os.path.join(work, "warm_start.png"))


def plot(curves: dict[str, dict[int, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        steps = sorted(curve)
        ax.plot(steps, [curve[s] for s in steps], label=f"{name} init")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss (mean over 10 steps)")
    ax.set_title("GUIDE vs random initialization of the 384 x 12 student")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
