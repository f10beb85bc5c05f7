"""End to end: a briefly pretrained tiny model, fine-tuned by the contrastive CLI on the stdlib
retrieval task (signature -> docstring, test modules unseen in training), gets better nDCG@10;
its sentence-transformers export reproduces the run's numbers (retrieval and STS) in
evaluate_embeddings.py; bad input exits non-zero with one line and writes nothing; SimCSE (plain
lines, dropout noise, GradCache) and MSE distillation (Matryoshka) runs from a project checkpoint
learn."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from neobert_jax.contrastive.task import train_contrastive
from neobert_jax.data.builtin_retrieval import write_task
from neobert_jax.runtime import config as runtime_config
from neobert_jax.mlm.task import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = {
    "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
    "model.intermediate_size": 64, "model.local_attention": 16, "data.tokenizer_vocab_size": 512,
    "data.eval_samples": 0, "train.max_steps": 40, "train.batch_size": 8, "train.seq_len": 64,
    "train.learning_rate": 3e-3, "train.warmup_steps": 5, "train.log_every": 20, "train.save_every": 40,
    "train.eval_every": 0,
}
CONTRASTIVE = {
    "train.max_steps": 48, "train.batch_size": 32, "train.seq_len": 64, "train.learning_rate": 2e-3,
    "train.warmup_fraction": 0.1, "train.log_every": 8, "train.save_every": 48,
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The stdlib task (512 train pairs, 128 test queries) and a model pretrained (MLM) on the
    training texts alone, as users pretrain on their domain corpus before the contrastive phase."""
    root = tmp_path_factory.mktemp("stdlib")
    write_task(str(root / "task"), max_train=512, max_test=128)
    with open(root / "task" / "train.jsonl") as f, open(root / "corpus.txt", "w") as corpus:
        for line in f:
            pair = json.loads(line)
            corpus.write(f"{pair['anchor']}\n{pair['positive']}\n")
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
    for key, value in PRETRAIN.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.data.train_files = str(root / "corpus.txt")
    cfg.output_dir = str(root / "pretrain")
    return root, train(cfg).hf_dir


def write_sts_set(path, task_dir):
    """Test queries against their own docstring (score 5) or another one (score 0)."""
    queries = [json.loads(line)["text"] for line in open(task_dir / "queries.jsonl")]
    docs = [json.loads(line)["text"] for line in open(task_dir / "corpus.jsonl")]
    with open(path, "w") as f:
        for i, query in enumerate(queries[:40]):
            f.write(json.dumps({"sentence1": query, "sentence2": docs[i], "score": 5.0}) + "\n")
            f.write(json.dumps({"sentence1": query, "sentence2": docs[(i * 7 + 3) % len(docs)], "score": 0.0}) + "\n")
    return path


def cli(output_dir, init_from, train_files, retrieval_dir, sts_file):
    args = [f"--config.{k}={v}" for k, v in CONTRASTIVE.items()]
    command = [sys.executable, os.path.join(REPO, "scripts", "contrastive.py"), "--config",
               os.path.join(REPO, "configs", "contrastive.py"), f"--config.output_dir={output_dir}",
               f"--config.init_from={init_from}", f"--config.data.train_files={train_files}",
               f"--config.eval.retrieval_dirs={retrieval_dir}", f"--config.eval.sts_files={sts_file}", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)


def test_cli_run_improves_retrieval_and_its_export_reproduces_it(pretrained, tmp_path, capsys):
    root, hf_dir = pretrained
    sts = write_sts_set(tmp_path / "sts.jsonl", root / "task" / "test")
    out = cli(tmp_path / "run", hf_dir, root / "task" / "train.jsonl", root / "task" / "test", sts)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    before, after = records[0], records[-1]
    assert before["step"] == 0 and after["step"] == CONTRASTIVE["train.max_steps"]
    metrics = ("eval_test_ndcg@10", "eval_test_recall@10", "eval_test_mrr@10", "eval_sts_spearman")
    assert after["eval_test_ndcg@10"] > before["eval_test_ndcg@10"] + 0.05
    assert after["eval_test_recall@10"] > before["eval_test_recall@10"]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    assert losses[-1] < losses[0] - 0.5
    assert "evaluation (before = the init_from model, after = this run)" in out.stdout
    assert " schedule: warmup " in out.stderr  # a warmup longer than the run would be warned about here
    for record in records:  # every evaluation point shows on the console, not only in metrics.jsonl
        if "eval_test_ndcg@10" in record:
            line = out.stdout.split(f"evaluation at step {record['step']}: ")[1].splitlines()[0]
            assert f"test_ndcg@10 {record['eval_test_ndcg@10']:.4f}" in line

    spec = importlib.util.spec_from_file_location("evaluate_embeddings",
                                                  os.path.join(REPO, "scripts", "evaluate_embeddings.py"))
    evaluate_embeddings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_embeddings)
    evaluate_embeddings.main([str(tmp_path / "run" / "st"), "--retrieval", str(root / "task" / "test"),
                              "--sts", str(sts), "--json", str(tmp_path / "eval.json")])
    assert "test_ndcg@10" in capsys.readouterr().out
    exported = json.load(open(tmp_path / "eval.json"))
    for metric in metrics:
        assert exported[metric.removeprefix("eval_")] == pytest.approx(after[metric], abs=1e-6)


