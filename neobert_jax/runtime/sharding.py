"""Device mesh, logical-axis rules, and the shardings of parameters and batches.

The model names each parameter dimension with a logical axis (`vocab`, `embed`, `qkv`,
`heads`, `mlp`, `norm`); `LOGICAL_RULES` maps those onto the mesh axes. The same code then
runs data-parallel (mesh.data), fully sharded (mesh.fsdp: parameters and optimizer state
split along `embed`), or tensor-parallel (mesh.tensor), in any combination.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neobert_jax.model.shards import BATCH_AXES  # batch rows are split over every non-tensor device

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES = {
    "vocab": "tensor",
    "embed": "fsdp",
    "qkv": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
    "norm": None,
}


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Mesh over all devices with sizes from the config; one size may be -1 (the rest). The sizes
    themselves are checked by validate (neobert_jax.runtime.config); here only what needs the devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [mesh_cfg[axis] for axis in MESH_AXES]
    assert sizes.count(-1) <= 1, "validate_training checks config.mesh"
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"config.mesh: {len(devices)} devices are not divisible by the fixed axes ({known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"config.mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {len(devices)} devices"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def spec_for(axes: tuple, shape: tuple, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of one parameter: a dimension is sharded only when the mesh axis divides it
    and no earlier dimension took that axis; otherwise it stays replicated."""
    used, spec = set(), []
    for name, dim in zip(axes, shape):
        axis = LOGICAL_RULES.get(name)
        if axis is None or axis in used or mesh.shape[axis] == 1 or dim % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return PartitionSpec(*spec)


def param_shardings(params, axes, mesh: Mesh):
    """NamedShardings for a params pytree given the matching pytree of logical-axis tuples."""
    return jax.tree.map(
        lambda p, a: NamedSharding(mesh, spec_for(a, p.shape, mesh)),
        params, axes, is_leaf=lambda x: isinstance(x, tuple),
    )


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, params_sharding, mesh: Mesh):
    """Moments shard like their parameters; counters and other scalars are replicated. Where
    `optax.partition` leaves a parameter to another optimizer (train.optimizer=muon), its state
    holds a MaskedNode placeholder, kept as it is."""
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    masked = optax.transforms.MaskedNode
    return optax.tree_utils.tree_map_params(
        tx,
        lambda moment, sharding: moment if isinstance(moment, masked) else sharding,
        abstract_state,
        params_sharding,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, masked),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_rows_divisor(mesh: Mesh) -> int:
    """Global batch rows must be a multiple of this (the number of batch shards)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def process_batch_shards(mesh: Mesh) -> int:
    """How many distinct batch shards this process's devices hold."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_rows_divisor(mesh),))
    return len({index[0].start for index in indices.values()})


def process_row_range(mesh: Mesh, rows: int) -> tuple[int, int]:
    """The rows [lo, hi) of a batch-sharded (rows, ...) array that live on this process's devices.

    Input pipelines pick their rows from this, not from `jax.process_index()`: the mesh orders
    devices its own way, and a process's rows must be the ones its devices hold.
    """
    index_map = batch_sharding(mesh).addressable_devices_indices_map((rows,))
    bounds = [s[0].indices(rows)[:2] for s in index_map.values()]
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, sharding: NamedSharding | None = None
                 ) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the batch axes (multi-host safe);
    `sharding` for another layout of them (stacked steps: neobert_jax.runtime.multistep)."""
    sharding = sharding or batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def place_groups(batch: dict, group_rows: list[int], mesh: Mesh) -> dict[str, object]:
    """A host batch of row groups (the contrastive layout: `groups`, each a dict of (this process's
    rows, T) arrays, whose global row counts are `group_rows`, beside arrays every process holds
    whole) -> global arrays: each group's rows split over the batch axes, the rest replicated.
    Shared by the train step and the evaluation's embedder, neither of which owns the placement."""
    rows_sh, whole = batch_sharding(mesh), replicated(mesh)
    groups = [{k: jax.make_array_from_process_local_data(rows_sh, v, (rows, *v.shape[1:])) for k, v in group.items()}
              for group, rows in zip(batch["groups"], group_rows)]
    return {"groups": groups, **{k: jax.make_array_from_process_local_data(whole, v, v.shape)
                                 for k, v in batch.items() if k != "groups"}}


def to_host(tree):
    """A (sharded) pytree as numpy arrays on every host: an all-gather across processes, so every
    process must call it, though typically only process 0 writes what it returns."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def split_micro(x, accum: int, mesh: Mesh):
    """(B, ...) -> (accum, B/accum, ...), row b going to micro-batch b % accum.

    Interleaving keeps every device's contiguous block of rows spread over all micro-batches,
    so the split needs no communication.
    """
    micro = jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)
    spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, spec))
