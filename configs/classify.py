r"""Sequence classification fine-tuning (docs/classification.md).

    python scripts/finetune.py --config configs/classify.py \
        --config.init_from=runs/student/hf --config.data.train_files=train.csv \
        --config.data.eval_files=dev.csv --config.output_dir=runs/classify

A `text` column and a `label` column; single-label cross-entropy on the [CLS] token's head output,
linear decay after a warmup of a tenth of the run, three epochs. Sentence pairs:
--config.data.text_pair_column=...; several labels per text:
--config.classifier.problem_type=multi_label_classification; a score: ...=regression.
"""

from neobert_jax.classify.config import classify_config


def get_config():
    c = classify_config()
    c.output_dir = "runs/classify"
    c.classifier.problem_type = "single_label_classification"
    c.classifier.pooling = "cls"
    c.train.batch_size = 32
    c.train.seq_len = 512
    c.train.epochs = 3
    c.train.learning_rate = 5e-5
    c.train.warmup_fraction = 0.1
    c.train.eval_every = 0
    return c