def test_cli_bad_input_is_one_line_and_writes_nothing(pretrained, tmp_path):
    root, hf_dir = pretrained
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"anchor": "os.getcwd()", "positive": "Return the current directory."}\n'
                   '{"anchor": "os.sep", "positive": ""}\n')
    out = cli(tmp_path / "run", hf_dir, bad, root / "task" / "test", "")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == f"error: {bad}:2: column 'positive' is empty"
    assert not os.path.exists(tmp_path / "run")


def write_distillation_set(path, texts, dim=32):
    teacher = np.random.default_rng(0).normal(size=(len(texts), dim))
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": t, "label": v.tolist()}) + "\n" for t, v in zip(texts, teacher))
    return str(path)


@pytest.mark.parametrize("loss", ["simcse", "mse"])
def test_simcse_and_distillation_runs_learn(pretrained, tmp_path, loss):
    root, hf_dir = pretrained
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
    # init_from the pretraining run dir: a project checkpoint (its latest orbax step), not an HF dir
    cfg.init_from, cfg.output_dir, cfg.loss.name = os.path.dirname(hf_dir), str(tmp_path / "run"), loss
    cfg.train.update(max_steps=12, batch_size=16, seq_len=48, learning_rate=3e-3, warmup_fraction=0.15, log_every=1)
    if loss == "simcse":  # plain text lines; dropout is the noise; two GradCache micro-batches, bucketed rows
        cfg.data.train_files = str(root / "corpus.txt")
        cfg.model.attention_dropout = cfg.model.mlp_dropout = 0.1
        cfg.train.grad_accum_steps, cfg.data.layout = 2, "bucket"
    else:
        texts = [line.strip() for line in open(root / "corpus.txt")][:64]
        cfg.data.train_files = write_distillation_set(tmp_path / "teacher.jsonl", texts)
        cfg.loss.matryoshka_dims = "32,16"
    result = train_contrastive(cfg)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in records]
    assert result.completed and all(np.isfinite(losses)) and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert os.path.isfile(tmp_path / "run" / "st" / "modules.json")


def test_keep_best_checkpoint_keeps_the_best_evaluated_step(pretrained, tmp_path):
    """The contrastive ranking: the highest mean of the eval sets' metrics (there is no eval loss)."""
    root, hf_dir = pretrained
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
    cfg.init_from, cfg.output_dir = hf_dir, str(tmp_path / "run")
    cfg.data.train_files, cfg.eval.retrieval_dirs = str(root / "task" / "train.jsonl"), str(root / "task" / "test")
    cfg.train.update(max_steps=12, batch_size=16, seq_len=48, learning_rate=3e-2, warmup_fraction=0.15, log_every=4,
                     eval_every=3, save_every=100, keep_checkpoints=1, keep_best_checkpoint=True)
    train_contrastive(cfg)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    means = {r["step"]: np.mean([v for k, v in r.items() if k.startswith("eval_")])
             for r in records if r["step"] > 0 and any(k.startswith("eval_") for k in r)}
    assert sorted(means) == [3, 6, 9, 12]
    best = max(means, key=means.get)
    assert sorted(map(int, os.listdir(tmp_path / "run" / "checkpoints"))) == sorted({best, 12}), means


def test_one_row_shape_trains_as_the_ladder_does(pretrained, tmp_path):
    """data.row_shapes=one pads steps to the run's largest (one compilation); padding rows hold no
    text, so the losses are those of the laddered shapes."""
    root, hf_dir = pretrained
    losses = {}
    for shapes in ("ladder", "one"):
        cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "contrastive.py"))
        cfg.init_from, cfg.output_dir = hf_dir, str(tmp_path / shapes)
        cfg.data.train_files, cfg.data.row_shapes = str(root / "task" / "train.jsonl"), shapes
        cfg.train.update(max_steps=6, batch_size=32, seq_len=64, learning_rate=2e-3, log_every=1)
        assert train_contrastive(cfg).completed
        losses[shapes] = [json.loads(line)["loss"] for line in open(tmp_path / shapes / "metrics.jsonl")]
        assert json.load(open(tmp_path / shapes / "run_config.json"))["data"]["row_shapes"] == shapes
    np.testing.assert_allclose(losses["one"], losses["ladder"], rtol=2e-5)
