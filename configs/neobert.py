"""NeoBERT pretraining (issue 18; docs/neobert.md): the NeoBERT framework's default recipe in this schema.

    python scripts/pretrain.py --config configs/neobert.py --config.data.train_files='corpus/*.txt'
    python scripts/pretrain.py --config configs/neobert.py --config.init_from=path/to/neobert-hf-dir

The model is the release's shape (28 x 768, 12 heads, SwiGLU from intermediate_size 3072, RMSNorm,
RoPE with base 10000 on every layer, 4096 positions), trained from random init or continued from
init_from (a NeoBERT HF dir, either key layout, or a run of this config). The export (output_dir/hf)
is in the release's format with its remote code:
AutoModelForMaskedLM.from_pretrained(dir, trust_remote_code=True).

From the framework: 20% masking with every picked token replaced by [MASK] (no 80/10/10), AdamW with
beta2 0.95 and weight decay 0.1, peak learning rate 1e-4 with cosine decay, 1024-token sequences
(its first phase; raise train.seq_len up to 4096 to continue at its second).
"""

from neobert_jax.mlm.config import default_config


def get_config():
    c = default_config()
    c.output_dir = "runs/neobert"

    c.model.architecture = "neobert"
    c.model.hidden_size = 768
    c.model.num_hidden_layers = 28
    c.model.num_attention_heads = 12  # head dim 64
    c.model.intermediate_size = 3072  # the SwiGLU's hidden width is 8 * ceil(int(2 * 3072 / 3) / 8) = 2048
    c.model.vocab_size = 0  # the tokenizer's size, rounded up to a multiple of 64
    c.model.max_position_embeddings = 4096  # NeoBERT's max_length
    c.model.global_rope_theta = None  # NeoBERT's one RoPE base: 10000 (init_from's, with init_from)
    # NeoBERT has one dropout rate (attention and FFN outputs): set attention_dropout and mlp_dropout equal.

    c.data.mlm_probability = 0.20
    c.data.mask_all = True  # every picked token becomes [MASK]: the framework's mask_replace_prob 1, random 0
    c.data.eval_samples = 500

    c.train.seq_len = 1024
    # The framework counts its batch in sequences of max_length tokens, padded; ours counts rows of seq_len
    # tokens, packed. A row of 1024 tokens stands for one of its 1024-token sequences, so at the same count
    # (32 rows = 32 sequences) the tokens per step match and its 1e-4 carries over as is. For another batch,
    # scale the rate with the tokens per step (linearly: 64 rows -> 2e-4); it was not tuned here.
    c.train.batch_size = 32
    c.train.grad_accum_steps = 1
    c.train.epochs = 1
    c.train.precision = "fp32"  # the framework trains in bf16: set train.precision=bf16 on GPU/TPU
    c.train.learning_rate = 1e-4
    c.train.schedule = "cosine"
    c.train.warmup_fraction = 0.01
    c.train.warmup_steps = 0
    c.train.optimizer = "adamw"
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.95
    c.train.adam_eps = 1e-8
    c.train.weight_decay = 0.1
    c.train.max_grad_norm = 1.0
    c.train.log_every = 100
    c.train.save_every = 2500
    c.train.keep_checkpoints = 3
    c.train.eval_every = 2500
    return c
