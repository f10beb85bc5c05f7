"""init_from: a GUIDE-style bare ModernBertModel dir (head newly initialized and listed), a run
dir (parameters of its latest checkpoint), and clear errors when the config disagrees."""

import jax
import numpy as np
import pytest
import torch
from transformers import ModernBertModel

from neobert_jax.hf import save_checkpoint_dir
from neobert_jax.mlm.config import default_config
from neobert_jax.runtime.model_init import build_model
from neobert_jax.runtime.state import ModelParts

ARCH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def config_for(init_from: str, **model):
    cfg = default_config()
    cfg.init_from = init_from
    for key, value in {**ARCH, **model}.items():
        cfg.model[key] = value
    return cfg


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory, hf_config):
    """What the users' GUIDE script saves: a bare backbone, no MLM head."""
    path = tmp_path_factory.mktemp("guide")
    torch.manual_seed(0)
    backbone = ModernBertModel(hf_config(vocab_size=128, **ARCH))
    backbone.save_pretrained(path)
    return path, {k: v.detach().numpy() for k, v in backbone.state_dict().items()}


def test_guide_backbone_loads_and_head_is_reported_new(guide_dir, hf_special_ids):
    path, backbone = guide_dir
    messages = []
    model, new = build_model(config_for(str(path), local_attention=16), 100, hf_special_ids, log=messages.append)
    assert sorted(new) == ["decoder.bias", "head.dense.weight", "head.norm.weight"]
    assert len(messages) == 1 and "newly initialized" in messages[0] and "head.dense.weight" in messages[0]
    embedding = backbone["embeddings.tok_embeddings.weight"]
    np.testing.assert_array_equal(model.model.embeddings.tok_embeddings[...], embedding)
    np.testing.assert_array_equal(model.model.layers[1].mlp.Wi.kernel[...], backbone["layers.1.mlp.Wi.weight"].T)


def test_project_checkpoint_loads_parameters_only(guide_dir, tmp_path, hf_special_ids):
    path, _ = guide_dir
    source, _ = build_model(config_for(str(path)), 100, hf_special_ids, log=lambda _: None)
    save_checkpoint_dir(source, str(tmp_path / "ckpt"))
    model, new = build_model(config_for(str(tmp_path / "ckpt")), 100, hf_special_ids, log=lambda _: None)
    assert new == []
    _, expected = ModelParts.split(source)
    _, loaded = ModelParts.split(model)
    jax.tree.map(np.testing.assert_array_equal, expected, loaded)


def test_mismatches_are_named(guide_dir, hf_special_ids):
    path, _ = guide_dir
    with pytest.raises(ValueError, match="config.model.hidden_size=64 but init_from"):
        build_model(config_for(str(path), hidden_size=64), 100, hf_special_ids)
    with pytest.raises(ValueError, match="vocab_size 128, smaller than the tokenizer's 500"):
        build_model(config_for(str(path)), 500, hf_special_ids)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model(config_for(str(path) + "-missing"), 100, hf_special_ids)


def test_fresh_model_vocab_is_rounded_to_64(hf_special_ids):
    model, new = build_model(config_for(""), 1000, hf_special_ids)
    assert model.config.vocab_size == 1024 and new == []
    assert model.config.pad_token_id == hf_special_ids["pad_token_id"]


def test_xla_flags_follow_precision_and_never_override_the_user():
    from neobert_jax.runtime.model_init import apply_xla_flags

    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    apply_xla_flags("bf16", env)
    assert env["XLA_FLAGS"] == ("--xla_dump_to=/tmp/x --xla_gpu_enable_triton_gemm=false"
                                " --xla_gpu_dot_merger_threshold_mb=0")
    user = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}
    apply_xla_flags("bf16", user)
    assert user["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true --xla_gpu_dot_merger_threshold_mb=0"
    fp32 = {}
    apply_xla_flags("fp32", fp32)
    assert fp32 == {}
