"""End to end on the built-in corpus: a run learns and reports, its HF export loads everywhere,
SIGTERM saves and exits 0, the resumed CLI run reproduces the uninterrupted losses, and a
diverging run stops with its checkpoint intact."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from neobert_jax.hf import load_pretrained
from neobert_jax.runtime import config as runtime_config
from neobert_jax.mlm.task import NonFiniteLossError, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 150
OVERRIDES = {
    "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
    "model.intermediate_size": 64, "model.local_attention": 16,
    "data.tokenizer_vocab_size": 512, "data.eval_samples": 64,
    "train.max_steps": STEPS, "train.batch_size": 8, "train.grad_accum_steps": 2, "train.seq_len": 64,
    "train.learning_rate": 3e-3, "train.warmup_steps": 10, "train.log_every": 1, "train.save_every": 50,
    "train.eval_every": 75, "train.eval_batches": 2,
}


def run_config(output_dir, **extra):
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
    for key, value in {**OVERRIDES, **extra}.items():
        section, name = key.split(".") if "." in key else (None, key)
        (cfg[section] if section else cfg)[name] = value
    cfg.output_dir = str(output_dir)
    return cfg


def tensorboard_tags(logdir) -> set[str]:
    """Scalar tags of tensorboardX event files (TFRecord framing: length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for name in os.listdir(logdir):
        data = (logdir / name).read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            tags |= {v.tag for v in event_pb2.Event.FromString(data[i + 12:i + 12 + length]).summary.value}
            i += length + 16
    return tags


def read_metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted in-process run; the other tests reuse its outputs and tokenizer."""
    output_dir = tmp_path_factory.mktemp("reference")
    return output_dir, train(run_config(output_dir))


def test_run_learns_and_reports(reference):
    output_dir, result = reference
    assert result.completed and result.step == STEPS
    records = read_metrics(output_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-10:]) < losses[0] - 0.5, (losses[0], losses[-10:])
    logged = {"learning_rate", "grad_norm", "tokens_per_s", "mfu", "packing_efficiency", "masked_tokens"}
    assert logged <= set(records[-1])
    assert [r["step"] for r in records if "eval_loss" in r] == [75, 150]
    assert result.eval_loss == pytest.approx(records[-1]["eval_loss"]) and result.eval_loss < losses[0]
    assert result.train_loss == pytest.approx(np.mean(losses[-100:]), rel=1e-5)  # the final, not the run mean
    assert os.path.getsize(output_dir / "loss.png") > 1000
    expected = {"loss", "perplexity", "learning_rate", "grad_norm", "tokens_per_s", "mfu", "packing_efficiency",
                "masked_tokens"}
    assert {f"train/{k}" for k in expected} | {"eval/loss", "eval/perplexity"} <= tensorboard_tags(
        output_dir / "tensorboard")
    assert sorted(os.listdir(output_dir / "checkpoints")) == ["100", "150", "50"]


def test_export_matches_flax_in_transformers_and_sentence_transformers(reference):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    output_dir, result = reference
    ours, _ = load_pretrained(str(output_dir))  # the run dir: its latest checkpoint's params
    tokenizer = AutoTokenizer.from_pretrained(result.hf_dir)
    batch = tokenizer(["The with statement wraps a block.", "Return the sum of a list of numbers."],
                      padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    hf = AutoModelForMaskedLM.from_pretrained(result.hf_dir).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids).long(), attention_mask=torch.tensor(mask)).logits.numpy()
    flax_logits = np.asarray(ours(ids, mask))
    assert np.abs(flax_logits - theirs)[mask.astype(bool)].max() < 1e-4

    embedder = SentenceTransformer(result.hf_dir, device="cpu")
    sentences = ["The with statement wraps a block."]
    embedding = embedder.encode(sentences)
    single = tokenizer(sentences, return_tensors="np")
    hidden = np.asarray(ours.encode(single["input_ids"].astype(np.int32), single["attention_mask"].astype(np.int32)))
    np.testing.assert_allclose(embedding[0], hidden[0].mean(axis=0), atol=1e-4)


def _cli(output_dir, tokenizer_dir, **popen):
    args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    command = [sys.executable, os.path.join(REPO, "scripts", "pretrain.py"), "--config",
               os.path.join(REPO, "configs", "tiny.py"), f"--config.output_dir={output_dir}",
               f"--config.tokenizer={tokenizer_dir}", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, **popen)


def test_sigterm_saves_and_the_resumed_cli_run_matches(reference, tmp_path):
    reference_dir, _ = reference
    output_dir = tmp_path / "interrupted"
    metrics = output_dir / "metrics.jsonl"
    first = _cli(output_dir, reference_dir / "tokenizer")
    while first.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 60):
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out[-3000:]
    stopped = sorted(int(s) for s in os.listdir(output_dir / "checkpoints"))[-1]
    assert 60 <= stopped < STEPS and out.count(f"stopped at step {stopped}") == 1, out[-3000:]
    assert (output_dir / "loss.png").exists()  # the README lists it among every run's files

    second = _cli(output_dir, reference_dir / "tokenizer")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert f"resumed from {output_dir / 'checkpoints'}/{stopped}" in out
    assert "start-up: " in out and "Metadata file does not exist" not in out  # orbax's warning reads as damage
    closing = out.split("training after the first step ")[1].split()
    assert float(closing[0]) + float(closing[3]) > 0.0  # the resume's first step starts the clock, logged or not
    assert "tok_s=0]" not in out and "tok_s=0," not in out  # no throughput shown before one is measured
    assert "Final Student Train Loss:" in out and "Final Student Eval Loss:" in out
    assert f"run: {STEPS} optimizer steps of 8 rows x 64" in out
    resumed, uninterrupted = read_metrics(output_dir), read_metrics(reference_dir)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in uninterrupted], rtol=1e-6)
    assert float(out.split("Final Student Train Loss: ")[1].split()[0]) == pytest.approx(
        np.mean([r["loss"] for r in uninterrupted][-100:]), abs=1e-4)


def test_diverging_run_stops_with_checkpoint_intact(reference, tmp_path):
    reference_dir, _ = reference
    cfg = run_config(tmp_path, **{"train.learning_rate": 1e30, "train.warmup_steps": 4, "train.save_every": 1,
                                  "train.max_nonfinite_steps": 3, "train.eval_every": 0})
    cfg.tokenizer = str(reference_dir / "tokenizer")
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        train(cfg)
    records = read_metrics(tmp_path)
    assert records[-1]["nonfinite_steps"] == 3 and records[-1]["loss"] is None
    model, _ = load_pretrained(str(tmp_path))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(nnx.state(model)))
    assert not os.path.exists(tmp_path / "hf")


def test_resume_reports_start_up_between_log_points(reference, tmp_path, capsys):
    """A resume whose first step is not a log step still reports its start-up and its training time."""
    reference_dir, _ = reference
    for steps in (4, 8):  # the second run resumes at step 4; steps 5-7 are not logged
        cfg = run_config(tmp_path, **{"train.max_steps": steps, "train.log_every": 4, "train.save_every": 4,
                                      "train.eval_every": 0})
        cfg.tokenizer = str(reference_dir / "tokenizer")
        capsys.readouterr()
        train(cfg)
    out = capsys.readouterr()
    out = out.out + out.err
    assert "resumed from" in out and "start-up: " in out, out[-2000:]
    closing = out.split("training after the first step ")[1].split()
    assert closing[2] == "(evaluations"  # the final evaluation, timed apart from training
    assert float(closing[0]) + float(closing[3]) > 0.0  # the resume's first step starts the clock
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 4, 8]


def test_wandb_logs_the_run_offline_and_a_rerun_continues_it(tmp_path, monkeypatch, write_corpus, tiny_config):
    """logging.wandb=True in W&B's offline mode: the scalars under TensorBoard's names and the run
    config land in W&B's run file, and a resumed run continues the same W&B run."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path / "run", write_corpus(tmp_path / "c.txt"), **{
        "logging.wandb": True, "logging.wandb_mode": "offline", "train.max_steps": 4, "data.eval_samples": 8})
    train(cfg)
    run_id = (tmp_path / "run" / "wandb_id").read_text()
    (folder,) = [p for p in os.listdir(tmp_path / "run" / "wandb") if p.startswith("offline-run-")]
    assert folder.endswith(run_id)
    data = open(tmp_path / "run" / "wandb" / folder / f"run-{run_id}.wandb", "rb").read()
    for name in (b"train/loss", b"train/learning_rate", b"eval/loss", b"auto_batch_steps", b"resolved"):
        assert name in data, name
    cfg.train.max_steps = 6
    train(cfg)  # resumed: the same W&B run
    assert (tmp_path / "run" / "wandb_id").read_text() == run_id
    folders = [p for p in os.listdir(tmp_path / "run" / "wandb") if p.startswith("offline-run-")]
    assert len(folders) == 2 and all(p.endswith(run_id) for p in folders)
