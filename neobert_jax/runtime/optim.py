"""AdamW with torch semantics, global-norm clipping, the learning-rate schedules, and the batch rule.

Every schedule warms up linearly from 0 (as HF's do, so step 0 trains with lr 0) and is
indexed by the number of applied updates, which is optax's own step count. The warmup is
`train.warmup_steps` (HF's meaning, also when it is longer than the run) unless
`train.warmup_fraction` sets it as a share of the run, which every run length fits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from neobert_jax.runtime.state import TrainState


def warmup_steps(train_cfg, total_steps: int) -> int:
    if train_cfg.warmup_fraction > 0:
        return max(int(round(train_cfg.warmup_fraction * total_steps)), 1)
    return train_cfg.warmup_steps


def make_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """cosine/linear match HF's `get_{cosine,linear}_schedule_with_warmup` (a warmup longer than
    the run climbs to step/warmup of the peak and stops there, as in HF); wsd is
    warmup-stable-decay (constant peak, then a linear decay to 0 over the last `decay_fraction`
    of the steps)."""
    peak = train_cfg.learning_rate
    warmup = warmup_steps(train_cfg, total_steps)
    name = train_cfg.schedule
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), 0.0)
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    if name == "linear":
        main = optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))
    elif name == "constant":
        main = optax.constant_schedule(peak)
    elif name == "wsd":
        decay = max(int(round(train_cfg.decay_fraction * total_steps)), 1)
        stable = max(total_steps - warmup - decay, 0)
        main = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, 0.0, decay)], [stable]
        )
    else:
        raise AssertionError(f"train.schedule {name!r}: validate_training lets only SCHEDULES through")
    return optax.join_schedules([warmup_fn, main], [warmup])


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
    schedule = make_schedule(train_cfg, total_steps)
    warmup = warmup_steps(train_cfg, total_steps)
    steps = np.clip([warmup - 1, warmup, warmup + 1, total_steps - 1], 0, max(total_steps - 1, 0))
    lrs = np.asarray(jax.jit(schedule)(steps))  # one compiled evaluation: each eager op would compile on its own
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


def make_optimizer(train_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (`train.optimizer="adamw"`; optax's decoupled decay, lr * wd * p,
    equals torch AdamW's), or Muon on the hidden weight matrices and AdamW on the rest (`"muon"`),
    one schedule and weight decay for both."""
    adamw = optax.adamw(
        schedule,
        b1=train_cfg.adam_b1,
        b2=train_cfg.adam_b2,
        eps=train_cfg.adam_eps,
        weight_decay=train_cfg.weight_decay,
        mask=decay_mask,
    )
    tx = adamw
    if train_cfg.optimizer == "muon":
        muon = optax.contrib.muon(schedule, beta=MUON_BETA, eps=train_cfg.adam_eps,
                                  weight_decay=train_cfg.weight_decay, consistent_rms=MUON_RMS)
        tx = optax.partition({"muon": muon, "adamw": adamw}, muon_labels)
    if train_cfg.layer_lr_decay < 1.0:
        tx = optax.chain(tx, scale_by_layer(train_cfg.layer_lr_decay))
    if train_cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(train_cfg.max_grad_norm), tx)
    return tx


def apply_update_if_finite(state: TrainState, grads, loss, tx: optax.GradientTransformation):
    """-> (next state, gradient norm). A step whose loss or gradient norm is not finite leaves
    params and optimizer state untouched and raises `nonfinite_streak`; a finite one resets it.
    Every task's step ends with it."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
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
