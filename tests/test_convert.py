"""HF <-> project checkpoint conversion: bit-exact round trip, loading everywhere, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from transformers import AutoModelForMaskedLM, ModernBertModel

import neobert_jax
from neobert_jax.config import ModernBertConfig
from neobert_jax.hf.convert import flax_to_torch, main, torch_to_flax
from neobert_jax.model import ModernBertForMaskedLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_model):
    path = tmp_path_factory.mktemp("hf")
    hf_model(seed=3).save_pretrained(path)
    (path / "tokenizer.json").write_text('{"marker": true}')
    return str(path)


def test_cli_round_trip_is_bit_exact_and_loads_in_transformers(hf_dir, tmp_path):
    ckpt, back = tmp_path / "flax", tmp_path / "back"
    for script, src, dst in (("torch_to_flax.py", hf_dir, ckpt), ("flax_to_torch.py", ckpt, back)):
        subprocess.run([sys.executable, os.path.join(REPO, "convert", script), str(src), str(dst)], check=True,
                       cwd=REPO, capture_output=True)
    original = AutoModelForMaskedLM.from_pretrained(hf_dir).state_dict()
    with safe_open(str(back / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        written = {k: f.get_tensor(k) for k in f.keys()}
    assert "decoder.weight" not in written  # tied: not duplicated
    assert set(written) == set(original) - {"decoder.weight"}
    for name, tensor in written.items():
        assert torch.equal(tensor, original[name]), name
    assert (back / "tokenizer.json").read_text() == '{"marker": true}'
    reloaded = AutoModelForMaskedLM.from_pretrained(str(back))
    assert torch.equal(reloaded.state_dict()["decoder.weight"], original["model.embeddings.tok_embeddings.weight"])

    ids = np.random.RandomState(0).randint(5, 300, (2, 40))
    ours_hf, ours_ckpt = neobert_jax.from_pretrained(hf_dir), neobert_jax.from_pretrained(str(ckpt))
    np.testing.assert_array_equal(np.asarray(ours_hf(ids)), np.asarray(ours_ckpt(ids)))
    with torch.no_grad():
        ref = reloaded(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(ours_ckpt(ids)) - ref).max() <= 1e-4


def test_bare_model_and_bin_weights_report_new_head(tmp_path, capsys, hf_config):
    torch.manual_seed(0)
    bare = ModernBertModel(hf_config())
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps(bare.config.to_dict()))
    torch.save(bare.state_dict(), tmp_path / "bare" / "pytorch_model.bin")  # as transformers 4.x wrote it
    assert main(torch_to_flax, "", [str(tmp_path / "bare"), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "newly initialized" in printed and "head.dense.weight" in printed and "decoder.bias" in printed
    loaded = neobert_jax.from_pretrained(str(tmp_path / "out")).module
    np.testing.assert_array_equal(np.asarray(loaded.model.layers[2].mlp.Wi.kernel[...]),
                                  bare.state_dict()["layers.2.mlp.Wi.weight"].numpy().T)


def test_init_statistics_match_transformers(hf_model):
    hf = hf_model(vocab_size=4000, hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4)
    ours = ModernBertForMaskedLM(ModernBertConfig.from_hf_dict(hf.config.to_dict()), rngs=nnx.Rngs(0))
    from neobert_jax.hf import state_dict_from_model

    mine = state_dict_from_model(ours)
    for name, ref in hf.state_dict().items():
        if name == "decoder.weight":
            continue
        ref = ref.numpy()
        assert mine[name].shape == ref.shape
        if ref.std() == 0:
            np.testing.assert_array_equal(mine[name], ref)  # LayerNorm ones, zero biases
        else:
            assert abs(mine[name].std() / ref.std() - 1) < 0.05, name
            assert abs(np.abs(mine[name]).max() / np.abs(ref).max() - 1) < 0.05, name  # same ±2σ cut


def _error(convert, src, out, capsys, *extra):
    capsys.readouterr()
    assert main(convert, "", [str(src), str(out), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_fail_with_one_line_and_write_nothing(hf_dir, tmp_path, capsys, hf_model, hf_config):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    assert "'bert'" in _error(torch_to_flax, bert, tmp_path / "o1", capsys)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(hf_config().to_dict()))
    assert "no weights file" in _error(torch_to_flax, no_weights, tmp_path / "o2", capsys)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps(hf_config().to_dict()))
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    assert "model.safetensors" in _error(torch_to_flax, corrupt, tmp_path / "o3", capsys)

    wrong = tmp_path / "wrong_shape"
    hf_model(seed=1).save_pretrained(wrong)
    (wrong / "config.json").write_text(json.dumps(hf_config(intermediate_size=128).to_dict()))
    err = _error(torch_to_flax, wrong, tmp_path / "o4", capsys)
    assert "model.layers.0.mlp.Wi.weight" in err and "(192, 64)" in err and "(256, 64)" in err

    for i in range(1, 5):
        assert not os.path.exists(tmp_path / f"o{i}")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert "--overwrite" in _error(torch_to_flax, hf_dir, busy, capsys)
    assert os.listdir(busy) == ["keep.txt"]
    assert main(torch_to_flax, "", [hf_dir, str(busy), "--overwrite"]) == 0
    assert sorted(os.listdir(busy)) == ["config.json", "params", "tokenizer.json"]
    assert "no such file" in _error(flax_to_torch, tmp_path / "missing", tmp_path / "o5", capsys)
