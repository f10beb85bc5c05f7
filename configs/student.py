"""The users' recipe (docs/users_recipe.md) in packed rows: the GUIDE student, 384 wide x 12 deep.

    python scripts/pretrain.py --config configs/student.py \
        --config.init_from=path/to/guide-init --config.data.train_files='corpus/*.txt'

Without init_from the model starts from ModernBERT's own random init; without train_files it
trains on the built-in corpus with a tokenizer trained on it.

The users' settings are kept where they carry over (30% MLM, AdamW 8e-4 with weight decay 0.01,
cosine decay, 10 epochs, fp32, clipping at 1.0, keep 3 checkpoints). Its step-based numbers do
not: packing puts ~19 of its paragraphs into one 512-token row, so "32 per step, 1000 warmup
steps" became a few hundred steps that never left the warmup. Here the batch is sized from the
corpus (enough optimizer steps on a small corpus, full batches on a large one) and the warmup is
a share of the run. The measured comparison with their own script: docs/recipe.md.
"""

from neobert_jax.mlm.config import default_config


def get_config():
    c = default_config()
    c.output_dir = "runs/student"

    c.model.hidden_size = 384
    c.model.num_hidden_layers = 12
    c.model.num_attention_heads = 6  # head dim 64
    c.model.intermediate_size = 768
    c.model.vocab_size = 0  # the tokenizer's size, rounded up to a multiple of 64
    c.model.remat = "none"  # the users' script checkpointed to fit fp32 in memory; these batches fit without

    c.data.mlm_probability = 0.30
    c.data.eval_samples = 500  # documents held out of train_files for eval (or: set data.eval_files)

    c.train.epochs = 10
    c.train.batch_size = 0  # auto: the largest batch that leaves the run train.auto_batch_steps steps
    c.train.auto_batch_steps = 3000  # built-in corpus: 2 rows of 512, 3,130 steps (docs/recipe.md)
    c.train.auto_batch_min_tokens = 1024  # 2 rows, about the users' 32 paragraphs per step
    c.train.auto_batch_max_tokens = 32768  # 64 rows, on a large corpus
    c.train.grad_accum_steps = 1
    c.train.seq_len = 512
    c.train.precision = "fp32"
    c.train.learning_rate = 8e-4
    c.train.schedule = "cosine"
    c.train.warmup_fraction = 0.3  # the users' 1000 of their 3,430 steps
    c.train.warmup_steps = 0  # to give a step count instead, set it and train.warmup_fraction=0
    c.train.weight_decay = 0.01
    c.train.max_grad_norm = 1.0  # HF Trainer's default
    c.train.log_every = 100
    c.train.save_every = 2500
    c.train.keep_checkpoints = 3
    c.train.eval_every = 2500
    return c
