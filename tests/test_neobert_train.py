"""NeoBERT through the training CLIs (configs/neobert.py shrunk): pretraining from random init
exports an HF dir that transformers runs (trust_remote_code) to the checkpoint's logits, a rerun
resumes from the checkpoint, contrastive fine-tuning starts from that export and its
sentence-transformers folder embeds as our embedder does; bad architecture settings fail with one
line naming the key. Classification from NeoBERT is tests/test_neobert_classify.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from neobert_jax.mlm.config import validate
from neobert_jax.runtime.config import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
    "model.intermediate_size": 64, "model.max_position_embeddings": 64, "data.tokenizer_vocab_size": 300,
    "data.eval_samples": 20, "train.seq_len": 32, "train.batch_size": 4, "train.max_steps": 4,
    "train.learning_rate": 3e-3, "train.save_every": 2, "train.log_every": 1, "train.eval_batches": 1,
    "train.eval_every": 0, "compilation_cache_dir": "",
}


def _cli(script: str, config: str, overrides: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, os.path.join(REPO, "scripts", script), "--config", os.path.join(REPO, "configs", config),
               *(f"--config.{k}={v}" for k, v in overrides.items())]
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)


def _pretrain(output_dir, corpus, **overrides) -> subprocess.CompletedProcess:
    return _cli("pretrain.py", "neobert.py", {**TINY, "output_dir": output_dir, "data.train_files": corpus,
                                              **overrides})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, write_corpus):
    root = tmp_path_factory.mktemp("neobert")
    corpus = write_corpus(root / "corpus.txt", lines=300)
    out = _pretrain(root / "run", corpus)
    assert out.returncode == 0, out.stderr[-3000:]
    return root, corpus, out.stdout + out.stderr


def _config(**model):
    config = load_config_file(os.path.join(REPO, "configs", "neobert.py"))
    for key, value in model.items():
        config.model[key] = value
    return config


def test_neobert_config_is_the_frameworks_recipe():
    config = _config()
    validate(config)
    assert config.model.architecture == "neobert" and config.data.mask_all and config.data.mlm_probability == 0.2
    assert (config.train.adam_b2, config.train.weight_decay, config.train.learning_rate) == (0.95, 0.1, 1e-4)


def test_pretraining_exports_a_neobert_that_transformers_runs_to_our_logits(pretrained, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from neobert_jax.hf import load_pretrained
    from neobert_jax.hf.convert import flax_to_torch
    from neobert_jax.model import NeoBertForMaskedLM

    root, _, _ = pretrained
    hf_dir = root / "run" / "hf"
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "neobert" and config["num_hidden_layers"] == 2
    card = (hf_dir / "README.md").read_text()  # the tokenizer too: AutoTokenizer reads config.json's auto_map
    assert "AutoTokenizer.from_pretrained(path, trust_remote_code=True)" in card
    assert "AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True)" in card
    ours, _ = load_pretrained(str(root / "run"))  # the run's last checkpoint, not the export
    assert isinstance(ours, NeoBertForMaskedLM)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=True)
    batch = tokenizer(["the model reads a corpus", "which tokens follow which others in every sentence"],
                      padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    theirs_model = AutoModelForMaskedLM.from_pretrained(str(hf_dir), trust_remote_code=True).eval()
    with torch.no_grad():
        theirs = theirs_model(torch.tensor(ids).long(), attention_mask=torch.tensor(mask)).logits.numpy()
    mine = np.asarray(ours(ids, mask))
    real = mask.astype(bool)
    assert np.abs(mine - theirs)[real].max() < 1e-4
    assert np.abs(theirs[real]).max() > 1e-2  # a trained head, not zeros
    flax_to_torch(str(root / "run"), str(tmp_path / "converted"))  # the converter writes the same NeoBERT export
    assert (tmp_path / "converted" / "model.safetensors").read_bytes() == (hf_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "converted" / "modeling_neobert.py").is_file()


def test_a_rerun_resumes_from_the_checkpoint_and_continues(pretrained):
    root, corpus, _ = pretrained
    assert sorted(os.listdir(root / "run" / "checkpoints")) == ["2", "4"]
    out = _pretrain(root / "run", corpus, **{"train.max_steps": 6})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {root / 'run' / 'checkpoints'}/4" in out.stdout + out.stderr
    steps = [json.loads(line).get("step") for line in open(root / "run" / "metrics.jsonl")]
    assert 5 in steps and 6 in steps and steps.count(3) == 1  # steps 1-4 not run again
    assert "6" in os.listdir(root / "run" / "checkpoints")


def test_contrastive_from_the_neobert_export_gives_a_sentence_transformers_folder(pretrained, tmp_path):
    from sentence_transformers import SentenceTransformer

    from neobert_jax.contrastive.embedder import load_encoder

    root, corpus, _ = pretrained
    lines = [line.strip() for line in open(corpus) if line.strip()]
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for line in lines[:64]:
            f.write(json.dumps({"anchor": line, "positive": " ".join(reversed(line.split()))}) + "\n")
    out = _cli("contrastive.py", "contrastive.py", {
        "output_dir": tmp_path / "embedder", "init_from": root / "run" / "hf", "data.train_files": pairs,
        "train.batch_size": 8, "train.seq_len": 32, "train.max_steps": 3, "train.save_every": 3,
        "train.log_every": 1, "compilation_cache_dir": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    st_dir = tmp_path / "embedder" / "st"
    assert json.loads((st_dir / "config.json").read_text())["model_type"] == "neobert"
    texts = lines[:6]
    theirs = SentenceTransformer(str(st_dir), device="cpu", trust_remote_code=True).encode(texts)
    embed, _ = load_encoder(str(st_dir), pooling=None, seq_len=None, batch_size=4)
    ours = embed(texts)
    assert np.abs(ours - theirs).max() < 1e-4
    before, _ = load_encoder(str(root / "run" / "hf"), pooling="mean", seq_len=32, batch_size=4)
    assert np.abs(before(texts) - ours).max() > 1e-3  # the run trained the encoder


@pytest.mark.parametrize("model,key", [
    ({"architecture": "roberta"}, "config.model.architecture: 'roberta' is not one of ('modernbert', 'neobert')"),
    ({"local_attention": 128}, "config.model.local_attention: neobert has no such setting"),
    ({"attention_dropout": 0.1}, "config.model.mlp_dropout=0.0 but model.attention_dropout=0.1"),
])
def test_bad_architecture_settings_fail_naming_the_key(model, key):
    with pytest.raises(ValueError) as error:
        validate(_config(**model))
    assert str(error.value).startswith(key) and "\n" not in str(error.value)


def test_the_cli_refuses_an_unknown_architecture_in_one_line(tmp_path):
    out = _cli("pretrain.py", "neobert.py", {"output_dir": tmp_path / "run", "model.architecture": "bert"})
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == (
        "error: config.model.architecture: 'bert' is not one of ('modernbert', 'neobert')")
    assert not (tmp_path / "run").exists()


def test_init_from_a_neobert_dir_continues_its_weights_and_must_match_the_architecture(pretrained):
    from flax import nnx

    from neobert_jax.hf import load_pretrained
    from neobert_jax.runtime.model_init import build_model

    root, _, _ = pretrained
    config = _config(**{k.split(".")[1]: v for k, v in TINY.items() if k.startswith("model.")}, mlp_dropout=0.1,
                     attention_dropout=0.1)
    config.init_from = str(root / "run" / "hf")
    said = []
    model, new = build_model(config, 300, {}, log=said.append)
    assert new == [] and model.config.dropout == 0.1 and "model.attention_dropout 0.0 -> 0.1" in said[0]
    exported, _ = load_pretrained(config.init_from)
    ours, theirs = (dict(nnx.to_flat_state(nnx.state(m, nnx.Param))) for m in (model, exported))
    assert ours.keys() == theirs.keys()
    for path, var in ours.items():
        np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(theirs[path][...]))
    config.model.architecture = "modernbert"
    with pytest.raises(ValueError, match=r"^config.model.architecture='modernbert' but init_from .* is a neobert"):
        build_model(config, 300, {}, log=lambda _: None)
