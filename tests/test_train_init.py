"""init_from: a GUIDE-style bare ModernBertModel dir (head newly initialized and listed), a run
dir (parameters of its latest checkpoint), and clear errors when the config disagrees."""

import os
import subprocess
import sys

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
    with pytest.raises(ValueError, match=r"config.model.hidden_size=64 but init_from .* \(set --config.model.hidden_size=\d+\)$"):
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
    from neobert_jax.runtime.resolved import xla_flags

    assert xla_flags("bf16", "--xla_dump_to=/tmp/x") == ("--xla_dump_to=/tmp/x --xla_gpu_enable_triton_gemm=false"
                                                         " --xla_gpu_dot_merger_threshold_mb=0")
    assert xla_flags("bf16", "--xla_gpu_enable_triton_gemm=true") == ("--xla_gpu_enable_triton_gemm=true"
                                                                      " --xla_gpu_dot_merger_threshold_mb=0")
    assert xla_flags("fp32", "") == "" and xla_flags("tf32", "--a=1") == "--a=1"


def test_the_command_line_alone_sets_xla_flags_before_the_backend_starts():
    """set_xla_flags writes the record's value; once JAX's backend runs it leaves them (they would do
    nothing) and says so, and no other module writes XLA_FLAGS."""
    import pathlib
    import re

    from neobert_jax.runtime.cli import set_xla_flags
    from neobert_jax.runtime.resolved import xla_flags

    jax.devices()  # the backend has started in this test process
    late = {}
    assert not set_xla_flags("bf16", late) and late == {}
    assert set_xla_flags("fp32", late) and late == {}  # nothing to add
    root = pathlib.Path(__file__).resolve().parents[1]
    writers = [str(p.relative_to(root)) for folder in ("neobert_jax", "scripts") for p in (root / folder).rglob("*.py")
               if re.search(r"""environ\[["']XLA_FLAGS["']\]\s*=|putenv\(["']XLA_FLAGS""", p.read_text())]
    assert writers == ["neobert_jax/runtime/cli.py"]
    fresh = subprocess.run(  # a process whose backend has not started: the record's value is set
        [sys.executable, "-c", "import os; from neobert_jax.runtime.cli import set_xla_flags; "
         "set_xla_flags('bf16'); print(os.environ['XLA_FLAGS'])"],
        env={**os.environ, "XLA_FLAGS": "--xla_dump_to=/tmp/x"}, capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == xla_flags("bf16", "--xla_dump_to=/tmp/x")
