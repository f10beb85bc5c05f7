"""The one mapping between transformers' ModernBERT state dict and our NNX parameters.

Our parameter paths mirror HF names, so the mapping is a rename (`kernel` <-> `weight`,
`scale` <-> `weight`) plus a transpose of Linear kernels. Both directions go through
`hf_name`, so they cannot drift apart.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Tensors HF may carry that are not parameters here: the tied decoder weight (checked
# against the embedding instead) and non-persistent rotary buffers of old exports.
TIED_DECODER = "decoder.weight"
_IGNORABLE_SUFFIXES = ("inv_freq",)


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names the tensor."""


def hf_name(path: tuple) -> tuple[str, bool]:
    """Our parameter path -> (HF ModernBertForMaskedLM key, whether the array is transposed)."""
    *parents, leaf = (str(p) for p in path)
    if leaf == "decoder_bias":
        return "decoder.bias", False
    if leaf == "tok_embeddings":
        return ".".join(parents + ["tok_embeddings", "weight"]), False
    if leaf == "kernel":
        return ".".join(parents + ["weight"]), True
    if leaf == "scale":
        return ".".join(parents + ["weight"]), False
    if leaf == "bias":
        return ".".join(parents + ["bias"]), False
    raise ConversionError(f"no HF name for parameter {'/'.join(map(str, path))}")


def _flat_params(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def state_dict_from_model(model: nnx.Module) -> dict[str, np.ndarray]:
    """HF ModernBertForMaskedLM state dict (float32 numpy, torch layout), tied decoder omitted."""
    out = {}
    for path, var in _flat_params(model).items():
        name, transposed = hf_name(path)
        value = np.asarray(var[...], dtype=np.float32)
        out[name] = np.ascontiguousarray(value.T) if transposed else value
    return out


def load_state_dict_into_model(model: nnx.Module, state_dict: dict[str, np.ndarray], source: str = "checkpoint"):
    """Copies HF tensors into `model` in place.

    Accepts ModernBertForMaskedLM keys or a bare ModernBertModel's (no `model.` prefix).
    Returns (newly_initialized, ignored): our tensors the checkpoint lacked (they keep their
    HF-identical init) and checkpoint tensors that have no place here.
    """
    bare = not any(k.startswith("model.") for k in state_dict)
    lookup = {("model." + k if bare and not k.startswith(("head.", "decoder.")) else k): v
              for k, v in state_dict.items()}
    used, newly_initialized = set(), []
    for path, var in _flat_params(model).items():
        name, transposed = hf_name(path)
        if name not in lookup:
            newly_initialized.append(name)
            continue
        value = np.asarray(lookup[name])
        value = value.T if transposed else value
        shape = var.get_value().shape  # also on an abstract (eval_shape) model
        if value.shape != shape:
            expected = shape[::-1] if transposed else shape
            raise ConversionError(
                f"{source}: tensor {name} has shape {tuple(lookup[name].shape)}, the model expects {tuple(expected)}"
            )
        var.set_value(jnp.asarray(value, dtype=jnp.float32))
        used.add(name)
    if TIED_DECODER in lookup:
        used.add(TIED_DECODER)
        embedding = lookup.get("model.embeddings.tok_embeddings.weight")
        if embedding is not None and not np.array_equal(np.asarray(lookup[TIED_DECODER]), np.asarray(embedding)):
            raise ConversionError(f"{source}: {TIED_DECODER} differs from the token embedding; only tied heads are supported")
    ignored = sorted(k for k in lookup if k not in used and not k.endswith(_IGNORABLE_SUFFIXES))
    return newly_initialized, ignored
