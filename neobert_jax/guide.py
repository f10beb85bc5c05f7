"""GUIDE initialization (arXiv 2510.06502): shrink a teacher ModernBERT into a narrower student.

The teacher's token embeddings are PCA-projected to the student width; chosen teacher layers
have their input dimension projected with the same basis M and keep a subset of heads and
GeGLU neurons, with their outputs projected back by Mᵀ. Every other student tensor keeps
the HF-identical default init, so the result is a normal checkpoint that pretraining loads.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.hf.weights import load_state_dict_into_model
from neobert_jax.model import ModernBertForMaskedLM


class GuideError(ValueError):
    """Teacher and requested student do not fit together."""


@dataclasses.dataclass(frozen=True)
class Pca:
    mean_D: np.ndarray            # teacher embedding mean (D_t,)
    components_KD: np.ndarray     # orthonormal rows; M = components_KD.T
    scores_VK: np.ndarray         # centred, projected embeddings (no whitening)
    explained_variance_ratio: float


def pca(embedding_VD: np.ndarray, k: int) -> Pca:
    """PCA by SVD in float64; each component's largest-magnitude loading is made positive."""
    x = np.asarray(embedding_VD, np.float64)
    mean = x.mean(0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:k]
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(1)])
    components = components * signs[:, None]
    ratio = float((s[:k] ** 2).sum() / (s ** 2).sum())
    return Pca(mean, components, centred @ components.T, ratio)


def select(total: int, keep: int, how: str) -> np.ndarray:
    """Indices of the kept heads/neurons: the first `keep`, or spread evenly (the paper's choice)."""
    if how == "prefix":
        return np.arange(keep)
    if how == "uniform":
        return np.round(np.linspace(0, total - 1, keep)).astype(int)  # distinct while keep <= total
    raise GuideError(f"selection must be 'prefix' or 'uniform', got {how!r}")


def _check(teacher: ModernBertConfig, student: ModernBertConfig, layer_map: dict[int, int]):
    if student.hidden_size > teacher.hidden_size:
        raise GuideError(f"student hidden_size {student.hidden_size} is wider than the teacher's {teacher.hidden_size}")
    if student.head_dim != teacher.head_dim:
        raise GuideError(f"student head_dim {student.head_dim} (hidden {student.hidden_size} / "
                         f"{student.num_attention_heads} heads) must equal the teacher's {teacher.head_dim}")
    if student.num_attention_heads > teacher.num_attention_heads:
        raise GuideError(f"student has {student.num_attention_heads} heads, the teacher only "
                         f"{teacher.num_attention_heads}")
    if student.intermediate_size > teacher.intermediate_size:
        raise GuideError(f"student intermediate_size {student.intermediate_size} exceeds the teacher's "
                         f"{teacher.intermediate_size}")
    if student.vocab_size != teacher.vocab_size:
        raise GuideError(f"student vocab_size {student.vocab_size} differs from the teacher's {teacher.vocab_size}")
    for t, s in layer_map.items():
        if not 0 <= t < teacher.num_hidden_layers:
            raise GuideError(f"teacher layer {t} does not exist (the teacher has {teacher.num_hidden_layers})")
        if not 0 <= s < student.num_hidden_layers:
            raise GuideError(f"student layer {s} does not exist (the student has {student.num_hidden_layers})")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(teacher, name):
            raise GuideError(f"teachers with {name}=True are not supported")


def project_layer(teacher_sd: dict, t: int, m_DK: np.ndarray, heads: np.ndarray, neurons: np.ndarray,
                  teacher: ModernBertConfig) -> dict[str, np.ndarray]:
    """Student tensors (torch layout) for one layer from teacher layer `t`."""
    hd, f_t = teacher.head_dim, teacher.intermediate_size
    pre = f"model.layers.{t}."
    head_rows = (heads[:, None] * hd + np.arange(hd)).reshape(-1)
    wqkv = teacher_sd[pre + "attn.Wqkv.weight"].astype(np.float64) @ m_DK           # (3·D_t, K)
    q, k, v = np.split(wqkv, 3, axis=0)
    wi = teacher_sd[pre + "mlp.Wi.weight"].astype(np.float64) @ m_DK                # (2·F_t, K)
    wi_input, wi_gate = wi[:f_t], wi[f_t:]
    out = {
        "attn.Wqkv.weight": np.concatenate([q[head_rows], k[head_rows], v[head_rows]]),
        "attn.Wo.weight": m_DK.T @ teacher_sd[pre + "attn.Wo.weight"].astype(np.float64)[:, head_rows],
        "mlp.Wi.weight": np.concatenate([wi_input[neurons], wi_gate[neurons]]),
        "mlp.Wo.weight": m_DK.T @ teacher_sd[pre + "mlp.Wo.weight"].astype(np.float64)[:, neurons],
    }
    return {k: v.astype(np.float32) for k, v in out.items()}


def guide_init(teacher_sd: dict[str, np.ndarray], teacher: ModernBertConfig, student: ModernBertConfig, *,
               layer_map: dict[int, int] | None = None, selection: str = "prefix", seed: int = 0):
    """Returns (student model, explained variance ratio, names of GUIDE-initialized tensors)."""
    layer_map = {0: 0} if layer_map is None else layer_map
    sd = {("model." + k if not k.startswith(("model.", "head.", "decoder.")) else k): v
          for k, v in teacher_sd.items()}
    emb_key = "model.embeddings.tok_embeddings.weight"
    if emb_key not in sd:
        raise GuideError(f"teacher has no tensor {emb_key}")
    if sd[emb_key].shape[0] != teacher.vocab_size:
        raise GuideError(f"teacher {emb_key} has {sd[emb_key].shape[0]} rows but its config says vocab_size "
                         f"{teacher.vocab_size}")
    _check(teacher, student, layer_map)
    projection = pca(sd[emb_key], student.hidden_size)
    m_DK = projection.components_KD.T
    heads = select(teacher.num_attention_heads, student.num_attention_heads, selection)
    neurons = select(teacher.intermediate_size, student.intermediate_size, selection)
    tensors = {emb_key: projection.scores_VK.astype(np.float32)}
    for t, s in layer_map.items():
        for name, value in project_layer(sd, t, m_DK, heads, neurons, teacher).items():
            tensors[f"model.layers.{s}.{name}"] = value
    model = ModernBertForMaskedLM(student, rngs=nnx.Rngs(seed))
    load_state_dict_into_model(model, tensors, source="GUIDE projection")
    return model, projection.explained_variance_ratio, sorted(tensors)


def parse_layer_map(spec: str) -> dict[int, int]:
    """'0' -> {0: 0}; '0,1' -> identity; '0:0,6:1' -> teacher:student pairs."""
    try:
        pairs = [item.split(":") if ":" in item else (item, item) for item in spec.split(",") if item.strip()]
        layer_map = {int(t): int(s) for t, s in pairs}
    except ValueError:
        raise GuideError(f"--layers {spec!r}: expected e.g. '0', '0,1,2' or '0:0,6:1'") from None
    if len(set(layer_map.values())) != len(layer_map):
        raise GuideError(f"--layers {spec!r}: a student layer is initialized twice")
    return layer_map
