"""AdamW with torch semantics, global-norm clipping, the learning-rate schedules, and the batch rule.

Every schedule warms up linearly from 0 (as HF's do, so step 0 trains with lr 0) and is
indexed by the number of applied updates, which is optax's own step count. The warmup is
`train.warmup_steps` (HF's meaning, also when it is longer than the run) unless
`train.warmup_fraction` sets it as a share of the run, which every run length fits.

The config decides the update's structure; its numbers (HPARAMS) reach the compiled step as data, in
the train state, so that one program serves every learning rate and run length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from neobert_jax.runtime.state import TrainState


def warmup_steps(train_cfg, total_steps: int) -> int:
    if train_cfg.warmup_fraction > 0:
        return max(int(round(train_cfg.warmup_fraction * total_steps)), 1)
    return train_cfg.warmup_steps


# The numbers an update reads, float32 scalars that the compiled step takes as data (TrainState.hparams), so
# that a run of another length, learning rate, warmup or decay reuses the program compiled for this one.
HPARAMS = ("peak_lr", "warmup", "decay", "stable", "weight_decay", "max_grad_norm", "layer_lr_decay")
# train.* keys that reach the step only through HPARAMS or the loop: the compiled program does not depend on them
DATA_KEYS = ("learning_rate", "warmup_steps", "warmup_fraction", "decay_fraction", "weight_decay", "max_grad_norm",
             "layer_lr_decay", "epochs", "max_steps", "max_nonfinite_steps", "log_every", "eval_every", "save_every",
             "keep_checkpoints", "keep_best_checkpoint")


def hyperparameters(train_cfg, total_steps: int) -> dict[str, np.ndarray]:
    """HPARAMS of this run: the schedule's peak and step counts (warmup; decay, the steps of its
    main phase; stable, wsd's constant stretch) and the optimizer's numbers."""
    warmup = warmup_steps(train_cfg, total_steps)
    name, stable = train_cfg.schedule, 0
    if name == "cosine":
        decay = max(total_steps, warmup + 1) - warmup
    elif name == "wsd":
        decay = max(int(round(train_cfg.decay_fraction * total_steps)), 1)
        stable = max(total_steps - warmup - decay, 0)
    else:
        decay = max(total_steps - warmup, 1)
    values = dict(peak_lr=train_cfg.learning_rate, warmup=warmup, decay=decay, stable=stable,
                  weight_decay=train_cfg.weight_decay, max_grad_norm=train_cfg.max_grad_norm,
                  layer_lr_decay=train_cfg.layer_lr_decay)
    return {k: np.float32(values[k]) for k in HPARAMS}


def learning_rate(schedule: str, hp: dict, count):
    """The learning rate of update `count` (0-based) under `schedule` with `hp`'s numbers (arrays or
    tracers). cosine/linear match HF's `get_{cosine,linear}_schedule_with_warmup` (a warmup longer
    than the run climbs to step/warmup of the peak and stops there, as in HF); wsd is
    warmup-stable-decay (constant peak, then a linear decay to 0 over its last `decay` steps)."""
    count = jnp.asarray(count, jnp.float32)
    peak, warmup, decay = hp["peak_lr"], hp["warmup"], hp["decay"]
    t = jnp.maximum(count - warmup, 0.0)  # steps into the main phase
    if schedule == "cosine":
        main = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, decay) / decay))
    elif schedule == "linear":
        main = peak * (1.0 - jnp.minimum(t, decay) / decay)
    elif schedule == "constant":
        main = peak * jnp.ones_like(t)
    elif schedule == "wsd":
        main = peak * (1.0 - jnp.clip(t - hp["stable"], 0.0, decay) / decay)
    else:
        raise AssertionError(f"train.schedule {schedule!r}: validate_training lets only SCHEDULES through")
    return jnp.where(count < warmup, peak * count / jnp.maximum(warmup, 1.0), main)


def make_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """count -> learning rate with this run's numbers, for the host (the step reads TrainState.hparams)."""
    hp = hyperparameters(train_cfg, total_steps)
    return lambda count: learning_rate(train_cfg.schedule, hp, count)


