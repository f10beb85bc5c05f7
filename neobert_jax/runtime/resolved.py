"""What a run decided that its config left open, in one frozen record.

The config is never modified after `validate`: a task's setup builds a `Resolved` once it has read
what the decisions need (tokenizer, data, init_from), before anything is written, and the rest of
the run reads the record. `run_config.json` is the config the run used (the config as given with
the record's config keys settled, the layout earlier releases wrote, so `check_resume` and older
run dirs read it the same way), plus `resolved` (this record) and `given` (the values the settled
keys had in the config as given, where they differ).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from neobert_jax.config import FULL
from neobert_jax.model.attention import choose_backend, runs_per_device
from neobert_jax.runtime.model_init import matmul_precision


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resolved:
    batch_size: int  # global rows (MLM) or examples (contrastive) per step; MLM's train.batch_size=0 is automatic
    # optimizer steps per compiled call; MLM's train.steps_per_call=0 is automatic; contrastive: 1 (its
    # batches differ in shape, so they do not stack)
    steps_per_call: int
    total_steps: int  # train.max_steps, or train.epochs x the data's steps per epoch
    matmul_precision: str  # jax's default matmul precision for train.precision on this platform
    # XLA_FLAGS the backend started with: `xla_flags(train.precision, the environment's)`, which the command
    # line sets once at process start (the one setting needed before JAX starts its backend)
    xla_flags: str
    attention: dict  # layer kind ("global", "local") -> the attention backend it runs
    layer_norm_backward: str  # the LayerNorm backward kernel, model.layer_norm_backward's "auto" resolved
    logsumexp: str  # the MLM head's kernel, model.logsumexp's "auto" resolved
    # MLM: model.* keys left None, taken from init_from or the architecture's defaults (None: it has no such setting)
    model: dict = dataclasses.field(default_factory=dict)
    row_shapes: str | None = None  # contrastive: data.row_shapes, "auto" resolved
    labels: list[str] | None = None  # classification: the outputs' names, in the classifier's order
    row_length: int | None = None  # classification: the tokens of each training row
    rows: int | None = None  # classification: the rows of a step (its examples packed)

    def config_keys(self) -> dict:
        """Config key -> the value the run used, for the keys this record settles."""
        keys = {"train.batch_size": self.batch_size, "train.steps_per_call": self.steps_per_call,
                "model.layer_norm_backward": self.layer_norm_backward, "model.logsumexp": self.logsumexp,
                **{f"model.{k}": v for k, v in self.model.items()}}
        if self.row_shapes is not None:
            keys["data.row_shapes"] = self.row_shapes
        return keys

    def run_config(self, config) -> str:
        """run_config.json's text (module docstring); keys the task's config lacks are left out."""
        used = json.loads(config.to_json())
        given = {}
        for key, value in self.config_keys().items():
            *path, name = key.split(".")
            section = used
            for part in path:
                section = section.get(part, {})
            if name in section:
                if section[name] != value:
                    given[key] = section[name]
                section[name] = value
        return json.dumps({**used, "resolved": dataclasses.asdict(self), "given": given}, indent=2)


# XLA flags each train.precision adds (a flag the user set wins). bf16 on GPU: cuBLAS for every matmul
# instead of XLA's Triton GEMM fusions, and no dot merging, which would concatenate the q/k/v projections'
# gradients before their weight-gradient matmul; the Triton flag slows fp32's 3-pass-TF32 path, so fp32 keeps
# XLA's defaults (docs/performance.md). Other backends ignore them.
PRECISION_XLA_FLAGS = {"bf16": (("xla_gpu_enable_triton_gemm", "false"), ("xla_gpu_dot_merger_threshold_mb", "0"))}


def xla_flags(precision: str, given: str) -> str:
    """The XLA_FLAGS of a run at `precision` whose environment gives `given`: `given` plus the precision's
    flags it does not name. A plain function of the config and the environment, because it must be
    settled before JAX starts its backend, long before the rest of the record can be (which needs the
    platform, the tokenizer and the data); the command line applies it (neobert_jax.runtime.cli)."""
    flags = given
    for name, value in PRECISION_XLA_FLAGS.get(precision, ()):
        if name not in flags:
            flags = f"{flags} --{name}={value}".strip()
    return flags


def attention_backends(model_config) -> dict[str, str]:
    """The backend of each layer kind the model has: "auto" is `choose_backend` of what the trace
    sees (per device where the model has the run's mesh), anything else runs as named."""
    kinds = {"global" if kind == FULL else "local" for kind in model_config.layer_types}
    name = model_config.attn_implementation
    return {kind: name if name != "auto" else choose_backend(
        jax.default_backend(), model_config.dtype == "float32", kind == "local",
        tf32x3=model_config.tf32x3, per_device=runs_per_device(model_config.mesh)) for kind in sorted(kinds)}


def resolve(config, model_config, *, batch_size: int, total_steps: int, steps_per_call: int = 1,
            model: dict | None = None, row_shapes: str | None = None, labels: list[str] | None = None,
            row_length: int | None = None, rows: int | None = None) -> Resolved:
    """The record of a run whose model (with its runtime fields) is `model_config`, of either architecture."""
    precision = matmul_precision(config.train.precision)
    return Resolved(batch_size=batch_size, steps_per_call=steps_per_call, total_steps=total_steps,
                    matmul_precision=precision, xla_flags=os.environ.get("XLA_FLAGS", ""),  # as in effect
                    attention=attention_backends(model_config),
                    layer_norm_backward=model_config.layer_norm_backward, logsumexp=model_config.logsumexp,
                    model=dict(model or {}), row_shapes=row_shapes, labels=None if labels is None else list(labels),
                    row_length=row_length, rows=rows)
