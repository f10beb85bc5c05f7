"""The train state pytree and its sharded creation.

The model is split once into a static graphdef and pure-dict float32 parameters, so the
jitted step, optax and orbax all see plain pytrees (the Flax gemma-example layout).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from neobert_jax.model import ModernBertForMaskedLM, logical_axes
from neobert_jax.runtime import sharding


@flax.struct.dataclass
class TrainState:
    params: Any  # pure dict of float32 arrays, HF-mirroring names
    opt_state: Any
    step: jax.Array  # int32: batches consumed (updates applied + skipped)
    rng: jax.Array  # uint32[2]: base key; step s uses fold_in(rng, s) for dropout
    nonfinite_streak: jax.Array  # int32: consecutive skipped (non-finite) steps
    nonfinite_total: jax.Array  # int32: all skipped steps; step - total = optimizer updates
    # float32 scalars of optim.HPARAMS: the schedule's and optimizer's numbers, read by the step as data.
    # Not checkpointed: a run, resumed or not, takes them from its own config.
    hparams: Any = None

    def trainer_item(self) -> dict:
        """Everything but the parameters, checkpointed as one item so params can load alone."""
        return {"opt_state": self.opt_state, "step": self.step, "rng": self.rng,
                "nonfinite_streak": self.nonfinite_streak, "nonfinite_total": self.nonfinite_total}


class ModelParts:
    """The static half of the model: graphdef + non-parameter state, merged back inside jit."""

    def __init__(self, graphdef, rest, config, axes, abstract_params):
        self.graphdef, self.rest, self.config = graphdef, rest, config
        self.axes = axes  # pure dict of logical-axis tuples, like the params
        self.abstract_params = abstract_params

    @classmethod
    def split(cls, model: ModernBertForMaskedLM):
        """-> (parts, params): the params as a pure dict, to be placed on the mesh once."""
        graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
        params = nnx.to_pure_dict(params_state)
        abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
        return cls(graphdef, rest, model.config, nnx.to_pure_dict(logical_axes(params_state)), abstract), params

    def merge(self, params) -> ModernBertForMaskedLM:
        return nnx.merge(self.graphdef, params, self.rest)


def state_shardings(parts: ModelParts, tx: optax.GradientTransformation, hparams: dict, mesh: Mesh) -> TrainState:
    abstract_params = parts.abstract_params
    params_sh = sharding.param_shardings(abstract_params, parts.axes, mesh)
    scalar = sharding.replicated(mesh)
    return TrainState(
        params=params_sh,
        opt_state=sharding.opt_state_shardings(tx, abstract_params, params_sh, mesh),
        step=scalar, rng=scalar, nonfinite_streak=scalar, nonfinite_total=scalar,
        hparams={k: scalar for k in hparams},
    )


def place_hparams(hparams: dict, shardings: TrainState) -> dict:
    return jax.device_put({k: np.float32(v) for k, v in hparams.items()}, shardings.hparams)


def create_train_state(params, tx: optax.GradientTransformation, hparams: dict, shardings: TrainState,
                       seed: int) -> TrainState:
    """Places the parameters on the mesh and builds the optimizer state there (never on one device)."""
    params = jax.device_put(params, shardings.params)

    def build(params):
        zero = jnp.zeros((), jnp.int32)
        return TrainState(params=params, opt_state=tx.init(params), step=zero,
                          rng=jax.random.PRNGKey(seed), nonfinite_streak=zero, nonfinite_total=zero)

    state = jax.jit(build, out_shardings=shardings.replace(hparams=None))(params)
    return state.replace(hparams=place_hparams(hparams, shardings))


def abstract_state(shardings: TrainState, parts: ModelParts, tx: optax.GradientTransformation) -> TrainState:
    """Shapes, dtypes and shardings of the checkpointed state, the restore target for checkpoints."""
    shapes = jax.eval_shape(
        lambda p: TrainState(params=p, opt_state=tx.init(p), step=jnp.zeros((), jnp.int32),
                             rng=jax.random.PRNGKey(0), nonfinite_streak=jnp.zeros((), jnp.int32),
                             nonfinite_total=jnp.zeros((), jnp.int32)),
        parts.abstract_params,
    )
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                        shardings.replace(hparams=None))
