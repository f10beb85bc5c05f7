"""Several training sources and the no-duplicates guard: every batch from one source, the
proportional / weighted / round-robin counts over an epoch, no repeated text in any global batch
(ST's NoDuplicatesBatchSampler's batches on the same order), deferred and dropped examples
reported, two processes planning the same batches, config errors naming the key, and a two-source
run (pairs beside triplets) stopped mid-epoch resuming to the uninterrupted run's losses."""

import json
import os
import signal

import numpy as np
import pytest

from neobert_jax.contrastive import task as task_module
from neobert_jax.contrastive.batching import ContrastiveBatches, Layout
from neobert_jax.contrastive.config import contrastive_config, data_sources, source_weights, validate
from neobert_jax.contrastive.sampling import Source, plan_pass, text_keys
from neobert_jax.contrastive.tokenized import TokenizedColumns
from neobert_jax.runtime import config as runtime_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = dict(cls_id=1, sep_id=2, pad_id=3)


def columns_of(texts_by_column):
    """TokenizedColumns whose texts are the given token tuples."""
    ids, offsets = [], []
    for texts in texts_by_column:
        ids.append(np.concatenate([np.asarray(t, np.uint16) for t in texts]))
        offsets.append(np.concatenate([[0], np.cumsum([len(t) for t in texts])]).astype(np.int64))
    return TokenizedColumns([f"c{i}" for i in range(len(texts_by_column))], ids, offsets, None)


def distinct_pairs(n, tag):
    """n (anchor, positive) pairs, all texts distinct; `tag` marks the source in every token."""
    return [[(tag, i, 10 + i % 7) for i in range(n)], [(tag, 500 + i, 20) for i in range(n)]]


def sources_data(sizes, duplicates=False):
    columns, sources, start = [[], []], [], 0
    for s, n in enumerate(sizes):
        pairs = distinct_pairs(n, 100 + s)
        if duplicates:  # few distinct positives: most of them shared by many anchors
            pairs[1] = [(100 + s, 900 + i % 5) for i in range(n)]
        for k in range(2):
            columns[k].extend(pairs[k])
        sources.append(Source(f"s{s}", start, n))
        start += n
    return columns_of(columns), sources


def batches_of(data, sources, *, row_range=None, **kwargs):
    return ContrastiveBatches(data, batch_size=8, seed=5, shuffle=True, layout=Layout("pack", 16, 8, 1, (0, 1)),
                              special_ids=SPECIALS, sources=sources, row_range=row_range, **kwargs)


def source_of(sources, examples):
    owners = {next(s.name for s in sources if s.start <= e < s.start + s.examples) for e in examples.tolist()}
    assert len(owners) == 1, f"a batch mixes sources {owners}"
    return owners.pop()


@pytest.mark.parametrize("sampling, weights, per_epoch", [
    ("proportional", None, {"s0": 5, "s1": 3, "s2": 2}),  # each source's full batches once
    ("proportional", [1, 1, 2], {"s0": 3, "s1": 2, "s2": 5}),  # the same 10 steps shared 1:1:2
    ("round_robin", None, {"s0": 2, "s1": 2, "s2": 2}),  # as many as the smallest source has
])
def test_every_batch_comes_from_one_source_in_the_schedules_counts(sampling, weights, per_epoch):
    data, sources = sources_data([40, 24, 16])
    batches = batches_of(data, sources, sampling=sampling, weights=weights)
    assert batches.steps_per_epoch == sum(per_epoch.values())
    for epoch in range(3):
        steps = range(epoch * batches.steps_per_epoch, (epoch + 1) * batches.steps_per_epoch)
        owners = [source_of(sources, batches.examples(step)) for step in steps]
        assert {name: owners.count(name) for name in per_epoch} == per_epoch
        if sampling == "round_robin":
            assert owners == ["s0", "s1", "s2"] * 2
    if sampling == "proportional" and weights is None:  # one epoch: every example of s0 once
        guarded = batches_of(data, sources, sampling=sampling, no_duplicates=True)  # no repeated text: no change
        for step in range(20):
            np.testing.assert_array_equal(guarded.examples(step), batches.examples(step))
        seen = np.concatenate([batches.examples(step) for step in range(10)])
        assert sorted(e for e in seen.tolist() if e < 40) == list(range(40))
    if sampling == "round_robin":  # s0's stream goes on across epochs: its first pass, all 40, over 3 epochs
        s0 = [batches.examples(step) for step in range(18) if source_of(sources, batches.examples(step)) == "s0"]
        assert sorted(np.concatenate(s0[:5]).tolist()) == list(range(40))


