"""Run hand-written kernels on each device's share of the batch.

Why: XLA cannot partition a Pallas kernel (a custom call). Under a jit whose inputs are split over
several devices it would gather the whole batch onto every device and run the kernel there (GPU),
or refuse to compile (TPU). A model whose config carries the run's mesh (ModernBertConfig.mesh, set
by the run's setup) wraps each kernel call in a shard_map over the mesh axes that split the batch,
so it sees only its device's rows. Without a mesh, or with one batch shard, the kernel runs as is.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec

BATCH_AXES = ("data", "fsdp")  # mesh axes that split batch rows; "tensor" splits parameters


def batch_axes(mesh: Mesh | None) -> tuple[str, ...]:
    """The axes of `mesh` (size > 1) that split the batch; () when there are none."""
    if mesh is None:
        return ()
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)


def per_batch_shard(fn: Callable, mesh: Mesh | None, in_kinds: Sequence[str], out_kinds: Sequence[str]) -> Callable:
    """fn, run per device on its rows when `mesh` splits the batch.

    Kinds, one per positional input / output (fn returns a tuple): "rows" (dim 0 is the batch or
    rows derived from it), "whole" (the same on every device), and for outputs "sum" (a per-device
    partial sum, added across devices).
    """
    axes = batch_axes(mesh)
    if not axes:
        return fn
    spec = {"rows": PartitionSpec(axes), "whole": PartitionSpec(), "sum": PartitionSpec()}

    def local(*args):
        outs = fn(*args)
        return tuple(jax.lax.psum(o, axes) if k == "sum" else o for o, k in zip(outs, out_kinds))

    return jax.shard_map(local, mesh=mesh, in_specs=tuple(spec[k] for k in in_kinds),
                         out_specs=tuple(spec[k] for k in out_kinds), check_vma=False)
