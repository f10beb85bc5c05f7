"""The MLM iterator: contract, determinism, resume, epochs, process shards, eval split, shards, bad input."""

import json

import grain
import numpy as np
import pytest

from neobert_jax.data import DataError, build_mlm_iterator, default_data_config, load_tokenizer, max_predictions
from neobert_jax.data.sources import ReadStats, read_documents
from neobert_jax.data.token_store import write_store
from neobert_jax.data.tokenizer import train_tokenizer

SEQ_LEN, BATCH = 64, 4
WORDS = ("the model packs rows of tokens into segments while masking keeps special ids out of every "
         "batch so that training on short paragraphs wastes no compute and long documents split").split()


def write_corpus(path, lines=300, seed=0):
    """Distinct lines of 3-40 words, a few of 150 words (longer than a row)."""
    rng = np.random.default_rng(seed)
    lengths = [150 if i % 50 == 7 else rng.integers(3, 40) for i in range(lines)]
    texts = {f"line {i} " + " ".join(rng.choice(WORDS, n)) for i, n in enumerate(lengths)}
    path.write_text("\n".join(sorted(texts)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "train.txt")


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer([corpus], vocab_size=400)


def config(train_files, **overrides):
    cfg = default_data_config()
    cfg.train_files = train_files
    cfg.update(overrides)
    return cfg


def build(cfg, tokenizer, **kwargs):
    kwargs = {"seq_len": SEQ_LEN, "batch_size": BATCH, **kwargs}
    return build_mlm_iterator(cfg, tokenizer=tokenizer, **kwargs)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def original_rows(batch):
    """The unmasked rows, as hashable tuples."""
    ids = np.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    return [tuple(row) for row in ids]


def documents(batches):
    """Token tuples of every packed document ([CLS] .. [SEP]) in the batches."""
    docs = []
    for batch in batches:
        ids = np.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
        for row, seg in zip(ids, batch["segment_ids"]):
            docs += [tuple(row[seg == s]) for s in range(1, seg.max() + 1)]
    return docs


def test_batches_follow_the_contract(corpus, tokenizer):
    iterator = build(config(corpus), tokenizer)
    batch = next(iterator)
    m = max_predictions(SEQ_LEN, 0.30)
    shapes = {"input_ids": SEQ_LEN, "segment_ids": SEQ_LEN, "positions": SEQ_LEN, "labels": SEQ_LEN,
              "masked_positions": m, "masked_labels": m}
    assert {k: v.shape for k, v in batch.items()} == {k: (BATCH, t) for k, t in shapes.items()}
    assert all(v.dtype == np.int32 for v in batch.values())
    stats = iterator.stats
    assert iterator.max_predictions == m and iterator.steps_per_epoch == stats.steps_per_epoch > 10
    assert stats.packing_efficiency > 0.9 and stats.documents == stats.documents_read == 300
    assert stats.documents_split == 6 and stats.chunks > 300
    assert stats.rows_per_epoch == stats.steps_per_epoch * BATCH
    assert stats.rows_per_epoch + stats.rows_unused_per_epoch == stats.rows
    assert json.loads(str(stats))["rows"] == stats.rows


def test_same_seed_same_batches_whatever_the_threads(corpus, tokenizer):
    one_thread = take(build(config(corpus, num_threads=1, prefetch_buffer_size=1), tokenizer, seed=3), 6)
    threads = take(build(config(corpus, num_threads=4, prefetch_buffer_size=16), tokenizer, seed=3), 6)
    other_seed = take(build(config(corpus), tokenizer, seed=4), 6)
    assert same(one_thread, threads)
    assert not same(one_thread, other_seed)


def test_resume_continues_with_the_next_batch(corpus, tokenizer):
    reference = build(config(corpus), tokenizer, num_epochs=2)
    steps = reference.steps_per_epoch
    for resume_at in (3, steps - 1, steps + 2):  # inside, at the end of, and after the first epoch
        run = build(config(corpus), tokenizer, num_epochs=2)
        take(run, resume_at)
        state = json.loads(json.dumps(run.get_state()))
        expected = take(run, 3)
        resumed = build(config(corpus), tokenizer, num_epochs=2)
        resumed.set_state(state)
        assert same(take(resumed, 3), expected)


def test_orbax_checkpoint_of_the_iterator(corpus, tokenizer, tmp_path):
    import orbax.checkpoint as ocp

    run = build(config(corpus), tokenizer)
    take(run, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(run)))
        manager.wait_until_finished()
    expected = take(run, 2)
    resumed = build(config(corpus), tokenizer)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as manager:
        manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert same(take(resumed, 2), expected)


