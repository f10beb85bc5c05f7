"""Contrastive data: column conventions across formats, one-line errors naming file and column,
both row layouts, the batch iterator's state, and the preprocessed folder."""

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neobert_jax.contrastive.batching import ContrastiveBatches, Layout, assemble, ladder
from neobert_jax.contrastive.columns import read_training_columns
from neobert_jax.contrastive.tokenized import TextTokenizer, TokenizedColumns, load_preprocessed, tokenize_columns
from neobert_jax.data import DataError, load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIPLETS = [{"anchor": f"query {i}", "positive": f"answer number {i}", "negative": f"wrong {i}"} for i in range(5)]
CLS, SEP, PAD = 1, 2, 3


def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def read(files, loss="mnrl", columns=(), dim=4):
    return read_training_columns([str(f) for f in files], loss=loss, columns=list(columns), label_column="label",
                                 vector_dim=dim)


def test_jsonl_parquet_and_datasets_give_the_same_columns(tmp_path):
    import datasets

    records = [{**r, "label": [float(i), 1.0, 2.0, 3.0]} for i, r in enumerate(TRIPLETS)]
    jsonl = write_jsonl(tmp_path / "t.jsonl", records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    for path in (jsonl, tmp_path / "t.parquet", tmp_path / "ds"):
        triplets = read([path], columns=["anchor", "positive", "negative"])
        assert triplets.names == ["anchor", "positive", "negative"]
        assert triplets.texts[2] == [r["negative"] for r in TRIPLETS] and triplets.vectors is None
        distill = read([path], loss="mse", columns=["positive"])
        np.testing.assert_array_equal(distill.vectors, np.array([r["label"] for r in records], np.float32))
    assert read([jsonl, jsonl], columns=["positive", "anchor"]).texts[1] == [r["anchor"] for r in TRIPLETS] * 2


def bad_file(tmp_path, case):
    """-> (file, loss, columns, expected message fragment)."""
    pair = {"anchor": "a", "positive": "b"}
    if case == "missing column":
        return write_jsonl(tmp_path / "t.jsonl", [pair, pair, {"anchor": "a"}]), "mnrl", (), \
            "t.jsonl:3: no column 'positive'"
    if case == "empty text":
        return write_jsonl(tmp_path / "t.jsonl", [pair, {"anchor": "a", "positive": "  "}]), "mnrl", (), \
            "t.jsonl:2: column 'positive' is empty"
    if case == "null text":
        pq.write_table(pa.Table.from_pylist([pair, {"anchor": "a", "positive": None}]), tmp_path / "t.parquet")
        return tmp_path / "t.parquet", "mnrl", (), "t.parquet:row 2: column 'positive' is null"
    if case == "negative in simcse":
        return write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "negative": "b"}]), "simcse", (), \
            "t.jsonl: column 'negative' is not used by loss simcse"
    if case == "negative in mse":
        return write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "negative": "b", "label": [1, 2, 3, 4]}]), "mse", (), \
            "t.jsonl: column 'negative' is not used by loss mse"
    if case == "vector length":
        records = [{"text": "a", "label": [1, 2, 3, 4]}, {"text": "b", "label": [1, 2, 3]}]
        return write_jsonl(tmp_path / "t.jsonl", records), "mse", (), \
            "t.jsonl:2: column 'label' has 3 numbers, but the model's embeddings have 4"
    if case == "vector length parquet":
        pq.write_table(pa.Table.from_pylist([{"text": "a", "label": [1.0, 2.0, 3.0]}]), tmp_path / "t.parquet")
        return tmp_path / "t.parquet", "mse", (), "t.parquet:row 1: column 'label' has 3 numbers"
    if case == "no label column":
        return write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}]), "mse", (), "t.jsonl: no column 'label'"
    if case == "single column for mnrl":
        (tmp_path / "t.txt").write_text("one text\nanother\n")
        return tmp_path / "t.txt", "mnrl", (), "t.txt: loss mnrl needs (anchor, positive"
    if case == "named column absent":
        return write_jsonl(tmp_path / "t.jsonl", [pair]), "mnrl", ("query", "positive"), "t.jsonl: no column 'query'"
    if case == "text of wrong type":
        return write_jsonl(tmp_path / "t.jsonl", [{"anchor": "a", "positive": 7}]), "mnrl", (), \
            "t.jsonl:1: column 'positive' holds int"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "missing column", "empty text", "null text", "negative in simcse", "negative in mse", "vector length",
    "vector length parquet", "no label column", "single column for mnrl", "named column absent", "text of wrong type",
])
def test_bad_input_is_one_line_naming_file_and_column(tmp_path, case):
    path, loss, columns, fragment = bad_file(tmp_path, case)
    with pytest.raises(DataError) as error:
        read([path], loss=loss, columns=columns)
    message = str(error.value)
    assert fragment in message and "\n" not in message and str(tmp_path) in message


