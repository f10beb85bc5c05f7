"""Hard-negative mining (neobert_jax/contrastive/mining.py, scripts/mine_negatives.py): each guard on a
hand-placed embedding, then the script with a real (tiny) embedder, read back by the trainer's reader."""

import importlib.util
import json
import os

import numpy as np
import pytest

from neobert_jax.contrastive.columns import read_training_columns
from neobert_jax.contrastive.evaluation import top_k
from neobert_jax.contrastive.mining import MiningSettings, mine

ANGLES = {"q": 0, "r": 90, "p": 10, "a": 5, "b": 30, "c": 40, "d": 80, "p2": 20}  # degrees from "q"


def encode(texts):
    return np.array([[np.cos(np.radians(ANGLES[t])), np.sin(np.radians(ANGLES[t]))] for t in texts], np.float32)


def test_guards_on_placed_embeddings():
    corpus = ["p", "a", "b", "c", "d", "p2"]
    # "q" has two positives: neither is ever its negative; "a" beats the positive itself (a likely false negative)
    got = mine(["q", "q"], ["p", "p2"], corpus, encode, MiningSettings(num_negatives=2, max_score_ratio=0.95))
    assert got.negatives == [[2, 3], [2, 3]]  # b, c: "a" is above 0.95 x the positive's score
    assert got.filtered == {"positives": 4, "skip_top": 0, "max_score_ratio": 2, "margin": 0}
    np.testing.assert_allclose(got.positive_scores, np.cos(np.radians([10, 20])), rtol=1e-6)
    np.testing.assert_allclose(got.negative_scores[0], np.cos(np.radians([30, 40])), rtol=1e-6)

    at_one = mine(["q"], ["p"], corpus, encode, MiningSettings(num_negatives=1, max_score_ratio=1.0))
    assert at_one.negatives == [[5]]  # "p2" (20 degrees): "a" still scores above the positive
    ratio_off = mine(["q"], ["p"], corpus, encode, MiningSettings(num_negatives=1, max_score_ratio=2.0))
    assert ratio_off.negatives == [[1]]  # "a" (5 degrees) once the ratio guard is off
    skipped = mine(["q"], ["p"], corpus, encode, MiningSettings(num_negatives=1, max_score_ratio=2.0, skip_top=2))
    assert skipped.negatives == [[2]] and skipped.filtered["skip_top"] == 2  # "a" and "p2" (not q's positive here)
    margin = mine(["q"], ["p"], corpus, encode, MiningSettings(num_negatives=3, max_score_ratio=2.0, margin=0.2))
    assert margin.negatives == [[3, 4]]  # "c" and "d" score 0.2 below cos(10)
    shallow = mine(["q"], ["p"], corpus, encode, MiningSettings(num_negatives=3, depth=2))
    assert shallow.negatives == [[]]  # the two ranks looked at ("a", "p2") are both too close
    drawn = mine(["q"] * 50, ["p"] * 50, corpus, encode, MiningSettings(num_negatives=1, sampling="random"))
    assert {n[0] for n in drawn.negatives} == {2, 3, 4}  # any candidate, not only the best
    seen = []

    def prompted_encode(texts):
        seen.extend(texts)
        return encode([t[2:] for t in texts])

    prompted = mine(["q"], ["p"], ["p", "a", "b"], prompted_encode, MiningSettings(max_score_ratio=2.0),
                    prompts=("Q:", "D:"))
    assert prompted.negatives == [[1]] and sorted(seen) == ["D:a", "D:b", "D:p", "Q:q"]
    with pytest.raises(ValueError, match="depth"):
        mine(["q"], ["p"], corpus, encode, MiningSettings(skip_top=5, depth=5))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "mine_negatives", os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "mine_negatives.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_triplets_the_trainer_reads(script, tmp_path, tiny_tokenizer_dir, tiny_hf_dir,
                                                  contrastive_texts, capsys):
    model = tiny_hf_dir(tmp_path, tiny_tokenizer_dir(tmp_path))
    texts = contrastive_texts
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": a, "doc": b}) + "\n" for a, b in zip(texts[0::2], texts[1::2])))
    out = tmp_path / "hard.jsonl"
    assert script.main([model, "--pairs", str(pairs), "--out", str(out), "--num-negatives", "2", "--depth", "4",
                        "--max-score-ratio", "2", "--seq-len", "64"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n_pairs = len(texts) // 2
    assert rows and all(list(r) == ["query", "doc", "negative"] for r in rows)
    assert all(r["negative"] != r["doc"] for r in rows)
    assert f"{n_pairs:,} pairs" in printed and f"wrote {out}: {len(rows):,} rows (triplet)" in printed

    # the negatives are the best-ranked non-positives of the embedder itself
    from neobert_jax.contrastive.embedder import load_encoder
    encode, _ = load_encoder(model, pooling=None, seq_len=64, batch_size=64)
    anchors, positives = texts[0::2][:n_pairs], texts[1::2][:n_pairs]
    corpus = list(dict.fromkeys(positives))
    ranked = top_k(encode(anchors[:1]), encode(corpus), 10)[0]
    expected = [corpus[c] for c in ranked if corpus[c] not in (positives[0], anchors[0])][:2]
    assert [r["negative"] for r in rows if r["query"] == anchors[0]] == expected

    columns = read_training_columns([str(out)], loss="mnrl", columns=[], label_column="label", vector_dim=32)
    assert columns.names == ["query", "doc", "negative"] and len(columns.texts[0]) == len(rows)

    tuples = tmp_path / "tuples.jsonl"
    assert script.main([model, "--pairs", str(pairs), "--out", str(tuples), "--num-negatives", "2",
                        "--format", "n-tuple", "--seq-len", "64"]) == 0
    lines = [json.loads(line) for line in tuples.read_text().splitlines()]
    assert all(list(r) == ["query", "doc", "negative_1", "negative_2"] for r in lines)
    short = n_pairs - len(lines)
    assert (f"not written: {short:,} pairs" in capsys.readouterr().out) == (short > 0)


def test_script_bad_input_writes_nothing(script, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "a", "doc": "b"}) + "\n" + json.dumps({"query": "c"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert script.main(["unused", "--pairs", str(pairs), "--out", str(out), "--columns", "query,doc"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pairs}:2: no column 'doc'") and not out.exists()
    assert script.main(["unused", "--pairs", str(pairs), "--out", str(out), "--skip-top", "60"]) == 1
    assert "depth (50) must exceed skip_top (60)" in capsys.readouterr().err and not out.exists()
