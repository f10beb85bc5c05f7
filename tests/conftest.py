"""Shared test helpers, each handed to tests by a fixture of the same name (nothing is downloaded).

- HF torch models: hf_config, hf_model, hf_special_ids.
- Trainer tests: tiny_model, mlm_batch, train_cfg, compiled_step, one_device_mesh.
- Whole runs: write_corpus, write_tokenizer, tiny_config, snapshot.
- Contrastive: contrastive_texts, tiny_tokenizer_dir, tiny_hf_dir.

The scripts run in subprocesses (multidevice_losses.py, test_contrastive_multidevice.py) import the
plain functions with `from conftest import ...`: a script's folder is first on its sys.path."""

import hashlib
import json
import os
import random

import jax
import numpy as np
import pytest
from flax import nnx

from neobert_jax.config import ModernBertConfig
from neobert_jax.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from neobert_jax.hf import save_hf_dir
from neobert_jax.mlm import config as train_config
from neobert_jax.mlm import step
from neobert_jax.model import ModernBertForMaskedLM
from neobert_jax.runtime import optim, sharding, state

# --- tiny random transformers ModernBERT models (torch is imported only when one is built)

SPECIAL_IDS = dict(pad_token_id=3, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)


def hf_config(**overrides):
    """-> a transformers ModernBertConfig: 4 layers, 64 wide, vocab 300, unless overridden."""
    from transformers import ModernBertConfig as HFConfig

    kwargs = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=4, local_attention=16, **SPECIAL_IDS)
    kwargs.update(overrides)
    return HFConfig(**kwargs)


def hf_model(seed: int = 0, **overrides):
    """-> a random-init transformers ModernBertForMaskedLM of `hf_config(**overrides)`, in eval mode."""
    import torch
    from transformers import ModernBertForMaskedLM as HFMaskedLM

    torch.manual_seed(seed)
    return HFMaskedLM(hf_config(**overrides)).eval()


# --- tiny JAX models and hand-made MLM batches in the data contract's layout

PAD, MASK = 3, 4


def tiny_model(seed: int = 0, vocab: int = 96, **config_overrides) -> ModernBertForMaskedLM:
    """config_overrides: ModernBertConfig fields, e.g. dtype="bfloat16" or remat="full"."""
    config = ModernBertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=2, local_attention=8, pad_token_id=PAD, bos_token_id=1,
                              eos_token_id=2, cls_token_id=1, sep_token_id=2, **config_overrides)
    return ModernBertForMaskedLM(config, rngs=nnx.Rngs(seed))


