"""The scripts that read a model dir's config work for a NeoBERT dir as for a ModernBERT one:
random_init.py writes a random model of the source's family, contrastive_preprocess.py reads its width."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from test_contrastive_data import load_script, write_jsonl

from neobert_jax.data import load_tokenizer
from neobert_jax.hf import load_pretrained, save_neobert_dir
from neobert_jax.model import ModernBertForMaskedLM, NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig


@pytest.fixture(scope="module")
def neobert_dir(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("neobert")
    tokenizer_dir = tiny_tokenizer_dir(str(root))
    config = NeoBertConfig(vocab_size=-(-len(load_tokenizer(tokenizer_dir)) // 64) * 64, hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, max_length=64,
                           pad_token_id=load_tokenizer(tokenizer_dir).pad_token_id)
    out = str(root / "hf")
    save_neobert_dir(NeoBertForMaskedLM(config, rngs=nnx.Rngs(0)), out, tokenizer_dir=tokenizer_dir)
    return out


def test_random_init_keeps_the_source_family_and_shape(tmp_path, neobert_dir, tiny_tokenizer_dir, tiny_hf_dir,
                                                       capsys):
    random_init = load_script("random_init").main
    out = str(tmp_path / "random")
    random_init([neobert_dir, out, "--seed", "1"])
    assert "random-init neobert" in capsys.readouterr().out
    source, _ = load_pretrained(neobert_dir)
    model, newly_initialized = load_pretrained(out)
    assert isinstance(model, NeoBertForMaskedLM) and not newly_initialized
    assert model.config == source.config
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "neobert"
    assert os.path.isfile(os.path.join(out, "modeling_neobert.py"))  # transformers loads it as the release
    assert open(os.path.join(out, "tokenizer.json")).read() == open(os.path.join(neobert_dir, "tokenizer.json")).read()
    ours, theirs = nnx.state(model, nnx.Param), nnx.state(source, nnx.Param)
    assert not np.allclose(ours["model"]["encoder"][...], theirs["model"]["encoder"][...])

    modernbert = tiny_hf_dir(str(tmp_path), tiny_tokenizer_dir(str(tmp_path)))
    random_init([modernbert, str(tmp_path / "random-modernbert")])
    assert isinstance(load_pretrained(str(tmp_path / "random-modernbert"))[0], ModernBertForMaskedLM)
    with pytest.raises(SystemExit, match="error: source: .*no config.json"):
        random_init([str(tmp_path), str(tmp_path / "never")])
    with pytest.raises(SystemExit, match="error: out_dir: .*pass --overwrite"):
        random_init([neobert_dir, out])


def test_contrastive_preprocess_takes_a_neobert_model(tmp_path, neobert_dir, contrastive_texts, capsys):
    preprocess = load_script("contrastive_preprocess").main
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": a, "positive": b}
                                                   for a, b in zip(contrastive_texts, contrastive_texts[1:])])
    preprocess(["--train-files", pairs, "--model", neobert_dir, "--output", str(tmp_path / "pairs")])
    assert "8 examples" in capsys.readouterr().out
    vectors = write_jsonl(tmp_path / "mse.jsonl", [{"text": t, "label": [0.5] * 32} for t in contrastive_texts])
    preprocess(["--train-files", vectors, "--model", neobert_dir, "--output", str(tmp_path / "mse"), "--loss", "mse"])
    short = write_jsonl(tmp_path / "short.jsonl", [{"text": "a", "label": [0.5] * 31}])
    with pytest.raises(SystemExit, match="31 numbers, but the model's"):  # the NeoBERT's width, 32, was read
        preprocess(["--train-files", short, "--model", neobert_dir, "--output", str(tmp_path / "x"), "--loss", "mse"])
    with pytest.raises(SystemExit, match="error: --model: .*no config.json"):
        preprocess(["--train-files", pairs, "--model", str(tmp_path / "pairs"), "--output", str(tmp_path / "y"),
                    "--tokenizer", neobert_dir])
