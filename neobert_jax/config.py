"""Model configuration whose field names are transformers' `ModernBertConfig` names.

Keeping HF's names means a config.json read from any transformers version maps onto
fields one-to-one, and one written here loads in transformers 4.x and 5.x alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FULL = "full_attention"
SLIDING = "sliding_attention"

# Fields that only steer how this project computes (not part of the checkpoint).
RUNTIME_FIELDS = ("dtype", "attn_implementation", "remat", "layer_norm_backward", "logsumexp", "tf32x3", "rope_in_kernel",
                  "tf32_split", "mesh")
# The hand-written kernels' backends: "pallas" (GPU), "xla", "interpret" (the Pallas kernel run on
# the CPU, for tests); "auto" is the Pallas kernel on GPU and XLA elsewhere (`kernel_backend`).
KERNEL_BACKENDS = ("auto", "pallas", "xla", "interpret")
# Attention backends (neobert_jax.model.attention): "auto" picks per platform, dtype and window.
ATTENTION_BACKENDS = ("auto", "xla", "pallas", "cudnn", "splash")


def kernel_backend(mode: str, platform: str) -> str:
    """A kernel field's backend on `platform` (jax.default_backend()); trainers resolve "auto" at
    setup and record the result in run_config.json."""
    return ("pallas" if platform == "gpu" else "xla") if mode == "auto" else mode


class HFConfigFile:
    """config.json reading and writing for a config class with `from_hf_dict` and `to_hf_dict`."""

    @classmethod
    def from_json_file(cls, path: str, **runtime: Any):
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such config file") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=path, **runtime)

    def save_json(self, path: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def check_runtime_fields(config) -> None:
    """Either family's runtime fields, which come from a validated run config
    (neobert_jax.runtime.config) or from code: a bad one is a programming error."""
    assert config.remat in ("none", "full", "dots"), config.remat
    assert config.dtype in ("float32", "bfloat16"), config.dtype
    assert config.layer_norm_backward in KERNEL_BACKENDS and config.logsumexp in KERNEL_BACKENDS, (
        config.layer_norm_backward, config.logsumexp)


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(HFConfigFile):
    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    max_position_embeddings: int = 8192
    hidden_activation: str = "gelu"
    classifier_activation: str = "gelu"
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False
    decoder_bias: bool = True
    tie_word_embeddings: bool = True
    local_attention: int = 128
    layer_types: tuple[str, ...] | None = None
    global_attn_every_n_layers: int = 3
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0
    pad_token_id: int = 50283
    bos_token_id: int = 50281
    eos_token_id: int = 50282
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    # Runtime policy: compute dtype ("float32" | "bfloat16"; params stay float32),
    # attention backend (see neobert_jax.model.attention), and rematerialization.
    dtype: str = "float32"
    attn_implementation: str = "xla"
    remat: str = "none"
    layer_norm_backward: str = "auto"  # the LayerNorm backward pass (neobert_jax.model.layer_norm)
    logsumexp: str = "auto"  # the MLM head's log-sum-exp (neobert_jax.model.decoder_loss)
    # float32 dots of the hand-written kernels as three TF32 passes: the fp32 policy on GPU, where
    # the run's XLA dots use TF32_TF32_F32_X3 (neobert_jax.runtime.model_init.matmul_precision)
    tf32x3: bool = False
    # RoPE applied inside the Pallas attention kernel (as its q/k tiles load) rather than as separate passes
    # (neobert_jax.model.attention); other backends rotate first either way
    rope_in_kernel: bool = False
    # with tf32x3: the dense layers' and the MLM head's products as three TF32 passes written out
    # (neobert_jax.model.tf32), which XLA may give to cuBLAS, instead of XLA's X3 algorithm
    tf32_split: bool = False
    # The run's device mesh (jax.sharding.Mesh): the hand-written kernels run on each device's rows of its
    # batch axes (neobert_jax.model.shards); None: on the inputs as they come. A run's setup sets it
    # (neobert_jax.runtime.model_init.runtime_policy), so the step's kernels get it from the model.
    mesh: Any = None

    def __post_init__(self):
        if self.layer_types is None:
            every = self.global_attn_every_n_layers
            types = tuple(FULL if i % every == 0 else SLIDING for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_hidden_layers}"
            )
        bad = sorted(set(self.layer_types) - {FULL, SLIDING})
        if bad:
            raise ValueError(f"unknown layer_types {bad}; expected {FULL!r} or {SLIDING!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_activation != "gelu" or self.classifier_activation != "gelu":
            raise ValueError("only the exact (erf) 'gelu' activation of ModernBERT is supported")
        check_runtime_fields(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> "ModernBertConfig":
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = None
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json", **runtime: Any) -> "ModernBertConfig":
        """Reads a transformers config dict, v5 (`layer_types`, `rope_parameters`) or v4 style."""
        model_type = d.get("model_type")
        if model_type != "modernbert":
            raise ValueError(f"{source}: model_type is {model_type!r}, expected 'modernbert'")
        names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
        kwargs = {k: v for k, v in d.items() if k in names and v is not None}
        for field in dataclasses.fields(cls):  # a wrong type fails later with a baffling message
            value, default = kwargs.get(field.name), field.default
            if value is None or not isinstance(default, (bool, int, float, str)):
                continue
            if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                continue
            if type(value) is not type(default):
                raise ValueError(f"{source}: {field.name} is {value!r} ({type(value).__name__}), "
                                 f"expected {type(default).__name__}")
        rope = d.get("rope_parameters") or {}
        if isinstance(rope.get(FULL), dict) and "rope_theta" in rope[FULL]:
            kwargs["global_rope_theta"] = float(rope[FULL]["rope_theta"])
        if isinstance(rope.get(SLIDING), dict) and "rope_theta" in rope[SLIDING]:
            kwargs["local_rope_theta"] = float(rope[SLIDING]["rope_theta"])
        for rope_cfg in rope.values():
            if isinstance(rope_cfg, dict) and rope_cfg.get("rope_type", "default") != "default":
                raise ValueError(f"{source}: rope_type {rope_cfg['rope_type']!r} is not supported (only 'default')")
        if "layer_types" in kwargs:
            kwargs["layer_types"] = tuple(kwargs["layer_types"])
        return cls(**kwargs, **runtime)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that both transformers 4.x and 5.x read to the same model."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        d["layer_types"] = list(self.layer_types)
        d["rope_parameters"] = {
            FULL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
            SLIDING: {"rope_type": "default", "rope_theta": self.local_rope_theta},
        }
        d.update(architectures=["ModernBertForMaskedLM"], model_type="modernbert", torch_dtype="float32")
        return d

