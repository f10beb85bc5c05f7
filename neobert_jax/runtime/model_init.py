"""The starting model of a run: fresh (HF-identical init) or `init_from` a checkpoint.

`init_from` loads parameters only (the optimizer starts fresh), from an HF dir such as a
GUIDE initialization saved as a bare ModernBertModel (its MLM head is then newly
initialized and listed, as transformers would warn) or from a project checkpoint / run dir,
which is also how a run continues at a longer `train.seq_len`.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from neobert_jax.config import ModernBertConfig, kernel_backend
from neobert_jax.hf import load_pretrained
from neobert_jax.model import ModernBertForMaskedLM

ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
MODEL_KEYS = ARCHITECTURE_KEYS + ("max_position_embeddings", "local_attention", "global_attn_every_n_layers",
                                  "global_rope_theta", "embedding_dropout", "attention_dropout", "mlp_dropout")


def compute_dtype(precision: str) -> str:
    return "bfloat16" if precision == "bf16" else "float32"


def matmul_precision(precision: str) -> str:
    """fp32 must forbid single-pass TF32, which GPUs otherwise use for float32 matmuls.

    On GPU, fp32 runs as three TF32 passes (XLA's TF32_TF32_F32_X3): as accurate as plain float32
    against float64 and faster end to end (docs/performance.md has both figures). Other backends
    do not offer that algorithm and use plain float32.
    """
    import jax

    if precision == "fp32":
        return "TF32_TF32_F32_X3" if jax.default_backend() == "gpu" else "float32"
    return {"tf32": "tensorfloat32", "bf16": "default"}[precision]


def padded_vocab_size(tokenizer_size: int, multiple: int = 64) -> int:
    return int(math.ceil(tokenizer_size / multiple) * multiple)


def _with_config_keys(model: ModernBertForMaskedLM, config, log) -> ModernBertForMaskedLM:
    """The init_from model with config.model's dropout, and window and positions where set (no
    parameter depends on them), each change logged: keeping the loaded values ignored those keys
    without a word."""
    loaded = model.config
    changes = {k: config.model[k] for k in MODEL_KEYS
               if k not in ARCHITECTURE_KEYS and config.model[k] is not None and getattr(loaded, k) != config.model[k]}
    if not changes:
        return model
    said = ", ".join(f"model.{k} {getattr(loaded, k)} -> {v}" for k, v in changes.items())
    log(f"init_from {config.init_from}: {said} (from the config)")
    if "global_attn_every_n_layers" in changes:
        changes["layer_types"] = None  # derived from it again
    replaced = ModernBertForMaskedLM(loaded.replace(**changes), rngs=nnx.Rngs(config.seed))
    nnx.update(replaced, nnx.state(model, nnx.Param))
    return replaced


def runtime_policy(config, mesh) -> dict:
    """The ModernBertConfig runtime fields of a run, decided once: precision, attention backend,
    remat and the kernels' backends, whose "auto" is resolved here for this platform (the model's
    config carries the choice to the run's record, neobert_jax.runtime.resolved), and the run's
    `mesh`, over whose batch shards the kernels run."""
    m, platform = config.model, jax.default_backend()
    return dict(dtype=compute_dtype(config.train.precision), attn_implementation=m.attn_implementation,
                remat=m.remat, layer_norm_backward=kernel_backend(m.layer_norm_backward, platform),
                logsumexp=kernel_backend(m.logsumexp, platform),
                tf32x3=matmul_precision(config.train.precision) == "TF32_TF32_F32_X3", mesh=mesh)


def build_model(config, tokenizer_size: int, special_token_ids: dict[str, int], log=print, *, mesh=None):
    """-> (model, newly initialized tensor names) for a run on `mesh`. Errors name the mismatching
    config key."""
    runtime = runtime_policy(config, mesh)
    if config.init_from:
        model, newly_initialized = load_pretrained(config.init_from, seed=config.seed, **runtime)
        loaded = model.config
        for key in ARCHITECTURE_KEYS:
            if getattr(loaded, key) != config.model[key]:
                raise ValueError(f"config.model.{key}={config.model[key]} but init_from {config.init_from} has "
                                 f"{getattr(loaded, key)}")
        if loaded.vocab_size < tokenizer_size:
            raise ValueError(f"init_from {config.init_from} has vocab_size {loaded.vocab_size}, smaller than the "
                             f"tokenizer's {tokenizer_size} tokens")
        if newly_initialized:
            log(f"Some weights of ModernBertForMaskedLM were not in {config.init_from} and are newly initialized: "
                f"{newly_initialized}")
        return _with_config_keys(model, config, log), newly_initialized
    vocab_size = config.model.vocab_size or padded_vocab_size(tokenizer_size)
    if vocab_size < tokenizer_size:
        raise ValueError(
            f"config.model.vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer_size} tokens")
    keys = {k: getattr(ModernBertConfig, k) if config.model[k] is None else config.model[k] for k in MODEL_KEYS}
    model_config = ModernBertConfig(vocab_size=vocab_size, **keys, **special_token_ids, **runtime)
    return ModernBertForMaskedLM(model_config, rngs=nnx.Rngs(config.seed)), []
