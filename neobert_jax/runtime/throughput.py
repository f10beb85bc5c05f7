"""Model FLOPs per step and per-device peak FLOP/s, for the MFU metric."""

from __future__ import annotations

from neobert_jax.runtime.model_init import architecture_of

# Dense peak FLOP/s per device by compute precision. TPUs list their bf16 MXU rate for every
# precision (fp32 matmuls run as several bf16 passes there, so fp32 MFU reads low).
_PEAKS = (
    ("H200", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}),
    ("H100", {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L4", {"bf16": 121e12, "tf32": 60e12, "fp32": 30e12}),
    ("TPU v4", {"bf16": 275e12, "tf32": 275e12, "fp32": 275e12}),
    ("TPU v5 lite", {"bf16": 197e12, "tf32": 197e12, "fp32": 197e12}),
    ("TPU v5", {"bf16": 459e12, "tf32": 459e12, "fp32": 459e12}),
    ("TPU v6", {"bf16": 918e12, "tf32": 918e12, "fp32": 918e12}),
)


def peak_flops_per_device(device_kind: str, precision: str) -> float:
    """0.0 when unknown (e.g. CPU): MFU is then reported as 0."""
    for name, peaks in _PEAKS:
        if name.lower() in device_kind.lower():
            return peaks[precision]
    return 0.0


def train_flops_per_step(config, rows: int, seq_len: int, predicted_tokens: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one optimizer step, for either architecture.

    Every position of every row is computed, so with P = rows * seq_len positions:
      encoder matmuls   6 * P * L * (4 D^2 + 3 D F)      (Wqkv, attn Wo, the gated MLP's D x 2F in and F x D out)
      attention         12 * P * L * D * seq_len         (QK^T and PV over the full row)
      MLM head          6 * predicted * (D^2 + D V)      (dense + decoder, predicted tokens only; NeoBERT: no dense)
    F is ModernBERT's intermediate_size (GeGLU) or NeoBERT's SwiGLU width. Embedding lookups, norms and
    softmax are left out, as is usual for MFU.
    """
    arch = architecture_of(config)
    d, f, n_layers = config.hidden_size, arch.mlp_width(config), config.num_hidden_layers
    positions = rows * seq_len
    encoder = 6 * positions * n_layers * (4 * d * d + 3 * d * f)
    attention = 12 * positions * n_layers * d * seq_len
    head = 6 * predicted_tokens * (d * d * arch.head_dense + d * config.vocab_size)
    return float(encoder + attention + head)
