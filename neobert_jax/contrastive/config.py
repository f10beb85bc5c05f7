"""The contrastive run's config schema: `base_config()` plus the contrastive sections, declared
once here, and their validation; `--config.x=...` typos fail as the MLM trainer's do.

The architecture comes from `init_from` (required), so `model.*` holds only base_config's: what a
run may change (the attention and kernel backends, rematerialization, the dropout rates: SimCSE's
noise).
"""

from __future__ import annotations

import functools

import ml_collections

from neobert_jax.runtime.config import DROPOUTS, base_config, validate_training

LOSSES = ("mnrl", "gte", "simcse", "mse", "cosent", "margin_mse", "distill_kl")
SCORE_LOSSES = ("cosent", "margin_mse", "distill_kl")  # losses with a per-example score column
SIMILARITIES = ("dot", "cosine")
SAMPLINGS = ("proportional", "round_robin")
IN_BATCH_LOSSES = ("mnrl", "gte", "simcse")  # whose negatives are the batch's other texts
LAYOUTS = ("pack", "bucket")
ROW_SHAPES = ("auto", "one", "ladder")
POOLING_MODES = ("mean", "cls")
# What train.keep_best_checkpoint ranks by: the mean of the eval sets' metrics (Spearman, nDCG@10,
# recall@10, MRR@10, recall@100: all higher-is-better), there being no eval loss.
BEST_METRIC = "eval_mean"


def contrastive_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.output_dir = "runs/contrastive"
    c.init_from = ""  # required: an HF dir (e.g. a pretraining run's output_dir/hf) or a project checkpoint

    files = functools.partial(ml_collections.FieldReference, "", field_type=object)  # a str or a list
    c.data = ml_collections.ConfigDict({
        "train_files": files(),  # .jsonl / .parquet / datasets dirs (.txt lines for simcse); globs, "a,b" or list
        "preprocessed_dir": "",  # scripts/contrastive_preprocess.py output; used instead of train_files
        # several datasets, every batch from one (sentence-transformers' MultiDatasetBatchSampler):
        # "nli=nli/*.jsonl,qa=qa.jsonl,qa2.jsonl" (a bare path continues the source before it), a list
        # of such items, or a dict {name: files}; instead of train_files (one source). Under mnrl / gte
        # their text columns may differ (pairs beside triplets): a step has its source's columns only
        "sources": files(),
        "source_sampling": "proportional",  # proportional (every source's batches once per epoch) | round_robin
        "source_weights": files(),  # proportional: "nli=2,qa=1" or "2,1": each source's share of the steps
        # defer an example whose text is already in the batch (NoDuplicatesBatchSampler): for the losses
        # with in-batch negatives (mnrl, simcse), where a repeated text is a false negative
        "no_duplicates": True,
        "columns": files(),  # text columns in order ("anchor,positive,negative"); "" = the files' own order
        "label_column": "label",  # mse: the teacher vector of each text
        # cosent / margin_mse / distill_kl: the number column(s); "" = "score", else "label" (the
        # names sentence-transformers' trainer takes as labels). One column may hold a list of numbers.
        "score_columns": files(),
        # prepended to the first text column (anchor / query / sentence1) and to the others
        # (positive, negatives) in training, to queries and documents in evaluation, and written as
        # the export's prompts "query" and "document" (SentenceTransformer.encode(prompt_name=...)).
        "query_prompt": "",
        "document_prompt": "",
        "layout": "pack",  # pack: several texts per row (segment ids); bucket: one text per row, padded
        "max_texts_per_row": 32,  # pack: segments per row (bounds the pooling work)
        # one: every step padded to the run's largest (one compilation); ladder: each step rounded up
        # on its own (least padding, a few compiled shapes); auto: one on GPU/TPU, ladder on CPU.
        "row_shapes": "auto",
        "shuffle": True,
    })

    c.loss = ml_collections.ConfigDict({
        # mnrl (InfoNCE, in-batch + hard negatives) | gte (mnrl whose negatives also include the batch's
        # queries for each query and document, and its documents for each document) | simcse (one text column) | mse (teacher vectors) |
        # cosent (pairs + a score) | margin_mse (query, pos, negs + teacher margins) | distill_kl (query,
        # candidates + teacher scores): sentence-transformers' losses of the same names
        "name": "mnrl",
        "scale": 20.0,  # mnrl/gte/simcse/cosent: cosine similarities are multiplied by this (1 / temperature)
        "similarity": "dot",  # margin_mse/distill_kl: dot (of the output, unit when pooling.normalize) | cosine
        "temperature": 1.0,  # distill_kl: student and teacher scores are divided by it; the loss times its square
        "symmetric": False,  # mnrl/simcse: also rank the anchors for each positive, average both directions
        "matryoshka_dims": files(),  # e.g. "384,256,128,64": the loss is summed over these prefixes
        "matryoshka_weights": files(),  # one per dim; "" = all 1
    })

    c.pooling = ml_collections.ConfigDict({"mode": "mean", "normalize": True})

    c.eval = ml_collections.ConfigDict({
        "sts_files": files(),  # sentence1, sentence2, score -> Spearman of cosine similarities
        "retrieval_dirs": files(),  # corpus.jsonl, queries.jsonl, qrels.tsv -> nDCG@10, recall@10, MRR@10
        "batch_size": 64,  # rows of train.seq_len tokens per encoding call, texts packed several to a row
    })

    t = c.train
    t.epochs = 1
    t.batch_size = 64  # examples (anchor, positive, ...) per optimizer step, over all devices
    t.grad_accum_steps = 1  # >1: GradCache micro-batches; the negatives stay those of the whole batch
    t.seq_len = 256  # tokens per text ([CLS] and [SEP] included); also the packed row length
    t.learning_rate = 5e-5
    t.schedule = "linear"
    t.warmup_steps = 100
    t.log_every = 10
    t.save_every = 1000
    return c


