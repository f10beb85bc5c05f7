"""The users' embedding phase, as they run it: sentence-transformers on (anchor, positive) pairs.

    python scripts/embedder_st_trainer.py --model runs/student/hf --train-files pairs.jsonl --output runs/st

`models.Transformer(model)` + mean `models.Pooling`, MultipleNegativesRankingLoss (scale 20, cosine),
AdamW at 5e-5 (the trainer's default; their docs use 2e-5 to 5e-5), weight decay 0, a linear warmup
over 10% of the steps then a linear decay, clipping at 1.0, `BatchSamplers.NO_DUPLICATES`, batch 64,
1 epoch, fp32 (or `--precision bf16`: the trainer's bf16 autocast). These are the trainer's
defaults plus what sentence-transformers' training examples set.

`--loop trainer` runs `SentenceTransformerTrainer` (needs `datasets`); `--loop manual` runs the same
model, loss, optimizer, schedule and no-duplicates batches in a plain torch loop, for machines
without `datasets` (scripts/bench_embedder.py shows on the CPU that both give the same quality).
`--eval-dir` (BEIR layout) is scored at `--eval-points` evenly spaced steps with the project's
evaluator (neobert_jax.contrastive.evaluation); evaluation time is reported apart, never counted as
training. `--json` gets steps, timings, losses and those points.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time

STARTED = time.time()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF ModernBERT dir (config, weights, tokenizer)")
    p.add_argument("--train-files", required=True, help=".jsonl with anchor and positive")
    p.add_argument("--output", required=True, help="the sentence-transformers folder to write")
    p.add_argument("--loop", choices=("trainer", "manual"), default="trainer")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seq-len", type=int, default=256, help="max_seq_length: longer texts are truncated")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-dir", default="", help="BEIR-layout retrieval folder scored during training")
    p.add_argument("--eval-points", type=int, default=0, help="evaluations spread over the run (end included)")
    p.add_argument("--json", default="", help="write steps, timings, losses and evaluation points here")
    return p.parse_args(argv)


def read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                record = json.loads(line)
                if not (record.get("anchor") and record.get("positive")):
                    sys.exit(f"error: {path}:{number}: needs non-empty 'anchor' and 'positive'")
                pairs.append((record["anchor"], record["positive"]))
    return pairs


def no_duplicate_batches(pairs, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sentence-transformers' NO_DUPLICATES rule: shuffled, and a pair whose anchor or positive is
    already in the batch waits for a later batch; the last batch may be short."""
    order = list(range(len(pairs)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    batches, waiting = [], order
    while waiting:
        batch, texts, deferred = [], set(), []
        for i in waiting:
            if len(batch) < batch_size and not (set(pairs[i]) & texts):
                batch.append(i)
                texts.update(pairs[i])
            else:
                deferred.append(i)
        batches.append(batch)
        waiting = deferred
    return batches


class Evaluator:
    """Scores the model at chosen steps; its time is kept apart from training time."""

    def __init__(self, model, eval_dir: str, steps: set[int]):
        self.model, self.steps, self.points, self.seconds = model, steps, [], 0.0
        if eval_dir:
            started = time.time()
            from neobert_jax.contrastive.evaluation import evaluate, load_retrieval

            self.evaluate, self.sets = evaluate, [load_retrieval(eval_dir)]
            self.seconds += time.time() - started

    def __call__(self, step: int, force: bool = False) -> None:
        if not self.steps or not (force or step in self.steps):
            return
        started = time.time()
        was_training = self.model.training
        self.model.eval()
        metrics = self.evaluate(lambda texts: self.model.encode(texts, batch_size=64, normalize_embeddings=True,
                                                                convert_to_numpy=True), [], self.sets)
        self.model.train(was_training)
        self.points.append({"step": step, "elapsed_s": started - STARTED - self.seconds, **metrics})
        self.seconds += time.time() - started


def mnrl_loss(model):
    try:  # sentence-transformers >= 6 moved the losses; older releases have them at the top level
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    return MultipleNegativesRankingLoss(model)


def embedding_dimension(transformer) -> int:
    method = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    return method()


def train_manual(model, pairs, args, total_steps: int, step_done):
    """What the trainer does, in a loop: AdamW with HF's decay groups, linear warmup/decay, clipping."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    device = model.device
    loss_fn = mnrl_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, eps=1e-8)
    warmup = math.ceil(total_steps * args.warmup_ratio)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
    model.train()
    step = 0
    for epoch in range(args.epochs):
        for batch in no_duplicate_batches(pairs, args.batch_size, args.seed, epoch):
            features = []
            for column in range(2):
                tokens = tokenize([pairs[i][column] for i in batch])
                features.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in tokens.items()})
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = loss_fn(features, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_done(step, loss.detach())
    return step


def train_with_trainer(model, pairs, args, step_done):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        def on_log(self, targs, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses_logged.append((state.global_step, logs["loss"]))

        def on_step_end(self, targs, state, control, **kwargs):
            step_done(state.global_step, None)

    losses_logged = []
    scratch = tempfile.mkdtemp(prefix="st-trainer-")  # the trainer wants a dir; nothing is saved there

    train_args = SentenceTransformerTrainingArguments(
        output_dir=scratch, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup_ratio,
        bf16=args.precision == "bf16", batch_sampler=BatchSamplers.NO_DUPLICATES, seed=args.seed,
        save_strategy="no", report_to=[], logging_steps=10, disable_tqdm=True, dataloader_drop_last=False)
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    trainer = SentenceTransformerTrainer(model=model, args=train_args, train_dataset=dataset,
                                         loss=mnrl_loss(model), callbacks=[Hooks()])
    trainer.train()
    shutil.rmtree(scratch, ignore_errors=True)
    return trainer.state.global_step, losses_logged


def main(argv=None) -> None:
    args = parse_args(argv)
    pairs = read_pairs(args.train_files)
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    transformer = models.Transformer(args.model, max_seq_length=args.seq_len)
    pooling = models.Pooling(embedding_dimension(transformer), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling], device=device)
    loaded = time.time()
    total_steps = args.epochs * len(no_duplicate_batches(pairs, args.batch_size, args.seed, 0))
    points = {max(round(total_steps * (i + 1) / args.eval_points), 1) for i in range(args.eval_points)}
    evaluator = Evaluator(model, args.eval_dir, points if args.eval_dir else set())
    evaluator(0, force=True)
    losses_seen, marks = [], {}

    def clock() -> float:  # wall-clock with evaluation taken out
        return time.time() - evaluator.seconds

    def step_done(step: int, loss) -> None:
        if step == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            marks["first_step"] = clock()
        if loss is not None:
            losses_seen.append((step, loss))  # a device tensor: read once at the end, no sync per step
        evaluator(step)

    started = clock()
    if args.loop == "trainer":
        steps, losses_seen = train_with_trainer(model, pairs, args, step_done)
    else:
        steps = train_manual(model, pairs, args, total_steps, step_done)
        losses_seen = [(step, float(loss)) for step, loss in losses_seen]
    if device == "cuda":
        torch.cuda.synchronize()
    trained = clock()
    model.save(args.output)
    done = clock()
    first = marks.get("first_step", trained)
    after_first = trained - first
    result = {"loop": args.loop, "precision": args.precision, "device": device, "steps": steps, "pairs": len(pairs),
              "load_s": loaded - STARTED, "training_s": trained - started, "training_after_first_step_s": after_first,
              "save_s": done - trained, "in_script_s": done - STARTED, "evaluation_s": evaluator.seconds,
              "texts_per_s": 2 * (len(pairs) * args.epochs - args.batch_size) / after_first if after_first > 0 else None,
              "losses": losses_seen, "curve": evaluator.points}
    print(f"sentence-transformers ({args.loop}, {args.precision}, {device}): {steps} steps, training "
          f"{result['training_after_first_step_s']:.1f} s after the first step, saved {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