@dataclasses.dataclass(frozen=True)
class ScheduleSummary:
    warmup_steps: int
    peak_lr: float  # the largest learning rate any step of the run trains with
    final_lr: float  # the learning rate of the last step

    def describe(self, train_cfg, total_steps: int) -> str:
        text = (f"{train_cfg.schedule} schedule: warmup {self.warmup_steps} of {total_steps} steps, "
                f"peak lr {self.peak_lr:.3g}, last step's lr {self.final_lr:.3g}")
        if self.warmup_steps >= total_steps:
            text += (f"; warning: train.warmup_steps={self.warmup_steps} >= the run's {total_steps} steps, so the "
                     f"learning rate only climbs, to {self.peak_lr / train_cfg.learning_rate:.0%} of "
                     f"train.learning_rate={train_cfg.learning_rate:g}, and never decays (HF's semantics); set "
                     "train.warmup_fraction to scale the warmup with the run")
        return text


def summarize_schedule(train_cfg, total_steps: int) -> ScheduleSummary:
    warmup = warmup_steps(train_cfg, total_steps)
    steps = np.clip([warmup - 1, warmup, warmup + 1, total_steps - 1], 0, max(total_steps - 1, 0))
    # one compiled evaluation (each eager op would compile on its own), the numbers as arguments (the same program
    # for every run of this schedule)
    lrs = np.asarray(jax.jit(learning_rate, static_argnums=0)(train_cfg.schedule,
                                                              hyperparameters(train_cfg, total_steps), steps))
    return ScheduleSummary(warmup, float(lrs[:3].max()), float(lrs[3]))


