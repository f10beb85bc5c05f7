"""The config keys and checks every task shares, and the command line's config-file handling.

A task declares its schema once on top of `base_config()` (neobert_jax.mlm.config,
neobert_jax.contrastive.config); `configs/*.py` start from a task's schema and change values,
never add keys, so a typo in a file or on the command line is an error that lists the valid keys
instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import os

import ml_collections

from neobert_jax.config import ATTENTION_BACKENDS, KERNEL_BACKENDS

OPTIMIZERS = ("adamw", "muon")
WANDB_MODES = ("online", "offline")  # logging.wandb_mode  # train.optimizer: neobert_jax.runtime.optim.make_optimizer

PRECISIONS = ("fp32", "tf32", "bf16")
SCHEDULES = ("cosine", "linear", "wsd", "constant")
REMAT_POLICIES = ("none", "full", "dots")
DROPOUTS = ("embedding_dropout", "attention_dropout", "mlp_dropout")


def base_config() -> ml_collections.ConfigDict:
    """The keys every task has; a task's schema (neobert_jax.mlm.config, neobert_jax.contrastive.config)
    adds its own sections and keys to these."""
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/neobert"
    # HF tokenizer dir; "" = the one beside init_from (MLM: else data.preprocessed_dir's, else one
    # trained on the training corpus, cached in output_dir/tokenizer).
    c.tokenizer = ""
    # HF dir (e.g. a GUIDE init) or project checkpoint / run dir: parameters only, fresh optimizer.
    c.init_from = ""
    c.resume = True  # continue from output_dir's latest checkpoint when there is one
    c.seed = 42
    # JAX's persistent compilation cache: a rerun (or another run of the same shapes) skips
    # compilation; "" disables it. Applied by the command line (scripts/*.py). Its executables/
    # subdir keeps every task's compiled steps and evaluation programs (GPU/TPU), so a rerun skips
    # tracing and lowering too (runtime/executables.py).
    c.compilation_cache_dir = "~/.cache/neobert_jax/jax"
    c.compilation_cache_max_gb = 2.0  # JAX drops the least recently used entries past it; negative: no bound

    # How the model computes; what it is comes from the task (its config, or init_from).
    c.model = ml_collections.ConfigDict()
    c.model.embedding_dropout = 0.0
    c.model.attention_dropout = 0.0
    c.model.mlp_dropout = 0.0
    c.model.attn_implementation = "auto"  # Pallas flash kernel for bf16 on GPU, XLA otherwise
    # The hand-written backward kernels, "auto" | "pallas" | "xla" | "interpret"; setup resolves "auto"
    # (Pallas on GPU, XLA elsewhere) and run_config.json records the choice.
    c.model.layer_norm_backward = "auto"
    c.model.logsumexp = "auto"
    c.model.remat = "none"  # none | full | dots: per-layer activation checkpointing
    c.model.rope_in_kernel = False  # RoPE inside the Pallas attention kernel (GPU; measured in docs/performance.md)
    # fp32 on GPU: the dense layers' and head's products as three TF32 passes written out (cuBLAS may run them)
    # rather than XLA's 3-pass algorithm (Triton only); as accurate either way (neobert_jax/model/tf32.py)
    c.model.tf32_split = False

    # Weights & Biases beside metrics.jsonl and TensorBoard (optional: pip install wandb)
    c.logging = ml_collections.ConfigDict({"wandb": False, "wandb_project": "neobert_jax", "wandb_name": "",
                                           "wandb_mode": "online"})  # wandb_mode: online | offline

    c.train = ml_collections.ConfigDict()
    c.train.max_steps = 0  # optimizer steps; 0 = derived from epochs
    c.train.epochs = 1
    c.train.batch_size = 32  # global rows (MLM) or examples (contrastive) per optimizer step
    c.train.grad_accum_steps = 1
    c.train.seq_len = 512
    c.train.precision = "fp32"  # fp32 | tf32 | bf16 (bf16 compute, float32 params)
    c.train.learning_rate = 8e-4
    c.train.schedule = "cosine"  # cosine | linear | wsd | constant, all after a linear warmup from 0
    c.train.warmup_steps = 1000  # HF's meaning; a warmup longer than the run never reaches the peak
    c.train.warmup_fraction = 0.0  # > 0: the warmup is this share of the run's steps (replaces warmup_steps)
    c.train.decay_fraction = 0.1  # wsd: share of the steps spent decaying to 0
    c.train.optimizer = "adamw"  # adamw | muon (hidden weight matrices; AdamW for the rest, one schedule)
    c.train.weight_decay = 0.01
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.999
    c.train.adam_eps = 1e-8
    c.train.max_grad_norm = 1.0  # global-norm clipping; 0 disables
    # < 1: layer-wise learning-rate decay, each encoder layer's rate this times the one above, the
    # embeddings' one step below layer 0 (the final norm, heads and classifiers: the full rate); 1 disables
    c.train.layer_lr_decay = 1.0
    c.train.max_nonfinite_steps = 10  # stop after this many non-finite steps in a row
    c.train.log_every = 100
    c.train.eval_every = 0  # 0 = evaluate only at the end
    c.train.save_every = 2500
    c.train.keep_checkpoints = 3  # the most recent ones
    # Also keep the checkpoint of the lowest eval loss (contrastive: highest mean eval metric); every
    # eval point then saves. Needs eval_every > 0 and eval data.
    c.train.keep_best_checkpoint = False

    # Device mesh; -1 on one axis takes the remaining devices.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += flat_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def validate_training(config: ml_collections.ConfigDict) -> None:
    """The checks of `base_config()`'s keys (train.*, output_dir, mesh.*), which every task runs."""
    t = config.train

    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ValueError(f"config.{key}: {msg}")

    need(t.precision in PRECISIONS, "train.precision", f"{t.precision!r} is not one of {PRECISIONS}")
    need(t.schedule in SCHEDULES, "train.schedule", f"{t.schedule!r} is not one of {SCHEDULES}")
    m = config.model
    need(m.remat in REMAT_POLICIES, "model.remat", f"{m.remat!r} is not one of {REMAT_POLICIES}")
    need(m.attn_implementation in ATTENTION_BACKENDS, "model.attn_implementation",
         f"{m.attn_implementation!r} is not one of {ATTENTION_BACKENDS}")
    for key in ("layer_norm_backward", "logsumexp"):
        need(m[key] in KERNEL_BACKENDS, f"model.{key}", f"{m[key]!r} is not one of {KERNEL_BACKENDS}")
    for key in DROPOUTS:
        need(0.0 <= m[key] < 1.0, f"model.{key}", f"must be in [0, 1), got {m[key]}")
    need(t.batch_size >= 0, "train.batch_size", f"must be positive, got {t.batch_size}")  # each task: 0 or not
    need(t.grad_accum_steps > 0, "train.grad_accum_steps", "must be positive")
    need(t.batch_size % t.grad_accum_steps == 0, "train.batch_size",
         f"{t.batch_size} is not divisible by train.grad_accum_steps={t.grad_accum_steps}")
    need(t.max_steps > 0 or t.epochs > 0, "train.max_steps", "set max_steps or epochs to a positive value")
    need(t.max_steps >= 0, "train.max_steps", f"must be >= 0 (0 = from train.epochs), got {t.max_steps}")
    need(t.epochs >= 0, "train.epochs", f"must be >= 0, got {t.epochs}")
    need(math.isfinite(t.learning_rate) and t.learning_rate > 0, "train.learning_rate",
         f"must be a positive number, got {t.learning_rate}")
    need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    need(0.0 < t.layer_lr_decay <= 1.0, "train.layer_lr_decay", f"must be in (0, 1], got {t.layer_lr_decay}")
    need(t.optimizer in OPTIMIZERS, "train.optimizer", f"{t.optimizer!r} is not one of {OPTIMIZERS}")
    lg = config.logging
    need(lg.wandb_mode in WANDB_MODES, "logging.wandb_mode", f"{lg.wandb_mode!r} is not one of {WANDB_MODES}")
    need(not lg.wandb or importlib.util.find_spec("wandb") is not None, "logging.wandb",
         "needs the wandb package: pip install wandb (or leave logging.wandb False)")
    need(t.seq_len > 0, "train.seq_len", "must be positive")
    need(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    need(0.0 <= t.warmup_fraction < 1.0, "train.warmup_fraction", "must be in [0, 1)")
    need(not (t.warmup_steps > 0 and t.warmup_fraction > 0), "train.warmup_steps",
         f"{t.warmup_steps} and train.warmup_fraction={t.warmup_fraction} are both set, and the fraction would win "
         "silently; keep one (set the other to 0)")
    need(0.0 < t.decay_fraction <= 1.0, "train.decay_fraction", "must be in (0, 1]")
    need(t.log_every > 0, "train.log_every", "must be positive")
    need(t.save_every > 0, "train.save_every", "must be positive")
    need(t.keep_checkpoints > 0, "train.keep_checkpoints", "must be positive")
    need(t.max_nonfinite_steps > 0, "train.max_nonfinite_steps", "must be positive")
    need(t.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = only at the end)")
    need(t.eval_every > 0 or not t.keep_best_checkpoint, "train.keep_best_checkpoint",
         "needs train.eval_every > 0: the best checkpoint is picked among the eval points'")
    need(bool(config.output_dir), "output_dir", "must be set")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        need(size == -1 or size > 0, f"mesh.{axis}", f"must be -1 or positive, got {size}")
    need([config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) <= 1, "mesh",
         "at most one of data/fsdp/tensor may be -1")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Runs a config file's `get_config()`; `path:arg` passes arg, as ml_collections' config_flags do."""
    path, sep, arg = path.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: {path}: no such file")
    spec = importlib.util.spec_from_file_location("_neobert_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {path} defines no get_config()")
    return module.get_config(arg) if sep else module.get_config()


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """-> (the `--config FILE` / `--config=FILE` value, the last if several, as for any flag; argv
    without them)."""
    path, rest, args = None, [], iter(argv)
    for arg in args:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config":
            path = next(args, None)
        else:
            rest.append(arg)
    return path, rest


def check_override_keys(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Fails on `--config.x.y=...` keys the config lacks: one line naming it, then the valid keys
    one per line with their values.

    ml_collections only raises a traceback for these; users need the reason and the list.
    """
    overrides = [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    valid = flat_keys(config)
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean config.{close[0]}?)" if close else ""
            listed = "\n".join(f"  {name} = {functools.reduce(getattr, name.split('.'), config)!r}" for name in valid)
            raise KeyError(f"unknown config key config.{key}{hint}; the valid keys:\n{listed}")