def test_epochs_end_and_reshuffle(corpus, tokenizer):
    iterator = build(config(corpus), tokenizer, num_epochs=2)
    steps = iterator.steps_per_epoch
    batches = list(iterator)
    assert len(batches) == 2 * steps
    epochs = [[row for b in batches[e * steps : (e + 1) * steps] for row in original_rows(b)] for e in (0, 1)]
    assert all(len(set(rows)) == len(rows) == iterator.stats.rows_per_epoch for rows in epochs)
    assert epochs[0] != epochs[1]  # another order (and other rows left out)
    unshuffled = [row for b in take(build(config(corpus, shuffle=False), tokenizer), steps) for row in original_rows(b)]
    assert unshuffled != epochs[0]


def test_processes_read_disjoint_shards_of_equal_length(corpus, tokenizer):
    shards = [build(config(corpus), tokenizer, process_index=i, process_count=2, num_epochs=1) for i in (0, 1)]
    assert shards[0].steps_per_epoch == shards[1].steps_per_epoch
    rows = [[row for b in shard for row in original_rows(b)] for shard in shards]
    assert len(rows[0]) == len(rows[1]) == shards[0].stats.rows_per_epoch
    assert not set(rows[0]) & set(rows[1])
    stats = shards[0].stats
    assert 2 * stats.rows_per_epoch + stats.rows_unused_per_epoch == stats.rows  # every row used once or counted
    single = build(config(corpus), tokenizer, batch_size=2 * BATCH)
    assert single.stats.rows == stats.rows  # one packing plan, whatever the process count

    eval_cfg = config(corpus, eval_samples=41)
    evals = [list(build(eval_cfg, tokenizer, split="eval", process_index=i, process_count=2)) for i in (0, 1)]
    assert len(evals[0]) == len(evals[1])
    everything = list(build(eval_cfg, tokenizer, split="eval"))
    assert sorted(documents(evals[0]) + documents(evals[1])) == sorted(documents(everything))


