"""Flax NNX ModernBERT encoder and MLM head, numerically matching transformers' torch model.

Parameter names follow the HF state dict (`model.layers.3.attn.Wqkv` ...) so conversion is a
rename plus a transpose. Every parameter carries `logical_axes` metadata that the trainer maps
onto mesh axes. Shapes are in names: B batch, T sequence, D hidden, N heads, H head dim,
F intermediate, V vocab, M masked positions per row.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from neobert_jax.config import SLIDING, ModernBertConfig
from neobert_jax.model.attention import attention, rope_cos_sin
from neobert_jax.model.masked_lm import MaskedLM
from neobert_jax.model.layer_norm import add_layer_norm, layer_norm
from neobert_jax.model import tf32

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def trunc_normal(key, shape, std: float, cutoff: float):
    """torch.nn.init.trunc_normal_(std=std, a=-cutoff*std, b=cutoff*std)."""
    return jax.random.truncated_normal(key, -cutoff, cutoff, shape, jnp.float32) * std


def apply_dropout(x, rate: float, rng):
    if rate <= 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def fold_rng(rng, i: int):
    return None if rng is None else jax.random.fold_in(rng, i)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias); kernel is (in, out), the transpose of torch's weight."""

    def __init__(self, d_in: int, d_out: int, *, std: float, config: ModernBertConfig, use_bias: bool,
                 axes: tuple[str, str], rngs: nnx.Rngs):
        self.kernel = nnx.Param(
            trunc_normal(rngs.params(), (d_in, d_out), std, config.initializer_cutoff_factor), logical_axes=axes
        )
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32), logical_axes=axes[1:]) if use_bias else None
        self.dtype = jnp.dtype(config.dtype)
        self.tf32_split = tf32.applies(config, self.dtype)

    def __call__(self, x):
        return self.split(x, 1)[0]

    def split(self, x, parts: int) -> list:
        """The output as `parts` equal column blocks, each its own matmul.

        Separate matmuls (rather than slicing one output) let the backward pass feed each block's
        gradient straight into its own matmul instead of first concatenating them into one
        activation-sized tensor (for GeGLU's Wi: 1536 values per token).
        """
        x = x.astype(self.dtype)
        kernels = jnp.split(self.kernel[...].astype(self.dtype), parts, axis=1)
        biases = jnp.split(self.bias[...].astype(self.dtype), parts) if self.bias is not None else [None] * parts
        dot = tf32.matmul if self.tf32_split else jnp.dot
        return [dot(x, k) if b is None else dot(x, k) + b for k, b in zip(kernels, biases)]


class LayerNorm(nnx.Module):
    """torch LayerNorm (biased variance), computed in float32, optional bias (ModernBERT has none)."""

    def __init__(self, dim: int, config: ModernBertConfig):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=("norm",)) if config.norm_bias else None
        self.eps = config.norm_eps
        self.dtype = jnp.dtype(config.dtype)
        self.backward, self.mesh = config.layer_norm_backward, config.mesh

    def __call__(self, x):
        bias = self.bias[...] if self.bias is not None else None
        return layer_norm(x, self.scale[...], bias, self.eps, self.dtype, self.backward, self.mesh)

    def add(self, h, delta):
        """(h + delta, norm(h + delta)): the residual add that precedes this norm, fused with it."""
        bias = self.bias[...] if self.bias is not None else None
        return add_layer_norm(h, delta, self.scale[...], bias, self.eps, self.dtype, self.backward, self.mesh)


class Embeddings(nnx.Module):
    def __init__(self, config: ModernBertConfig, rngs: nnx.Rngs):
        shape = (config.vocab_size, config.hidden_size)
        self.tok_embeddings = nnx.Param(
            trunc_normal(rngs.params(), shape, config.initializer_range, config.initializer_cutoff_factor),
            logical_axes=("vocab", "embed"),
        )
        self.norm = LayerNorm(config.hidden_size, config)
        self.pad_token_id = config.pad_token_id
        self.dropout = config.embedding_dropout

    def __call__(self, ids_BT, dropout_rng):
        x_BTD = jnp.take(self.tok_embeddings[...], ids_BT, axis=0)
        # torch's padding_idx: the lookup sends no gradient to the pad row (the tied decoder still does).
        x_BTD = jnp.where((ids_BT == self.pad_token_id)[..., None], jax.lax.stop_gradient(x_BTD), x_BTD)
        return apply_dropout(self.norm(x_BTD), self.dropout, dropout_rng)


