"""Everything a classification run needs before its first step, through runtime.setup's shared
sequence: tokenizer, labelled data (train and eval; tagged sentences for token classification),
the model with its classifier head, then `finish_setup` (optimizer, shardings, start or resume,
run files)."""

from __future__ import annotations

import dataclasses
import math

from neobert_jax.classify.config import BEST_METRIC
from neobert_jax.classify.data import (ROW_MULTIPLE, PairTokenizer, encode, label_names, read_examples, resolve_files,
                                      row_length, targets)
from neobert_jax.classify.evaluation import Evaluator
from neobert_jax.classify.head import TOKEN_CLASSIFICATION, load_classifier, read_classifier_labels
from neobert_jax.classify.packing import PackedBatches
from neobert_jax.classify.tag_data import (TAG_SUFFIXES, WordTokenizer, check_tags, encode_sentences, read_sentences,
                                          tag_names)
from neobert_jax.classify.tag_eval import first_token_logits
from neobert_jax.contrastive.config import as_list, dropout_overrides
from neobert_jax.data import load_tokenizer
from neobert_jax.data.errors import DataError
from neobert_jax.hf.paths import locate
from neobert_jax.runtime import optim, sharding
from neobert_jax.runtime.model_init import runtime_policy
from neobert_jax.runtime.resolved import resolve
from neobert_jax.runtime.run_dir import check_run_tokenizer, has_checkpoints
from neobert_jax.runtime.setup import TaskSetup, begin_setup, check_model_fits, finish_setup
from neobert_jax.runtime.state import ModelParts

REGRESSION = "regression"


@dataclasses.dataclass(kw_only=True)
class ClassifySetup(TaskSetup):
    batches: PackedBatches
    evaluator: Evaluator | None
    eval_gold: list  # the eval labels as read (names, lists of names or numbers)
    labels: list[str]  # the outputs' names (regression: the label column)
    eval_words: list | None = None  # token classification: the eval sentences' words


def _examples(files_spec, what: str, config, names: list[str] | None):
    """-> (examples, targets, names) of the files `files_spec`; `names` None: taken from them."""
    d, problem = config.data, config.classifier.problem_type
    examples = read_examples(resolve_files(files_spec, what), d, problem)
    if names is None:
        names = label_names(examples, problem, as_list(d.labels))
    return examples, targets(examples, problem, names, d.label_column), names


def _tagged(config, names: list[str] | None):
    """-> (training sentences, tag names, eval sentences or None); `names` None: tag_names' choice
    (data.labels, a datasets folder's ClassLabel names, the training tags sorted)."""
    d = config.data

    def read(spec, what: str):
        return read_sentences(resolve_files(spec, what, TAG_SUFFIXES), d, as_list(d.labels))

    train = read(d.train_files, "data.train_files")
    names = names if names is not None else tag_names(train, as_list(d.labels))
    check_tags(train, names, d.label_column)
    evaluation = read(d.eval_files, "data.eval_files") if as_list(d.eval_files) else None
    if evaluation is not None:
        check_tags(evaluation, names, d.label_column)
    return train, names, evaluation


