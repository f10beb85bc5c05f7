"""Project checkpoints (orbax) and `load_pretrained`, which reads them or HF dirs.

A project model dir is `config.json` (HF names) + `params/` (an orbax PyTree of the NNX
parameters) + tokenizer files. A training run's output dir holds `config.json` and orbax
steps under `checkpoints/<step>/params`; both are accepted wherever a checkpoint is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import textwrap
import traceback
import warnings

import jax
import numpy as np
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.fileio import atomic_dir
from neobert_jax.hf.paths import PARAMS, locate
from neobert_jax.hf.io import copy_tokenizer_files, read_hf_config, read_hf_state_dict, write_hf_dir
from neobert_jax.hf.weights import load_state_dict_into_model, state_dict_from_model
from neobert_jax.model import ModernBertForMaskedLM, NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig, is_neobert_config


def quiet_orbax_failures() -> None:
    """Orbax's writer threads log each failed write with a traceback (45 for one full disk), asyncio
    logs the futures of the others, tensorstore's late callbacks into orbax's closed event loops
    print "Event loop is closed", and the reads a failed restore abandoned print theirs when they
    are collected. The failure itself is re-raised where the caller waits for the save or restore,
    which reports it in one line, so these are dropped."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxTracebacks) for f in logger.filters):
            logger.addFilter(_OrbaxTracebacks())
    if getattr(sys.unraisablehook, "quiets_orbax", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        closed_loop = isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == (
            "Event loop is closed")
        code = getattr(unraisable.object, "cr_code", None)  # an orbax coroutine abandoned by a failed restore
        if not (closed_loop or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)):
            previous(unraisable)

    hook.quiets_orbax = True
    sys.unraisablehook = hook


class _OrbaxTracebacks(logging.Filter):
    """Drops error records whose traceback is orbax's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info or not record.exc_info[2]:
            return True
        where = [record.pathname] + [frame.filename for frame in traceback.extract_tb(record.exc_info[2])]
        return not any(f"{os.sep}orbax{os.sep}" in path for path in where)


def save_hf_dir(model: ModernBertForMaskedLM, out_dir: str, tokenizer_dir: str | None = None,
                overwrite: bool = False) -> None:
    write_hf_dir(state_dict_from_model(model), model.config, out_dir, tokenizer_dir=tokenizer_dir,
                 overwrite=overwrite)


def save_checkpoint_dir(model: ModernBertForMaskedLM, out_dir: str, tokenizer_dir: str | None = None,
                        overwrite: bool = False) -> None:
    import orbax.checkpoint as ocp

    with atomic_dir(out_dir, if_exists="replace" if overwrite else "error") as tmp:
        model.config.save_json(os.path.join(tmp, "config.json"))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, PARAMS), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
            checkpointer.wait_until_finished()
        copy_tokenizer_files(tokenizer_dir, tmp)


def load_pretrained(path: str, seed: int = 0, **runtime) -> tuple[ModernBertForMaskedLM, list[str]]:
    """Model from an HF dir or a project checkpoint; returns (model, newly initialized HF names).

    A config.json whose model_type is "neobert" gives a NeoBertForMaskedLM (HF dirs through hf/neobert.py).
    runtime: ModernBertConfig runtime fields (dtype, attn_implementation, remat).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    files = locate(path)
    params_dir = files.params
    neobert = is_neobert_config(files.config)
    model_class = NeoBertForMaskedLM if neobert else ModernBertForMaskedLM
    if params_dir is None and neobert:
        from neobert_jax.hf.neobert import load_neobert_dir

        return load_neobert_dir(path, seed, **runtime)
    if params_dir is None:
        config = read_hf_config(path, **runtime)
        state_dict = read_hf_state_dict(path)
        # Shapes only first: when the dir has every tensor, the random init (hundreds of eager ops,
        # seconds of a run's start-up) would be overwritten anyway.
        model = nnx.eval_shape(lambda: ModernBertForMaskedLM(config, rngs=nnx.Rngs(seed)))
        newly_initialized, _ = load_state_dict_into_model(model, state_dict, source=path)
        if newly_initialized or any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model))):
            model = ModernBertForMaskedLM(config, rngs=nnx.Rngs(seed))  # e.g. a bare encoder: the head starts fresh
            newly_initialized, _ = load_state_dict_into_model(model, state_dict, source=path)
        return model, newly_initialized
    config = read_model_config(path, **runtime)
    abstract = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    restored = restore_params(params_dir, nnx.to_pure_dict(abstract_state))
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state), []


def read_model_config(path: str, **runtime) -> ModernBertConfig | NeoBertConfig:
    """The config.json of the model at `path` (any layout `locate` knows) as its family's config class, so
    that a caller needing only the shape works for either family without loading weights."""
    files = locate(path)
    if files.config is None:
        raise FileNotFoundError(f"{path}: no config.json ({files.describe()})")
    config_class = NeoBertConfig if is_neobert_config(files.config) else ModernBertConfig
    return config_class.from_json_file(files.config, **runtime)


