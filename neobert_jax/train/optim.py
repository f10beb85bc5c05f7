"""AdamW with torch semantics, global-norm clipping, and the learning-rate schedules.

Every schedule warms up linearly from 0 (as HF's do, so step 0 trains with lr 0) and is
indexed by the number of applied updates, which is optax's own step count.
"""

from __future__ import annotations

import jax
import optax


def make_schedule(train_cfg, total_steps: int) -> optax.Schedule:
    """cosine/linear match HF's `get_{cosine,linear}_schedule_with_warmup`; wsd is
    warmup-stable-decay (constant peak, then a linear decay to 0 over the last
    `decay_fraction` of the steps)."""
    peak = train_cfg.learning_rate
    warmup = min(train_cfg.warmup_steps, total_steps)
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
        raise ValueError(f"config.train.schedule: unknown schedule {name!r}")
    return optax.join_schedules([warmup_fn, main], [warmup])


def decay_mask(params):
    """Decay matrices only: norms and biases (every 1-D parameter) are exempt, as in HF Trainer."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW; optax's decoupled decay (lr * wd * p) equals torch AdamW's."""
    adamw = optax.adamw(
        schedule,
        b1=train_cfg.adam_b1,
        b2=train_cfg.adam_b2,
        eps=train_cfg.adam_eps,
        weight_decay=train_cfg.weight_decay,
        mask=decay_mask,
    )
    if train_cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(train_cfg.max_grad_norm), adamw)
    return adamw
