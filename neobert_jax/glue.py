"""GLUE-style evaluation: every task folder of a tasks dir fine-tuned from one model through the
classification run (`train_classifier`, in this process: one code path, one set of error messages),
then one table and output_dir/glue_results.json (docs/classification.md, "GLUE-style evaluation").

Each task runs in output_dir/<task>/seed<N> (rerunning resumes an interrupted run; a finished one,
recorded in its glue_run.json, is only reported, unless its settings differ, which is an error for
that task). A task that fails is one table row with its error, the others still run, and the exit
status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from neobert_jax.data import glue_tasks

RESULTS_FILE = "glue_results.json"
RUN_RECORD = "glue_run.json"
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "classify.py")


def parse_value(text: str, current):
    """A command-line value in the type of the config's current value."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    return text


def apply_overrides(config, overrides: dict) -> None:
    """Sets `overrides` (dotted keys -> values or strings) on `config`; an unknown key raises
    KeyError through the config's own check, which lists the valid keys."""
    from neobert_jax.runtime.config import check_override_keys

    check_override_keys(config, [f"--config.{key}=" for key in overrides])
    for key, value in overrides.items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = parse_value(value, node[name]) if isinstance(value, str) else value


def find_tasks(tasks_dir: str, wanted: list[str]) -> tuple[list[glue_tasks.Task], list[str]]:
    """-> (tasks in name order, or in `wanted`'s order; folders that are not tasks)."""
    if not os.path.isdir(tasks_dir):
        raise FileNotFoundError(f"--tasks-dir: {tasks_dir}: no such folder")
    found, ignored = {}, []
    for name in sorted(os.listdir(tasks_dir)):
        if os.path.isdir(os.path.join(tasks_dir, name)):
            task = glue_tasks.Task.of_folder(os.path.join(tasks_dir, name))
            (ignored.append(name) if task is None else found.__setitem__(name, task))
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise ValueError(f"--tasks: {', '.join(unknown)} not in {tasks_dir} (tasks there: {', '.join(found) or 'none'})")
    return [found[name] for name in wanted] if wanted else list(found.values()), ignored


def _supported(problem_type: str) -> str | None:
    from neobert_jax.classify.config import PROBLEM_TYPES

    if problem_type in PROBLEM_TYPES:
        return None
    return f"skipped: problem_type {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}"


def run_one(task: glue_tasks.Task, seed: int, args, overrides: dict) -> dict:
    """Fine-tunes `task` with `seed` -> its result row (status ok / cached / failed / stopped)."""
    from neobert_jax.classify.task import PREDICTIONS_FILE, train_classifier
    from neobert_jax.runtime.cli import one_line
    from neobert_jax.runtime.config import load_config_file

    run_dir = os.path.join(args.output_dir, task.name, f"seed{seed}")
    row = {"task": task.name, "seed": seed, "run_dir": run_dir, "problem_type": task.problem_type}
    skip = _supported(task.problem_type)
    if skip:
        return {**row, "status": "skipped", "error": skip}
    settings = {"init_from": args.init_from, "overrides": overrides, "max_train": args.max_train,
                "max_eval": args.max_eval, "seed": seed, "config": args.base_config, "task": task.config,
                "metrics": task.metrics}
    record_path = os.path.join(run_dir, RUN_RECORD)
    if os.path.exists(record_path):
        with open(record_path) as f:
            done = json.load(f)
        if done.get("settings") == settings:
            return {**done["row"], "status": "cached"}
        changed = sorted(k for k in settings if done.get("settings", {}).get(k) != settings[k])
        return {**row, "status": "failed", "error": f"{run_dir} holds a finished run with other settings "
                f"({', '.join(changed)}); use another --output-dir or remove it"}
    started = time.time()
    try:
        data = glue_tasks.prepare(task, os.path.join(args.output_dir, task.name, "data"), args.max_train,
                                  args.max_eval)
        config = load_config_file(args.base_config)
        apply_overrides(config, {**data["keys"], "output_dir": run_dir, "init_from": args.init_from, "seed": seed})
        apply_overrides(config, overrides)
        result = train_classifier(config)
        if not result.completed:
            return {**row, "status": "stopped", "error": f"stopped at step {result.step}; rerun to resume"}
        metrics = glue_tasks.official_metrics(task, os.path.join(run_dir, PREDICTIONS_FILE), result.after)
    except Exception as e:  # noqa: BLE001 - one task's failure is its row, the others still run
        return {**row, "status": "failed", "error": f"{type(e).__name__}: {one_line(e)}"[:400],
                "seconds": round(time.time() - started, 1)}
    row.update(status="ok", metrics=metrics, train_examples=data["train_examples"],
               eval_examples=data["eval_examples"], skipped_rows=data["skipped_rows"], steps=result.step,
               seconds=round(time.time() - started, 1), eval_loss=result.after.get("loss"),
               before=result.before, after=result.after)
    with open(record_path, "w") as f:
        json.dump({"settings": settings, "row": row}, f, indent=1)
    return row


