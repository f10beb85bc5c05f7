"""Flax NNX NeoBERT encoder and MLM head (chandar-lab's architecture), sharing ModernBERT's pieces.

Pre-norm blocks with RMSNorm, all-global attention and a SwiGLU FFN; no embedding norm and no
prediction head between the final norm and the decoder. Attention, RoPE, Linear and the fused
decoder loss are ModernBERT's, so every attention backend and packed rows (segment ids and
positions) work as they do there.

Parameter paths mirror the NeoBERT checkpoint's keys (`model.transformer_encoder.3.qkv` ...),
with two layouts chosen for our kernels and undone at conversion (hf/neobert.py):
`qkv`'s columns are [all q | all k | all v] (the checkpoint interleaves them per head), and q
and k are permuted inside each head (even dims, then odd) so that the checkpoint's interleaved
RoPE becomes the rotate-half RoPE that `apply_rope` computes.
Shapes are in names: B batch, T sequence, D hidden, N heads, H head dim, F ffn, V vocab, M masked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from neobert_jax.model.attention import attention, rope_cos_sin
from neobert_jax.model.masked_lm import MaskedLM
from neobert_jax.model.layer_norm import add_rms_norm, rms_norm
from neobert_jax.model.modernbert import (
    REMAT_POLICIES,
    Linear,
    apply_dropout,
    fold_rng,
    resolve_inputs,
    trunc_normal,
)
from neobert_jax.neobert_config import NeoBertConfig


class RMSNorm(nnx.Module):
    """x / rms(x) * weight in float32 (no mean, no bias), cast to the compute dtype; LayerNorm's backward kernel."""

    def __init__(self, dim: int, config: NeoBertConfig):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.eps = config.norm_eps
        self.dtype = jnp.dtype(config.dtype)
        self.backward, self.mesh = config.layer_norm_backward, config.mesh

    def __call__(self, x):
        return rms_norm(x, self.scale[...], self.eps, self.dtype, self.backward, self.mesh)

    def add(self, h, delta):
        """(h + delta, norm(h + delta)): the residual add that precedes this norm, fused with it."""
        return add_rms_norm(h, delta, self.scale[...], self.eps, self.dtype, self.backward, self.mesh)


def swiglu(a_BTF, b_BTF):
    """silu(a) * b, SiLU in float32 rounded to the input dtype before the product (as torch under autocast)."""
    return jax.nn.silu(a_BTF.astype(jnp.float32)).astype(a_BTF.dtype) * b_BTF


class SwiGLU(nnx.Module):
    """`w3(silu(w1 x) * w2 x)` with w1 and w2 packed as `w12` (columns [w1 | w2]), as the release stores them."""

    def __init__(self, config: NeoBertConfig, std_in: float, std_out: float, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.ffn_size
        self.w12 = Linear(d, 2 * f, std=std_in, config=config, use_bias=False, axes=("embed", "mlp"), rngs=rngs)
        self.w3 = Linear(f, d, std=std_out, config=config, use_bias=False, axes=("mlp", "embed"), rngs=rngs)

    def __call__(self, x_BTD):
        return self.w3(swiglu(*self.w12.split(x_BTD, 2)))


class EncoderBlock(nnx.Module):
    """x + attention(norm(x)), then + ffn(norm(x)); qkv and wo sit on the block, as in the checkpoint."""

    def __init__(self, config: NeoBertConfig, std_in: float, std_out: float, rngs: nnx.Rngs):
        d = config.hidden_size
        self.attention_norm = RMSNorm(d, config)
        self.qkv = Linear(d, 3 * d, std=std_in, config=config, use_bias=False, axes=("embed", "qkv"), rngs=rngs)
        self.wo = Linear(d, d, std=std_out, config=config, use_bias=False, axes=("heads", "embed"), rngs=rngs)
        self.ffn_norm = RMSNorm(d, config)
        self.ffn = SwiGLU(config, std_in, std_out, rngs)
        self.num_heads, self.head_dim, self.theta = config.num_attention_heads, config.head_dim, config.rope_theta
        self.dropout = config.dropout
        self.implementation, self.tf32x3, self.mesh = config.attn_implementation, config.tf32x3, config.mesh
        self.rope_in_kernel = config.rope_in_kernel

    def attention(self, x_BTD, segment_ids_BT, positions_BT, dropout_rng):
        B, T, _ = x_BTD.shape
        q_BTNH, k_BTNH, v_BTNH = (y.reshape(B, T, self.num_heads, self.head_dim) for y in self.qkv.split(x_BTD, 3))
        o_BTNH = attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=None, implementation=self.implementation,
                           rope=rope_cos_sin(positions_BT, self.head_dim, self.theta),
                           rope_in_kernel=self.rope_in_kernel, tf32x3=self.tf32x3, mesh=self.mesh, dropout_rate=self.dropout,
                           dropout_rng=fold_rng(dropout_rng, 0))
        return apply_dropout(self.wo(o_BTNH.reshape(B, T, -1)), self.dropout, fold_rng(dropout_rng, 1))

    def __call__(self, h_BTD, pending_BTD, segment_ids_BT, positions_BT, dropout_rng):
        """Returns (residual stream, this block's FFN output not yet added to it).

        Each residual add is done by the norm that follows it (RMSNorm.add), so the backward pass
        of add + norm is one kernel; `pending_BTD` is the previous block's FFN output (None for block 0).
        """
        if pending_BTD is None:
            x_BTD = self.attention_norm(h_BTD)
        else:
            h_BTD, x_BTD = self.attention_norm.add(h_BTD, pending_BTD)
        h_BTD, x_BTD = self.ffn_norm.add(h_BTD, self.attention(x_BTD, segment_ids_BT, positions_BT,
                                                               fold_rng(dropout_rng, 0)))
        return h_BTD, apply_dropout(self.ffn(x_BTD), self.dropout, fold_rng(dropout_rng, 1))


