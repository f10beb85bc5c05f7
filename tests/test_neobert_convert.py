"""NeoBERT HF dirs (config.json + weights, either FFN key layout) read into our model and written back,
and our exports loaded by transformers through the remote code they carry.

The checkpoints are tiny random torch NeoBERTs (test_neobert_parity's reference) saved here.
"""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from test_neobert_parity import numpy_state_dict, padded_batch, release_config, torch_model

from neobert_jax.hf.neobert import load_neobert_dir, save_neobert_dir
from neobert_jax.hf.weights import ConversionError
from neobert_jax.neobert_config import NeoBertConfig


def write_dir(path, config: dict, state_dict: dict, weights: str = "model.safetensors"):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    if weights.endswith(".safetensors"):
        save_file(state_dict, os.path.join(path, weights), metadata={"format": "pt"})
    else:
        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, os.path.join(path, weights))
    return str(path)


@pytest.mark.parametrize("layout,weights", [("w12", "model.safetensors"), ("w1w2", "pytorch_model.bin")])
def test_a_dir_in_either_layout_loads_matches_torch_and_is_written_back_as_read(tmp_path, layout, weights):
    c = release_config(tie_word_embeddings=layout == "w1w2")
    reference = torch_model(c, packed=layout == "w12")
    state_dict = numpy_state_dict(reference)
    model, newly = load_neobert_dir(write_dir(tmp_path / "in", c, state_dict, weights))
    assert newly == []
    ids, mask = padded_batch(c["vocab_size"], 24, [24, 13])
    with torch.no_grad():
        want = reference(torch.tensor(ids, dtype=torch.long), torch.tensor(mask)).numpy()
    diff = np.abs(np.asarray(model(ids, mask)) - want)[mask.astype(bool)]
    assert diff.max() <= 1e-4, diff.max()

    out = str(tmp_path / "out")
    save_neobert_dir(model, out, layout=layout)
    written = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(written) == sorted(state_dict)
    assert all(np.array_equal(written[k], v) for k, v in state_dict.items())
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert (config["model_type"], config["architectures"], config["dim_head"]) == ("neobert", ["NeoBERTLMHead"], 16)
    assert NeoBertConfig.from_hf_dict(config) == model.config
    with pytest.raises(FileExistsError):
        save_neobert_dir(model, out)


def test_a_bare_encoder_gets_a_fresh_decoder_and_a_wrong_shape_names_the_tensor(tmp_path):
    c = release_config()
    state_dict = numpy_state_dict(torch_model(c, packed=True))
    bare = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    model, newly = load_neobert_dir(write_dir(tmp_path / "bare", c, bare))
    assert sorted(newly) == ["decoder.bias", "decoder.weight"]
    assert np.array_equal(np.asarray(model.model.encoder[...]), state_dict["model.encoder.weight"])

    state_dict["model.transformer_encoder.1.wo.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(ConversionError, match=r"transformer_encoder\.1\.wo\.weight has shape \(64, 32\)"):
        load_neobert_dir(write_dir(tmp_path / "bad", c, state_dict))


@pytest.mark.parametrize("tied", [False, True])
def test_an_export_loads_in_transformers_through_its_remote_code(tmp_path, tied):
    from flax import nnx
    from transformers import AutoModel, AutoModelForMaskedLM

    from neobert_jax.model.neobert import NeoBertForMaskedLM

    config = NeoBertConfig(vocab_size=150, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=80, max_length=64, rope_theta=1000.0, tie_word_embeddings=tied)
    model = NeoBertForMaskedLM(config, rngs=nnx.Rngs(3))
    out = str(tmp_path / f"export_{tied}")
    save_neobert_dir(model, out)
    ids, mask = padded_batch(150, 20, [20, 9])
    ours = np.asarray(model(ids, mask))
    hf, info = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    assert type(hf).__name__ == "NeoBERTLMHead" and not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    with torch.no_grad():
        logits = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
        hidden = AutoModel.from_pretrained(out, trust_remote_code=True).eval()(
            torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    keep = mask.astype(bool)
    assert np.abs(logits - ours)[keep].max() <= 1e-4
    assert np.abs(hidden - np.asarray(model.encode(ids, mask)))[keep].max() <= 1e-4


def test_a_sentence_transformers_export_encodes_as_ours(tmp_path, tiny_tokenizer_dir, contrastive_texts):
    from flax import nnx
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from neobert_jax.hf.sentence_transformers import save_sentence_transformers_dir
    from neobert_jax.model.neobert import NeoBertForMaskedLM

    tokenizer_dir = tiny_tokenizer_dir(str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = NeoBertConfig(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=48, max_length=64,
                           pad_token_id=tokenizer.pad_token_id)
    model = NeoBertForMaskedLM(config, rngs=nnx.Rngs(4))
    st_dir = str(tmp_path / "st")
    save_sentence_transformers_dir(model, st_dir, tokenizer_dir=tokenizer_dir, max_seq_length=16)
    theirs = SentenceTransformer(st_dir, device="cpu", trust_remote_code=True).encode(contrastive_texts)

    batch = tokenizer(contrastive_texts, padding=True, truncation=True, max_length=16, return_tensors="np")
    mask = batch["attention_mask"]
    hidden = np.asarray(model.encode(batch["input_ids"].astype(np.int32), mask))
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    ours = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert np.abs(ours - theirs).max() < 1e-4


def test_the_project_loaders_read_neobert_dirs_and_checkpoints(tmp_path):
    import warnings

    from flax import nnx

    import neobert_jax
    from neobert_jax.hf import load_pretrained, save_checkpoint_dir
    from neobert_jax.hf.sentence_transformers import save_sentence_transformers_dir
    from neobert_jax.model.neobert import NeoBertForMaskedLM

    config = NeoBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_length=64)
    model = NeoBertForMaskedLM(config, rngs=nnx.Rngs(6))
    ids, mask = padded_batch(100, 12, [12, 5])
    want = np.asarray(model(ids, mask))
    save_neobert_dir(model, str(tmp_path / "hf"))
    save_checkpoint_dir(model, str(tmp_path / "orbax"))
    for path in ("hf", "orbax"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = neobert_jax.from_pretrained(str(tmp_path / path), dtype="float32")
        assert isinstance(loaded.module, NeoBertForMaskedLM) and loaded.newly_initialized == []
        np.testing.assert_allclose(np.asarray(loaded(ids, mask)), want, atol=1e-6, rtol=0)  # jit vs eager
    save_sentence_transformers_dir(model, str(tmp_path / "st"), tokenizer_dir=None)
    encoder, newly = load_pretrained(str(tmp_path / "st"))
    assert sorted(newly) == ["decoder.bias", "decoder.weight"]
    np.testing.assert_array_equal(np.asarray(encoder.model.encoder[...]), np.asarray(model.model.encoder[...]))
