"""Contrastive fine-tuning of a pretrained encoder into a sentence embedder (docs/contrastive.md).

    python scripts/contrastive.py --config configs/contrastive.py \
        --config.init_from=runs/student/hf --config.data.train_files=pairs.jsonl \
        --config.eval.retrieval_dirs=eval/my-retrieval --config.output_dir=runs/embedder

MultipleNegativesRanking (InfoNCE, scale 20) over the global batch with mean pooling and unit
vectors, as the users train with sentence-transformers, but with a learning rate and warmup chosen
against their trainer's defaults on local pair sets (docs/embedder.md); the result is output_dir/st.
"""

from neobert_jax.contrastive.config import contrastive_config


def get_config():
    c = contrastive_config()
    c.output_dir = "runs/contrastive"
    c.loss.name = "mnrl"
    c.loss.scale = 20.0
    c.pooling.mode = "mean"
    c.pooling.normalize = True
    c.train.batch_size = 64
    c.train.seq_len = 256
    c.train.epochs = 1
    c.train.learning_rate = 2e-4  # 4x sentence-transformers' default: the sweep and its one loss in docs/embedder.md
    c.train.warmup_fraction = 0.1  # a share of the run, whatever its length (a step count does not port)
    c.train.warmup_steps = 0  # to give a step count instead, set it and train.warmup_fraction=0
    return c
