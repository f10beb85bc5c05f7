"""Tiny corpora, tokenizers, configs and dir snapshots for the reliability and bad-input tests."""

import hashlib
import os
import random

from neobert_jax.data.tokenizer import save_tokenizer, train_tokenizer
from neobert_jax.mlm import config as train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the model reads a corpus of short lines and learns which tokens follow which others in every "
         "sentence while the optimizer lowers the loss step by step until training ends").split()


def write_corpus(path, lines: int = 300, seed: int = 0) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "\n")
    return str(path)


def write_tokenizer(out_dir, corpus: str, vocab_size: int = 300) -> str:
    save_tokenizer(train_tokenizer([corpus], vocab_size=vocab_size), str(out_dir))
    return str(out_dir)


def tiny_config(output_dir, corpus: str, **overrides):
    """A 2-layer, 32-wide pretraining config on `corpus` that compiles in seconds."""
    c = train_config.default_config()
    c.output_dir = str(output_dir)
    c.data.train_files = corpus
    c.data.tokenizer_vocab_size = 300
    values = {
        "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "model.local_attention": 16, "model.max_position_embeddings": 64,
        "train.max_steps": 4, "train.batch_size": 4, "train.seq_len": 32, "train.learning_rate": 3e-3,
        "train.warmup_steps": 2, "train.log_every": 1, "train.save_every": 2, "train.eval_batches": 1,
        "train.export_hf": False,
    }
    values.update(overrides)
    for key, value in values.items():
        *sections, name = key.split(".")
        node = c
        for section in sections:
            node = node[section]
        node[name] = value
    return c


def snapshot(path) -> dict:
    """{relative path: sha256 or 'dir'} of everything under `path` ({} when it does not exist)."""
    out = {}
    if not os.path.exists(path):
        return out
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out