def _fmt(value) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def table(rows: list[dict]) -> str:
    """One line per task and seed, and a mean line per task run with several seeds."""
    lines = [f"{'task':<16} {'seed':>4}  {'metrics':<34} {'train':>7} {'steps':>6} {'seconds':>8}  status"]
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for task, runs in by_task.items():
        for r in runs:
            if r["status"] in ("ok", "cached"):
                shown = ", ".join(f"{k} {_fmt(v)}" for k, v in r["metrics"].items())
                lines.append(f"{task:<16} {r['seed']:>4}  {shown:<34} {r['train_examples']:>7} {r['steps']:>6} "
                             f"{r['seconds']:>8.1f}  {r['status']}")
            else:
                lines.append(f"{task:<16} {r['seed']:>4}  {'-':<34} {'':>7} {'':>6} {'':>8}  {r['error']}")
        good = [r for r in runs if r["status"] in ("ok", "cached")]
        if len(good) > 1:
            names = list(good[0]["metrics"])
            shown = ", ".join(f"{k} {_fmt(statistics.mean(r['metrics'][k] for r in good))}"
                              f"±{_fmt(statistics.stdev(r['metrics'][k] for r in good))}" for k in names)
            lines.append(f"{task:<16} {'mean':>4}  {shown}")
    return "\n".join(lines)


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks-dir", help="one folder per task: GLUE names (CoLA, SST-2, ...) or a task.json")
    p.add_argument("--init-from", help="the HF ModernBERT dir (or project checkpoint) every task starts from")
    p.add_argument("--output-dir", default="runs/glue")
    p.add_argument("--tasks", default="", help="comma-separated folder names (default: all tasks found)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each task runs once per seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a classify config key for every task, e.g. train.seq_len=128 (also --config.KEY=VALUE)")
    p.add_argument("--max-train", type=int, default=0, help="subsample each task's train set (0 = all)")
    p.add_argument("--max-eval", type=int, default=0, help="subsample each task's dev set (0 = all)")
    p.add_argument("--base-config", default=DEFAULT_CONFIG)
    p.add_argument("--make-builtin", metavar="DIR", help="write the built-in stdlib tasks to DIR and exit")
    p.add_argument("--overwrite", action="store_true", help="with --make-builtin: replace DIR")
    return p


def main(argv=None) -> int:
    args, rest = arguments().parse_known_args(argv)
    if args.make_builtin:
        from neobert_jax.data.builtin_glue import write_builtin_tasks

        try:
            counts = write_builtin_tasks(args.make_builtin, overwrite=args.overwrite)
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for task, sides in counts.items():
            print(f"{os.path.join(args.make_builtin, task)}: {sides['train']} train, {sides['dev']} dev")
        return 0
    bad = [a for a in rest if not (a.startswith("--config.") and "=" in a)]
    if bad or not args.tasks_dir or not args.init_from:
        print(f"error: {'unknown arguments ' + ' '.join(bad) if bad else '--tasks-dir and --init-from are required'}",
              file=sys.stderr)
        return 2
    overrides = dict(a.split("=", 1) for a in args.set + [a[len("--config."):] for a in rest])
    if any("=" not in a for a in args.set):
        print("error: --set takes KEY=VALUE", file=sys.stderr)
        return 2
    for name in ("tasks_dir", "init_from", "output_dir", "base_config"):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    try:
        from neobert_jax.runtime.config import load_config_file

        apply_overrides(load_config_file(args.base_config), overrides)  # bad keys stop before any run
        tasks, ignored = find_tasks(args.tasks_dir, [t for t in args.tasks.split(",") if t])
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    for name in ignored:
        print(f"ignored: {os.path.join(args.tasks_dir, name)} (not a GLUE task name and no task.json)", file=sys.stderr)
    rows = []
    for task in tasks:
        for seed in seeds:
            row = run_one(task, seed, args, overrides)
            rows.append(row)
            said = row["error"] if row["status"] == "skipped" else row["status"] + (f" ({row['error']})"
                                                                                  if "error" in row else "")
            print(f"glue: {task.name} seed {seed}: {said}", file=sys.stderr, flush=True)
            if row["status"] == "stopped":
                break
        if rows and rows[-1]["status"] == "stopped":
            break
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "cached", "failed", "skipped", "stopped")}
    os.makedirs(args.output_dir, exist_ok=True)
    results = {"init_from": args.init_from, "tasks_dir": args.tasks_dir, "overrides": overrides, "seeds": seeds,
               "max_train": args.max_train, "max_eval": args.max_eval, "counts": counts, "tasks": rows}
    path = os.path.join(args.output_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    print(table(rows))
    print(f"{counts['ok']} run, {counts['cached']} already done, {counts['failed']} failed, {counts['skipped']} skipped"
          + (f", {counts['stopped']} stopped (rerun to resume)" if counts["stopped"] else "") + f"; {path}")
    return 1 if counts["failed"] or counts["stopped"] else 0
