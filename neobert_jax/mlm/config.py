"""MLM pretraining's config schema: `base_config()` plus the data pipeline, the architecture and
the MLM-only train keys, declared once here, and their validation."""

from __future__ import annotations

import functools

import ml_collections

from neobert_jax.data import default_data_config
from neobert_jax.data.packing import PACKING_METHODS
from neobert_jax.data.tokenizer import SPECIAL_TOKENS
from neobert_jax.runtime.config import base_config, validate_training
from neobert_jax.runtime.model_init import MODEL_KEYS, architecture

# Model keys no parameter depends on: None takes init_from's value, or ModernBertConfig's without it.
INHERITED_MODEL_KEYS = ("max_position_embeddings", "local_attention", "global_attn_every_n_layers",
                        "global_rope_theta")


def default_config() -> ml_collections.ConfigDict:
    c = base_config()
    # The data pipeline's own section (neobert_jax.data), less its tokenizer key: that is the
    # top-level `tokenizer` here.
    c.data = default_data_config()
    del c.data["tokenizer"]

    m = c.model
    # "modernbert" | "neobert" (neobert_jax.runtime.model_init.architectures); init_from must be one too.
    # NeoBERT reads max_position_embeddings as its max_length and global_rope_theta as its one RoPE base,
    # has no local_attention / global_attn_every_n_layers, and one dropout (attention_dropout = mlp_dropout).
    m.architecture = "modernbert"
    m.hidden_size = 768
    m.num_hidden_layers = 22
    m.num_attention_heads = 12
    m.intermediate_size = 1152
    m.vocab_size = 0  # 0 = the tokenizer's size rounded up to a multiple of 64
    # None: init_from's value (a GUIDE student's 1024 positions must reach its export), else ModernBERT's
    inherited = functools.partial(ml_collections.FieldReference, None, field_type=int)
    m.max_position_embeddings = inherited()  # else 8192
    m.local_attention = inherited()  # else 128
    m.global_attn_every_n_layers = inherited()  # else 3
    # the global layers' RoPE base; raised with the context (ModernBERT: 160000 for 8192 positions)
    m.global_rope_theta = ml_collections.FieldReference(None, field_type=float)  # else 160000

    t = c.train
    # train.batch_size = 0 is automatic: the largest batch that still gives the run
    t.auto_batch_steps = 3000  # this many optimizer steps,
    t.auto_batch_min_tokens = 1024  # but at least this many tokens (batch_size x seq_len)
    t.auto_batch_max_tokens = 32768  # and at most this many
    t.masked_logits_only = True  # False: full (B, T, V) logits with labels (ablation, torch parity)
    t.eval_batches = 50
    # At the end, the pseudo-perplexity (each token masked alone) of this many eval documents, through
    # the eval step; one forward copy per token, so 0 (off) by default
    t.pseudo_perplexity_documents = 0
    # Optimizer steps per compiled call (neobert_jax.runtime.multistep); 0 = auto: 16 on GPU/TPU, where
    # a small step is shorter than its dispatch, 1 on CPU. Any value gives the same run.
    t.steps_per_call = 0
    t.export_hf = True  # write output_dir/hf at the end
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key; keys themselves are checked at parse time."""
    validate_training(config)
    t, m = config.train, config.model

    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ValueError(f"config.{key}: {msg}")

    need(t.auto_batch_steps > 0, "train.auto_batch_steps", "must be positive")
    need(t.auto_batch_min_tokens > 0, "train.auto_batch_min_tokens", "must be positive")
    need(t.auto_batch_max_tokens >= t.auto_batch_min_tokens, "train.auto_batch_max_tokens",
         "must be >= train.auto_batch_min_tokens")
    arch = architecture(m.architecture)
    arch.model_fields({k: m[k] for k in MODEL_KEYS})  # keys the architecture lacks, or that disagree
    positions = m.max_position_embeddings  # None with init_from: checked once it is loaded
    if positions is None and not config.init_from:
        positions = getattr(arch.config_class, arch.field("max_position_embeddings"))
    need(positions is None or t.seq_len <= positions, "train.seq_len",
         f"{t.seq_len} exceeds model.max_position_embeddings={positions}")
    need(0.0 < config.data.mlm_probability < 1.0, "data.mlm_probability", "must be in (0, 1)")
    need(config.data.packing in PACKING_METHODS, "data.packing",
         f"{config.data.packing!r} is not one of {PACKING_METHODS}")
    need(not (config.data.preprocessed_dir and config.data.train_files), "data.preprocessed_dir",
         "set data.train_files or data.preprocessed_dir, not both")
    _validate_hf_dataset(config, need)
    need(t.eval_batches > 0, "train.eval_batches", "must be positive")
    need(config.data.min_document_tokens >= 0, "data.min_document_tokens", "must be >= 0 (0 = keep every document)")
    need(t.pseudo_perplexity_documents >= 0, "train.pseudo_perplexity_documents", "must be >= 0 (0 = off)")
    need(bool(config.data.eval_files) or config.data.eval_samples > 0 or not t.pseudo_perplexity_documents,
         "train.pseudo_perplexity_documents", "needs eval data: set data.eval_files or data.eval_samples")
    need(t.steps_per_call >= 0, "train.steps_per_call", "must be >= 0 (0 = auto)")
    smallest_vocab = 256 + len(SPECIAL_TOKENS) + 1  # bytes, specials, one merge
    need(config.data.tokenizer_vocab_size >= smallest_vocab, "data.tokenizer_vocab_size",
         f"must be >= {smallest_vocab} (256 byte tokens, {len(SPECIAL_TOKENS)} special tokens, one merge), "
         f"got {config.data.tokenizer_vocab_size}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        need(m[key] > 0, f"model.{key}", f"must be positive, got {m[key]}")
    for key in INHERITED_MODEL_KEYS:
        need(m[key] is None or m[key] > 0, f"model.{key}", f"must be positive or None (init_from's), got {m[key]}")
    need(m.hidden_size % m.num_attention_heads == 0, "model.hidden_size",
         f"{m.hidden_size} is not divisible by model.num_attention_heads={m.num_attention_heads}")
    need(m.hidden_size // m.num_attention_heads % 2 == 0, "model.hidden_size",
         f"{m.hidden_size} / model.num_attention_heads={m.num_attention_heads} is an odd head size; "
         "RoPE rotates pairs of dimensions")
    need(m.vocab_size >= 0, "model.vocab_size", "must be >= 0 (0 = the tokenizer's size)")
    need(bool(config.data.eval_files) or config.data.eval_samples > 0 or not t.keep_best_checkpoint,
         "train.keep_best_checkpoint", "needs eval data: set data.eval_files or data.eval_samples")


def _validate_hf_dataset(config, need) -> None:
    """data.hf_dataset: one corpus source, a tokenizer given (none is trained on a dataset), and for a stream
    the settings a run of unknown epoch length cannot derive."""
    d, t, hf = config.data, config.train, config.data.hf_dataset
    need(not hf.name or not (d.train_files or d.preprocessed_dir), "data.hf_dataset.name",
         "set one of data.train_files, data.preprocessed_dir and data.hf_dataset.name")
    need(hf.name or not (hf.streaming or hf.data_files or hf.config), "data.hf_dataset.name",
         "data.hf_dataset.streaming, .config and .data_files need data.hf_dataset.name")
    need(not hf.name or bool(config.tokenizer or config.init_from), "tokenizer",
         "data.hf_dataset needs a tokenizer: set tokenizer (an HF tokenizer dir) or init_from; "
         "none is trained on a dataset")
    need(d.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {d.shuffle_buffer}")
    if hf.streaming:
        need(t.max_steps > 0, "train.max_steps",
             "a streamed data.hf_dataset has no known epoch length: set train.max_steps (the run's length)")
        need(t.batch_size > 0, "train.batch_size",
             "a streamed data.hf_dataset cannot size the batch from the corpus: set train.batch_size")
        need(d.min_document_tokens == 0, "data.min_document_tokens",
             "is not applied to a streamed data.hf_dataset (it packs as it reads); leave it 0")
