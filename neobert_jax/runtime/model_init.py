"""The starting model of a run: fresh (HF-identical init) or `init_from` a checkpoint, of either
architecture (`architectures()`, the one place the tasks learn what a family's classes are).

`init_from` loads parameters only (the optimizer starts fresh), from an HF dir such as a
GUIDE initialization saved as a bare ModernBertModel (its MLM head is then newly
initialized and listed, as transformers would warn) or from a project checkpoint / run dir,
which is also how a run continues at a longer `train.seq_len`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
from flax import nnx

from neobert_jax.config import ModernBertConfig, kernel_backend
from neobert_jax.hf import (load_neobert_state_dict, load_pretrained, load_state_dict_into_model,
                            neobert_state_dict_from_model, save_hf_dir, save_neobert_dir, state_dict_from_model)
from neobert_jax.hf.neobert import neobert_classifier_config
from neobert_jax.model import ModernBertForMaskedLM, ModernBertModel, NeoBertForMaskedLM, NeoBertModel
from neobert_jax.model.modernbert import PredictionHead, init_stds
from neobert_jax.model.neobert import TanhHead
from neobert_jax.neobert_config import NeoBertConfig

ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
MODEL_KEYS = ARCHITECTURE_KEYS + ("max_position_embeddings", "local_attention", "global_attn_every_n_layers",
                                  "global_rope_theta", "embedding_dropout", "attention_dropout", "mlp_dropout")


@dataclasses.dataclass(frozen=True)
class ClassifierFamily:
    """A family's sequence- and token-classification models (classify/head.py builds them) and their HF dirs."""

    encoder_class: type
    sequence_head: Callable  # (config, rngs) -> the module between the pooled hidden state and the classifier
    token_head: Callable | None  # (config, rngs) -> the module on every token before the classifier; None: none
    names: tuple[str, str]  # config.json's architecture of the (sequence, token) classifier
    state_dict: Callable  # model -> HF state dict (float32 numpy, torch layout)
    load_state_dict: Callable  # (model, state_dict, source) -> (newly initialized, ignored), in place
    hf_config: Callable  # (model config, architecture name) -> (config.json dict, {file name: source to copy})
    dropout_before_head: bool = False  # classifier dropout also on the pooled state before the sequence head


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the tasks need to know of one model family, so that nothing else branches on it.

    `renamed` maps a config.model key to the config class's field where the names differ; None
    marks a key the family has no use for (it must stay unset, or 0 for a dropout). Two keys
    renamed to one field must agree.
    """

    name: str
    config_class: type
    model_class: type
    save_hf: Callable  # (model, out_dir, *, tokenizer_dir, overwrite): the HF dir `init_from` reads back
    renamed: dict
    dropout_fields: tuple[str, ...]  # the config's dropout rates, any > 0 means the steps need keys
    mlp_width: Callable  # config -> F of the 3 D x F matrices of a gated MLP (for the FLOP count)
    head_dense: bool  # an H -> H dense layer before the decoder (ModernBERT's prediction head)
    classifier: ClassifierFamily

    def field(self, key: str) -> str | None:
        return self.renamed.get(key, key)

    def value(self, model_config, key: str):
        """config.model.`key`'s value in `model_config` (None where the family has no such setting)."""
        name = self.field(key)
        return None if name is None else getattr(model_config, name)

    def model_fields(self, keys: dict) -> dict:
        """config.model keys -> the config class's fields; None values (unset) are left out."""
        fields, source = {}, {}
        for key, value in keys.items():
            name = self.field(key)
            if value is None or (name is None and not value):
                continue
            if name is None:
                raise ValueError(f"config.model.{key}: {self.name} has no such setting; leave it "
                                 f"{'0' if key.endswith('_dropout') else 'None'}, got {value}")
            if name in fields and fields[name] != value:
                raise ValueError(f"config.model.{key}={value} but model.{source[name]}={fields[name]}: {self.name} "
                                 f"has one {name} for both; set them equal")
            fields[name], source[name] = value, key
        return fields


def architectures() -> dict[str, Architecture]:
    """config.model.architecture's values -> their Architecture; the one place that knows the families."""
    return {
        "modernbert": Architecture("modernbert", ModernBertConfig, ModernBertForMaskedLM, save_hf_dir, {},
                                   ("embedding_dropout", "attention_dropout", "mlp_dropout"),
                                   lambda c: c.intermediate_size, head_dense=True,
                                   classifier=ClassifierFamily(
                                       ModernBertModel, modernbert_head, modernbert_head,
                                       ("ModernBertForSequenceClassification", "ModernBertForTokenClassification"),
                                       state_dict_from_model, load_state_dict_into_model,
                                       lambda c, name: ({**c.to_hf_dict(), "architectures": [name]}, {}))),
        "neobert": Architecture("neobert", NeoBertConfig, NeoBertForMaskedLM, save_neobert_dir,
                                {"max_position_embeddings": "max_length", "global_rope_theta": "rope_theta",
                                 "local_attention": None, "global_attn_every_n_layers": None,
                                 "embedding_dropout": None, "attention_dropout": "dropout", "mlp_dropout": "dropout"},
                                ("dropout",), lambda c: c.ffn_size, head_dense=False,
                                classifier=ClassifierFamily(
                                    NeoBertModel, TanhHead, None,
                                    ("NeoBERTForSequenceClassification", "NeoBERTForTokenClassification"),
                                    neobert_state_dict_from_model, load_neobert_state_dict, neobert_classifier_config,
                                    dropout_before_head=True)),
    }