def nodup_reference(order, keys, batch_size):
    """sentence-transformers' NoDuplicatesBatchSampler.__iter__ (drop_last=True), on a given order."""
    remaining, out = dict.fromkeys(order.tolist()), []
    while remaining:
        values, batch = set(), []
        for index in remaining:
            if set(keys[index]) & values:
                continue
            batch.append(index)
            if len(batch) == batch_size:
                out.append(batch)
                break
            values.update(keys[index])
        for index in batch:
            del remaining[index]
    return out


def test_no_duplicates_matches_sentence_transformers_and_counts_what_it_defers_and_drops():
    data, sources = sources_data([200], duplicates=True)
    keys = text_keys(data.ids, data.offsets)
    assert len(np.unique(keys[:, 1])) == 5 and len(np.unique(keys[:, 0])) == 200
    order = np.random.default_rng(0).permutation(200)
    plan = plan_pass(order, 4, keys.tolist())
    assert [b.tolist() for b in plan.batches] == nodup_reference(order, keys.tolist(), 4)
    assert plan.deferred > 0 and plan.dropped == 200 - 4 * len(plan.batches)

    lines = []
    batches = batches_of(data, sources, no_duplicates=True, log=lines.append)  # 5 distinct positives < 8
    with pytest.raises(Exception, match="no batch of train.batch_size=8 examples without a repeated text"):
        batches.describe()
    # many duplicates, but enough distinct texts for full batches: anchors repeat every 10 examples
    columns = [[(7, i % 10) for i in range(120)], [(8, i % 40) for i in range(120)]]
    data = columns_of(columns)
    sources = [Source("dup", 0, 120)]
    batches = batches_of(data, sources, no_duplicates=True, log=lines.append)
    described = batches.describe()[0]
    assert described.startswith("data source dup: 120 examples, 15 steps per epoch; no_duplicates: ")
    for step in range(batches.steps_per_epoch * 2):
        examples = batches.examples(step)
        texts = [tuple(columns[k][e]) for k in range(2) for e in examples]
        assert len(set(texts)) == len(texts) == 16, f"step {step} repeats a text"
        next(batches)
    first = batches.schedule.streams[0].plan(0)
    assert f"{first.deferred} deferred to a later batch, {first.dropped} in no batch" in described
    assert first.deferred > 0 and first.dropped == 120 - 8 * len(first.batches) > 0
    assert any(line.startswith("data source dup pass 2: no_duplicates: ") for line in lines), lines


