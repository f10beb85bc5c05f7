"""The Flax NeoBERT computes what a plain torch NeoBERT computes, through the checkpoint conversion.

The torch reference below is written from the architecture's description (issue 18), not from
our Flax code: interleaved RoPE on (x[2i], x[2i+1]) pairs, qkv rows per head [q_h; k_h; v_h],
RMSNorm, SwiGLU `w3(silu(w1 x) * w2 x)` with w1, w2 packed as w12 (the release) or separate (the fork).
"""

import numpy as np
import pytest
import torch
from flax import nnx

from neobert_jax.hf.neobert import load_neobert_state_dict, neobert_state_dict_from_model
from neobert_jax.model.neobert import NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def interleaved_rope(x, theta):
    """x (B, T, N, H): pair (x[2i], x[2i+1]) rotated by position * theta^(-2i/H)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = (torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv_freq)[None, :, None]
    cos, sin = angle.cos().float(), angle.sin().float()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class FFN(torch.nn.Module):
    def __init__(self, dim, hidden, packed):
        super().__init__()
        self.packed = packed
        if packed:
            self.w12 = torch.nn.Linear(dim, 2 * hidden, bias=False)
        else:
            self.w1 = torch.nn.Linear(dim, hidden, bias=False)
            self.w2 = torch.nn.Linear(dim, hidden, bias=False)
        self.w3 = torch.nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1) if self.packed else (self.w1(x), self.w2(x))
        return self.w3(torch.nn.functional.silu(a) * b)


class Block(torch.nn.Module):
    def __init__(self, c, packed):
        super().__init__()
        d = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.theta = c.get("rope_theta", 10000.0)
        self.attention_norm = RMSNorm(d, c["norm_eps"])
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.wo = torch.nn.Linear(d, d, bias=False)
        self.ffn_norm = RMSNorm(d, c["norm_eps"])
        hidden = 8 * ((int(2 * c["intermediate_size"] / 3) + 7) // 8)
        self.ffn = FFN(d, hidden, packed)

    def forward(self, x, key_mask):
        B, T, D = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(B, T, self.heads, -1).chunk(3, dim=-1)
        q, k = interleaved_rope(q, self.theta), interleaved_rope(k, self.theta)
        scores = torch.einsum("btnh,bsnh->bnts", q, k) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = torch.einsum("bnts,bsnh->btnh", scores.softmax(-1), v).reshape(B, T, D)
        x = x + self.wo(out)
        return x + self.ffn(self.ffn_norm(x))


class Encoder(torch.nn.Module):
    def __init__(self, c, packed):
        super().__init__()
        self.encoder = torch.nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=c["pad_token_id"])
        self.transformer_encoder = torch.nn.ModuleList([Block(c, packed) for _ in range(c["num_hidden_layers"])])
        self.layer_norm = RMSNorm(c["hidden_size"], c["norm_eps"])

    def forward(self, ids, mask):
        x = self.encoder(ids)
        for block in self.transformer_encoder:
            x = block(x, mask.bool())
        return self.layer_norm(x)


class TorchNeoBERT(torch.nn.Module):
    def __init__(self, c, packed):
        super().__init__()
        self.model = Encoder(c, packed)
        self.decoder = torch.nn.Linear(c["hidden_size"], c["vocab_size"], bias=c.get("decoder_bias", True))
        if c.get("tie_word_embeddings", False):
            self.decoder.weight = self.model.encoder.weight

    def forward(self, ids, mask):
        return self.decoder(self.model(ids, mask))


def release_config(**overrides):
    """A tiny config.json dict in the release's layout (no rope_theta: its code fixes 10000)."""
    c = dict(model_type="neobert", architectures=["NeoBERTLMHead"], hidden_size=64, num_hidden_layers=3,
             num_attention_heads=4, dim_head=16, intermediate_size=96, vocab_size=200, max_length=128,
             norm_eps=1e-5, pad_token_id=0, rms_norm=True, rope=True, hidden_act="SwiGLU", ngpt=False,
             flash_attention=True, dropout=0.0, embedding_init_range=0.02, decoder_init_range=0.02)
    c.update(overrides)
    return c


CASES = {  # name: (config.json overrides, packed w12)
    "release_untied_w12": (dict(), True),
    "fork_tied_w1w2_no_bias_theta": (dict(tie_word_embeddings=True, decoder_bias=False, rope_theta=500.0,
                                          intermediate_size=100), False),
    "tied_with_bias_w12": (dict(tie_word_embeddings=True, num_attention_heads=2, dim_head=32), True),
}


def torch_model(c, packed, seed=0):
    torch.manual_seed(seed)
    model = TorchNeoBERT(c, packed).eval()
    with torch.no_grad():  # norm weights and the decoder bias away from their init, so a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name == "decoder.bias":
                p.copy_(0.1 * torch.randn_like(p))
    return model


