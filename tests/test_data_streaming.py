"""data.hf_dataset: load_dataset sources and the streamed train split, offline through local builders
("json", "text") on files written here: contract, no silent drops, exact resume, shuffle resume, hosts."""

import collections
import json
import os

import numpy as np
import pytest

from neobert_jax.data import DataError, build_mlm_iterator, default_data_config
from neobert_jax.data.streaming import StreamingMlmIterator
from neobert_jax.data.tokenizer import TextEncoder, train_tokenizer
from neobert_jax.mlm import config as mlm_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SEQ_LEN, BATCH = 48, 4
WORDS = "a stream of short and long paragraphs is packed online into rows then masked like the files".split()


def write_texts(root, files=2, lines=60, seed=0) -> list[list[str]]:
    """Per file: unique documents of 2-40 words, every 25th of 120 words (cut), every 17th blank."""
    rng = np.random.default_rng(seed)
    texts = []
    for f in range(files):
        docs = []
        for i in range(lines):
            n = 120 if i % 25 == 3 else int(rng.integers(2, 40))
            docs.append("" if i % 17 == 5 else f"doc{f}x{i} " + " ".join(rng.choice(WORDS, n)))
        texts.append(docs)
        with open(os.path.join(root, f"part{f}.jsonl"), "w") as out:
            out.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
        with open(os.path.join(root, f"part{f}.txt"), "w") as out:
            out.write("\n".join(docs) + "\n")
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return str(root), write_texts(str(root))


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer([os.path.join(corpus[0], "part0.txt")], vocab_size=400)


def stream_config(root, builder="json", files=("part0", "part1"), streaming=True, **overrides):
    cfg = default_data_config()
    cfg.hf_dataset.name = builder
    cfg.hf_dataset.data_files = [os.path.join(root, f"{f}.{'txt' if builder == 'text' else 'jsonl'}") for f in files]
    cfg.hf_dataset.streaming = streaming
    cfg.shuffle = False
    cfg.update(overrides)
    return cfg


def build(cfg, tokenizer, **kwargs):
    return build_mlm_iterator(cfg, tokenizer=tokenizer, **{"seq_len": SEQ_LEN, "batch_size": BATCH, **kwargs})


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


class Recorder:
    """Wraps the iterator's encoder to see which documents it read."""

    def __init__(self, encoder):
        self.encoder, self.texts = encoder, []

    def encode(self, texts):
        self.texts += texts
        return self.encoder.encode(texts)


def recorded(iterator: StreamingMlmIterator) -> Recorder:
    iterator._encoder = Recorder(iterator._encoder)
    return iterator._encoder


def chunks(batch) -> list[tuple]:
    """The unmasked chunks of a batch (between [CLS] and [SEP]), as tuples."""
    ids = np.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    out = []
    for row, segments in zip(ids, batch["segment_ids"]):
        for s in range(1, segments.max() + 1):
            out.append(tuple(int(t) for t in row[segments == s][1:-1]))
    return out


def test_contract_and_every_document_packed(corpus, tokenizer):
    root, texts = corpus
    it = build(stream_config(root), tokenizer)
    recorder = recorded(it)
    batches = []
    while it.stats.passes == 0:
        batches.append(next(it))
    first_pass = len(batches)
    while it.stats.passes < 2:  # the end of the first pass is packed during the second
        batches.append(next(it))
    for b in batches:
        assert set(b) == {"input_ids", "segment_ids", "positions", "labels", "masked_positions", "masked_labels"}
        assert all(v.dtype == np.int32 for v in b.values())
        assert b["input_ids"].shape == b["labels"].shape == (BATCH, SEQ_LEN)
        assert b["masked_positions"].shape == (BATCH, it.max_predictions)
        starts = b["positions"] == 0
        ids = np.where(b["labels"] != -100, b["labels"], b["input_ids"])
        assert np.all(ids[starts & (b["segment_ids"] > 0)] == tokenizer.cls_token_id)
    documents = [d for docs in texts for d in docs if d]
    assert recorder.texts[:len(documents)] == documents  # in stream order, none dropped
    assert it.stats.empty_skipped == 2 * sum(d == "" for docs in texts for d in docs) > 0  # two passes
    body = SEQ_LEN - 2
    expected = collections.Counter()
    ids, lengths = TextEncoder(tokenizer).encode(documents)
    for doc in np.split(ids, np.cumsum(lengths)[:-1]):
        expected.update(tuple(int(t) for t in doc[i:i + body]) for i in range(0, len(doc), body))
    packed = collections.Counter(c for b in batches for c in chunks(b))
    assert not expected - packed  # every chunk of every document is in a row
    assert it.stats.documents_split == 2 * int(np.count_nonzero(lengths > body)) > 0
    assert it.steps_per_epoch == first_pass