def setup_classify(config, log) -> ClassifySetup:
    begun = begin_setup(config)
    output_dir, mesh, phases = begun.output_dir, begun.mesh, begun.phases
    t, d, k = config.train, config.data, config.classifier
    accum_rows = sharding.batch_rows_divisor(mesh) * t.grad_accum_steps
    if t.batch_size % accum_rows:
        raise ValueError(f"config.train.batch_size: {t.batch_size} is not a multiple of {accum_rows} (the mesh's batch "
                         "shards x train.grad_accum_steps)")
    log(f"init_from {config.init_from}: {locate(config.init_from).describe()}")
    source = config.tokenizer or locate(config.init_from).tokenizer
    if not source:
        raise FileNotFoundError(f"config.init_from: {config.init_from} has no tokenizer files beside it; "
                                "set config.tokenizer to the tokenizer folder it was trained with")
    tokenizer = load_tokenizer(source)
    write_tokenizer = check_run_tokenizer(tokenizer, output_dir, config.resume and has_checkpoints(output_dir))
    phases.done("tokenizer")

    init = read_classifier_labels(config.init_from)
    tokens = k.problem_type == TOKEN_CLASSIFICATION
    if init and init["tokens"] != tokens:
        init = None  # the other kind (sequence or token): its labels and classifier are not this run's
    given = None if as_list(d.labels) or not init or k.problem_type == REGRESSION else init["labels"]
    if tokens:
        train, names, evaluation = _tagged(config, given)
    else:
        train, train_targets, names = _examples(d.train_files, "data.train_files", config, given)
        evaluation = _examples(d.eval_files, "data.eval_files", config, names) if as_list(d.eval_files) else None
    if k.problem_type in ("single_label_classification", TOKEN_CLASSIFICATION) and len(names) < 2:
        raise DataError(f"data.train_files: column {d.label_column!r} holds {len(names)} label(s) {names}; "
                        f"{k.problem_type.replace('_', ' ')} needs at least two")
    outputs = 1 if k.problem_type == REGRESSION else len(names)
    labels = [d.label_column] if k.problem_type == REGRESSION else names
    phases.done("data")

    model, fresh = load_classifier(config.init_from, outputs, pooling=k.pooling, dropout=k.dropout, seed=config.seed,
                                   runtime=runtime_policy(config, mesh), config_changes=dropout_overrides(config),
                                   tokens=tokens)
    kind = "token" if tokens else "sequence"
    if [name for name in fresh if name.startswith("model.")]:
        log(f"warning: {config.init_from} lacks encoder weights {fresh}; they start from random init")
    elif fresh:
        log(f"classifier: {', '.join(fresh)} start fresh (init_from has no {kind}-classification head)")
    else:
        log(f"classifier: head and classifier from init_from, which continue training ({outputs} outputs)")
    if init and init["problem_type"] and init["problem_type"] != k.problem_type:
        log(f"warning: init_from was trained for {init['problem_type']}, this run is {k.problem_type}")
    parts, params = ModelParts.split(model)
    check_model_fits(config, parts.config, tokenizer)
    phases.done("model")

    evaluator, eval_gold, eval_words = None, [], None
    if tokens:
        word_tokenizer = WordTokenizer(tokenizer, t.seq_len)
        pad_id = word_tokenizer.pad_id
        data = encode_sentences(train, word_tokenizer, names)
        log(f"data: {len(data)} training sentences, tags {names}, {data.truncated} cut to train.seq_len={t.seq_len} "
            f"tokens ({data.words_cut} of {sum(map(len, train.words))} words cut, untrained)")
        if evaluation is not None:
            eval_data = encode_sentences(evaluation, word_tokenizer, names)
            log(f"eval: {len(eval_data)} sentences, {eval_data.truncated} cut to {t.seq_len} tokens "
                f"({eval_data.words_cut} of {sum(map(len, evaluation.words))} words cut, predicted 'O')")
            evaluator = Evaluator(parts, mesh, eval_data, batch_size=config.eval.batch_size,
                                  seq_len=row_length(eval_data.ids, t.seq_len), pad_id=pad_id,
                                  select=first_token_logits(eval_data))
            eval_gold, eval_words = evaluation.tags, evaluation.words
    else:
        pair_tokenizer = PairTokenizer(tokenizer, t.seq_len)
        pad_id = pair_tokenizer.pad_id
        data = encode(train, pair_tokenizer, train_targets)
        shown = f"labels {names}" if k.problem_type != REGRESSION else f"regression on {d.label_column!r}"
        log(f"data: {len(data)} training examples, {shown}, {data.truncated} cut to train.seq_len={t.seq_len} tokens")
        if evaluation is not None:
            examples, eval_targets, _ = evaluation
            eval_data = encode(examples, pair_tokenizer, eval_targets)
            log(f"eval: {len(eval_data)} examples, {eval_data.truncated} cut to {t.seq_len} tokens")
            evaluator = Evaluator(parts, mesh, eval_data, batch_size=config.eval.batch_size,
                                  seq_len=row_length(eval_data.ids, t.seq_len), pad_id=pad_id)
            eval_gold = examples.labels
    width = row_length(data.ids, t.seq_len)
    log(f"rows of {width} tokens: the longest training {'sentence' if tokens else 'example'} "
        f"({max(map(len, data.ids))}) rounded up to {ROW_MULTIPLE}, at most train.seq_len={t.seq_len}")
    batches = PackedBatches(data, batch_size=t.batch_size, width=width, pad_id=pad_id, seed=config.seed,
                            shuffle=d.shuffle, pack=d.pack, total_steps_for=lambda per_epoch: t.max_steps or
                            t.epochs * per_epoch,
                            row_multiple=math.lcm(sharding.batch_rows_divisor(mesh), t.grad_accum_steps),
                            row_range=lambda rows: sharding.process_row_range(mesh, rows))
    log(batches.describe())
    total_steps = batches.total_steps
    log(f"{total_steps} steps ({batches.steps_per_epoch} per epoch) of {t.batch_size} "
        f"{'sentences' if tokens else 'examples'}, {k.problem_type}, "
        f"on {mesh.devices.size} device(s), mesh {dict(mesh.shape)}")
    log(optim.summarize_schedule(t, total_steps).describe(t, total_steps))
    phases.done("encoding")
    resolved = resolve(config, parts.config, batch_size=t.batch_size, total_steps=total_steps, labels=labels,
                       row_length=width, rows=batches.rows)
    return finish_setup(config, log, begun, ClassifySetup, parts=parts, params=params, data=batches, resolved=resolved,
                        tokenizer=tokenizer, tokenizer_note=None, write_tokenizer=write_tokenizer,
                        best=(BEST_METRIC, "min"), batches=batches, evaluator=evaluator, eval_gold=eval_gold,
                        labels=labels, eval_words=eval_words)
