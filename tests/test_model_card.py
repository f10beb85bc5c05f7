"""Model cards (neobert_jax/runtime/model_card.py) for each kind of export, from fake run records:
the hub header per kind, labels, before/after tables, base_model carried from the starting model's card,
and a card without records. A real run's card is checked in tests/test_recipe_eval.py."""

import json

import pytest

from neobert_jax.runtime.model_card import model_card, write_model_card


def _write(path, name, value):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(value) if not isinstance(value, str) else value)


@pytest.fixture
def run(tmp_path):
    start = tmp_path / "student" / "hf"
    _write(start, "README.md", "---\nlibrary_name: transformers\nbase_model: answerdotai/ModernBERT-base\n---\n# x\n")
    run = tmp_path / "cls"
    _write(run, "run_config.json", {"init_from": str(tmp_path / "student"), "train": {"seq_len": 128,
           "precision": "bf16", "schedule": "linear"}, "data": {"train_files": "train.csv", "eval_files": "dev.csv"},
           "resolved": {"matmul_precision": "default"}})
    _write(run, "run_summary.json", {"step": 30, "batch": "32 examples", "epochs": 3.0, "tokens": 4000,
           "lr_peak": 5e-5, "lr_final": 0.0, "warmup_steps": 3, "train_loss": 0.25,
           "first_eval": {"eval_loss": 0.7, "eval_accuracy": 0.5}, "last_eval": {"eval_loss": 0.3, "eval_accuracy": 0.9},
           "closing_lines": ["accuracy 0.5000 -> 0.9000"], "loss_curve": False})
    _write(run / "hf", "config.json", {"architectures": ["ModernBertForSequenceClassification"], "hidden_size": 32,
           "num_hidden_layers": 2, "vocab_size": 96, "max_position_embeddings": 128, "id2label": {"0": "neg", "1": "pos"}})
    return run


def test_classifier_card(run):
    card = model_card(str(run / "hf"), str(run))
    header = card.split("\n---\n")[0]
    assert "pipeline_tag: text-classification" in header and "base_model: answerdotai/ModernBERT-base" in header
    assert "| training data | `train.csv` |" in card and "| evaluation data | `dev.csv` |" in card
    assert "| steps | 30 optimizer steps of 32 examples (3.00 epochs) |" in card
    assert "| accuracy | 0.5000 | 0.9000 |" in card and "- accuracy 0.5000 -> 0.9000" not in card  # the table says it
    assert "AutoModelForSequenceClassification.from_pretrained(path)" in card and "Labels: `neg`, `pos`." in card
    assert "loss.png" not in card  # the run drew none


def test_sentence_transformers_card_and_no_records(run, tmp_path):
    st = run / "st"
    _write(st, "config.json", {"architectures": ["ModernBertModel"], "hidden_size": 32})
    _write(st, "modules.json", [])
    card = model_card(str(st), str(run))
    assert "library_name: sentence-transformers\npipeline_tag: sentence-similarity" in card
    assert "SentenceTransformer(path)" in card and "# cls" in card  # named after the run, not "st"
    bare = tmp_path / "bare"
    _write(bare, "config.json", {"architectures": ["ModernBertForTokenClassification"]})
    write_model_card(str(bare), None)
    text = (bare / "README.md").read_text()
    assert "pipeline_tag: token-classification" in text and "No training records" in text
    assert not (bare / "README.md.tmp").exists()
