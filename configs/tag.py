r"""Token classification (BIO tagging) fine-tuning (docs/classification.md).

    python scripts/finetune.py --config configs/tag.py \
        --config.init_from=runs/student/hf --config.data.train_files=train.jsonl \
        --config.data.eval_files=dev.jsonl --config.output_dir=runs/tag

A `tokens` column (a list of words) and a `tags` column (a list of tags, one per word), or CoNLL
`.conll` files; cross-entropy on each word's first sub-token, linear decay after a warmup of a
tenth of the run, three epochs. Integer tags (HF conll2003's `ner_tags`): a `datasets` folder names
them by its ClassLabel feature (--config.data.label_column=ner_tags); other files need their names,
--config.data.labels=O,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,B-MISC,I-MISC
"""

import os

from neobert_jax.runtime.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "classify.py"))  # its recipe
    c.output_dir = "runs/tag"
    c.classifier.problem_type = "token_classification"
    c.data.text_column = "tokens"
    c.data.label_column = "tags"
    return c
