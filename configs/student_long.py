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

from neobert_jax.mlm.config import default_config


def get_config():
    c = default_config()
    c.output_dir = "runs/student-long"
    c.init_from = "runs/student"  # the first phase's run dir (its latest checkpoint) or its hf/ export

    # configs/student.py's architecture: init_from must match it
    c.model.hidden_size = 384
    c.model.num_hidden_layers = 12
    c.model.num_attention_heads = 6
    c.model.intermediate_size = 768
    c.model.max_position_embeddings = None  # init_from's; set it to go past them
    c.model.global_rope_theta = None  # init_from's; raise it with max_position_embeddings

    c.data.mlm_probability = 0.30
    c.data.eval_samples = 500
    c.data.min_document_tokens = 512  # shorter documents are skipped (and counted): long rows hold long text

    c.train.seq_len = 1024
    c.train.epochs = 1
    c.train.batch_size = 0  # auto, as in the first phase
    c.train.auto_batch_steps = 1000
    c.train.auto_batch_min_tokens = 2048  # 2 rows of 1024
    c.train.auto_batch_max_tokens = 32768
    c.train.precision = "fp32"
    c.train.learning_rate = 3e-4
    c.train.schedule = "cosine"
    c.train.warmup_fraction = 0.05
    c.train.warmup_steps = 0
    c.train.weight_decay = 0.01
    c.train.max_grad_norm = 1.0
    c.train.log_every = 100
    c.train.save_every = 1000
    c.train.eval_every = 1000
    return c
