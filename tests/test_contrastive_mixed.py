"""Sources with different text columns (pairs beside triplets, as sentence-transformers allows)
under the in-batch losses: a narrower source's texts beyond its columns are absent (in no row, no
candidate), so a step's loss is MNRL / GTE on its source's columns alone, in both layouts and row
shapes; the no-duplicates guard ignores absent texts; a mixed run's pair and triplet steps give
the losses of one-source runs over the same batches (GradCache and one row shape on the mixed
side); the losses that cannot mix refuse with one line naming the source."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from test_contrastive_losses import loss_cfg, np_gte, np_ranking

from neobert_jax.contrastive.batching import ContrastiveBatches, Layout
from neobert_jax.contrastive.columns import ColumnData, concat_sources, read_training_columns
from neobert_jax.contrastive.losses import make_objective
from neobert_jax.contrastive.pooling import gather_texts, pool_rows
from neobert_jax.contrastive.sampling import Source
from neobert_jax.contrastive.step import encode_groups
from neobert_jax.contrastive.task import train_contrastive
from neobert_jax.contrastive.tokenized import TokenizedColumns
from neobert_jax.data.errors import DataError
from neobert_jax.runtime import config as runtime_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, SEQ, BATCH, CLS, SEP, PAD = 96, 16, 4, 1, 2, 3
PAIRS, TRIPLETS = 8, 8  # examples of each source


def mixed_table(seed=0):
    """A pair source then a triplet source in one 3-column table. The pair source's third column
    holds real tokens here (in a run it is empty): nothing may read them."""
    rng = np.random.default_rng(seed)
    ids, offsets = [], []
    for _ in range(3):
        lengths = rng.integers(2, 9, PAIRS + TRIPLETS)
        ids.append(rng.integers(5, VOCAB, lengths.sum()).astype(np.int32))
        offsets.append(np.concatenate([[0], np.cumsum(lengths)]))
    sources = [Source("pairs", 0, PAIRS, ("anchor", "positive")),
               Source("triplets", PAIRS, TRIPLETS, ("anchor", "positive", "negative"))]
    return TokenizedColumns(["anchor", "positive", "negative"], ids, offsets, None), sources


def embedded_alone(model, data, columns, examples):
    """(columns, B, D): every text in a row of its own, mean-pooled: no layout involved."""
    out = []
    for c in range(columns):
        rows = np.full((len(examples), SEQ), PAD, np.int32)
        segments, positions = np.zeros_like(rows), np.zeros_like(rows)
        for i, e in enumerate(examples):
            body = data.body(c, e)
            rows[i, :len(body) + 2] = [CLS, *body, SEP]
            segments[i, :len(body) + 2], positions[i, :len(body) + 2] = 1, np.arange(len(body) + 2)
        rows, segments, positions = map(jnp.asarray, (rows, segments, positions))
        hidden = model.encode(rows, segment_ids_BT=segments, positions_BT=positions)
        out.append(np.asarray(pool_rows(hidden, segments, positions, 1, "mean")[:, 0]))
    return np.stack(out)


@pytest.mark.parametrize("kind, one_shape", [("pack", False), ("pack", True), ("bucket", False), ("bucket", True)])
def test_a_steps_loss_is_its_sources_columns_alone(tiny_model, kind, one_shape):
    """Through the batcher, the model and the objective, against each text embedded alone."""
    model = tiny_model(vocab=VOCAB)
    data, sources = mixed_table()
    layout = Layout(kind, SEQ, 6, 2, (0, 1, 2))
    batches = ContrastiveBatches(data, batch_size=BATCH, seed=0, shuffle=True, layout=layout, sources=sources,
                                 special_ids=dict(cls_id=CLS, sep_id=SEP, pad_id=PAD))
    if one_shape:
        batches.layout = layout = Layout(kind, SEQ, 6, 2, (0, 1, 2), floor=batches.largest_shapes(4))
    objectives = {name: make_objective(loss_cfg(name), columns=3, normalize=True, dims=[], weights=[])
                  for name in ("mnrl", "gte")}
    seen, shapes = set(), set()
    for step in range(batches.steps_per_epoch):
        examples = batches.examples(step)
        batch, stats = next(batches)
        columns = len(sources[stats["source"]].columns)
        seen.add(columns)
        shapes.add(tuple(g["input_ids"].shape for g in batch["groups"]))
        assert stats["texts"] == int(batch["present"].sum()) == columns * BATCH  # absent texts are in no row
        np.testing.assert_array_equal(batch["present"], np.repeat(np.arange(3) < columns, BATCH))
        assert len(np.unique(batch["text_slot"][batch["present"]])) == columns * BATCH
        assert sum(len(np.unique(row[row > 0])) for g in batch["groups"] for row in g["segment_ids"]) == columns * BATCH
        emb_ND = gather_texts(encode_groups(model, batch["groups"], layout.slots, "mean"), batch["text_slot"])
        alone_CBD = embedded_alone(model, data, columns, examples)
        np.testing.assert_allclose(np.asarray(emb_ND)[:columns * BATCH], alone_CBD.reshape(-1, alone_CBD.shape[-1]),
                                   atol=1e-4)
        for name, reference in (("mnrl", np_ranking(alone_CBD, 20.0, False)), ("gte", np_gte(alone_CBD, 20.0))):
            ours = float(objectives[name](emb_ND, None, jnp.asarray(batch["present"])))
            assert abs(ours - reference) < 1e-4, (name, columns, ours, reference)
        if kind == "bucket" and not one_shape:  # the positives and negatives' group: no row for absent texts
            assert len(batch["groups"][1]["input_ids"]) == (columns - 1) * BATCH
    assert seen == {2, 3}
    assert len(shapes) == 1 or not one_shape


def test_the_guard_ignores_absent_texts():
    """The pair source's absent texts are all alike (empty in a run): they must not count as repeats."""
    data, sources = mixed_table()
    data.offsets[2][1:PAIRS + 1] = 0  # the pairs' third texts empty, as concat_sources leaves them
    data.offsets[2][PAIRS + 1:] -= data.offsets[2][PAIRS + 1] - data.offsets[2][PAIRS]
    data.ids[2] = data.ids[2][-int(data.offsets[2][-1]):]
    kwargs = dict(batch_size=BATCH, seed=0, shuffle=True, layout=Layout("pack", SEQ, 6, 1, (0, 1, 2)),
                  special_ids=dict(cls_id=CLS, sep_id=SEP, pad_id=PAD), sources=sources)
    guarded, plain = ContrastiveBatches(data, no_duplicates=True, **kwargs), ContrastiveBatches(data, **kwargs)
    assert guarded.describe()[0] == ("data source pairs: 8 examples, 2 steps per epoch, text columns anchor, "
                                     "positive; no_duplicates: 0 deferred to a later batch, 0 in no batch of the "
                                     "pass (2 full batches)")
    for step in range(8):
        np.testing.assert_array_equal(guarded.examples(step), plain.examples(step))


