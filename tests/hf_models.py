"""Tiny random transformers ModernBERT models for tests (nothing is downloaded)."""

import torch
from transformers import ModernBertConfig as HFConfig
from transformers import ModernBertForMaskedLM as HFMaskedLM

SPECIAL_IDS = dict(pad_token_id=3, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)


def hf_config(**overrides) -> HFConfig:
    kwargs = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=4, local_attention=16, **SPECIAL_IDS)
    kwargs.update(overrides)
    return HFConfig(**kwargs)


def hf_model(seed: int = 0, **overrides) -> HFMaskedLM:
    torch.manual_seed(seed)
    return HFMaskedLM(hf_config(**overrides)).eval()
