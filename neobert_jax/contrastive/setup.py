"""Everything a contrastive run needs before its first step, built from the trainer's pieces:
mesh and shardings, ModelParts/TrainState, optimizer and schedule, checkpoints.

The model and its tokenizer come from `init_from`; only the encoder trains (the MLM head is kept
as loaded, so the run's checkpoints stay full models that `init_from` and the converters read).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import optax
from flax import nnx

from neobert_jax.contrastive.batching import ContrastiveBatches, Layout, resolve_row_shapes
from neobert_jax.contrastive.columns import concat_sources, read_training_columns, with_prompts
from neobert_jax.contrastive.config import (BEST_METRIC, IN_BATCH_LOSSES, as_list, data_sources, dropout_overrides,
                                            matryoshka, prompts, source_weights)
from neobert_jax.contrastive.evaluation import RetrievalSet, StsSet, load_eval_sets
from neobert_jax.contrastive.losses import make_objective
from neobert_jax.contrastive.sampling import Source
from neobert_jax.contrastive.tokenized import TextTokenizer, load_preprocessed, tokenize_columns
from neobert_jax.data import load_tokenizer, sources
from neobert_jax.hf import load_pretrained
from neobert_jax.hf.paths import locate
from neobert_jax.runtime import optim, sharding
from neobert_jax.runtime.model_init import architecture_of, runtime_policy
from neobert_jax.runtime.resolved import resolve
from neobert_jax.runtime.run_dir import check_run_tokenizer, has_checkpoints
from neobert_jax.runtime.setup import TaskSetup, begin_setup, check_model_fits, finish_setup
from neobert_jax.runtime.state import ModelParts

TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass(kw_only=True)
class ContrastiveSetup(TaskSetup):
    batches: ContrastiveBatches
    objective: object
    text_tokenizer: TextTokenizer
    sts_sets: list[StsSet]
    retrieval_sets: list[RetrievalSet]


def load_model_parts(path: str, *, seed: int, runtime: dict, config_changes: dict, log=print):
    """-> (parts, params) of the model at `path` (either architecture), its config changed by `config_changes`
    (config.model's dropout keys, mapped onto the architecture's fields)."""
    loaded, newly_initialized = load_pretrained(path, seed=seed, **runtime)
    missing = [name for name in newly_initialized if name.startswith("model.")]
    if missing:
        log(f"warning: {path} lacks encoder weights {missing}; they start from random init")
    loaded_parts, params = ModelParts.split(loaded)
    arch = architecture_of(loaded.config)
    model_config = loaded.config.replace(**arch.model_fields(config_changes))
    abstract = nnx.eval_shape(lambda: arch.model_class(model_config, rngs=nnx.Rngs(0)))
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    return ModelParts(graphdef, rest, model_config, loaded_parts.axes, loaded_parts.abstract_params), params


def encoder_only(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
    """Zeroes the updates of everything but the encoder (`params["model"]`): the MLM head has no
    gradient here and must not drift under weight decay."""
    frozen = {name: jax.tree.map(lambda _, f=name != "model": f, subtree) for name, subtree in params.items()}
    return optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))


def _tokenizer_source(config) -> str:
    source = config.tokenizer or locate(config.init_from).tokenizer
    if not source and config.data.preprocessed_dir:
        source = os.path.join(config.data.preprocessed_dir, TOKENIZER_DIR)
    if not source:
        raise FileNotFoundError(f"config.init_from: {config.init_from} has no tokenizer files beside it; "
                                "set config.tokenizer to the tokenizer folder it was trained with")
    return source


def _read_data(config, text_tokenizer: TextTokenizer, tokenizer, dim: int, log):
    """-> (tokenized columns, the sources in them)."""
    d, loss = config.data, config.loss.name
    if d.preprocessed_dir:
        data = load_preprocessed(d.preprocessed_dir, tokenizer, loss=loss, seq_len=config.train.seq_len,
                                 vector_dim=dim, prompts=prompts(d))
        names, sizes, source_columns = ["train"], [data.num_examples], [data.names]
    else:
        parts = []
        for name, patterns in data_sources(d):
            what = "data.train_files" if as_list(d.train_files) else f"data.sources ({name})"
            files = sources.resolve_files(patterns, what=what)
            parts.append((name, with_prompts(read_training_columns(
                files, loss=loss, columns=as_list(d.columns), label_column=d.label_column, vector_dim=dim,
                score_columns=as_list(d.score_columns)), *prompts(d))))
        table, sizes = concat_sources(parts, loss)
        names, source_columns = [name for name, _ in parts], [part.names for _, part in parts]
        data = tokenize_columns(table, text_tokenizer)
    tokens = sum(len(ids) for ids in data.ids)
    texts = sum(size * len(c) for size, c in zip(sizes, source_columns))  # absent texts left out
    log(f"data: {data.num_examples} examples, text columns {data.names}, {tokens} body tokens "
        f"({tokens / max(1, texts):.1f} per text)")
    starts = np.cumsum([0, *sizes[:-1]])
    return data, [Source(name, int(start), size, tuple(c)) for name, start, size, c in
                  zip(names, starts, sizes, source_columns)]


def setup_contrastive(config, log) -> ContrastiveSetup:
    begun = begin_setup(config)
    output_dir, mesh, phases, t = begun.output_dir, begun.mesh, begun.phases, config.train
    log(f"init_from {config.init_from}: {locate(config.init_from).describe()}")
    parts, params = load_model_parts(config.init_from, seed=config.seed, runtime=runtime_policy(config, mesh),
                                     config_changes=dropout_overrides(config), log=log)
    phases.done("model")
    tokenizer = load_tokenizer(_tokenizer_source(config))
    check_model_fits(config, parts.config, tokenizer)
    write_tokenizer = check_run_tokenizer(tokenizer, output_dir, config.resume and has_checkpoints(output_dir))
    phases.done("tokenizer")
    dims, weights = matryoshka(config.loss)
    dim = parts.config.hidden_size
    if any(d > dim for d in dims):
        raise ValueError(f"config.loss.matryoshka_dims: {max(dims)} exceeds the model's {dim}-dim embeddings")
    text_tokenizer = TextTokenizer(tokenizer, t.seq_len)
    data, data_sources = _read_data(config, text_tokenizer, tokenizer, dim, log)
    sts_sets, retrieval_sets = load_eval_sets(config.eval.sts_files, config.eval.retrieval_dirs)

    view_columns = (0, 0) if config.loss.name == "simcse" else tuple(range(len(data.names)))
    layout = Layout(config.data.layout, t.seq_len, config.data.max_texts_per_row,
                    sharding.batch_rows_divisor(mesh) * t.grad_accum_steps, view_columns)
    special_ids = dict(cls_id=text_tokenizer.cls_id, sep_id=text_tokenizer.sep_id, pad_id=text_tokenizer.pad_id)
    d = config.data
    no_duplicates = bool(d.no_duplicates) and config.loss.name in IN_BATCH_LOSSES
    batches = ContrastiveBatches(data, batch_size=t.batch_size, seed=config.seed, shuffle=d.shuffle,
                                 layout=layout, special_ids=special_ids,
                                 row_range=lambda rows: sharding.process_row_range(mesh, rows),
                                 sources=data_sources, sampling=d.source_sampling,
                                 weights=source_weights(d, [s.name for s in data_sources]),
                                 no_duplicates=no_duplicates, log=log)
    if len(data_sources) > 1 or no_duplicates:
        for line in batches.describe():
            log(line)
    if len(data_sources) > 1:
        log(f"data.source_sampling={d.source_sampling}: every step's batch from one source")
    total_steps = t.max_steps or t.epochs * batches.steps_per_epoch
    log(f"{total_steps} steps ({batches.steps_per_epoch} per epoch) of {t.batch_size} examples, loss "
        f"{config.loss.name}, layout {layout.kind}, on {mesh.devices.size} device(s), mesh {dict(mesh.shape)}")
    log(optim.summarize_schedule(t, total_steps).describe(t, total_steps))
    row_shapes = resolve_row_shapes(config.data.row_shapes)
    if row_shapes == "one":
        batches.layout = dataclasses.replace(layout, floor=batches.largest_shapes(total_steps))
        shapes = " + ".join(f"{rows} x {length}" for rows, length in batches.layout.floor)
        log(f"data.row_shapes=one: every step is {shapes} tokens (the run's largest step), one compiled shape")
    phases.done("data")
    objective = make_objective(config.loss, columns=len(view_columns), normalize=config.pooling.normalize,
                               dims=dims, weights=weights)
    resolved = resolve(config, parts.config, batch_size=t.batch_size, total_steps=total_steps, row_shapes=row_shapes)
    return finish_setup(config, log, begun, ContrastiveSetup, parts=parts, params=params, data=batches,
                        resolved=resolved, tokenizer=tokenizer, tokenizer_note=None, write_tokenizer=write_tokenizer,
                        best=(BEST_METRIC, "max"), wrap_tx=encoder_only, batches=batches, objective=objective,
                        text_tokenizer=text_tokenizer, sts_sets=sts_sets, retrieval_sets=retrieval_sets)
