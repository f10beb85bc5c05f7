"""The users' HF Trainer pretraining script (docs/users_recipe.md), their settings verbatim, made measurable.

    python scripts/recipe_hf_trainer.py --init WORK/init --train-file WORK/train.txt --output-dir OUT \
        [--snapshots 8] [--epochs 10 --per-device-batch 16 --grad-accum 2] [--no-compile] [--report-to none]

Differences from the users' script, and why: `attn_implementation="sdpa"` (flash-attn is not installable
here); paths come from the command line; `dtype=` is the transformers 5 name of `torch_dtype=`;
`overwrite_output_dir` is passed only where TrainingArguments still has it (transformers 5 dropped
it). The flags only exist so the benchmark can run the recipe small on CPU (their defaults are the
script's) and read a timeline: `--snapshots K` saves the model and tokenizer at K evenly spaced
optimizer steps (the last included) into OUT/snapshots/step-N, and OUT/timeline.json records when
(seconds since process start, time spent saving snapshots excluded), the time to the end of the first
step, the training time from the end of the first step to the end of the last, optimizer steps, the
non-padding input tokens the collator handed to training, and the total wall time.
"""

import time

_START = time.time()  # before the heavy imports: they are part of what the users wait for

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)


class CountingCollator:
    """The users' collator, counting the non-padding input tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the step has really finished, not just been queued
    return time.time() - _START


class Timeline(TrainerCallback):
    """Snapshots at K evenly spaced optimizer steps and the times the benchmark reads."""

    def __init__(self, out_dir: str, snapshots: int, tokenizer):
        self.out_dir, self.k, self.tokenizer = out_dir, snapshots, tokenizer
        self.paused = 0.0  # seconds spent writing snapshots, left out of every time recorded
        self.first_step_s = self.last_step_s = None
        self.steps, self.marks, self.records = set(), set(), []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.k:
            self.steps = {max(1, round(state.max_steps * (i + 1) / self.k)) for i in range(self.k)}
        self.marks = self.steps | {1, state.max_steps}  # only these wait for the GPU: no slowdown elsewhere

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.marks:
            return
        raw = _now()
        now = raw - self.paused
        if self.first_step_s is None:
            self.first_step_s = now
        self.last_step_s = now
        if state.global_step in self.steps:
            path = os.path.join(self.out_dir, "snapshots", f"step-{state.global_step}")
            getattr(model, "_orig_mod", model).save_pretrained(path)
            self.tokenizer.save_pretrained(path)
            self.records.append({"step": state.global_step, "dir": path, "elapsed_s": now})
            self.paused += _now() - raw

    def write(self, state, tokens: int) -> None:
        timeline = {
            "start_to_first_step_s": self.first_step_s,
            "train_s": self.last_step_s - self.first_step_s,
            "optimizer_steps": state.global_step,
            "tokens_seen": tokens,
            "snapshot_s": self.paused,
            "total_wall_s": time.time() - _START,
            "snapshots": self.records,
        }
        with open(os.path.join(self.out_dir, "timeline.json"), "w") as f:
            json.dump(timeline, f, indent=1)


def run_pretraining(args):
    set_seed(42)
    INIT_MODEL_PATH, TRAIN_FILE, OUTPUT_DIR = args.init, args.train_file, args.output_dir

    print(f"--- Loading GUIDE-Initialized Backbone from {INIT_MODEL_PATH} ---")
    model = AutoModelForMaskedLM.from_pretrained(
        INIT_MODEL_PATH,
        trust_remote_code=True,
        dtype=torch.float32,  # Maintaining F32 for stability
        attn_implementation="sdpa",  # the seed: "flash_attention_2"
    )
    tokenizer = AutoTokenizer.from_pretrained(INIT_MODEL_PATH)

    print("--- Preparing Dataset ---")
    dataset = load_dataset("text", data_files={"train": TRAIN_FILE})

    def tokenize_function(examples):
        return tokenizer(
            examples["text"],
            truncation=True,
            max_length=512,
            return_special_tokens_mask=True,
            return_token_type_ids=False,  # Strict ModernBERT requirement
        )

    tokenized_datasets = dataset["train"].map(tokenize_function, batched=True, remove_columns=["text"], num_proc=4)
    data_collator = CountingCollator(DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True,
                                                                     mlm_probability=0.30))

    removed = {"overwrite_output_dir": True}  # gone from transformers 5's TrainingArguments
    kept = {k: v for k, v in removed.items() if k in inspect.signature(TrainingArguments.__init__).parameters}
    training_args = TrainingArguments(
        output_dir=OUTPUT_DIR,
        **kept,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=8e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1000,
        weight_decay=0.01,
        fp16=False,
        bf16=False,
        torch_compile=not args.no_compile,
        gradient_checkpointing=True,
        logging_steps=100,
        save_steps=2500,
        save_total_limit=3,
        report_to=args.report_to,
        logging_first_step=True,
    )
    timeline = Timeline(OUTPUT_DIR, args.snapshots, tokenizer)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized_datasets,
        data_collator=data_collator,
        callbacks=[timeline],
    )

    print("--- Starting Student Pre-training ---")
    train_result = trainer.train()
    trainer.save_model(OUTPUT_DIR)
    tokenizer.save_pretrained(OUTPUT_DIR)
    metrics = train_result.metrics
    perplexity = math.exp(metrics["train_loss"])
    print(f"Final Student Train Perplexity: {perplexity:.2f}")
    timeline.write(trainer.state, data_collator.tokens)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", required=True, help="INIT_MODEL_PATH: HF ModernBERT dir with its tokenizer")
    p.add_argument("--train-file", required=True, help="TRAIN_FILE: one paragraph per line")
    p.add_argument("--output-dir", required=True, help="OUTPUT_DIR")
    p.add_argument("--snapshots", type=int, default=0, help="save the model at K evenly spaced steps")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--per-device-batch", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="torch_compile=False (the CPU tiny mode)")
    p.add_argument("--report-to", default="tensorboard")
    args = p.parse_args()
    for path in (args.init, args.train_file):
        if not os.path.exists(path):
            raise SystemExit(f"error: {path}: no such file or directory")
    run_pretraining(args)


if __name__ == "__main__":
    main()