def write_rows(path, tag, n, negatives):
    with open(path, "w") as f:
        for i in range(n):
            record = {"anchor": f"{tag} query {i}", "positive": f"{tag} answer number {i}"}
            if negatives:
                record["negative"] = f"{tag} wrong answer {i * 7 % n}"
            f.write(json.dumps(record) + "\n")
    return str(path)


def test_a_mixed_runs_steps_give_the_one_source_runs_losses(tmp_path, tiny_tokenizer_dir, tiny_hf_dir, capsys):
    """lr ~0: every step's loss is its batch's at the initial weights. Without shuffling each source's
    batches are its examples in order, so the mixed run's pair steps are the pairs run's steps and
    its triplet steps the triplets run's; the mixed run also uses GradCache and one row shape."""
    hf_dir = tiny_hf_dir(str(tmp_path), tiny_tokenizer_dir(str(tmp_path)))
    pairs = write_rows(tmp_path / "pairs.jsonl", "def", 16, negatives=False)
    triplets = write_rows(tmp_path / "triplets.jsonl", "the text", 16, negatives=True)

    def run(name, **data):
        cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
        cfg.init_from, cfg.output_dir = hf_dir, str(tmp_path / name)
        cfg.data.update(shuffle=False, **data)
        cfg.train.update(max_steps=0, batch_size=8, seq_len=32, learning_rate=1e-30, log_every=1, save_every=100,
                         warmup_steps=0, grad_accum_steps=2 if name == "mixed" else 1)
        assert train_contrastive(cfg).completed
        return [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]

    mixed = run("mixed", sources=f"pairs={pairs},triplets={triplets}", row_shapes="one")
    lines = capsys.readouterr().err
    assert "data source pairs: 16 examples, 2 steps per epoch, text columns anchor, positive" in lines
    assert "data source triplets: 16 examples, 2 steps per epoch, text columns anchor, positive, negative" in lines
    assert "data.row_shapes=one: every step is" in lines
    alone = {name: [r["loss"] for r in run(name, train_files=path, row_shapes="ladder")]
             for name, path in (("pairs", pairs), ("triplets", triplets))}
    by_source = {name: [r["loss"] for r in mixed if r.get(f"steps_source_{name}")] for name in alone}
    assert len(by_source["pairs"]) == len(by_source["triplets"]) == 2
    for name in alone:
        np.testing.assert_allclose(by_source[name], alone[name], rtol=2e-5, err_msg=name)


