"""Second phase: a finished student continued at a longer context (docs/long_context.md).

    python scripts/pretrain.py --config configs/student_long.py \
        --config.init_from=runs/student --config.data.train_files='corpus/*.txt'

The first phase trains at 512 tokens per row; a row packs many short documents, each attending only
to itself, so attention never sees long-range positions. This phase continues the weights (the
optimizer starts fresh) at 1024 tokens on documents at least half a row long, so long rows hold long
text, with a short warmup and a lower peak than the first phase. Beyond the positions the student
was trained with (a GUIDE student has 1024), also set model.max_position_embeddings and raise the
global layers' RoPE base, model.global_rope_theta (ModernBERT uses 160000 for 8192 positions).
None of these values has been tuned here.
"""

import os

from neobert_jax.runtime.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "student.py"))  # its model
    c.output_dir = "runs/student-long"
    c.init_from = "runs/student"  # the first phase's run dir (its latest checkpoint) or its hf/ export
    c.model.max_position_embeddings = None  # init_from's; set it to go past them
    c.model.global_rope_theta = None  # init_from's; raise it with max_position_embeddings

    c.data.min_document_tokens = 512  # shorter documents are skipped (and counted): long rows hold long text

    c.train.seq_len = 1024
    c.train.epochs = 1
    c.train.auto_batch_steps = 1000
    c.train.auto_batch_min_tokens = 2048  # 2 rows of 1024
    c.train.learning_rate = 3e-4
    c.train.warmup_fraction = 0.05
    c.train.save_every = 1000
    c.train.eval_every = 1000
    return c
