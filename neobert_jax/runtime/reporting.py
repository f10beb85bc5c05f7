"""What a run shows and records: progress bar, metrics.jsonl, TensorBoard, the loss-curve PNG.

Only process 0 reports (`enabled=False` elsewhere), so multi-host runs write each file once.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss.png"
SUMMARY_FILE = "run_summary.json"  # what a finished run did; model cards are written from it
TENSORBOARD_DIR = "tensorboard"


_IMPORTED = time.time()


def process_start_time() -> float:
    """When this process started (wall clock), so start-up figures include the imports; from
    /proc on Linux, else the time this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported with torch hidden unless it is loaded already.

    tensorboardX imports torch only to recognize torch tensors, which a run never logs; that
    import was a second of a run's start-up (docs/recipe.md). A None entry in sys.modules makes `import torch` raise
    ImportError, which tensorboardX handles; the entry is removed right after, so a later
    `import torch` in the process works as usual."""
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hidden:
            del sys.modules["torch"]
    return SummaryWriter


EVAL_PREFIX = "eval_"  # a task's evaluation scalars in metrics.jsonl: eval_<metric>


def eval_metrics(record: dict | None) -> dict | None:
    """The evaluation metrics of a metrics.jsonl record, without their prefix."""
    if record is None:
        return None
    return {k.removeprefix(EVAL_PREFIX): v for k, v in record.items() if k.startswith(EVAL_PREFIX)}


def format_comparison(before: dict[str, float] | None, after: dict[str, float]) -> str:
    """A before -> after table (or one column when there is no "before")."""
    width = max(len(k) for k in after)
    lines = [f"{'metric':<{width}}  {'before':>8}  {'after':>8}" if before else f"{'metric':<{width}}  {'value':>8}"]
    for key, value in after.items():
        lines.append(f"{key:<{width}}  {before[key]:8.4f}  {value:8.4f}" if before and key in before
                     else f"{key:<{width}}  {value:8.4f}")
    return "\n".join(lines)


def fine_tuning_closing_lines(train_loss: float | None, recent_steps: int, first_eval: dict | None,
                              last_eval: dict | None) -> list[str]:
    """The closing lines of a task that starts from init_from: the final train loss, then its
    evaluation before (the init_from model) and after (this run)."""
    lines = []
    if train_loss is not None:
        lines.append(f"Final train loss: {train_loss:.4f} (mean of the last {recent_steps} steps)")
    if last_eval:
        lines.append("evaluation (before = the init_from model, after = this run):\n"
                     + format_comparison(eval_metrics(first_eval), eval_metrics(last_eval)))
    return lines


def perplexity(loss: float) -> float:
    """exp(loss), inf instead of an OverflowError for a diverged loss."""
    return math.exp(loss) if loss < 700 else math.inf


def _read_records(path: str, up_to_step: int) -> tuple[list[dict], str | None]:
    """-> (records of an earlier run up to the resumed step, what a torn last line lost or None);
    later records are redone by this run.

    A run from step 0 keeps none (with resume=False the old ones, step 0's evaluation included,
    belong to the run it replaces). A torn last line (a write cut by a crash) is dropped; when its
    step is not redone, the caller says that record is lost.
    """
    if up_to_step == 0 or not os.path.exists(path):
        return [], None
    with open(path) as f:
        lines = [line.strip() for line in f]
    records = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a JSON record; fix or delete that line to resume") from None
            step = re.match(r'\{"step": (\d+)', line)
            if step and int(step.group(1)) > up_to_step:
                break  # this run writes it again
            return records, (f"{path}:{number}: a torn last line was dropped; the record of "
                             f"{f'step {step.group(1)}' if step else 'its step'} is lost (resuming at step {up_to_step})")
        if record["step"] <= up_to_step:
            records.append(record)
    return records, None


WANDB_ID_FILE = "wandb_id"


class WandbTracker:
    """Weights & Biases beside metrics.jsonl and TensorBoard (`logging.wandb=True`): the same scalars
    under TensorBoard's names, the run config, one W&B run per output_dir (its id is kept in
    output_dir/wandb_id, so a resumed run continues the same W&B run)."""

    def __init__(self, output_dir: str, settings, run_config: dict):
        import wandb

        id_path = os.path.join(output_dir, WANDB_ID_FILE)
        run_id = open(id_path).read().strip() if os.path.isfile(id_path) else None
        self.run = wandb.init(project=settings.wandb_project, name=settings.wandb_name or None, id=run_id,
                              resume="allow", mode=settings.wandb_mode, dir=output_dir, config=run_config)
        with open(id_path, "w") as f:
            f.write(self.run.id)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class RunReporter:
    def __init__(self, output_dir: str, total_steps: int, start_step: int, enabled: bool,
                 trackers: Callable[[], list] = list):
        self.enabled = enabled
        self.records: list[dict] = []
        self.started = process_start_time()
        self.marks: dict[str, float] = {}  # wall-clock times of the run's phases, for the start-up figures
        if not enabled:
            return
        self.output_dir = output_dir
        self.metrics_path = os.path.join(output_dir, METRICS_FILE)
        self.records, lost = _read_records(self.metrics_path, start_step)
        with open(self.metrics_path, "w") as f:  # rewritten without the steps this run redoes
            f.writelines(json.dumps(r) + "\n" for r in self.records)
        self.tensorboard = _summary_writer_class()(logdir=os.path.join(output_dir, TENSORBOARD_DIR), purge_step=start_step + 1)
        self.trackers = trackers()  # process 0 only
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if lost:
            self.message(lost)

    def progress(self, step: int, loss: float, tokens_per_s: float | None) -> None:
        """tokens_per_s: the current log interval's, None until one of its steps is timed."""
        if self.enabled:
            self.bar.update(step - self.bar.n)
            shown = {"tok_s": f"{tokens_per_s:,.0f}"} if tokens_per_s is not None else {}
            self.bar.set_postfix(loss=f"{loss:.4f}", **shown, refresh=False)

    def log(self, step: int, scalars: dict) -> None:
        """One metrics.jsonl line and one TensorBoard scalar per finite value (e.g. `train/loss`)."""
        if not self.enabled:
            return
        finite = {k: float(v) for k, v in scalars.items() if math.isfinite(float(v))}
        record = {"step": step, **{k: finite.get(k) for k in scalars},  # null where not finite
                  "elapsed_s": round(time.time() - self.started, 3)}  # since process start
        self.records.append(record)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        named = {f"{'eval' if key.startswith('eval_') else 'train'}/{key.removeprefix('eval_')}": value
                 for key, value in finite.items()}
        for name, value in named.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()
        for tracker in self.trackers:
            tracker.log(step, named)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def write_summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        path = os.path.join(self.output_dir, SUMMARY_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)

    def write_loss_curve(self, loss_name: str) -> str | None:
        """PNG of train loss (and eval loss where present) against step."""
        if not self.enabled or not self.records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        train = [(r["step"], r["loss"]) for r in self.records if r.get("loss") is not None]
        if train:
            ax.plot(*zip(*train), label="train loss")
        evals = [(r["step"], r["eval_loss"]) for r in self.records if r.get("eval_loss") is not None]
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel(loss_name)
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(self.output_dir, LOSS_CURVE_FILE)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def end_progress(self) -> None:
        """Closes the bar so that closing messages print below it, once."""
        if self.enabled:
            self.bar.close()

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tensorboard.close()
            for tracker in self.trackers:
                tracker.close()