class Attention(nnx.Module):
    def __init__(self, config: ModernBertConfig, layer_idx: int, stds: dict, rngs: nnx.Rngs):
        d = config.hidden_size
        self.Wqkv = Linear(d, 3 * d, std=stds["in"], config=config, use_bias=config.attention_bias,
                           axes=("embed", "qkv"), rngs=rngs)
        self.Wo = Linear(d, d, std=stds["out"], config=config, use_bias=config.attention_bias,
                         axes=("heads", "embed"), rngs=rngs)
        local = config.layer_types[layer_idx] == SLIDING
        self.window = config.local_attention // 2 if local else None
        self.theta = config.local_rope_theta if local else config.global_rope_theta
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.implementation = config.attn_implementation
        self.tf32x3 = config.tf32x3
        self.rope_in_kernel = config.rope_in_kernel
        self.mesh = config.mesh

    def __call__(self, x_BTD, segment_ids_BT, positions_BT, dropout_rng):
        B, T, _ = x_BTD.shape
        q_BTNH, k_BTNH, v_BTNH = (y.reshape(B, T, self.num_heads, self.head_dim) for y in self.Wqkv.split(x_BTD, 3))
        o_BTNH = attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT, window=self.window,
                           rope=rope_cos_sin(positions_BT, self.head_dim, self.theta),
                           rope_in_kernel=self.rope_in_kernel, implementation=self.implementation,
                           tf32x3=self.tf32x3, mesh=self.mesh, dropout_rate=self.dropout,
                           dropout_rng=fold_rng(dropout_rng, 0))
        return apply_dropout(self.Wo(o_BTNH.reshape(B, T, -1)), self.dropout, fold_rng(dropout_rng, 1))


def _gelu_cdf(x32):
    return 0.5 * (1.0 + jax.lax.erf(x32 * (2.0 ** -0.5)))


@jax.custom_vjp
def geglu(input_BTF, gate_BTF):
    """gelu(input) * gate with exact (erf) GELU; the backward recomputes GELU instead of storing it.

    GELU runs in float32 and is rounded to the input dtype before the product, as torch does
    under autocast; float32 erf is also far cheaper on GPU than jax.nn.gelu's bf16 erfc form.
    """
    x32 = input_BTF.astype(jnp.float32)
    gelu = (x32 * _gelu_cdf(x32)).astype(input_BTF.dtype)
    return gelu * gate_BTF


def _geglu_forward(input_BTF, gate_BTF):
    return geglu(input_BTF, gate_BTF), (input_BTF, gate_BTF)


def _geglu_backward(residuals, d_out):
    input_BTF, gate_BTF = residuals
    x = input_BTF.astype(jnp.float32)
    cdf = _gelu_cdf(x)
    pdf = jnp.exp(-0.5 * x * x) * (2.0 * math.pi) ** -0.5
    d32 = d_out.astype(jnp.float32)
    d_input = d32 * gate_BTF.astype(jnp.float32) * (cdf + x * pdf)
    return d_input.astype(input_BTF.dtype), (d32 * x * cdf).astype(gate_BTF.dtype)


geglu.defvjp(_geglu_forward, _geglu_backward)