def as_list(value) -> list[str]:
    """A comma-separated string, a list, or one number (as a flag may parse "64") -> stripped items."""
    items = list(value) if isinstance(value, (list, tuple)) else [] if value in (None, "") else [value]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def matryoshka(loss_cfg) -> tuple[list[int], list[float]]:
    """(dims, weights); ([], []) when the loss is not wrapped."""
    try:
        dims = [int(d) for d in as_list(loss_cfg.matryoshka_dims)]
        weights = [float(w) for w in as_list(loss_cfg.matryoshka_weights)] or [1.0] * len(dims)
    except ValueError as e:
        raise ValueError(f"config.loss.matryoshka_dims/weights: {e}") from None
    return dims, weights


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key."""
    validate_training(config)

    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ValueError(f"config.{key}: {msg}")

    need(config.train.batch_size > 0, "train.batch_size", f"must be positive, got {config.train.batch_size}")
    need(bool(config.init_from), "init_from", "required: an HF model dir or a project checkpoint to fine-tune")
    d = config.data
    given = [key for key in ("train_files", "sources", "preprocessed_dir") if _given(d[key])]
    need(bool(given), "data.train_files", "required (or data.sources, or data.preprocessed_dir)")
    need(len(given) <= 1, f"data.{given[-1] if given else 'sources'}", f"give one of data.{' / data.'.join(given)}")
    need(d.source_sampling in SAMPLINGS, "data.source_sampling", f"{d.source_sampling!r} is not one of {SAMPLINGS}")
    names = [name for name, _ in data_sources(d)]
    weights = source_weights(d, names)
    need(not weights or d.source_sampling == "proportional", "data.source_weights",
         "applies to data.source_sampling=proportional (round_robin gives every source the same steps)")
    need(all(w > 0 for w in weights), "data.source_weights", "must be positive")
    need(config.data.layout in LAYOUTS, "data.layout", f"{config.data.layout!r} is not one of {LAYOUTS}")
    need(config.data.max_texts_per_row > 0, "data.max_texts_per_row", "must be positive")
    need(config.data.row_shapes in ROW_SHAPES, "data.row_shapes", f"{config.data.row_shapes!r} is not one of {ROW_SHAPES}")
    need(config.loss.name in LOSSES, "loss.name", f"{config.loss.name!r} is not one of {LOSSES}")
    need(config.loss.scale > 0, "loss.scale", "must be positive")
    need(config.loss.similarity in SIMILARITIES, "loss.similarity",
         f"{config.loss.similarity!r} is not one of {SIMILARITIES}")
    need(config.loss.temperature > 0, "loss.temperature", "must be positive")
    need(config.pooling.mode in POOLING_MODES, "pooling.mode", f"{config.pooling.mode!r} is not one of {POOLING_MODES}")
    need(config.eval.batch_size > 0, "eval.batch_size", "must be positive")
    has_eval = bool(as_list(config.eval.sts_files) or as_list(config.eval.retrieval_dirs))
    need(has_eval or not config.train.keep_best_checkpoint, "train.keep_best_checkpoint",
         "needs evaluation sets: set eval.sts_files or eval.retrieval_dirs")
    need(config.train.seq_len >= 3, "train.seq_len", "must leave room for [CLS] text [SEP]")
    dims, weights = matryoshka(config.loss)
    need(len(weights) == len(dims), "loss.matryoshka_weights", f"{len(weights)} weights for {len(dims)} dims")
    need(all(d > 0 for d in dims), "loss.matryoshka_dims", "must be positive")
    if config.loss.name == "simcse":
        need(any(config.model[k] > 0 for k in DROPOUTS), "loss.name",
             "simcse uses dropout as its only noise: set model.attention_dropout (or another *_dropout) > 0, e.g. 0.1")


def _given(value) -> bool:
    return bool(value) if hasattr(value, "items") else bool(as_list(value))  # a dict (data.sources) or files


def data_sources(data_cfg) -> list[tuple[str, list[str]]]:
    """(name, file patterns) of each source: data.sources, or data.train_files as the one source "train"."""
    value = data_cfg.sources
    if hasattr(value, "items"):
        out = [(str(name), as_list(files)) for name, files in value.items()]
    else:
        out = []
        for item in as_list(value):
            name, eq, files = item.partition("=")
            if eq:
                if not name.strip() or not files.strip():
                    raise ValueError(f"config.data.sources: {item!r}: write name=files, e.g. nli=data/nli.jsonl")
                out.append((name.strip(), [files.strip()]))
            elif not out:
                raise ValueError(f"config.data.sources: {item!r} has no name: write name=files, e.g. nli=data/nli.jsonl")
            else:
                out[-1][1].append(item)
    if not out and not data_cfg.preprocessed_dir:
        return [("train", as_list(data_cfg.train_files))]
    names = [name for name, _ in out]
    for name, files in out:
        if names.count(name) > 1:
            raise ValueError(f"config.data.sources: the name {name!r} is given twice")
        if not files:
            raise ValueError(f"config.data.sources: source {name!r} has no files")
    return out


def source_weights(data_cfg, names: list[str]) -> list[float]:
    """data.source_weights in the sources' order; [] when not given."""
    items = as_list(data_cfg.source_weights)
    if not items:
        return []
    try:
        if all("=" in item for item in items):
            pairs = dict((k.strip(), float(v)) for k, v in (item.split("=", 1) for item in items))
            unknown = sorted(set(pairs) - set(names))
            if unknown or len(pairs) != len(names):
                raise ValueError(f"names {sorted(pairs)}, but the sources are {names}")
            return [pairs[name] for name in names]
        weights = [float(item) for item in items]
    except ValueError as e:
        raise ValueError(f"config.data.source_weights: {e}") from None
    if len(weights) != len(names):
        raise ValueError(f"config.data.source_weights: {len(weights)} weights for {len(names)} sources {names}")
    return weights


def prompts(data_cfg) -> tuple[str, str]:
    """(query prompt, document prompt) of the data section."""
    return str(data_cfg.query_prompt), str(data_cfg.document_prompt)


def dropout_overrides(config) -> dict[str, float]:
    return {key: float(config.model[key]) for key in DROPOUTS}
