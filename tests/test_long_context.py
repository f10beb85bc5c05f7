"""The long-context phase (configs/student_long.py): a finished run continued at twice its sequence length
with more positions and a higher global RoPE base, on documents long enough to fill the longer rows."""

import json
import os

import numpy as np
import pytest

from neobert_jax.mlm.task import train
from neobert_jax.runtime import config as runtime_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_512_run_continues_at_1024(write_corpus, tiny_config, tmp_path, capsys):
    long_lines = tmp_path / "long.txt"
    rng = np.random.default_rng(0)
    words = open(write_corpus(tmp_path / "short.txt")).read().split()
    long_lines.write_text("\n".join(" ".join(rng.choice(words, n)) for n in [40] * 30 + [400] * 30) + "\n")
    first = tiny_config(tmp_path / "first", str(long_lines), **{
        "model.max_position_embeddings": 512, "train.seq_len": 512, "train.batch_size": 2, "train.max_steps": 2,
        "train.warmup_steps": 1, "train.export_hf": True})
    train(first)
    second = tiny_config(tmp_path / "second", str(long_lines), **{
        "model.max_position_embeddings": 1024, "model.global_rope_theta": 320000.0, "train.seq_len": 1024,
        "train.batch_size": 2, "train.max_steps": 2, "train.warmup_steps": 1, "train.export_hf": True,
        "data.min_document_tokens": 300})
    second.init_from = str(tmp_path / "first")
    second.data.tokenizer_vocab_size = first.data.tokenizer_vocab_size
    capsys.readouterr()
    result = train(second)
    out = capsys.readouterr()
    assert "model.max_position_embeddings 512 -> 1024" in out.out + out.err
    assert "30 shorter than data.min_document_tokens" in out.out + out.err
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "second" / "metrics.jsonl")]
    assert result.completed and np.all(np.isfinite(losses))
    exported = json.load(open(os.path.join(result.hf_dir, "config.json")))
    assert exported["max_position_embeddings"] == 1024
    assert exported["rope_parameters"]["full_attention"]["rope_theta"] == 320000.0

    import torch
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained(result.hf_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.randint(5, 200, (1, 1024))).logits
    assert logits.shape[1] == 1024 and torch.isfinite(logits).all()


def test_the_long_config_needs_a_first_phase():
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", "student_long.py"))
    from neobert_jax.mlm.config import validate
    validate(cfg)  # every key valid as shipped
    assert cfg.init_from and cfg.train.seq_len == 1024 and cfg.data.min_document_tokens == cfg.train.seq_len // 2
    cfg.data.min_document_tokens = -1
    with pytest.raises(ValueError, match="config.data.min_document_tokens"):
        validate(cfg)
