r"""Sequence classification / regression fine-tuning: `python scripts/finetune.py --config configs/classify.py [--config.a.b=value ...]`.

    python scripts/finetune.py --config configs/classify.py --config.init_from=runs/student/hf \
        --config.data.train_files=train.csv --config.data.eval_files=dev.csv --config.output_dir=runs/sst2

Rerunning with the same output_dir resumes from its latest checkpoint (--config.resume=False
starts over). SIGTERM/SIGINT save a checkpoint and exit 0. Writes output_dir/hf, which
transformers' AutoModelForSequenceClassification loads (docs/classification.md).
"""

from neobert_jax.runtime import early_signals

early_signals.install()

from neobert_jax.classify.task import train_classifier  # noqa: E402
from neobert_jax.runtime.cli import run  # noqa: E402

if __name__ == "__main__":
    run(train_classifier, "configs/classify.py", __doc__)
