"""GUIDE between NeoBERTs: guide.py's steps on NeoBERT's tensors.

Per chosen layer, `qkv` and the packed SwiGLU input `ffn.w12` (rows [w1, the SiLU branch; w2])
have their input projected by M and keep the selected heads / neurons; `wo` and `ffn.w3` keep
their columns and have their output projected by Mᵀ. The checkpoint's per-head `qkv` rows are
rearranged to our [q; k; v] layout for the shared projection and back for loading
(hf/neobert.py); the RoPE permutation inside each head moves no row to another head.

As in the ModernBERT path, the RMSNorm weights (guide.py says why), the final norm, and an
untied decoder with its bias keep their default init; a tied student's decoder is the projected
embedding itself. There is no embedding norm to carry over.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from neobert_jax.guide import GuideError, plan, project_block
from neobert_jax.hf.neobert import load_neobert_state_dict, normalized_state_dict, qkv_from_ours, qkv_to_ours
from neobert_jax.model.neobert import NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig


def guide_neobert(teacher_sd: dict[str, np.ndarray], teacher: NeoBertConfig, student: NeoBertConfig,
                  layer_map: dict[int, int], selection: str, seed: int):
    """guide.guide_init for NeoBERT: (student model, explained variance ratio, GUIDE-initialized names)."""
    sd = normalized_state_dict(teacher_sd)
    emb_key = "model.encoder.weight"
    if emb_key not in sd:
        raise GuideError(f"teacher has no tensor {emb_key}: not a NeoBERT checkpoint")
    projection, heads, neurons = plan(sd[emb_key], teacher, student, layer_map, selection,
                                      (teacher.ffn_size, student.ffn_size))
    m_DK = projection.components_KD.T
    tensors = {emb_key: projection.scores_VK.astype(np.float32)}
    names = ("qkv.weight", "wo.weight", "ffn.w12.weight", "ffn.w3.weight")
    for t, s in layer_map.items():
        keys = [f"model.transformer_encoder.{t}.{n}" for n in names]
        if missing := [k for k in keys if k not in sd]:
            raise GuideError(f"teacher has no tensor {missing[0]}")
        qkv, wo, w12, w3 = project_block(qkv_to_ours(sd[keys[0]], teacher.num_attention_heads),
                                         *(sd[k] for k in keys[1:]), m_DK, heads, neurons, teacher.head_dim)
        block = (qkv_from_ours(qkv, student.num_attention_heads), wo, w12, w3)
        tensors.update({f"model.transformer_encoder.{s}.{n}": value for n, value in zip(names, block)})
    model = NeoBertForMaskedLM(student, rngs=nnx.Rngs(seed))
    load_neobert_state_dict(model, tensors, source="GUIDE projection")
    return model, projection.explained_variance_ratio, sorted(tensors)
