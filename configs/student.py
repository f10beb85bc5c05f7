"""The users' HF Trainer recipe (shared/seeds/000): the GUIDE student, 384 wide x 12 deep.

    python scripts/pretrain.py --config configs/student.py \
        --config.init_from=path/to/guide-init --config.data.train_files='corpus/*.txt'

Without init_from the model starts from ModernBERT's own random init; without train_files it
trains on the built-in corpus with a tokenizer trained on it.
"""

from neobert_jax.train.config import default_config


def get_config():
    c = default_config()
    c.output_dir = "runs/student"

    c.model.hidden_size = 384
    c.model.num_hidden_layers = 12
    c.model.num_attention_heads = 6  # head dim 64
    c.model.intermediate_size = 768
    c.model.vocab_size = 0  # the tokenizer's size, rounded up to a multiple of 64
    c.model.remat = "full"  # the seed's gradient_checkpointing=True

    c.data.mlm_probability = 0.30
    c.data.eval_samples = 500  # documents held out of train_files for eval (or: set data.eval_files)

    c.train.epochs = 10
    c.train.batch_size = 32  # 16 per micro-batch x 2 accumulation steps
    c.train.grad_accum_steps = 2
    c.train.seq_len = 512
    c.train.precision = "fp32"
    c.train.learning_rate = 8e-4
    c.train.schedule = "cosine"
    c.train.warmup_steps = 1000
    c.train.weight_decay = 0.01
    c.train.max_grad_norm = 1.0  # HF Trainer's default
    c.train.log_every = 100
    c.train.save_every = 2500
    c.train.keep_checkpoints = 3
    c.train.eval_every = 2500
    return c