def test_files_with_different_columns_are_refused(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", TRIPLETS)
    b = write_jsonl(tmp_path / "b.jsonl", [{"anchor": "x", "positive": "y"}])
    with pytest.raises(DataError, match=r"b.jsonl: 2 text columns \(anchor, positive\) but .*a.jsonl has 3"):
        read([a, b])


def random_columns(examples=12, columns=3, seed=0):
    rng = np.random.default_rng(seed)
    ids, offsets = [], []
    for _ in range(columns):
        lengths = rng.integers(1, 30, examples)
        offsets.append(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        ids.append(rng.integers(5, 90, lengths.sum()).astype(np.uint16))
    return TokenizedColumns([f"c{i}" for i in range(columns)], ids, offsets, None)


@pytest.mark.parametrize("kind", ["pack", "bucket"])
def test_layouts_hold_every_text_once_and_split_over_processes(kind):
    data = random_columns()
    layout = Layout(kind, seq_len=24, max_texts_per_row=4, row_multiple=4, view_columns=(0, 1, 2))
    examples = np.array([7, 2, 5, 3, 4])  # anchors of 1-15 tokens, other columns up to 28 (cut to 22)
    batch, stats = assemble(data, examples, layout, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    flat = [(g, r, s) for g, group in enumerate(batch["groups"])
            for r in range(len(group["input_ids"])) for s in range(layout.slots[g])]
    assert len(flat) == sum(n * s for n, s in zip(stats["rows"], layout.slots))
    assert len(set(batch["text_slot"].tolist())) == 15
    for t, slot in enumerate(batch["text_slot"]):
        g, r, s = flat[slot]
        group = batch["groups"][g]
        tokens = np.flatnonzero(group["segment_ids"][r] == s + 1)
        body = data.body(t // 5, examples[t % 5])[:22]
        np.testing.assert_array_equal(group["input_ids"][r, tokens], [CLS, *body, SEP])
        np.testing.assert_array_equal(group["positions"][r, tokens], np.arange(len(tokens)))
        assert np.all(np.diff(tokens) == 1)
    for group, rows in zip(batch["groups"], stats["rows"]):
        assert len(group["input_ids"]) == rows and rows % 4 == 0
        length = group["input_ids"].shape[1]
        longest = int(np.count_nonzero(group["segment_ids"], axis=1).max())  # bucket: one text per row
        assert length == 24 if kind == "pack" else length == min(ladder(longest), 24)
    assert kind == "pack" or batch["groups"][0]["input_ids"].shape[1] == 20 < 24  # anchors: ladder(15 + 2)
    assert stats["tokens"] == sum(np.count_nonzero(g["segment_ids"]) for g in batch["groups"])
    halves = [assemble(data, examples, layout, cls_id=CLS, sep_id=SEP, pad_id=PAD,
                       row_range=lambda rows, i=i: (i * rows // 2, (i + 1) * rows // 2))[0] for i in range(2)]
    for g, group in enumerate(batch["groups"]):
        for key, value in group.items():
            np.testing.assert_array_equal(np.concatenate([h["groups"][g][key] for h in halves]), value)


def test_batches_cover_each_epoch_once_and_resume_by_step():
    data = random_columns(examples=12)
    layout = Layout("pack", 24, 4, 1, (0, 1))

    def make():
        return ContrastiveBatches(data, batch_size=5, seed=3, shuffle=True, layout=layout,
                                  special_ids=dict(cls_id=CLS, sep_id=SEP, pad_id=PAD))

    batches = make()
    assert batches.steps_per_epoch == 2
    epoch = np.concatenate([batches.examples(s) for s in range(2)])
    assert len(set(epoch.tolist())) == 10 and not np.array_equal(epoch, np.concatenate(
        [batches.examples(s) for s in range(2, 4)]))
    next(batches)
    state = batches.get_state()
    expected, _ = next(batches)
    resumed = make()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)[0]["groups"][0]["input_ids"], expected["groups"][0]["input_ids"])


@pytest.mark.parametrize("kind", ["pack", "bucket"])
def test_one_row_shape_pads_every_step_to_the_runs_largest_and_keeps_the_texts(kind):
    data = random_columns(examples=40)
    ladder_layout = Layout(kind, 24, 4, 2, (0, 1))

    def make(layout):
        return ContrastiveBatches(data, batch_size=6, seed=1, shuffle=True, layout=layout,
                                  special_ids=dict(cls_id=CLS, sep_id=SEP, pad_id=PAD))

    laddered = make(ladder_layout)
    steps = 2 * laddered.steps_per_epoch  # two epochs, each its own permutation
    shapes = [[g["input_ids"].shape for g in next(laddered)[0]["groups"]] for _ in range(steps)]
    assert len({tuple(s) for s in shapes}) > 1  # the ladder compiles several shapes here
    floor = make(ladder_layout).largest_shapes(steps)
    assert [tuple(map(int, f)) for f in floor] == [tuple(map(max, *column)) for column in zip(*shapes)]
    one = make(dataclasses.replace(ladder_layout, floor=floor))
    laddered = make(ladder_layout)
    for _ in range(steps):
        (batch, _), (reference, _) = next(one), next(laddered)
        assert [g["input_ids"].shape for g in batch["groups"]] == [tuple(f) for f in floor]
        for group, ref in zip(batch["groups"], reference["groups"]):  # the same rows, then padding
            rows, length = ref["input_ids"].shape
            np.testing.assert_array_equal(group["input_ids"][:rows, :length], ref["input_ids"])
            assert np.all(group["segment_ids"][rows:] == 0) and np.all(group["segment_ids"][:, length:] == 0)
        if kind == "pack":  # one group: padding rows at the end leave every text's slot where it was
            np.testing.assert_array_equal(batch["text_slot"], reference["text_slot"])
    sampled = make(ladder_layout).largest_shapes(steps, max_planned=3)  # a sample of the steps: no larger
    assert all(s <= f for s_pair, f_pair in zip(sampled, floor) for s, f in zip(s_pair, f_pair))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_hf_dir):
    root = tmp_path_factory.mktemp("model")
    return tiny_hf_dir(root, tiny_tokenizer_dir(root))


def test_text_tokenizer_matches_the_tokenizer_template_with_truncation(tiny_model_dir, contrastive_texts):
    tokenizer = load_tokenizer(tiny_model_dir)
    ids, offsets = TextTokenizer(tokenizer, 8).encode(contrastive_texts)
    expected = tokenizer.to_transformers()(contrastive_texts, truncation=True, max_length=8)["input_ids"]
    for i, reference in enumerate(expected):
        assert [tokenizer.cls_token_id, *ids[offsets[i]:offsets[i + 1]], tokenizer.sep_token_id] == reference


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preprocessed_folder_round_trips_and_refuses_mismatches(tmp_path, tiny_model_dir, capsys, contrastive_texts,
                                                               tiny_tokenizer_dir):
    pairs = zip(contrastive_texts, contrastive_texts[1:])
    train = write_jsonl(tmp_path / "train.jsonl", [{"anchor": a, "positive": b} for a, b in pairs])
    out = tmp_path / "prep"
    preprocess = load_script("contrastive_preprocess").main
    preprocess(["--train-files", train, "--model", tiny_model_dir, "--output", str(out), "--seq-len", "16"])
    assert "8 examples" in capsys.readouterr().out
    tokenizer = load_tokenizer(tiny_model_dir)
    loaded = load_preprocessed(str(out), tokenizer, loss="mnrl", seq_len=12, vector_dim=32)
    direct = tokenize_columns(read([train]), TextTokenizer(tokenizer, 16))
    assert loaded.names == direct.names == ["anchor", "positive"]
    for a, b in zip(loaded.ids + loaded.offsets, direct.ids + direct.offsets):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="preprocessed for loss mnrl"):
        load_preprocessed(str(out), tokenizer, loss="simcse", seq_len=16, vector_dim=32)
    with pytest.raises(DataError, match="cut to 16 tokens; train.seq_len=32"):
        load_preprocessed(str(out), tokenizer, loss="mnrl", seq_len=32, vector_dim=32)
    other = load_tokenizer(tiny_tokenizer_dir(tmp_path, texts=["something else entirely"] * 5, vocab_size=300))
    with pytest.raises(DataError, match="another tokenizer"):
        load_preprocessed(str(out), other, loss="mnrl", seq_len=16, vector_dim=32)
    with pytest.raises(SystemExit, match="already exists"):
        preprocess(["--train-files", train, "--model", tiny_model_dir, "--output", str(out)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"anchor": "a", "positive": ""}])
    with pytest.raises(SystemExit, match="bad.jsonl:1: column 'positive' is empty"):
        preprocess(["--train-files", bad, "--model", tiny_model_dir, "--output", str(tmp_path / "never")])
    assert not os.path.exists(tmp_path / "never")
