"""GUIDE initialization (arXiv 2510.06502): shrink a teacher into a narrower student of its architecture.

The teacher's token embeddings are PCA-projected to the student width; chosen teacher layers
have their input dimension projected with the same basis M and keep a subset of heads and
gated-FFN neurons, with their outputs projected back by Mᵀ. Every other student tensor keeps
the HF-identical default init, so the result is a normal checkpoint that pretraining loads.

This module holds what both architectures share (PCA, selection, checks, the per-block
projection, the layer map) and the ModernBERT path; guide_neobert.py maps NeoBERT's tensors
onto the same steps, and `guide_init` dispatches on the config's type.

Norm weights (LayerNorm here, RMSNorm in NeoBERT) keep their default init of ones, as in the
users' script: a per-dimension scale is diagonal in the teacher's coordinates but Mᵀ·diag(w)·M
is not diagonal in the student's, so no student norm weight represents it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.hf.weights import load_state_dict_into_model
from neobert_jax.model import ModernBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig


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


def _check(teacher, student, layer_map: dict[int, int], ffn_widths: tuple[int, int]):
    if student.hidden_size > teacher.hidden_size:
        raise GuideError(f"student hidden_size {student.hidden_size} is wider than the teacher's {teacher.hidden_size}")
    if student.head_dim != teacher.head_dim:
        raise GuideError(f"student head_dim {student.head_dim} (hidden {student.hidden_size} / "
                         f"{student.num_attention_heads} heads) must equal the teacher's {teacher.head_dim}")
    if student.num_attention_heads > teacher.num_attention_heads:
        raise GuideError(f"student has {student.num_attention_heads} heads, the teacher only "
                         f"{teacher.num_attention_heads}")
    if ffn_widths[1] > ffn_widths[0]:
        raise GuideError(f"student intermediate_size {student.intermediate_size} gives an FFN {ffn_widths[1]} "
                         f"wide, wider than the teacher's {ffn_widths[0]} (intermediate_size "
                         f"{teacher.intermediate_size})")
    if student.vocab_size != teacher.vocab_size:
        raise GuideError(f"student vocab_size {student.vocab_size} differs from the teacher's {teacher.vocab_size}")
    for t, s in layer_map.items():
        if not 0 <= t < teacher.num_hidden_layers:
            raise GuideError(f"teacher layer {t} does not exist (the teacher has {teacher.num_hidden_layers})")
        if not 0 <= s < student.num_hidden_layers:
            raise GuideError(f"student layer {s} does not exist (the student has {student.num_hidden_layers})")


def plan(embedding_VD: np.ndarray, teacher, student, layer_map: dict[int, int], selection: str,
         ffn_widths: tuple[int, int]) -> tuple[Pca, np.ndarray, np.ndarray]:
    """Checks the pair, then (PCA of the teacher's embedding, kept heads, kept FFN neurons)."""
    if embedding_VD.shape[0] != teacher.vocab_size:
        raise GuideError(f"the teacher's token embedding has {embedding_VD.shape[0]} rows but its config says "
                         f"vocab_size {teacher.vocab_size}")
    _check(teacher, student, layer_map, ffn_widths)
    heads = select(teacher.num_attention_heads, student.num_attention_heads, selection)
    neurons = select(ffn_widths[0], ffn_widths[1], selection)
    return pca(embedding_VD, student.hidden_size), heads, neurons


def project_block(qkv: np.ndarray, wo: np.ndarray, w_in: np.ndarray, w_out: np.ndarray, m_DK: np.ndarray,
                  heads: np.ndarray, neurons: np.ndarray, head_dim: int) -> tuple[np.ndarray, ...]:
    """One block's student matrices (torch [out, in] layout, float32) from the teacher's.

    qkv: rows [Q; K; V], each head-major; w_in: rows [gated branch; other branch] of a gated FFN
    (GeGLU, SwiGLU). Inputs are projected by M, outputs by Mᵀ; the kept heads' rows of Q, K and V
    and the kept neurons' rows of both FFN branches stay aligned.
    """
    head_rows = (heads[:, None] * head_dim + np.arange(head_dim)).reshape(-1)
    q, k, v = np.split(qkv.astype(np.float64) @ m_DK, 3, axis=0)
    gated, other = np.split(w_in.astype(np.float64) @ m_DK, 2, axis=0)
    out = (np.concatenate([q[head_rows], k[head_rows], v[head_rows]]),
           m_DK.T @ wo.astype(np.float64)[:, head_rows],
           np.concatenate([gated[neurons], other[neurons]]),
           m_DK.T @ w_out.astype(np.float64)[:, neurons])
    return tuple(x.astype(np.float32) for x in out)


def guide_init(teacher_sd: dict[str, np.ndarray], teacher, student, *, layer_map: dict[int, int] | None = None,
               selection: str = "prefix", seed: int = 0):
    """Returns (student model, explained variance ratio, names of GUIDE-initialized tensors).

    teacher_sd: the teacher checkpoint's state dict (torch layout, MLM or bare); the configs'
    type (ModernBertConfig or NeoBertConfig) picks the architecture, which both must share.
    """
    layer_map = {0: 0} if layer_map is None else layer_map
    if type(teacher) is not type(student):
        names = (type(c).__name__.removesuffix("Config") for c in (teacher, student))
        raise GuideError("the teacher is a {} and the student a {}: GUIDE maps within one architecture".format(*names))
    if isinstance(teacher, NeoBertConfig):
        from neobert_jax.guide_neobert import guide_neobert  # here: it imports this module

        return guide_neobert(teacher_sd, teacher, student, layer_map, selection, seed)
    return _guide_modernbert(teacher_sd, teacher, student, layer_map, selection, seed)


def _guide_modernbert(teacher_sd: dict, teacher: ModernBertConfig, student: ModernBertConfig,
                      layer_map: dict[int, int], selection: str, seed: int):
    sd = {("model." + k if not k.startswith(("model.", "head.", "decoder.")) else k): v
          for k, v in teacher_sd.items()}
    emb_key = "model.embeddings.tok_embeddings.weight"
    if emb_key not in sd:
        raise GuideError(f"teacher has no tensor {emb_key}")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(teacher, name):
            raise GuideError(f"teachers with {name}=True are not supported")
    projection, heads, neurons = plan(sd[emb_key], teacher, student, layer_map, selection,
                                      (teacher.intermediate_size, student.intermediate_size))
    m_DK = projection.components_KD.T
    tensors = {emb_key: projection.scores_VK.astype(np.float32)}
    names = ("attn.Wqkv.weight", "attn.Wo.weight", "mlp.Wi.weight", "mlp.Wo.weight")
    for t, s in layer_map.items():
        block = project_block(*(sd[f"model.layers.{t}.{n}"] for n in names), m_DK, heads, neurons, teacher.head_dim)
        tensors.update({f"model.layers.{s}.{n}": value for n, value in zip(names, block)})
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
