"""The CPU quality guard of the embedding phase: the shipped configs/contrastive.py must not lose to
the users' sentence-transformers training (SentenceTransformerTrainer, MNRL, lr 5e-5, 10% warmup,
no-duplicates batches) from the same starting model, pairs, batch size and epochs.

Both sides run through `scripts/bench_embedder.py --tiny`, as the benchmark runs them: a tiny model
pretrained by our CLI on the pairs' passages, then each side's own command, and one evaluator
scoring both exported folders through `SentenceTransformer(path)`. Ours trailing theirs by more
than MARGIN in held-out nDCG@10 fails.
"""

import json
import os
import subprocess
import sys

import pytest

from neobert_jax.data.builtin_retrieval import write_task

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARGIN = 0.01  # nDCG@10 by which ours may trail theirs (128 test queries)
PRETRAIN = ("model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
            "model.intermediate_size=64", "model.local_attention=16", "data.tokenizer_vocab_size=512",
            "data.eval_samples=0", "train.max_steps=60", "train.batch_size=8", "train.seq_len=64",
            "train.log_every=20", "train.save_every=60")


def test_ours_is_not_worse_than_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("datasets")  # the users' trainer needs it
    write_task(str(tmp_path / "pairs"), max_train=512, max_test=128)
    work = tmp_path / "bench"
    subprocess.run([sys.executable, "scripts/bench_embedder.py", "--tiny", "--pairs", str(tmp_path / "pairs"),
                    "--work-dir", str(work), "--sides", "st,ours", "--batch-size", "32", "--epochs", "2",
                    "--seq-len", "64", "--eval-points", "1", *[f"--pretrain={kv}" for kv in PRETRAIN]],
                   cwd=REPO, check=True)
    table = json.loads((work / "results.json").read_text())["rows"]
    rows = {row.get("side", "start"): row["runs"][0] for row in table}
    assert rows["st"]["loop"] == "trainer" and rows["st"]["steps"] == rows["ours"]["steps"] == 32
    ours, theirs, start = (rows[side]["ndcg@10"] for side in ("ours", "st", "start"))
    assert ours >= theirs - MARGIN, f"nDCG@10: ours {ours:.4f}, sentence-transformers {theirs:.4f}, start {start:.4f}"
    # the run's own evaluation of its last step agrees with the exported folder read by sentence-transformers
    assert rows["ours"]["curve"][-1]["test_ndcg@10"] == pytest.approx(ours, abs=1e-3)
    # the paired difference over the test queries: its mean is the two scores' difference, inside its interval
    assert all(len(rows[side]["per_query_ndcg@10"]) == 128 for side in ("ours", "st", "start"))
    difference = next(row for row in table if row.get("side") == "ours")["ndcg@10_minus_st"]
    assert difference["mean"] == pytest.approx(ours - theirs, abs=1e-9)
    assert difference["low"] <= difference["mean"] <= difference["high"] and difference["low"] < difference["high"]