def test_resume_without_shuffle_is_exact(corpus, tokenizer):
    """Mid-stream and across the end of a pass: the resumed batches are the uninterrupted ones."""
    root, _ = corpus
    cfg = stream_config(root, eval_samples=5)
    reference = build(cfg, tokenizer)
    uninterrupted = [next(reference) for _ in range(40)]
    assert reference.stats.passes >= 1
    for cut in (3, 17, 25):  # 25: after the first pass ended
        first = build(cfg, tokenizer)
        assert same([next(first) for _ in range(cut)], uninterrupted[:cut])
        state = json.loads(json.dumps(first.get_state()))
        lines = []
        resumed = build(cfg, tokenizer, log=lines.append)
        resumed.set_state(state)
        assert same([next(resumed) for _ in range(40 - cut)], uninterrupted[cut:])
        assert "exactly" in lines[0] and "not exactly" not in lines[0]


def test_resume_with_shuffle_says_it_is_not_exact(corpus, tokenizer):
    root, _ = corpus
    cfg = stream_config(root, shuffle=True, shuffle_buffer=8)
    first = build(cfg, tokenizer, seed=3)
    unshuffled = build(stream_config(root), tokenizer, seed=3)
    assert not same([next(first) for _ in range(4)], [next(unshuffled) for _ in range(4)])
    lines = []
    resumed = build(cfg, tokenizer, seed=3, log=lines.append)
    resumed.set_state(first.get_state())
    after = [next(resumed) for _ in range(3)]
    assert all(b["input_ids"].shape == (BATCH, SEQ_LEN) for b in after)
    assert "not exactly" in lines[0] and "shuffle_buffer=8" in lines[0]


@pytest.mark.parametrize("files", [("part0", "part1"), ("part0",)])
def test_processes_read_disjoint_parts(corpus, tokenizer, files):
    """Two shards: one each; one shard: every other example. Together: every document once."""
    root, texts = corpus
    cfg = stream_config(root, files=files)
    read = []
    for p in range(2):
        it = build(cfg, tokenizer, process_index=p, process_count=2)
        recorder = recorded(it)
        while it.stats.passes == 0:
            next(it)
        read.append(recorder.texts[:it.stats.documents])
    assert not set(read[0]) & set(read[1]) and read[0] and read[1]
    assert sorted(read[0] + read[1]) == sorted(d for f in files for d in texts[int(f[-1])] if d)


def test_eval_is_the_head_of_the_stream(corpus, tokenizer):
    root, texts = corpus
    cfg = stream_config(root, eval_samples=10)
    train = build(cfg, tokenizer)
    recorder = recorded(train)
    next(train)
    assert recorder.texts[0] == texts[0][10] and train.stats.eval_held_out == 10
    evals = build(cfg, tokenizer, split="eval")
    assert evals.stats.documents == sum(1 for d in texts[0][:10] if d)
    assert next(evals)["input_ids"].shape == (BATCH, SEQ_LEN)


def test_load_dataset_reads_like_files(corpus, tokenizer):
    """load_dataset("text") of a .txt gives the very batches train_files does, eval hold-out included."""
    root, _ = corpus
    from_hub = build(stream_config(root, builder="text", files=("part0",), streaming=False, eval_samples=4),
                     tokenizer)
    files = default_data_config()
    files.update(train_files=os.path.join(root, "part0.txt"), eval_samples=4, shuffle=False)
    from_files = build(files, tokenizer)
    assert from_hub.stats.documents == from_files.stats.documents
    assert from_hub.steps_per_epoch == from_files.steps_per_epoch
    assert same([next(from_hub) for _ in range(3)], [next(from_files) for _ in range(3)])