def test_eval_split_is_held_out_deterministic_and_complete(corpus, tokenizer):
    cfg = config(corpus, eval_samples=25, packing="none")
    evals = build(cfg, tokenizer, split="eval")
    start = evals.get_state()
    first = list(evals)
    evals.set_state(start)  # how the trainer reruns its eval pass
    assert same(first, list(evals)) and same(first, list(build(cfg, tokenizer, split="eval")))
    assert len(first) == -(-25 // BATCH)
    eval_docs = documents(first)
    assert len(eval_docs) == len(set(eval_docs)) == 25
    assert not np.any(first[-1]["segment_ids"][25 % BATCH :])  # last batch filled with padding rows
    train = build(cfg, tokenizer, num_epochs=1, seed=5)
    assert train.stats.eval_held_out == 25 and train.stats.documents == 300 - 25
    assert not set(eval_docs) & set(documents(train))
    assert same(first, list(build(cfg, tokenizer, split="eval", seed=0)))
    assert not same(first, list(build(cfg, tokenizer, split="eval", seed=1)))  # masks follow the seed


def test_eval_files(corpus, tokenizer, tmp_path):
    eval_file = write_corpus(tmp_path / "eval.txt", lines=30, seed=9)
    full = build(config([corpus], eval_files=[eval_file]), tokenizer, split="eval")  # lists work as well as str
    assert full.stats.documents == 30 and full.stats.eval_held_out == 0
    assert build(config(corpus, eval_files=eval_file), tokenizer).stats.documents == 300  # train untouched
    assert build(config(corpus, eval_files=eval_file, eval_samples=10), tokenizer, split="eval").stats.documents == 10


def test_preprocessed_shards_give_the_same_batches(corpus, tokenizer, tmp_path):
    stats = ReadStats()
    meta = write_store(str(tmp_path / "shards"), read_documents([corpus], stats=stats), tokenizer, stats,
                       sources=[], shard_tokens=2000)
    assert len(meta["shards"]) > 3 and meta["documents"] == 300
    from_text = build(config(corpus, eval_samples=20), tokenizer, seed=1)
    bundled = load_tokenizer(str(tmp_path / "shards" / "tokenizer"))  # what the trainer would load
    from_shards = build(config("", preprocessed_dir=str(tmp_path / "shards"), eval_samples=20), bundled, seed=1)
    assert from_text.stats == from_shards.stats
    assert same(take(from_text, from_text.steps_per_epoch + 2), take(from_shards, from_text.steps_per_epoch + 2))


def test_builtin_corpus_packs_above_95_percent_at_512():
    tokenizer = train_tokenizer([], vocab_size=2000)
    iterator = build(default_data_config(), tokenizer, seq_len=512, batch_size=8)
    assert iterator.stats.documents > 10_000 and iterator.stats.packing_efficiency >= 0.95
    assert next(iterator)["input_ids"].shape == (8, 512)


@pytest.mark.parametrize(
    "case, message",
    [
        ("blank", r"empty corpus: no documents in .*blank\.txt \(3 empty, 0 bad records skipped\)"),
        ("all_bad", r"empty corpus: .*\(0 empty, 2 bad records skipped\)"),
        ("holdout", r"eval_samples 300 leaves no training documents \(the corpus has 300\)"),
        ("batch", r"packs into \d+ rows of 64 tokens, fewer than batch_size x processes = 100000"),
        ("no_eval", r"no eval split: set data.eval_files, or data.eval_samples"),
        ("packing", r"data.packing must be one of .*; data.mlm_probability must be in \(0, 1\], got 0.0"),
        ("both", r"set data.train_files or data.preprocessed_dir, not both"),
        ("not_preprocessed", r"no meta.json; not a folder written by scripts/preprocess.py"),
    ],
)
def test_bad_input_fails_with_one_clear_line(corpus, tokenizer, tmp_path, case, message):
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n{"title": "x"}\n')
    cfg, kwargs = config(corpus), {}
    if case == "blank":
        cfg.train_files = str(tmp_path / "blank.txt")
    elif case == "all_bad":
        cfg.train_files, cfg.skip_bad_records = str(tmp_path / "bad.jsonl"), True
    elif case == "holdout":
        cfg.eval_samples = 300
    elif case == "batch":
        kwargs["batch_size"] = 100_000
    elif case == "no_eval":
        kwargs["split"] = "eval"
    elif case == "packing":
        cfg.packing, cfg.mlm_probability = "greedy", 0.0
    elif case == "both":
        cfg.preprocessed_dir = str(tmp_path)
    elif case == "not_preprocessed":
        cfg.train_files, cfg.preprocessed_dir = "", str(tmp_path)
    with pytest.raises(DataError, match=message) as error:
        build(cfg, tokenizer, **kwargs)
    assert "\n" not in str(error.value)


def test_shards_made_with_another_tokenizer_are_refused(corpus, tokenizer, tmp_path):
    stats = ReadStats()
    write_store(str(tmp_path / "shards"), read_documents([corpus], stats=stats), tokenizer, stats, sources=[])
    other = train_tokenizer([corpus], vocab_size=300)
    with pytest.raises(DataError, match=r"tokenized with another tokenizer than the run's; use the tokenizer saved in"):
        build(config("", preprocessed_dir=str(tmp_path / "shards")), other)


def test_the_start_line_counts_every_skip():
    from neobert_jax.data.pipeline import DataStats

    stats = DataStats(files=2, documents_read=110, empty_skipped=3, bad_records_skipped=1, invalid_utf8_replaced=2,
                      eval_held_out=10, documents_too_short=7, documents=96, documents_split=4,
                      documents_without_tokens=0, chunks=100, rows=40, tokens=5000, packing_efficiency=0.9766,
                      rows_per_epoch=40, rows_unused_per_epoch=0, steps_per_epoch=5)
    assert stats.describe() == ("96 documents from 2 file(s), 10 more held out for evaluation; skipped: 3 empty, "
                                "1 bad records, 7 shorter than data.min_document_tokens; 2 with invalid UTF-8 replaced; 4 longer than a row, cut -> 40 packed "
                                "rows, 5,000 tokens, 97.7% of the rows filled; 5 steps per epoch")
