"""NeoBERT in torch for transformers' remote code: the `modeling_neobert.py` that NeoBERT exports carry.

save_neobert_dir (and a classifier export) copies this file into the dir and points config.json's
`auto_map` at it, so the framework's users load an export as they load the release:
`AutoModelForMaskedLM.from_pretrained(dir, trust_remote_code=True)` (AutoModelForSequenceClassification,
AutoModelForTokenClassification for a fine-tuned classifier). Written for this project from
the architecture's description; state-dict keys are the release's (`model.transformer_encoder.0.qkv.weight`,
`ffn.w12.weight` ...). It imports nothing from neobert_jax: it must run where only torch and transformers are.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput,
                                           TokenClassifierOutput)


class NeoBERTConfig(PretrainedConfig):
    model_type = "neobert"

    def __init__(self, hidden_size=768, num_hidden_layers=28, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, max_length=4096, norm_eps=1e-5, rope_theta=10000.0, pad_token_id=0, dropout=0.0,
                 embedding_init_range=0.02, decoder_init_range=0.02, decoder_bias=True, tie_word_embeddings=False,
                 **kwargs):
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.vocab_size, self.max_length, self.norm_eps, self.rope_theta = vocab_size, max_length, norm_eps, rope_theta
        self.dropout, self.decoder_bias = dropout, decoder_bias
        self.embedding_init_range, self.decoder_init_range = embedding_init_range, decoder_init_range
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


def rotate_pairs(x, cos, sin):
    """Interleaved RoPE: (x[2i], x[2i+1]) rotated by angle i. x (B, T, N, H); cos, sin (T, H/2)."""
    even, odd = x.float()[..., 0::2], x.float()[..., 1::2]
    cos, sin = cos[None, :, None], sin[None, :, None]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(a) * b)


class EncoderBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.heads, self.dropout = config.num_attention_heads, config.dropout
        self.attention_norm = RMSNorm(d, config.norm_eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.ffn_norm = RMSNorm(d, config.norm_eps)
        self.ffn = SwiGLU(d, 8 * ((int(2 * config.intermediate_size / 3) + 7) // 8))
        self.resid_dropout, self.ffn_dropout = nn.Dropout(config.dropout), nn.Dropout(config.dropout)

    def forward(self, x, key_mask, cos, sin):
        B, T, D = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(B, T, self.heads, -1).chunk(3, dim=-1)  # per head [q; k; v]
        q, k = rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)
        out = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0).transpose(1, 2)
        x = x + self.resid_dropout(self.wo(out.reshape(B, T, D)))
        return x + self.ffn_dropout(self.ffn(self.ffn_norm(x)))


class NeoBERTPreTrainedModel(PreTrainedModel):
    config_class = NeoBERTConfig
    base_model_prefix = "model"

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.decoder_init_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.embedding_init_range)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class NeoBERT(NeoBERTPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.encoder = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.transformer_encoder = nn.ModuleList([EncoderBlock(config) for _ in range(config.num_hidden_layers)])
        self.layer_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **kwargs):
        T = input_ids.shape[1]
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        inv_freq = 1.0 / self.config.rope_theta ** (
            torch.arange(0, head_dim, 2, dtype=torch.float32, device=input_ids.device) / head_dim)
        angle = torch.arange(T, dtype=torch.float32, device=input_ids.device)[:, None] * inv_freq
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        key_mask = attention_mask.bool()[:, None, None, :]
        x = self.encoder(input_ids)
        hidden = [x]
        for block in self.transformer_encoder:
            x = block(x, key_mask, angle.cos(), angle.sin())
            hidden.append(x)
        x = self.layer_norm(x)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(hidden) if output_hidden_states else None)


class NeoBERTLMHead(NeoBERTPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = NeoBERT(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        if config.tie_word_embeddings:  # shared by hand: transformers' tying API differs between 4.x and 5.x
            self.decoder.weight = self.model.encoder.weight
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        out = self.model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        logits = self.decoder(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1),
                                               ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def sequence_loss(config, logits, labels):
    """transformers' loss of config.problem_type (inferred from the labels when unset, as transformers does)."""
    problem = config.problem_type
    if problem is None:
        integer = labels.dtype in (torch.long, torch.int)
        problem = ("regression" if config.num_labels == 1 else
                   "single_label_classification" if integer else "multi_label_classification")
    if problem == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
    if problem == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, config.num_labels).float(), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())


class NeoBERTForSequenceClassification(NeoBERTPreTrainedModel):
    """The first token of the final normed hidden state (config.classifier_pooling "mean": the masked
    mean), dropout, dense H -> H, tanh, dropout, classifier: the release's head, with its key names."""

    def __init__(self, config):
        super().__init__(config)
        self.model = NeoBERT(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", 0.0) or 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        out = self.model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        h = out.last_hidden_state
        if getattr(self.config, "classifier_pooling", "cls") == "mean":
            mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask)[..., None].to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1)
        else:
            pooled = h[:, 0]
        logits = self.classifier(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))
        loss = None if labels is None else sequence_loss(self.config, logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class NeoBERTForTokenClassification(NeoBERTPreTrainedModel):
    """Dropout and a classifier on every token's final normed hidden state."""

    def __init__(self, config):
        super().__init__(config)
        self.model = NeoBERT(config)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", 0.0) or 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_hidden_states=False, **kwargs):
        out = self.model(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1),
                                               ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