def auto_batch_size(rows_per_epoch: int, epochs: int, train_cfg, multiple: int) -> int:
    """`train.batch_size=0`: the largest global batch (`multiple` times a power of two, between
    `train.auto_batch_min_tokens` and `train.auto_batch_max_tokens`) that leaves the run
    `train.auto_batch_steps` optimizer steps.

    Quality per second needs both ends: a small corpus gets enough updates (packing puts ~19 of the
    users' paragraphs in one 512-token row, so their "32 per step" gave a few hundred steps), a large
    one gets batches that keep the accelerator busy. The defaults come from the sweep in
    docs/recipe.md: 2 rows (about the users' 32 paragraphs per step) beat 4 at 10 epochs. `train.max_steps` sets the run's length
    (the schedule spans it) but not the batch: a smoke test of a few steps uses the full run's
    memory, not the largest batch's.
    """
    def rows(tokens: int) -> int:
        return max(tokens // train_cfg.seq_len // multiple, 1) * multiple

    smallest = rows(train_cfg.auto_batch_min_tokens)
    largest = max(rows(train_cfg.auto_batch_max_tokens), smallest)
    batch = smallest
    while batch * 2 <= largest and epochs * (rows_per_epoch // (batch * 2)) >= train_cfg.auto_batch_steps:
        batch *= 2
    return batch


def decay_mask(params):
    """Decay matrices only: norms and biases (every 1-D parameter) are exempt, as in HF Trainer."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


MUON_BETA = 0.95  # Muon's momentum (Jordan et al.; optax's default)
MUON_RMS = 0.2  # Muon updates scaled to AdamW's typical RMS, so both share one learning rate (Liu et al. 2025)


def muon_labels(params):
    """"muon" for the encoder layers' and the MLM head's weight matrices, "adamw" for the rest:
    embeddings and output classifiers (Muon is for hidden matrices), norms and biases (not matrices)."""
    def label(path, p):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        # ModernBERT's `layers` and NeoBERT's `transformer_encoder` hold the encoder blocks
        hidden = "layers" in keys or "transformer_encoder" in keys or keys[:2] == ["head", "dense"]
        return "muon" if hidden and p.ndim == 2 else "adamw"
    return jax.tree_util.tree_map_with_path(label, params)


def _path_keys(path) -> list:
    return [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]


def layer_lr_multipliers(params, decay: float):
    """Layer-wise learning-rate decay (ELECTRA's): decay ** (L + 1 - depth), depth 0 for the token
    embeddings, i + 1 for encoder layer i of L, and L + 1 (the full rate) for the final norm, the
    heads and classifiers. Lower layers move less, which keeps a pretrained start's general features
    while the top adapts to the task."""
    def layer(path):
        keys = _path_keys(path)
        for block in ("layers", "transformer_encoder"):  # ModernBERT's and NeoBERT's encoder blocks
            if block in keys and keys.index(block) + 1 < len(keys):
                return int(keys[keys.index(block) + 1]) + 1
        return 0 if "embeddings" in keys or "encoder" in keys else None  # NeoBERT's embedding is `encoder`

    depth = jax.tree_util.tree_map_with_path(lambda path, _: layer(path), params)
    top = max((d for d in jax.tree.leaves(depth) if d is not None), default=0) + 1
    return jax.tree.map(lambda d: decay ** (top - (top if d is None else d)), depth,
                        is_leaf=lambda d: d is None or isinstance(d, int))


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its layer_lr_multipliers factor: a per-layer learning
    rate (and weight decay with it, as torch param groups with their own lr give)."""
    def update_fn(updates, state, params=None):
        factors = layer_lr_multipliers(updates, decay)
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(train_cfg, hp: dict) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (`train.optimizer="adamw"`; optax's decoupled decay, lr * wd * p,
    equals torch AdamW's), or Muon on the hidden weight matrices and AdamW on the rest (`"muon"`),
    one schedule and weight decay for both. train_cfg decides the structure (schedule, optimizer,
    whether clipping and layer decay are on), `hp` (hyperparameters(), or their traced values) the numbers."""
    def schedule(count):
        return learning_rate(train_cfg.schedule, hp, count)

    adamw = optax.adamw(
        schedule,
        b1=train_cfg.adam_b1,
        b2=train_cfg.adam_b2,
        eps=train_cfg.adam_eps,
        weight_decay=hp["weight_decay"],
        mask=decay_mask,
    )
    tx = adamw
    if train_cfg.optimizer == "muon":
        muon = optax.contrib.muon(schedule, beta=MUON_BETA, eps=train_cfg.adam_eps,
                                  weight_decay=hp["weight_decay"], consistent_rms=MUON_RMS)
        tx = optax.partition({"muon": muon, "adamw": adamw}, muon_labels)
    if train_cfg.layer_lr_decay < 1.0:
        tx = optax.chain(tx, scale_by_layer(hp["layer_lr_decay"]))
    if train_cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(hp["max_grad_norm"]), tx)
    return tx


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A run's update rule: its structure from train_cfg (and the task's `wrap`, e.g. freezing
    parameters), its numbers from the hparams it is given, which inside the step are the state's."""

    train_cfg: Any
    wrap: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = None

    def tx(self, hp: dict) -> optax.GradientTransformation:
        tx = make_optimizer(self.train_cfg, hp)
        return self.wrap(tx) if self.wrap is not None else tx

    def learning_rate(self, hp: dict, count):
        return learning_rate(self.train_cfg.schedule, hp, count)

    def program_settings(self) -> dict:
        """train.* as far as the compiled step depends on it (executable-cache keys): the keys read
        as data left out, whether clipping and layer decay are on kept."""
        t = self.train_cfg
        kept = {k: v for k, v in t.to_dict().items() if k not in DATA_KEYS}
        return dict(kept, clips=t.max_grad_norm > 0, layer_decay=t.layer_lr_decay < 1.0)


def apply_update_if_finite(state: TrainState, grads, loss, optimizer: Optimizer):
    """-> (next state, gradient norm). A step whose loss or gradient norm is not finite leaves
    params and optimizer state untouched and raises `nonfinite_streak`; a finite one resets it.
    Every task's step ends with it."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.tx(state.hparams).update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)

    def keep_if_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = state.replace(
        params=keep_if_finite(new_params, state.params),
        opt_state=keep_if_finite(new_opt_state, state.opt_state),
        step=state.step + 1,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )
    return new_state, grad_norm
