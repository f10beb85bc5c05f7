"""Cross-entropy through the tied decoder with a hand-written backward pass.

The MLM logits are the largest tensor of a step (masked tokens x 50k vocab, ~1e9 values at
batch 128): left to autodiff, XLA reads and writes them in float32 about eight times. Here
they are written once in the compute dtype, read once for the log-sum-exp (one pass on GPU:
logsumexp_pallas) and once to form the gradient, which is what bounds the head's memory traffic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from neobert_jax.config import kernel_backend
from neobert_jax.model.shards import per_batch_shard
from neobert_jax.model.tf32 import emulated, three_pass


def _logsumexp(logits_NV, backend: str, mesh):
    mode = kernel_backend(backend, jax.default_backend())
    if mode == "xla":
        return jax.nn.logsumexp(logits_NV.astype(jnp.float32), axis=-1)
    from neobert_jax.model.logsumexp_pallas import logsumexp_rows

    run = per_batch_shard(lambda x: (logsumexp_rows(x, interpret=mode == "interpret"),), mesh, ("rows",), ("rows",))
    return run(logits_NV)[0]


def _dot(tf32_split: bool):
    """The head's products: jnp.dot, or three TF32 passes written out (ModernBertConfig.tf32_split)."""
    if not tf32_split:
        return jnp.dot
    return functools.partial(three_pass, emulate=emulated())


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def decoder_nll(x_ND, embedding_VD, bias_V, labels_N, logsumexp: str = "auto", mesh=None, tf32_split: bool = False):
    """-log softmax(x @ embeddingᵀ + bias)[label] per row in float32; rows with label < 0 give 0.

    x, embedding and bias share the compute dtype; the log-sum-exp is taken in float32, by the
    backend `logsumexp` names (ModernBertConfig.logsumexp), per device of `mesh` (model/shards.py);
    `tf32_split`: float32 products as three TF32 passes written out (model/tf32.py).
    """
    return _forward(x_ND, embedding_VD, bias_V, labels_N, logsumexp, mesh, tf32_split)[0]


def _forward(x_ND, embedding_VD, bias_V, labels_N, logsumexp, mesh, tf32_split):
    logits_NV = _dot(tf32_split)(x_ND, embedding_VD.T) + bias_V
    lse_N = _logsumexp(logits_NV, logsumexp, mesh)
    valid_N = labels_N >= 0
    safe_N = jnp.where(valid_N, labels_N, 0)
    label_logit_N = jnp.take_along_axis(logits_NV, safe_N[:, None], axis=-1)[:, 0].astype(jnp.float32)
    nll_N = jnp.where(valid_N, lse_N - label_logit_N, 0.0)
    return nll_N, (x_ND, embedding_VD, logits_NV, lse_N, safe_N, valid_N)


def _backward(logsumexp, mesh, tf32_split, residuals, g_N):
    x_ND, embedding_VD, logits_NV, lse_N, safe_N, valid_N = residuals
    scale_N = jnp.where(valid_N, g_N, 0.0)
    probs_NV = jnp.exp(logits_NV.astype(jnp.float32) - lse_N[:, None])
    onehot_NV = jax.nn.one_hot(safe_N, logits_NV.shape[-1], dtype=jnp.float32)
    d_logits_NV = ((probs_NV - onehot_NV) * scale_N[:, None]).astype(logits_NV.dtype)
    dot = _dot(tf32_split)
    d_x = dot(d_logits_NV, embedding_VD)
    d_embedding = dot(d_logits_NV.T, x_ND)
    d_bias = jnp.sum(d_logits_NV, axis=0, dtype=jnp.float32).astype(logits_NV.dtype)
    return d_x, d_embedding, d_bias, None


decoder_nll.defvjp(_forward, _backward)