def mlm_batch(rows: int, seq: int, vocab: int, seed: int = 0, max_predictions: int | None = None) -> dict:
    """Two documents per row at varying lengths, 10-50% of tokens predicted (uneven across rows)."""
    rng = np.random.default_rng(seed)
    m = max_predictions or seq
    ids = rng.integers(5, vocab, (rows, seq)).astype(np.int32)
    segments = np.zeros((rows, seq), np.int32)
    positions = np.zeros((rows, seq), np.int32)
    labels = np.full((rows, seq), -100, np.int32)
    masked_positions = np.zeros((rows, m), np.int32)
    masked_labels = np.full((rows, m), -100, np.int32)
    for r in range(rows):
        used = int(rng.integers(seq // 2, seq + 1))
        split = int(rng.integers(1, used))
        segments[r, :split], segments[r, split:used] = 1, 2
        positions[r, :split], positions[r, split:used] = np.arange(split), np.arange(used - split)
        ids[r, used:] = PAD
        rate = rng.uniform(0.1, 0.5)
        chosen = np.flatnonzero(rng.random(used) < rate)[:m]
        labels[r, chosen] = ids[r, chosen]
        masked_positions[r, : len(chosen)] = chosen
        masked_labels[r, : len(chosen)] = ids[r, chosen]
    inputs = np.where(labels != -100, MASK, ids).astype(np.int32)
    return dict(input_ids=inputs, segment_ids=segments, positions=positions, labels=labels,
                masked_positions=masked_positions, masked_labels=masked_labels)


def train_cfg(**overrides):
    """The default train config at lr 1e-3, 2 warmup steps, plus `overrides` (its keys)."""
    cfg = train_config.default_config().train
    cfg.learning_rate, cfg.warmup_steps = 1e-3, 2
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def compiled_step(model, cfg, mesh, total_steps: int = 100):
    """-> (train_step, initial train state, parts, state shardings) for `model` on `mesh`."""
    parts, params = state.ModelParts.split(model)
    optimizer, hparams = optim.Optimizer(cfg), optim.hyperparameters(cfg, total_steps)
    tx = optimizer.tx(hparams)
    shardings = state.state_shardings(parts, tx, hparams, mesh)
    train_state = state.create_train_state(params, tx, hparams, shardings, seed=0)
    return step.make_train_step(parts, optimizer, cfg, shardings, mesh), train_state, parts, shardings


# --- tiny corpora, tokenizers and configs for whole runs; dir snapshots

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
    return set_keys(c, values)


def set_keys(config, values: dict):
    """config with each dotted key of `values` ("train.seq_len") set; returns config."""
    for key, value in values.items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    return config


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


# --- tiny tokenizer, model dir and texts for the contrastive tests

TEXTS = [
    "Return the sum of a list of numbers.", "os.path.join(a, *p)", "Join two or more pathname components.",
    "shutil.copyfile(src, dst, *, follow_symlinks=True)", "Copy data from src to dst.", "x",
    "Split a string into words and return the list of them, dropping empty pieces on the way out.",
    "json.dumps(obj, *, skipkeys=False, ensure_ascii=True)", "Serialize obj to a JSON formatted str.",
]


def packed_and_one_a_row(configure, out_dir) -> tuple[dict, dict]:
    """A classification run with data.pack True and False: each one's logged losses and planned rows.
    configure(output_dir, pack) -> the run's config."""
    from neobert_jax.classify.task import train_classifier

    losses, rows = {}, {}
    for pack in (True, False):
        out = os.path.join(str(out_dir), str(pack))
        train_classifier(configure(out, pack))
        losses[pack] = [r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in r]
        rows[pack] = json.load(open(os.path.join(out, "run_config.json")))["resolved"]["rows"]
    return losses, rows


def tiny_tokenizer_dir(root, texts=TEXTS, vocab_size: int = 400) -> str:
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(texts * 3))
    out = os.path.join(root, "tokenizer")
    save_tokenizer(train_tokenizer([corpus], vocab_size=vocab_size), out)
    return out


def tiny_hf_dir(root, tokenizer_dir: str, seed: int = 0) -> str:
    """A random-init 2-layer, 32-wide ModernBERT saved as an HF dir with its tokenizer."""
    tokenizer = load_tokenizer(tokenizer_dir)
    config = ModernBertConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, local_attention=16, pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    out = os.path.join(root, "hf")
    save_hf_dir(ModernBertForMaskedLM(config, rngs=nnx.Rngs(seed)), out, tokenizer_dir=tokenizer_dir)
    return out


# --- the fixtures: session-scoped, so module-scoped fixtures can use them too


@pytest.fixture(scope="session", name="hf_config")
def _hf_config():
    return hf_config


@pytest.fixture(scope="session", name="hf_model")
def _hf_model():
    return hf_model


@pytest.fixture(scope="session")
def hf_special_ids() -> dict:
    """The special-token ids of hf_config's models, keyed as in its config."""
    return dict(SPECIAL_IDS)


@pytest.fixture(scope="session", name="tiny_model")
def _tiny_model():
    return tiny_model


@pytest.fixture(scope="session", name="mlm_batch")
def _mlm_batch():
    return mlm_batch


@pytest.fixture(scope="session", name="train_cfg")
def _train_cfg():
    return train_cfg


@pytest.fixture(scope="session", name="compiled_step")
def _compiled_step():
    return compiled_step


@pytest.fixture(scope="session")
def one_device_mesh():
    """The default mesh config on the first device."""
    return sharding.make_mesh(train_config.default_config().mesh, devices=jax.devices()[:1])


@pytest.fixture(scope="session", name="write_corpus")
def _write_corpus():
    return write_corpus


@pytest.fixture(scope="session", name="write_tokenizer")
def _write_tokenizer():
    return write_tokenizer


@pytest.fixture(scope="session", name="tiny_config")
def _tiny_config():
    return tiny_config


@pytest.fixture(scope="session", name="snapshot")
def _snapshot():
    return snapshot


@pytest.fixture(scope="session")
def contrastive_texts() -> list[str]:
    """Short and long texts, code and prose: what tiny_tokenizer_dir trains on by default."""
    return list(TEXTS)


@pytest.fixture(scope="session", name="tiny_tokenizer_dir")
def _tiny_tokenizer_dir():
    return tiny_tokenizer_dir


@pytest.fixture(scope="session", name="tiny_hf_dir")
def _tiny_hf_dir():
    return tiny_hf_dir
