"""A CPU-sized run: a 4-layer, 128-wide model on the built-in corpus, minutes on 2 cores.

    python scripts/pretrain.py --config configs/tiny.py
"""

from neobert_jax.mlm.config import default_config


def get_config():
    c = default_config()
    c.output_dir = "runs/tiny"

    c.model.hidden_size = 128
    c.model.num_hidden_layers = 4
    c.model.num_attention_heads = 4
    c.model.intermediate_size = 256
    c.model.local_attention = 64

    c.data.tokenizer_vocab_size = 4096
    c.data.eval_samples = 200

    c.train.max_steps = 600
    c.train.batch_size = 16
    c.train.seq_len = 128
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.eval_batches = 10
    c.train.save_every = 200
    return c