def restore_params(params_dir: str, target: dict) -> dict:
    """Restores a params PyTree, checking names and shapes against `target` (abstract or real).

    Orbax needs an absolute path (a relative one reads no metadata, so every tensor looked
    missing), and an explicit sharding: without one it reuses the saving run's device layout,
    which it calls unsafe on another topology (a multi-device run converted on one device).
    """
    import orbax.checkpoint as ocp

    params_dir = os.path.abspath(params_dir)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32, sharding=device), target)
    quiet_orbax_failures()
    check_params_match(params_dir, target)
    try:
        with _no_step_metadata_warning(), ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(params_dir, abstract)
    except Exception as e:  # tensorstore: DATA_LOSS etc. on damaged files; orbax wraps some in Exception
        while e.__cause__ is not None:  # tensorstore's own error names the tensor and the damage
            e = e.__cause__
        reason = textwrap.shorten(str(e), 300, placeholder=" ...")
        raise ValueError(f"{params_dir}: cannot be read ({reason})") from None


class _NoStepMetadataWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Metadata file does not exist")


@contextlib.contextmanager
def _no_step_metadata_warning():
    """Hides orbax's "Metadata file does not exist" warning on reading one item of a run's step:
    orbax's manager keeps that metadata in the step dir, so the warning reads as damage where there is none."""
    quiet = _NoStepMetadataWarning()
    logging.getLogger("absl").addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger("absl").removeFilter(quiet)


class ParamsMismatch(ValueError):
    """A checkpoint of another model: a tensor's name or shape differs."""


def check_params_match(params_dir: str, target) -> None:
    """Raises ValueError naming the first tensor whose name or shape differs between the orbax
    params item at `params_dir` and `target`, before orbax fails less clearly."""
    import orbax.checkpoint as ocp

    params_dir = os.path.abspath(params_dir)
    with _no_step_metadata_warning(), ocp.StandardCheckpointer() as checkpointer:
        try:
            meta = checkpointer.metadata(params_dir)
        except (ValueError, OSError, KeyError) as e:
            reason = textwrap.shorten(str(e), 300, placeholder=" ...")
            raise ValueError(f"{params_dir}: not a readable checkpoint ({reason})") from None
    saved_tree = getattr(meta, "item_metadata", meta)
    if saved_tree is None:
        raise ValueError(f"{params_dir}: not a readable checkpoint (no metadata)")
    saved = {"/".join(map(str, k)): v.shape for k, v in _flatten(saved_tree).items()}
    wanted = {"/".join(map(str, k)): v.shape for k, v in _flatten(target).items()}
    for name in sorted(set(saved) | set(wanted)):
        if name not in saved:
            raise ParamsMismatch(f"{params_dir}: tensor {name} is missing from the checkpoint")
        if name not in wanted:
            raise ParamsMismatch(f"{params_dir}: tensor {name} is not a parameter of this model")
        if tuple(saved[name]) != tuple(wanted[name]):
            raise ParamsMismatch(f"{params_dir}: tensor {name} has shape {tuple(saved[name])}, "
                             f"the model expects {tuple(wanted[name])}")


def _flatten(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): leaf for path, leaf in leaves}


class Pretrained:
    """A loaded model with jit-compiled inference: `model(input_ids, attention_mask)` -> logits."""

    def __init__(self, module: ModernBertForMaskedLM, newly_initialized: list[str]):
        self.module = module
        self.config = module.config
        self.newly_initialized = newly_initialized
        graphdef, self._state = nnx.split(module)

        def logits(state, ids, mask):
            return nnx.merge(graphdef, state)(ids, mask)

        def encode(state, ids, mask):
            return nnx.merge(graphdef, state).encode(ids, mask)

        self._logits, self._encode = jax.jit(logits), jax.jit(encode)

    @staticmethod
    def _inputs(input_ids, attention_mask):
        ids = np.asarray(input_ids, dtype=np.int32)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int32)
        return ids, mask

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        return self._logits(self._state, *self._inputs(input_ids, attention_mask))

    def encode(self, input_ids, attention_mask=None) -> jax.Array:
        return self._encode(self._state, *self._inputs(input_ids, attention_mask))


def from_pretrained(path: str, **runtime) -> Pretrained:
    """`neobert_jax.from_pretrained(path)(input_ids, attention_mask)` -> (B, T, V) logits.

    An encoder-only folder (a sentence-transformers export, a bare ModernBertModel) has no MLM
    head: the model gets a random one, and a warning says so (its `.encode` is what such a folder is for).
    """
    model, newly_initialized = load_pretrained(path, **runtime)
    if newly_initialized:
        kind = ("a sentence-transformers folder" if os.path.isfile(os.path.join(path, "modules.json"))
                else "an encoder without an MLM head")
        warnings.warn(f"{path} is {kind}: {', '.join(newly_initialized)} start from random init, so the model's "
                      "logits mean nothing until trained; use .encode(input_ids, attention_mask) for its hidden "
                      "states", stacklevel=2)
    return Pretrained(model, newly_initialized)
