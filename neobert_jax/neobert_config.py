"""NeoBERT model configuration whose field names are the NeoBERT release's config.json names.

Keeping the release's names (`max_length`, `norm_eps`, `dim_head` ...) means its config.json maps
onto fields one-to-one and one written here loads with the framework's own remote code. The
runtime fields are ModernBertConfig's, so the shared kernels read them from either config.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from neobert_jax.config import FULL, RUNTIME_FIELDS, HFConfigFile, check_runtime_fields

# Release fields that select variants this project does not implement: the value each must have.
_FIXED = {"rms_norm": True, "rope": True, "hidden_act": "swiglu", "ngpt": False}


@dataclasses.dataclass(frozen=True)
class NeoBertConfig(HFConfigFile):
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_length: int = 4096
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # not in the release's config.json: its code fixes 10000
    pad_token_id: int = 0
    dropout: float = 0.0
    embedding_init_range: float = 0.02
    decoder_init_range: float = 0.02
    decoder_bias: bool = True  # the release's decoder is nn.Linear(H, V) with a bias
    tie_word_embeddings: bool = False  # untied in the release, tied by default in the pszemraj fork
    # Runtime policy, as ModernBertConfig's (neobert_jax.config.RUNTIME_FIELDS).
    dtype: str = "float32"
    attn_implementation: str = "xla"
    remat: str = "none"
    layer_norm_backward: str = "auto"
    logsumexp: str = "auto"
    tf32x3: bool = False
    rope_in_kernel: bool = False
    tf32_split: bool = False
    mesh: Any = None

    # The shared Linear's truncated-normal init cuts at this many standard deviations.
    initializer_cutoff_factor = 2.0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} is odd: RoPE rotates pairs")
        check_runtime_fields(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_types(self) -> tuple[str, ...]:
        """Every layer attends globally (ModernBertConfig's field, read by the attention backend choice)."""
        return (FULL,) * self.num_hidden_layers

    @property
    def ffn_size(self) -> int:
        """SwiGLU's hidden width: 2/3 of intermediate_size (same parameters as a 2-matrix MLP), up to a multiple of 8."""
        return 8 * -(-int(2 * self.intermediate_size / 3) // 8)

    def replace(self, **changes: Any) -> "NeoBertConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json", **runtime: Any) -> "NeoBertConfig":
        """Reads a NeoBERT config.json dict (the release's or the pszemraj fork's)."""
        if d.get("model_type") != "neobert":
            raise ValueError(f"{source}: model_type is {d.get('model_type')!r}, expected 'neobert'")
        for name, wanted in _FIXED.items():
            value = d.get(name, wanted)
            if (value.lower() if isinstance(value, str) else value) != wanted:
                raise ValueError(f"{source}: {name} is {value!r}; only {wanted!r} is supported")
        if d.get("dim_head") not in (None, d.get("hidden_size", 768) // d.get("num_attention_heads", 12)):
            raise ValueError(f"{source}: dim_head {d['dim_head']} is not hidden_size / num_attention_heads")
        names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
        kwargs = {k: v for k, v in d.items() if k in names and v is not None}
        if "max_length" not in kwargs and d.get("max_position_embeddings") is not None:
            kwargs["max_length"] = int(d["max_position_embeddings"])
        if "dropout" not in kwargs and d.get("dropout_prob") is not None:
            kwargs["dropout"] = float(d["dropout_prob"])
        for field in dataclasses.fields(cls):  # a wrong type fails later with a baffling message
            value, default = kwargs.get(field.name), field.default
            if value is None or not isinstance(default, (bool, int, float)):
                continue
            if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                kwargs[field.name] = float(value)
            elif type(value) is not type(default):
                raise ValueError(f"{source}: {field.name} is {value!r} ({type(value).__name__}), "
                                 f"expected {type(default).__name__}")
        return cls(**kwargs, **runtime)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json in the release's layout, with this project's extra fields (rope_theta, decoder flags)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        d.update(dim_head=self.head_dim, rms_norm=True, rope=True, hidden_act="SwiGLU", ngpt=False,
                 flash_attention=False, architectures=["NeoBERTLMHead"], model_type="neobert",
                 torch_dtype="float32")
        return d



def is_neobert_config(path: str | None) -> bool:
    """Whether the config.json at `path` is a NeoBERT's; False for anything unreadable, whose reader then says why."""
    try:
        with open(path) as f:
            return json.load(f).get("model_type") == "neobert"
    except (OSError, TypeError, ValueError, AttributeError):
        return False
