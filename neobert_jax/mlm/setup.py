"""Everything a run needs before its first step: tokenizer, data, model, mesh, optimizer, state.

A run dir holds `config.json` (the model, HF names), `run_config.json` (the config and what the run decided,
neobert_jax.runtime.resolved),
`tokenizer/`, `checkpoints/<step>/`, `metrics.jsonl`, `tensorboard/`, `loss.png`, `hf/`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
from jax.sharding import Mesh

from neobert_jax.data import MlmIterator, build_mlm_iterator, packed_rows
from neobert_jax.data.builtin_corpus import NAME as BUILTIN_NAME
from neobert_jax.data.pipeline import eval_documents
from neobert_jax.data.pseudo_perplexity import pseudo_rows
from neobert_jax.data.tokenizer import cached_or_trained, load_tokenizer_or_bundle
from neobert_jax.hf.paths import locate
from neobert_jax.runtime import multistep, optim, sharding
from neobert_jax.mlm.config import INHERITED_MODEL_KEYS
from neobert_jax.runtime.model_init import architecture_of, build_model
from neobert_jax.runtime.resolved import resolve
from neobert_jax.runtime.run_dir import TOKENIZER_DIR, check_run_tokenizer, has_checkpoints, share_tokenizer
from neobert_jax.runtime.setup import TaskSetup, begin_setup, check_model_fits, finish_setup
from neobert_jax.runtime.state import ModelParts


@dataclasses.dataclass(kw_only=True)
class RunSetup(TaskSetup):
    train_data: MlmIterator
    eval_data: MlmIterator | None
    pseudo_rows: dict | None  # data.pseudo_perplexity.pseudo_rows of the eval documents to score at the end


def _special_token_ids(tokenizer) -> dict[str, int]:
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else cls_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else sep_id
    return dict(pad_token_id=tokenizer.pad_token_id, cls_token_id=cls_id, sep_token_id=sep_id,
                bos_token_id=bos, eos_token_id=eos)


def _tokenizer(config, output_dir: str, log):
    """-> (tokenizer, corpus note or None): config.tokenizer, else the one beside init_from, else
    preprocessed_dir's, else one trained on the corpus (or cached in output_dir/tokenizer by an
    earlier run on it). Nothing is written here: `write_run_files` puts it in output_dir/tokenizer
    once everything else is validated."""
    source = config.tokenizer or None
    if source is None and config.init_from:
        source = locate(config.init_from).tokenizer
    if source is None and config.data.preprocessed_dir:
        source = config.data.preprocessed_dir
    if source is None and config.data.hf_dataset.name:
        raise ValueError(f"config.tokenizer: init_from {config.init_from} has no tokenizer and data.hf_dataset "
                         "needs one: set tokenizer")
    if source is not None:
        tokenizer = load_tokenizer_or_bundle(source)
        log(f"tokenizer: {source} ({len(tokenizer):,} tokens)")
        return tokenizer, None
    d = config.data
    tokenizer, note = None, None
    if jax.process_index() == 0:
        started = time.perf_counter()
        tokenizer, note, cached = cached_or_trained(d.train_files, output_dir, d.tokenizer_vocab_size,
                                                    text_field=d.text_field, skip_bad_records=d.skip_bad_records)
        where = os.path.join(config.output_dir, TOKENIZER_DIR)
        log(f"tokenizer: {where}, trained on this corpus by an earlier run" if cached else
            f"tokenizer: trained a {len(tokenizer):,}-token byte-level BPE on the training files in "
            f"{time.perf_counter() - started:.1f} s (data.tokenizer_vocab_size; config.tokenizer to bring your own); "
            f"saved to {where}")
    return share_tokenizer(tokenizer), note


def _check_batch_layout(config, mesh: Mesh, batch_size: int) -> int:
    """Rows per process per step; the global batch must split evenly at every level."""
    t = config.train
    processes, shards = jax.process_count(), sharding.batch_rows_divisor(mesh)
    if batch_size % processes:
        raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the {processes} processes")
    if (batch_size // t.grad_accum_steps) % shards:
        raise ValueError(
            f"config.train.batch_size={batch_size} / grad_accum_steps={t.grad_accum_steps} gives micro-batches "
            f"of {batch_size // t.grad_accum_steps} rows, not divisible by the {shards} batch shards "
            f"(mesh.data x mesh.fsdp)"
        )
    return batch_size // processes


def _choose_batch_size(config, mesh: Mesh, tokenizer, log) -> int:
    """train.batch_size=0: the automatic batch, said in one line."""
    t = config.train
    multiple = math.lcm(sharding.batch_rows_divisor(mesh) * t.grad_accum_steps, jax.process_count())
    rows = packed_rows(config.data, tokenizer=tokenizer, seq_len=t.seq_len, seed=config.seed)
    batch_size = optim.auto_batch_size(rows, t.epochs, t, multiple)
    steps = t.epochs * (rows // batch_size)
    why = (f"the largest (up to train.auto_batch_max_tokens={t.auto_batch_max_tokens}) leaving the run "
           f"train.auto_batch_steps={t.auto_batch_steps} steps" if steps >= t.auto_batch_steps else
           f"the smallest allowed (train.auto_batch_min_tokens={t.auto_batch_min_tokens}); the run has fewer steps "
           f"than train.auto_batch_steps={t.auto_batch_steps} (more epochs or data give more)")
    log(f"train.batch_size=0 (auto): {batch_size} rows = {batch_size * t.seq_len:,} tokens per optimizer step "
        f"over the corpus's {rows:,} packed rows, {steps:,} steps in {t.epochs} epochs: {why}"
        + (f"; train.max_steps={t.max_steps} ends the run there" if t.max_steps else ""))
    return batch_size


def setup_run(config, log) -> RunSetup:
    begun = begin_setup(config)
    output_dir, mesh, phases, t = begun.output_dir, begun.mesh, begun.phases, config.train
    if not (config.data.train_files or config.data.preprocessed_dir or config.data.hf_dataset.name):
        log(f"corpus: data.train_files is empty, so the run trains on the {BUILTIN_NAME[1:-1]}, one paragraph "
            "per document (its size, and the run's steps, depend on the Python version); data.train_files for yours")
    tokenizer, note = _tokenizer(config, output_dir, log)
    phases.done("tokenizer")
    write_tokenizer = check_run_tokenizer(tokenizer, output_dir, config.resume and has_checkpoints(output_dir))
    batch_size = t.batch_size or _choose_batch_size(config, mesh, tokenizer, log)
    rows = _check_batch_layout(config, mesh, batch_size)

    data_args = dict(tokenizer=tokenizer, seq_len=t.seq_len, batch_size=rows, seed=config.seed,
                     process_index=sharding.process_row_range(mesh, batch_size)[0] // rows,
                     process_count=jax.process_count())
    train_data = build_mlm_iterator(config.data, split="train", num_epochs=None, log=log, **data_args)
    has_eval = bool(config.data.eval_files) or config.data.eval_samples > 0
    eval_data = build_mlm_iterator(config.data, split="eval", **data_args) if has_eval else None
    pseudo = None
    if eval_data is not None and t.pseudo_perplexity_documents:
        documents = eval_documents(config.data, tokenizer, t.pseudo_perplexity_documents, t.seq_len - 2)
        pseudo = pseudo_rows(documents, seq_len=t.seq_len, max_predictions=eval_data.max_predictions,
                             cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                             pad_id=tokenizer.pad_token_id, mask_id=tokenizer.mask_token_id)
    total_steps = t.max_steps or t.epochs * train_data.steps_per_epoch
    log(f"data: {train_data.stats.describe()}")
    phases.done("data")
    log(optim.summarize_schedule(t, total_steps).describe(t, total_steps))
    per_epoch = "a stream: epoch length unknown" if config.data.hf_dataset.streaming else \
        f"{train_data.steps_per_epoch} per epoch"
    log(f"{total_steps} steps ({per_epoch}) of {batch_size} rows x {t.seq_len} tokens"
        f" on {mesh.devices.size} device(s) in {jax.process_count()} process(es), mesh {dict(mesh.shape)}")

    if config.init_from:
        log(f"init_from {config.init_from}: {locate(config.init_from).describe()}")
    model, _ = build_model(config, len(tokenizer), _special_token_ids(tokenizer), log=log, mesh=mesh)
    check_model_fits(config, model.config, tokenizer)
    resolved = resolve(config, model.config, batch_size=batch_size, total_steps=total_steps,
                       steps_per_call=multistep.resolve_steps_per_call(t.steps_per_call, jax.default_backend()),
                       model={key: architecture_of(model.config).value(model.config, key)
                              for key in INHERITED_MODEL_KEYS})
    parts, params = ModelParts.split(model)
    del model
    phases.done("model")
    return finish_setup(config, log, begun, RunSetup, parts=parts, params=params, data=train_data, resolved=resolved,
                        tokenizer=tokenizer, tokenizer_note=note, write_tokenizer=write_tokenizer,
                        best=("eval_loss", "min"), train_data=train_data, eval_data=eval_data,
                        pseudo_rows=pseudo)
