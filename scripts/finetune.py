r"""Sequence classification / regression / token classification fine-tuning: `python scripts/finetune.py --config configs/classify.py [--config.a.b=value ...]`.

    python scripts/finetune.py --config configs/classify.py --config.init_from=runs/student/hf \
        --config.data.train_files=train.csv --config.data.eval_files=dev.csv --config.output_dir=runs/sst2
    python scripts/finetune.py --config configs/tag.py --config.init_from=runs/student/hf \
        --config.data.train_files=train.conll --config.data.eval_files=dev.conll --config.output_dir=runs/ner

Rerunning with the same output_dir resumes from its latest checkpoint (--config.resume=False
starts over). SIGTERM/SIGINT save a checkpoint and exit 0. Writes output_dir/hf, which
transformers' AutoModelForSequenceClassification (configs/tag.py: AutoModelForTokenClassification)
loads (docs/classification.md).
"""

from neobert_jax.runtime import early_signals

early_signals.install()

from neobert_jax.classify.task import train_classifier  # noqa: E402
from neobert_jax.runtime.cli import run  # noqa: E402

if __name__ == "__main__":
    run(train_classifier, "configs/classify.py", __doc__)