def test_bad_settings_name_their_key(corpus, tokenizer, tiny_config):
    root, _ = corpus
    with pytest.raises(DataError, match="^data.text_field: .* no column 'body' .*columns: id, text"):
        build(stream_config(root, text_field="body"), tokenizer)
    with pytest.raises(DataError, match="data.text_field"):
        build(stream_config(root, streaming=False, text_field="body"), tokenizer)
    with pytest.raises(DataError, match="data.hf_dataset.name"):
        build(stream_config(root, builder="json", files=("missing",)), tokenizer)
    config = tiny_config(root, "")
    config.tokenizer = root
    config.data.hf_dataset.update(name="json", streaming=True)
    config.train.max_steps = 0
    with pytest.raises(ValueError, match=r"^config\.train\.max_steps: a streamed"):
        mlm_config.validate(config)
    config.train.max_steps, config.tokenizer = 4, ""
    with pytest.raises(ValueError, match=r"^config\.tokenizer: "):
        mlm_config.validate(config)


def test_tiny_pretraining_run_streams_resumes_and_exports(corpus, tmp_path, tiny_config, write_tokenizer, capsys):
    """4 steps, then a resume to 6: the same losses as 6 uninterrupted steps (constant schedule, no shuffle)."""
    from neobert_jax.mlm.task import train

    root, _ = corpus
    tokenizer_dir = write_tokenizer(tmp_path / "tokenizer", os.path.join(root, "part0.txt"))

    def run(name, steps, **overrides):
        config = tiny_config(tmp_path / name, "", **{"train.max_steps": steps, "train.schedule": "constant",
                                                      "train.warmup_steps": 0, "data.eval_samples": 8, **overrides})
        config.tokenizer = tokenizer_dir
        config.data.shuffle = False
        config.data.hf_dataset.update(name="json", streaming=True,
                                      data_files=[os.path.join(root, f"part{f}.jsonl") for f in range(2)])
        return train(config)

    def losses(name):
        with open(tmp_path / name / "metrics.jsonl") as f:
            return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}

    first = run("resumed", 4)
    assert first.completed and first.step == 4 and np.isfinite(first.eval_loss)
    resumed = run("resumed", 6, **{"train.export_hf": True})
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "resumed the stream at step 4" in out and ", exactly:" in out, out[-3000:]
    assert "a stream: epoch length unknown" in out
    assert "(within the stream's first pass)" in out  # no "0.00 epochs" before a pass has ended
    assert json.load(open(tmp_path / "resumed" / "run_summary.json"))["epochs"] is None
    assert os.path.exists(os.path.join(resumed.hf_dir, "model.safetensors"))
    run("uninterrupted", 6)
    a, b = losses("resumed"), losses("uninterrupted")
    assert sorted(a) == list(range(1, 7))
    np.testing.assert_allclose([a[s] for s in range(1, 7)], [b[s] for s in range(1, 7)], rtol=1e-6)


def test_null_texts_stop_the_stream_or_are_counted(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one two", None, "three four", "  "] * 20))
    cfg = default_data_config()
    cfg.hf_dataset.update(name="json", data_files=str(path), streaming=True)
    with pytest.raises(DataError, match=r"example 2: 'text' is NoneType.*skip_bad_records"):
        next(build(cfg, tokenizer))
    cfg.skip_bad_records = True
    it = build(cfg, tokenizer)
    while it.stats.passes == 0:
        next(it)
    assert (it.stats.documents, it.stats.bad_records_skipped, it.stats.empty_skipped) == (40, 20, 20)


def test_a_stream_without_text_is_one_error(tmp_path, tokenizer):
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", "  ", "\n"] * 5))
    cfg = default_data_config()
    cfg.hf_dataset.update(name="json", data_files=str(path), streaming=True)
    with pytest.raises(DataError, match=r"^data.hf_dataset: .* no documents with tokens .*15 empty"):
        next(build(cfg, tokenizer))