@pytest.mark.parametrize("loss, widths", [("margin_mse", (3, 4)), ("distill_kl", (4, 3))])
def test_losses_that_cannot_mix_refuse_naming_the_source(loss, widths):
    parts = [(name, ColumnData([f"c{k}" for k in range(width)], [["t"] * 2] * width,
                               np.zeros((2, width - 1 - (loss == "margin_mse")), np.float32)))
             for name, width in zip(("hard", "harder"), widths)]
    with pytest.raises(DataError) as error:
        concat_sources(parts, loss)
    message = str(error.value)
    assert message.startswith(f"data source 'harder': {widths[1]} text columns (") and "\n" not in message
    assert message.endswith(f"every source of a run needs the same number for loss {loss} (only mnrl and gte mix them)")
    mixed, sizes = concat_sources([(name, ColumnData(d.names, d.texts, None)) for name, d in parts], "mnrl")
    assert sizes == [2, 2] and mixed.names == parts[int(widths[1] > widths[0])][1].names
    narrow = int(widths[1] < widths[0])
    assert mixed.texts[3][narrow * 2:narrow * 2 + 2] == ["", ""]  # absent


def test_data_columns_name_every_files_columns(tmp_path):
    """data.columns picks the same columns in every file, so it cannot mix; a pair file says so."""
    pairs = write_rows(tmp_path / "pairs.jsonl", "a", 2, negatives=False)
    with pytest.raises(DataError) as error:
        read_training_columns([pairs], loss="mnrl", columns=["anchor", "positive", "negative"], label_column="label",
                              vector_dim=8)
    assert str(error.value) == (f"{pairs}: no column 'negative' (columns: anchor, positive); see data.columns (it "
                                "names every file's columns; left empty, each file's own are taken and pair and "
                                "triplet sources mix)")
    triplets = write_rows(tmp_path / "triplets.jsonl", "b", 2, negatives=True)
    with pytest.raises(DataError, match=r"every file of a source needs the same columns \(pairs and triplets mix "
                                        r"as separate data.sources\)$"):
        read_training_columns([pairs, triplets], loss="mnrl", columns=[], label_column="label", vector_dim=8)