def modernbert_head(config: ModernBertConfig, rngs: nnx.Rngs) -> PredictionHead:
    """ModernBERT's classifiers reuse its MLM prediction head (dense -> GELU -> norm), as transformers' do."""
    return PredictionHead(config, init_stds(config), rngs)


def architecture(name: str) -> Architecture:
    known = architectures()
    if name not in known:
        raise ValueError(f"config.model.architecture: {name!r} is not one of {tuple(known)}")
    return known[name]


def architecture_of(model_config) -> Architecture:
    """The Architecture of a model's config (a loaded init_from's, a run's ModelParts')."""
    for arch in architectures().values():
        if isinstance(model_config, arch.config_class):
            return arch
    raise TypeError(f"no architecture has config class {type(model_config).__name__}")


def uses_dropout(model_config) -> bool:
    return any(getattr(model_config, name) > 0 for name in architecture_of(model_config).dropout_fields)


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


def _with_config_keys(model, arch: Architecture, config, log):
    """The init_from model with config.model's dropout, and window and positions where set (no
    parameter depends on them), each change logged: keeping the loaded values ignored those keys
    without a word."""
    loaded = model.config
    keys = {k: config.model[k] for k in MODEL_KEYS if k not in ARCHITECTURE_KEYS}
    arch.model_fields(keys)  # keys the family lacks, or that disagree, fail here
    changed = {k: v for k, v in keys.items()
               if v is not None and arch.field(k) is not None and arch.value(loaded, k) != v}
    if not changed:
        return model
    said = ", ".join(f"model.{k} {arch.value(loaded, k)} -> {v}" for k, v in changed.items())
    log(f"init_from {config.init_from}: {said} (from the config)")
    changes = {arch.field(k): v for k, v in changed.items()}
    if "global_attn_every_n_layers" in changes:
        changes["layer_types"] = None  # derived from it again
    replaced = arch.model_class(loaded.replace(**changes), rngs=nnx.Rngs(config.seed))
    nnx.update(replaced, nnx.state(model, nnx.Param))
    return replaced


def runtime_policy(config, mesh) -> dict:
    """The runtime fields (ModernBertConfig's and NeoBertConfig's) of a run, decided once: precision, attention backend,
    remat and the kernels' backends, whose "auto" is resolved here for this platform (the model's
    config carries the choice to the run's record, neobert_jax.runtime.resolved), and the run's
    `mesh`, over whose batch shards the kernels run."""
    m, platform = config.model, jax.default_backend()
    return dict(dtype=compute_dtype(config.train.precision), attn_implementation=m.attn_implementation,
                remat=m.remat, layer_norm_backward=kernel_backend(m.layer_norm_backward, platform),
                logsumexp=kernel_backend(m.logsumexp, platform),
                tf32x3=matmul_precision(config.train.precision) == "TF32_TF32_F32_X3",
                rope_in_kernel=m.rope_in_kernel, tf32_split=m.tf32_split, mesh=mesh)


def build_model(config, tokenizer_size: int, special_token_ids: dict[str, int], log=print, *, mesh=None):
    """-> (model, newly initialized tensor names) for a run on `mesh`, of config.model.architecture.
    Errors name the mismatching config key."""
    arch = architecture(config.model.architecture)
    runtime = runtime_policy(config, mesh)
    if config.init_from:
        model, newly_initialized = load_pretrained(config.init_from, seed=config.seed, **runtime)
        loaded = model.config
        if architecture_of(loaded).name != arch.name:
            raise ValueError(f"config.model.architecture={arch.name!r} but init_from {config.init_from} is a "
                             f"{architecture_of(loaded).name} model")
        for key in ARCHITECTURE_KEYS:
            if getattr(loaded, key) != config.model[key]:
                raise ValueError(f"config.model.{key}={config.model[key]} but init_from {config.init_from} has "
                                 f"{getattr(loaded, key)} (set --config.model.{key}={getattr(loaded, key)})")
        if loaded.vocab_size < tokenizer_size:
            raise ValueError(f"init_from {config.init_from} has vocab_size {loaded.vocab_size}, smaller than the "
                             f"tokenizer's {tokenizer_size} tokens")
        if newly_initialized:
            log(f"Some weights of {type(model).__name__} were not in {config.init_from} and are newly initialized: "
                f"{newly_initialized}")
        return _with_config_keys(model, arch, config, log), newly_initialized
    vocab_size = config.model.vocab_size or padded_vocab_size(tokenizer_size)
    if vocab_size < tokenizer_size:
        raise ValueError(
            f"config.model.vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer_size} tokens")
    fields = arch.model_fields({k: config.model[k] for k in MODEL_KEYS})  # unset keys: the class's defaults
    names = {f.name for f in dataclasses.fields(arch.config_class)}
    special = {k: v for k, v in special_token_ids.items() if k in names}  # NeoBERT keeps only the pad id
    model_config = arch.config_class(vocab_size=vocab_size, **fields, **special, **runtime)
    return arch.model_class(model_config, rngs=nnx.Rngs(config.seed)), []