def numpy_state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def converted(c, state_dict, **runtime):
    model = NeoBertForMaskedLM(NeoBertConfig.from_hf_dict(c, **runtime), rngs=nnx.Rngs(1))
    newly, ignored = load_neobert_state_dict(model, state_dict)
    assert newly == [] and ignored == []
    return model


def padded_batch(vocab, seq, lengths, seed=0):
    ids = np.random.RandomState(seed).randint(1, vocab, (len(lengths), seq)).astype(np.int32)
    mask = (np.arange(seq)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_torch_and_round_trip_is_bit_exact(name):
    overrides, packed = CASES[name]
    c = release_config(**overrides)
    reference = torch_model(c, packed)
    state_dict = numpy_state_dict(reference)
    model = converted(c, state_dict)
    ids, mask = padded_batch(c["vocab_size"], 40, [40, 23, 7])
    with torch.no_grad():
        want = reference(torch.tensor(ids, dtype=torch.long), torch.tensor(mask)).numpy()
    got = np.asarray(model(ids, mask))
    diff = np.abs(got - want)[mask.astype(bool)]
    assert diff.max() <= 1e-4, diff.max()

    back = neobert_state_dict_from_model(model, layout="w12" if packed else "w1w2")
    assert sorted(back) == sorted(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_either_layout_loads_to_the_same_model():
    c = release_config()
    packed = numpy_state_dict(torch_model(c, packed=True))
    split = dict(packed)
    for layer in range(c["num_hidden_layers"]):
        prefix = f"model.transformer_encoder.{layer}.ffn."
        split[prefix + "w1.weight"], split[prefix + "w2.weight"] = np.split(split.pop(prefix + "w12.weight"), 2)
    a, b = (neobert_state_dict_from_model(converted(c, sd)) for sd in (packed, split))
    assert all(np.array_equal(a[k], b[k]) for k in a) and sorted(a) == sorted(packed)


def test_packed_row_equals_documents_run_alone():
    c = release_config()
    model = converted(c, numpy_state_dict(torch_model(c, packed=True)))
    docs = [np.random.RandomState(i).randint(1, 200, n).astype(np.int32) for i, n in enumerate([19, 33])]
    seq = sum(map(len, docs)) + 6
    ids, seg, pos = (np.zeros((1, seq), np.int32) for _ in range(3))
    start = 0
    for i, doc in enumerate(docs):
        ids[0, start:start + len(doc)], seg[0, start:start + len(doc)] = doc, i + 1
        pos[0, start:start + len(doc)] = np.arange(len(doc))
        start += len(doc)
    packed = np.asarray(model(ids, segment_ids_BT=seg, positions_BT=pos))
    start = 0
    for doc in docs:
        alone = np.asarray(model(doc[None]))[0]
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone, atol=2e-5, rtol=0)
        start += len(doc)


def test_fused_loss_matches_logits_and_the_tied_decoder_is_checked():
    import jax.numpy as jnp
    import optax

    from neobert_jax.hf.weights import ConversionError

    c = release_config(tie_word_embeddings=True)
    state_dict = numpy_state_dict(torch_model(c, packed=True))
    model = converted(c, state_dict)
    ids, mask = padded_batch(200, 16, [16, 11])
    labels = np.where(np.arange(16)[None] % 3 == 0, ids, -100)
    logits = model(ids, mask).astype(jnp.float32)
    want = optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(labels, 0))
    got = model.mlm_nll(ids, labels, attention_mask_BT=mask)
    np.testing.assert_allclose(np.asarray(got), np.where(labels >= 0, want, 0.0), rtol=1e-5, atol=1e-6)

    state_dict["decoder.weight"] = state_dict["decoder.weight"] + 1.0
    with pytest.raises(ConversionError, match="decoder.weight differs"):
        converted(c, state_dict)


def test_config_reads_the_release_fields_and_refuses_other_variants():
    c = NeoBertConfig.from_hf_dict(release_config(max_length=4096))
    assert (c.max_length, c.rope_theta, c.ffn_size, c.head_dim) == (4096, 10000.0, 64, 16)
    assert not c.tie_word_embeddings and c.decoder_bias
    assert NeoBertConfig(intermediate_size=3072).ffn_size == 2048
    assert NeoBertConfig.from_hf_dict(c.to_hf_dict()) == c
    for bad in (dict(ngpt=True), dict(rms_norm=False), dict(hidden_act="gelu"), dict(model_type="modernbert")):
        with pytest.raises(ValueError):
            NeoBertConfig.from_hf_dict(release_config(**bad))