class MLP(nnx.Module):
    """GeGLU: `input, gate = Wi(x).chunk(2)`; GELU applies to the first half."""

    def __init__(self, config: ModernBertConfig, stds: dict, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.Wi = Linear(d, 2 * f, std=stds["in"], config=config, use_bias=config.mlp_bias,
                         axes=("embed", "mlp"), rngs=rngs)
        self.Wo = Linear(f, d, std=stds["out"], config=config, use_bias=config.mlp_bias,
                         axes=("mlp", "embed"), rngs=rngs)
        self.dropout = config.mlp_dropout

    def __call__(self, x_BTD, dropout_rng):
        input_BTF, gate_BTF = self.Wi.split(x_BTD, 2)
        h_BTF = geglu(input_BTF, gate_BTF)
        return self.Wo(apply_dropout(h_BTF, self.dropout, dropout_rng))


class EncoderLayer(nnx.Module):
    def __init__(self, config: ModernBertConfig, layer_idx: int, stds: dict, rngs: nnx.Rngs):
        self.attn_norm = LayerNorm(config.hidden_size, config) if layer_idx > 0 else None
        self.attn = Attention(config, layer_idx, stds, rngs)
        self.mlp_norm = LayerNorm(config.hidden_size, config)
        self.mlp = MLP(config, stds, rngs)

    def __call__(self, h_BTD, pending_BTD, segment_ids_BT, positions_BT, dropout_rng):
        """Returns (residual stream, this layer's MLP output not yet added to it).

        Each residual add is done by the norm that follows it (LayerNorm.add), so the backward
        pass of add + norm is one kernel; `pending_BTD` is the previous layer's MLP output (None
        for layer 0, which has no attention norm).
        """
        if self.attn_norm is None:  # layer 0: the embeddings are normed already
            x_BTD = h_BTD
        else:
            h_BTD, x_BTD = self.attn_norm.add(h_BTD, pending_BTD)
        h_BTD, x_BTD = self.mlp_norm.add(h_BTD, self.attn(x_BTD, segment_ids_BT, positions_BT, fold_rng(dropout_rng, 0)))
        return h_BTD, self.mlp(x_BTD, fold_rng(dropout_rng, 1))


def _call_layer(layer: EncoderLayer, *args):
    return layer(*args)


def init_stds(config: ModernBertConfig) -> dict:
    return {
        "in": config.initializer_range,
        "out": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
    }


def resolve_inputs(input_ids_BT, attention_mask_BT, segment_ids_BT, positions_BT):
    """Segment ids and positions for either packed rows or the unpacked (attention_mask) form."""
    if segment_ids_BT is None:
        if attention_mask_BT is None:
            segment_ids_BT = jnp.ones(input_ids_BT.shape, jnp.int32)
        else:
            segment_ids_BT = (jnp.asarray(attention_mask_BT) != 0).astype(jnp.int32)
    if positions_BT is None:
        positions_BT = jnp.broadcast_to(jnp.arange(input_ids_BT.shape[1], dtype=jnp.int32), input_ids_BT.shape)
    return jnp.asarray(segment_ids_BT, jnp.int32), jnp.asarray(positions_BT, jnp.int32)


class ModernBertModel(nnx.Module):
    def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
        stds = init_stds(config)
        self.config = config
        self.embeddings = Embeddings(config, rngs)
        self.layers = nnx.List([EncoderLayer(config, i, stds, rngs) for i in range(config.num_hidden_layers)])
        self.final_norm = LayerNorm(config.hidden_size, config)

    def __call__(self, input_ids_BT, attention_mask_BT=None, *, segment_ids_BT=None, positions_BT=None,
                 dropout_rng=None):
        segment_ids_BT, positions_BT = resolve_inputs(input_ids_BT, attention_mask_BT, segment_ids_BT, positions_BT)
        h_BTD = self.embeddings(input_ids_BT, fold_rng(dropout_rng, 0))
        apply_layer = _call_layer
        if self.config.remat != "none":
            apply_layer = nnx.remat(_call_layer, policy=REMAT_POLICIES[self.config.remat])
        pending_BTD = None
        for i, layer in enumerate(self.layers):
            h_BTD, pending_BTD = apply_layer(layer, h_BTD, pending_BTD, segment_ids_BT, positions_BT,
                                             fold_rng(dropout_rng, i + 1))
        return self.final_norm(h_BTD if pending_BTD is None else h_BTD + pending_BTD)


class PredictionHead(nnx.Module):
    def __init__(self, config: ModernBertConfig, stds: dict, rngs: nnx.Rngs):
        d = config.hidden_size
        self.dense = Linear(d, d, std=stds["out"], config=config, use_bias=config.classifier_bias,
                            axes=("embed", "mlp"), rngs=rngs)
        self.norm = LayerNorm(d, config)

    def __call__(self, x):
        return self.norm(jax.nn.gelu(self.dense(x), approximate=False))


class ModernBertForMaskedLM(MaskedLM):
    """Encoder + MLM head; the decoder is tied to the token embedding and has its own bias."""

    def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
        if not config.tie_word_embeddings:
            raise ValueError("only tied decoder weights are supported (tie_word_embeddings=True)")
        self.config = config
        self.model = ModernBertModel(config, rngs=rngs)
        self.head = PredictionHead(config, init_stds(config), rngs)
        self.decoder_bias = (
            nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32), logical_axes=("vocab",))
            if config.decoder_bias else None
        )

    def _features(self, h_BTD):
        return self.head(h_BTD)

    def _decoder(self):
        dtype = jnp.dtype(self.config.dtype)
        embedding_VD = self.model.embeddings.tok_embeddings[...].astype(dtype)
        bias = self.decoder_bias[...] if self.decoder_bias is not None else jnp.zeros(embedding_VD.shape[0])
        return embedding_VD, bias.astype(dtype)


def logical_axes(state: nnx.State):
    """Pytree (same structure as `state`) of logical axis-name tuples, one per parameter."""
    return jax.tree.map(
        lambda v: v.get_metadata().get("logical_axes", (None,) * v[...].ndim),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