def _call_block(block: EncoderBlock, *args):
    return block(*args)


class NeoBertModel(nnx.Module):
    """Token embedding (no norm, no dropout, no positions: RoPE), pre-norm blocks, final RMSNorm."""

    def __init__(self, config: NeoBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        std_in = config.embedding_init_range
        std_out = std_in / math.sqrt(2.0 * config.num_hidden_layers)
        self.encoder = nnx.Param(
            trunc_normal(rngs.params(), (config.vocab_size, config.hidden_size), config.embedding_init_range,
                          config.initializer_cutoff_factor),
            logical_axes=("vocab", "embed"),
        )
        self.transformer_encoder = nnx.List(
            [EncoderBlock(config, std_in, std_out, rngs) for _ in range(config.num_hidden_layers)])
        self.layer_norm = RMSNorm(config.hidden_size, config)

    def __call__(self, input_ids_BT, attention_mask_BT=None, *, segment_ids_BT=None, positions_BT=None,
                 dropout_rng=None):
        segment_ids_BT, positions_BT = resolve_inputs(input_ids_BT, attention_mask_BT, segment_ids_BT, positions_BT)
        x_BTD = jnp.take(self.encoder[...], input_ids_BT, axis=0)
        # torch's padding_idx: the lookup sends no gradient to the pad row (a tied decoder still does).
        pad = (input_ids_BT == self.config.pad_token_id)[..., None]
        h_BTD = jnp.where(pad, jax.lax.stop_gradient(x_BTD), x_BTD).astype(jnp.dtype(self.config.dtype))
        apply_block = _call_block
        if self.config.remat != "none":
            apply_block = nnx.remat(_call_block, policy=REMAT_POLICIES[self.config.remat])
        pending_BTD = None
        for i, block in enumerate(self.transformer_encoder):
            h_BTD, pending_BTD = apply_block(block, h_BTD, pending_BTD, segment_ids_BT, positions_BT,
                                             fold_rng(dropout_rng, i + 1))
        return self.layer_norm(h_BTD if pending_BTD is None else h_BTD + pending_BTD)


class Decoder(nnx.Module):
    """The LM decoder H -> V, stored (V, D) as torch's weight; `weight` is None when tied to the embedding."""

    def __init__(self, config: NeoBertConfig, rngs: nnx.Rngs):
        shape = (config.vocab_size, config.hidden_size)
        self.weight = None if config.tie_word_embeddings else nnx.Param(
            trunc_normal(rngs.params(), shape, config.decoder_init_range, config.initializer_cutoff_factor),
            logical_axes=("vocab", "embed"))
        self.bias = (nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32), logical_axes=("vocab",))
                     if config.decoder_bias else None)


class TanhHead(nnx.Module):
    """dense H -> H, then tanh: what the release's NeoBERTForSequenceClassification puts between the pooled
    token and its classifier (the HF key is `dense`, hf/neobert.py)."""

    def __init__(self, config: NeoBertConfig, rngs: nnx.Rngs):
        d = config.hidden_size
        self.dense = Linear(d, d, std=config.embedding_init_range, config=config, use_bias=True,
                            axes=("embed", "mlp"), rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.dense(x))


class NeoBertForMaskedLM(MaskedLM):
    """Encoder + decoder (tied or untied, optional bias); the same call interface as ModernBertForMaskedLM."""

    def __init__(self, config: NeoBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = NeoBertModel(config, rngs=rngs)
        self.decoder = Decoder(config, rngs)

    def _features(self, h_BTD):
        return h_BTD  # NeoBERT decodes the final normed states directly

    def _decoder(self):
        dtype = jnp.dtype(self.config.dtype)
        weight = self.model.encoder if self.decoder.weight is None else self.decoder.weight
        weight_VD = weight[...].astype(dtype)
        bias = self.decoder.bias[...] if self.decoder.bias is not None else jnp.zeros(weight_VD.shape[0])
        return weight_VD, bias.astype(dtype)
