"""Score losses and prompts through the data path and whole runs: score columns read from JSONL and
Parquet (a number, a list, or several columns) with one-line errors, carried into the batch as
`targets`; prompts prepended before tokenizing; a short CPU run of each of cosent, margin_mse and
distill_kl from a tiny model; NanoBEIR-style folders in scripts/evaluate_embeddings.py."""

import importlib.util
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neobert_jax.contrastive.batching import Layout, assemble
from neobert_jax.contrastive.columns import read_training_columns, with_prompts
from neobert_jax.contrastive.task import train_contrastive
from neobert_jax.contrastive.tokenized import TextTokenizer, tokenize_columns
from neobert_jax.data import DataError, load_tokenizer
from neobert_jax.runtime import config as runtime_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def read(path, loss, score_columns=(), columns=()):
    return read_training_columns([str(path)], loss=loss, columns=list(columns), label_column="label", vector_dim=4,
                                 score_columns=list(score_columns))


def score_records(texts, loss, n=16, seed=0):
    """Rows for `loss` over `texts`: pairs + score, (query, pos, neg) + [pos, neg] teacher scores,
    or (query, three candidates) + one score column each."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        q, a, b, c = (texts[(i * m + m) % len(texts)] for m in (1, 2, 3, 5))
        if loss == "cosent":
            records.append({"sentence1": q, "sentence2": a if i % 2 else q, "score": float(rng.uniform())})
        elif loss == "margin_mse":
            records.append({"query": q, "positive": a, "negative": b, "label": [float(rng.uniform(2, 4)),
                                                                                float(rng.uniform(0, 2))]})
        else:
            s = rng.normal(size=3) * 2
            records.append({"query": q, "c1": a, "c2": b, "c3": c, "s1": s[0], "s2": s[1], "s3": s[2]})
    return records


def test_score_columns_from_jsonl_and_parquet(tmp_path, contrastive_texts):
    for loss, scores in (("cosent", ()), ("margin_mse", ()), ("distill_kl", ("s1", "s2", "s3"))):
        records = score_records(contrastive_texts, loss, n=5)
        jsonl = write_jsonl(tmp_path / f"{loss}.jsonl", records)
        pq.write_table(pa.Table.from_pylist(records), tmp_path / f"{loss}.parquet")
        for path in (jsonl, tmp_path / f"{loss}.parquet"):
            data = read(path, loss, scores)
            keys = {"cosent": ["score"], "margin_mse": ["label"], "distill_kl": ["s1", "s2", "s3"]}[loss]
            expected = [np.hstack([r[k] for k in keys]) for r in records]
            np.testing.assert_allclose(data.vectors, np.asarray(expected, np.float32))
            assert len(data.texts) == {"cosent": 2, "margin_mse": 3, "distill_kl": 4}[loss]  # scores are no text
    margins = write_jsonl(tmp_path / "margins.jsonl", [{**r, "label": 1.5} for r in score_records(
        contrastive_texts, "margin_mse", n=3)])
    assert read(margins, "margin_mse").vectors.shape == (3, 1)  # margins (one per negative) are taken as well


@pytest.mark.parametrize("case", ["missing", "string", "list of strings", "wrong count", "no column", "parquet"])
def test_bad_scores_are_one_line_naming_file_row_and_column(tmp_path, contrastive_texts, case):
    records = score_records(contrastive_texts, "cosent", n=4)
    path, message = tmp_path / "t.jsonl", None
    if case == "missing":
        del records[1]["score"]
        message = "t.jsonl:2: no column 'score'"
    elif case == "string":
        records[2]["score"] = "high"
        message = "t.jsonl:3: column 'score' holds str, expected a number or a list of numbers"
    elif case == "list of strings":
        records[0]["score"] = ["1", 2]
        message = "t.jsonl:1: column 'score' holds a list with non-numbers"
    elif case == "wrong count":
        for r in records:
            r["score"] = [0.5, 0.5]
        message = "t.jsonl: 'score': 2 score(s) per example, but loss cosent with 2 text columns takes 1"
    elif case == "no column":
        records = [{k: v for k, v in r.items() if k != "score"} for r in records]
        message = "loss cosent needs two text columns (sentence1, sentence2) and a score column, found no 'score'"
    if case == "parquet":
        records[3]["score"] = None
        path = tmp_path / "t.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
        message = "t.parquet:row 4: column 'score' holds NoneType"
    else:
        write_jsonl(path, records)
    with pytest.raises(DataError) as error:
        read(path, "cosent")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_scores_travel_with_their_examples_and_prompts_are_tokenized(tmp_path, contrastive_texts,
                                                                      tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir(str(tmp_path)))
    data = read(write_jsonl(tmp_path / "m.jsonl", score_records(contrastive_texts, "margin_mse", n=6)), "margin_mse")
    prompted = with_prompts(data, "query: ", "passage: ")
    assert prompted.texts[0][0] == "query: " + data.texts[0][0] and prompted.texts[2][0] == "passage: " + data.texts[2][0]
    tokenized = tokenize_columns(prompted, TextTokenizer(tokenizer, 64))
    examples = np.array([4, 1, 5])
    batch, _ = assemble(tokenized, examples, Layout("pack", 64, 8, 1, (0, 1, 2)), cls_id=tokenizer.cls_token_id,
                        sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id)
    np.testing.assert_array_equal(batch["targets"], data.vectors[examples])
    def decoded(column):
        return tokenizer.backend_tokenizer.decode(tokenized.body(column, 0).tolist()).replace(" ", "")

    assert decoded(0).startswith("query:") and decoded(1).startswith("passage:") and decoded(2).startswith("passage:")


def test_preprocessed_folders_keep_scores_and_check_prompts(tmp_path, contrastive_texts, tiny_tokenizer_dir):
    from neobert_jax.contrastive.tokenized import load_preprocessed, save_preprocessed

    tokenizer = load_tokenizer(tiny_tokenizer_dir(str(tmp_path)))
    data = read(write_jsonl(tmp_path / "c.jsonl", score_records(contrastive_texts, "cosent", n=4)), "cosent")
    prompts = ("query: ", "passage: ")
    tokenized = tokenize_columns(with_prompts(data, *prompts), TextTokenizer(tokenizer, 32))
    save_preprocessed(str(tmp_path / "pre"), tokenized, tokenizer, loss="cosent", seq_len=32, label_column="label",
                      sources=[], prompts=prompts)
    loaded = load_preprocessed(str(tmp_path / "pre"), tokenizer, loss="cosent", seq_len=32, vector_dim=32,
                               prompts=prompts)
    np.testing.assert_array_equal(loaded.vectors, data.vectors)
    np.testing.assert_array_equal(loaded.ids[0], tokenized.ids[0])
    with pytest.raises(DataError, match="was tokenized with prompts"):
        load_preprocessed(str(tmp_path / "pre"), tokenizer, loss="cosent", seq_len=32, vector_dim=32)


def test_the_run_reads_prompts_into_its_training_tokens(tmp_path, contrastive_texts, tiny_tokenizer_dir):
    from neobert_jax.contrastive.setup import _read_data

    tokenizer = load_tokenizer(tiny_tokenizer_dir(str(tmp_path)))
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
    cfg.loss.name, cfg.data.query_prompt, cfg.data.document_prompt = "cosent", "query: ", "passage: "
    cfg.data.train_files = write_jsonl(tmp_path / "c.jsonl", score_records(contrastive_texts, "cosent", n=4))
    data, _ = _read_data(cfg, TextTokenizer(tokenizer, 64), tokenizer, 32, lambda _: None)
    for column, prompt in ((0, "query:"), (1, "passage:")):
        for example in range(4):
            text = tokenizer.backend_tokenizer.decode(data.body(column, example).tolist()).replace(" ", "")
            assert text.startswith(prompt), text


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_hf_dir):
    root = tmp_path_factory.mktemp("model")
    return tiny_hf_dir(str(root), tiny_tokenizer_dir(str(root)))


@pytest.mark.parametrize("loss", ["cosent", "margin_mse", "distill_kl"])
def test_score_loss_runs_learn(tmp_path, tiny_model_dir, contrastive_texts, loss):
    """One batch of 16 examples, seen six times: the loss must fall (packed rows, bucketed rows, GradCache);
    the export carries the prompts."""
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
    cfg.init_from, cfg.output_dir, cfg.loss.name = tiny_model_dir, str(tmp_path / "run"), loss
    cfg.data.train_files = write_jsonl(tmp_path / "train.jsonl", score_records(contrastive_texts, loss))
    if loss == "distill_kl":  # several score columns, one text per row
        cfg.data.score_columns, cfg.loss.temperature, cfg.data.layout = "s1,s2,s3", 2.0, "bucket"
    if loss == "margin_mse":  # the scores split with the rows into two GradCache micro-batches
        cfg.train.grad_accum_steps = 2
    if loss == "cosent":
        cfg.data.query_prompt, cfg.data.document_prompt = "query: ", "passage: "
    cfg.train.update(max_steps=6, batch_size=16, seq_len=32, learning_rate=3e-3, warmup_steps=0,
                     warmup_fraction=0.0, log_every=1)
    result = train_contrastive(cfg)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert result.completed and len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    with open(tmp_path / "run" / "st" / "config_sentence_transformers.json") as f:
        prompts = json.load(f)["prompts"]
    assert prompts == ({"query": "query: ", "document": "passage: "} if loss == "cosent" else {})


def write_beir(directory, texts, relevant):
    os.makedirs(os.path.join(directory, "qrels"))
    write_jsonl(os.path.join(directory, "corpus.jsonl"), [{"_id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    write_jsonl(os.path.join(directory, "queries.jsonl"), [{"_id": f"q{i}", "text": texts[d]}
                                                          for i, d in enumerate(relevant)])
    with open(os.path.join(directory, "qrels", "test.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{d}\t1\n" for i, d in enumerate(relevant)))


def test_a_folder_of_beir_tasks_gives_a_row_each_and_the_mean(tmp_path, tiny_model_dir, contrastive_texts, capsys):
    write_beir(tmp_path / "nano" / "taska", contrastive_texts, [0, 3, 5])
    write_beir(tmp_path / "nano" / "taskb", contrastive_texts[::-1], [1, 2])
    spec = importlib.util.spec_from_file_location("evaluate_embeddings",
                                                  os.path.join(REPO, "scripts", "evaluate_embeddings.py"))
    evaluate_embeddings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_embeddings)
    evaluate_embeddings.main([tiny_model_dir, "--retrieval", str(tmp_path / "nano"), "--seq-len", "32",
                              "--query-prompt", "query: ", "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert "retrieval, 2 tasks:" in out and "prompts query 'query: '" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("retrieval, 2 tasks:\n")[1].splitlines()}
    results = json.load(open(tmp_path / "out.json"))
    assert set(rows) == {"task", "taska", "taskb", "mean"}
    assert results["mean_ndcg@10"] == pytest.approx((results["taska_ndcg@10"] + results["taskb_ndcg@10"]) / 2)
    assert float(rows["mean"][0]) == pytest.approx(results["mean_ndcg@10"], abs=1e-4)
    # the exact texts as queries with no prompt: each finds itself first
    evaluate_embeddings.main([tiny_model_dir, "--retrieval", str(tmp_path / "nano"), "--seq-len", "32",
                              "--json", str(tmp_path / "plain.json")])
    assert json.load(open(tmp_path / "plain.json"))["mean_mrr@10"] == pytest.approx(1.0)
    if importlib.util.find_spec("mteb") is None:  # the optional dependency: one line saying so
        with pytest.raises(SystemExit, match="--mteb needs the mteb package"):
            evaluate_embeddings.main([tiny_model_dir, "--mteb", "STS12"])