def test_two_processes_plan_the_same_global_batches():
    data, sources = sources_data([40, 24], duplicates=False)
    halves = [batches_of(data, sources, no_duplicates=True,
                         row_range=lambda rows, i=i: (i * rows // 2, (i + 1) * rows // 2)) for i in range(2)]
    whole = batches_of(data, sources, no_duplicates=True)
    for step in range(12):
        parts = [next(h) for h in halves]
        full, stats = next(whole)
        assert stats["source"] == parts[0][1]["source"] == parts[1][1]["source"]
        np.testing.assert_array_equal(halves[0].examples(step), halves[1].examples(step))
        for key, value in full["groups"][0].items():
            np.testing.assert_array_equal(np.concatenate([p[0]["groups"][0][key] for p in parts]), value)


def test_sources_config_forms_and_errors():
    c = contrastive_config()
    c.init_from = "x"
    c.data.sources = "nli=a.jsonl,b.jsonl,qa=c/*.parquet"
    assert data_sources(c.data) == [("nli", ["a.jsonl", "b.jsonl"]), ("qa", ["c/*.parquet"])]
    c.data.sources = {"nli": "a.jsonl", "qa": ["b.jsonl", "c.jsonl"]}
    assert data_sources(c.data) == [("nli", ["a.jsonl"]), ("qa", ["b.jsonl", "c.jsonl"])]
    c.data.source_weights = "qa=3,nli=1"
    assert source_weights(c.data, ["nli", "qa"]) == [1.0, 3.0]
    validate(c)
    for key, value, message in [
        ("sources", "a.jsonl,qa=b.jsonl", "config.data.sources: 'a.jsonl' has no name"),
        ("sources", "qa=a.jsonl,qa=b.jsonl", "config.data.sources: the name 'qa' is given twice"),
        ("source_weights", "2", "config.data.source_weights: 1 weights for 2 sources"),
        ("source_weights", "nli=1,sts=2", "config.data.source_weights: names"),
        ("source_weights", "1,0", "config.data.source_weights: must be positive"),
        ("source_sampling", "random", "config.data.source_sampling: 'random' is not one of"),
        ("train_files", "t.jsonl", "config.data.sources: give one of data.train_files / data.sources"),
    ]:
        bad = contrastive_config()
        bad.init_from, bad.data.sources = "x", "nli=a.jsonl,qa=b.jsonl"
        bad.data[key] = value
        with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
            validate(bad)
    bad.data.train_files, bad.data.source_sampling, bad.data.source_weights = "", "round_robin", "1,2"
    with pytest.raises(ValueError, match="config.data.source_weights: applies to data.source_sampling=proportional"):
        validate(bad)


def write_pairs(path, tag, n, negatives=False):
    with open(path, "w") as f:
        for i in range(n):  # every 4th example repeats a positive: work for the guard
            record = {"anchor": f"{tag} query {i}", "positive": f"{tag} answer {i - i % 4 * (i % 4 == 3)}"}
            f.write(json.dumps({**record, "negative": f"{tag} other {i * 5 % n}"} if negatives else record) + "\n")
    return str(path)


def test_two_source_run_stopped_mid_epoch_resumes_to_the_same_losses(tmp_path, tiny_tokenizer_dir, tiny_hf_dir,
                                                                      monkeypatch):
    hf_dir = tiny_hf_dir(str(tmp_path), tiny_tokenizer_dir(str(tmp_path)))
    sources = (f"code={write_pairs(tmp_path / 'code.jsonl', 'def', 40)},"
               f"prose={write_pairs(tmp_path / 'prose.jsonl', 'the text', 24, negatives=True)}")  # triplets

    def run(output_dir, stop_at=None):
        cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
        cfg.init_from, cfg.output_dir, cfg.data.sources = hf_dir, str(output_dir), sources
        cfg.data.row_shapes = "one"  # pair and triplet steps: one compiled shape
        cfg.train.update(epochs=2, max_steps=0, batch_size=8, seq_len=32, learning_rate=3e-3, log_every=1,
                         save_every=100)
        calls = {"n": 0}
        original = task_module.ContrastiveTask.next_batch

        def next_batch(self, steps):
            calls["n"] += 1
            if calls["n"] == stop_at:
                signal.raise_signal(signal.SIGTERM)
            return original(self, steps)

        monkeypatch.setattr(task_module.ContrastiveTask, "next_batch", next_batch)
        return task_module.train_contrastive(cfg)

    full = run(tmp_path / "full")
    assert full.completed and full.step == 16  # 2 epochs of 5 + 3 steps
    stopped = run(tmp_path / "stopped", stop_at=6)
    assert not stopped.completed and 0 < stopped.step < 8, stopped.step  # inside the first epoch
    resumed = run(tmp_path / "stopped")
    assert resumed.completed
    records = {name: [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
               for name in ("full", "stopped")}
    losses = {name: [(r["step"], r["loss"]) for r in recs if "loss" in r] for name, recs in records.items()}
    assert [s for s, _ in losses["stopped"]] == list(range(1, 17))
    np.testing.assert_allclose([v for _, v in losses["stopped"]], [v for _, v in losses["full"]], rtol=1e-6)
    counts = {k: sum(r.get(k, 0) for r in records["full"]) for k in ("steps_source_code", "steps_source_prose")}
    assert counts == {"steps_source_code": 10, "steps_source_prose": 6}
