"""The users' classification fine-tuning, as they run it: transformers' `Trainer` on labelled texts.

    python scripts/classify_hf_trainer.py --model runs/student/hf --train-files train.csv --output runs/hf-cls

`AutoModelForSequenceClassification.from_pretrained(model, num_labels, id2label, label2id)` (an MLM
dir: the classifier starts fresh), `AutoTokenizer`, texts cut to `--seq-len` tokens, batches padded
by `DataCollatorWithPadding`, `Trainer` with AdamW at 5e-5, weight decay 0, a linear warmup over 10%
of the steps then a linear decay, clipping at 1.0 (the trainer's defaults), batch 32, 3 epochs, fp32
(or `--precision bf16`: the trainer's bf16 autocast). The data are a plain torch Dataset, so
`datasets` is not needed. The model and tokenizer are saved to `--output`; `--json` gets steps and
timings (training after the first step, which holds the start-up costs, apart).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time

STARTED = time.time()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF ModernBERT dir (config, weights, tokenizer)")
    p.add_argument("--train-files", required=True, help=".csv, .tsv or .jsonl with `text` and `label`")
    p.add_argument("--output", required=True, help="the model dir to write")
    p.add_argument("--labels", default="", help="label names in output order, comma separated (default: sorted)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seq-len", type=int, default=512, help="longer texts are truncated")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write steps and timings here")
    return p.parse_args(argv)


def read_rows(path: str) -> list[tuple[str, str]]:
    """(text, label) of every record of a .csv/.tsv (a header row) or .jsonl file."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        with open(path, encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))
    if records and not {"text", "label"} <= set(records[0]):
        sys.exit(f"error: {path}: needs columns 'text' and 'label' (has {', '.join(records[0])})")
    return [(r["text"], str(r["label"])) for r in records]


def main(argv=None) -> None:
    args = parse_args(argv)
    rows = [row for path in args.train_files.split(",") for row in read_rows(path)]
    labels = args.labels.split(",") if args.labels else sorted({label for _, label in rows})
    unknown = sorted({label for _, label in rows} - set(labels))
    if unknown:
        sys.exit(f"error: {args.train_files}: labels {unknown} are not in --labels {labels}")
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    set_seed(args.seed)  # the fresh classifier's init too
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    index = {name: i for i, name in enumerate(labels)}
    encoded = tokenizer([text for text, _ in rows], truncation=True, max_length=args.seq_len)
    examples = [{"input_ids": ids, "attention_mask": mask, "labels": index[label]}
                for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], rows)]

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            return examples[i]

    marks = {}

    class FirstStep(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == 1:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks["first_step"] = time.time()

    # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a share of the steps, rounded up)
    ratio = "warmup_ratio" if "warmup_ratio" in {f.name for f in dataclasses.fields(TrainingArguments)} else "warmup_steps"
    train_args = TrainingArguments(
        output_dir=args.output, learning_rate=args.lr, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, lr_scheduler_type="linear", **{ratio: args.warmup_ratio},
        weight_decay=0.0, bf16=args.precision == "bf16", seed=args.seed, save_strategy="no", report_to=[],
        logging_steps=10, disable_tqdm=True)
    trainer = Trainer(model=model, args=train_args, train_dataset=Examples(), processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[FirstStep()])
    loaded = time.time()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    trained = time.time()
    trainer.save_model(args.output)  # the model and, as processing_class, the tokenizer
    done = time.time()
    after_first = trained - marks.get("first_step", trained)
    steps = trainer.state.global_step
    seen = min(steps * args.batch_size, round(len(examples) * args.epochs))  # the last batch of an epoch is short
    result = {"precision": args.precision, "device": str(model.device), "steps": steps, "examples": len(examples),
              "labels": labels, "load_s": loaded - STARTED, "training_s": trained - loaded,
              "training_after_first_step_s": after_first, "save_s": done - trained, "in_script_s": done - STARTED,
              "examples_per_s": (seen - args.batch_size) / after_first if after_first > 0 else None,
              "losses": [(r["step"], r["loss"]) for r in trainer.state.log_history if "loss" in r]}
    print(f"transformers Trainer ({args.precision}, {model.device}): {steps} steps, training "
          f"{after_first:.1f} s after the first step, saved {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
