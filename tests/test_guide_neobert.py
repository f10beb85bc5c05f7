"""GUIDE between NeoBERTs: an exact equivalence at full width, every projected tensor against numpy in the
checkpoint's own layout, the CLI to a dir that transformers loads, and refused inputs.

The teachers are tiny random NeoBERTs with weights of unit-scale variance (default init's 0.02 would let
a wrong projection hide under the residual stream).
"""

import os

import numpy as np
import pytest
from flax import nnx
from test_guide import reference_pca
from test_neobert_parity import padded_batch

import neobert_jax
from convert.guide_init import main
from neobert_jax.config import ModernBertConfig
from neobert_jax.guide import GuideError, guide_init
from neobert_jax.hf.neobert import load_neobert_state_dict, neobert_state_dict_from_model, save_neobert_dir
from neobert_jax.model.neobert import NeoBertForMaskedLM
from neobert_jax.neobert_config import NeoBertConfig

TEACHER = dict(vocab_size=160, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
               max_length=64, rope_theta=1000.0)  # head dim 16, SwiGLU width 64
STUDENT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48)  # SwiGLU width 32


def teacher_model(seed=0, norms="random", centred=False, **overrides) -> NeoBertForMaskedLM:
    """Random teacher: matrices N(0, 1/fan_in), embedding N(0, 1), norm weights ones or random, random bias."""
    model = NeoBertForMaskedLM(NeoBertConfig(**{**TEACHER, **overrides}), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    sd = {}
    for key, value in neobert_state_dict_from_model(model).items():
        if key.endswith("norm.weight"):
            value = np.ones_like(value) if norms == "ones" else rng.uniform(0.5, 1.5, value.shape)
        elif value.ndim == 2:
            value = rng.normal(0, 1 if key == "model.encoder.weight" else value.shape[1] ** -0.5, value.shape)
        else:
            value = rng.normal(0, 0.5, value.shape)
        sd[key] = value.astype(np.float32)
    if centred:
        sd["model.encoder.weight"] -= sd["model.encoder.weight"].mean(0)
    if model.config.tie_word_embeddings:
        sd["decoder.weight"] = sd["model.encoder.weight"]
    load_neobert_state_dict(model, sd)
    return model


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("norms", ["ones", "random"])
def test_at_full_width_every_layer_is_the_teachers_in_the_rotated_basis(tied, norms):
    """Student as wide as the teacher, every head, neuron and layer kept: M is orthogonal and, with a centred
    embedding, the student's hidden states are exactly the teacher's times M. That needs RMSNorm to commute
    with M, which holds only for uniform norm weights (the student keeps ones), so random ones must break it."""
    teacher = teacher_model(seed=1, norms=norms, centred=True, tie_word_embeddings=tied)
    sd = neobert_state_dict_from_model(teacher)
    student, explained, _ = guide_init(sd, teacher.config, teacher.config, layer_map={0: 0, 1: 1},
                                       selection="uniform")
    assert abs(explained - 1) < 1e-9
    embedding = sd["model.encoder.weight"].astype(np.float64)
    m, *_ = np.linalg.lstsq(embedding, np.asarray(student.model.encoder[...], np.float64), rcond=None)
    np.testing.assert_allclose(m.T @ m, np.eye(64), atol=1e-5)
    ids, mask = padded_batch(160, 12, [12, 7])
    keep = mask.astype(bool)
    want = np.asarray(teacher.encode(ids, mask)) @ m
    diff = np.abs(np.asarray(student.encode(ids, mask)) - want)[keep].max()
    if norms == "random":
        assert diff > 1e-2, diff
        return
    assert diff < 1e-4, (diff, np.abs(want).max())
    if tied:  # the decoder is the rotated embedding, its bias the default zeros
        logits = np.asarray(teacher(ids, mask)) - np.asarray(teacher.decoder.bias[...])
        assert np.abs(np.asarray(student(ids, mask)) - logits)[keep].max() < 1e-3


@pytest.mark.parametrize("selection,heads", [("prefix", [0, 1]), ("uniform", [0, 3])])
def test_kept_heads_and_neurons_are_the_teachers_projected_in_the_checkpoint_layout(selection, heads):
    """Checked on the checkpoint's per-head [q_h; k_h; v_h] rows, not our [q; k; v] layout, with a bare
    fork-layout (w1, w2) teacher for one case; the rest keeps a fresh student's init."""
    teacher = teacher_model(seed=2, tie_word_embeddings=selection == "uniform")
    sd = neobert_state_dict_from_model(teacher, layout="w1w2" if selection == "uniform" else "w12")
    if selection == "uniform":
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    pre = "" if selection == "uniform" else "model."
    student_config = teacher.config.replace(**STUDENT)
    model, explained, guided = guide_init(sd, teacher.config, student_config, layer_map={0: 0, 1: 2},
                                          selection=selection, seed=7)
    out = neobert_state_dict_from_model(model)

    comps, scores, ratio = reference_pca(sd[pre + "encoder.weight"], 32)
    m = comps.T
    assert abs(explained - ratio) < 1e-9
    np.testing.assert_allclose(out["model.encoder.weight"], scores, atol=1e-5)
    neurons = list(range(32)) if selection == "prefix" else [int(round(i * 63 / 31)) for i in range(32)]
    cols = [h * 16 + j for h in heads for j in range(16)]
    for t, s in ((0, 0), (1, 2)):
        teacher_pre, student_pre = f"{pre}transformer_encoder.{t}.", f"model.transformer_encoder.{s}."
        per_head = sd[teacher_pre + "qkv.weight"].reshape(4, 48, 64)  # head h: rows [q_h; k_h; v_h]
        np.testing.assert_allclose(out[student_pre + "qkv.weight"], np.concatenate([per_head[h] @ m for h in heads]),
                                   atol=1e-5)
        np.testing.assert_allclose(out[student_pre + "wo.weight"], m.T @ sd[teacher_pre + "wo.weight"][:, cols],
                                   atol=1e-5)
        if selection == "uniform":
            w1, w2 = sd[teacher_pre + "ffn.w1.weight"], sd[teacher_pre + "ffn.w2.weight"]
        else:
            w1, w2 = np.split(sd[teacher_pre + "ffn.w12.weight"], 2)
        np.testing.assert_allclose(out[student_pre + "ffn.w12.weight"],
                                   np.concatenate([w1[neurons] @ m, w2[neurons] @ m]), atol=1e-5)
        np.testing.assert_allclose(out[student_pre + "ffn.w3.weight"], m.T @ sd[teacher_pre + "ffn.w3.weight"][:, neurons],
                                   atol=1e-5)
    assert len(guided) == 9 and "model.transformer_encoder.1.qkv.weight" not in guided
    fresh = neobert_state_dict_from_model(NeoBertForMaskedLM(student_config, rngs=nnx.Rngs(7)))
    untouched = [k for k in fresh if k not in guided and k != "decoder.weight"]
    assert "model.transformer_encoder.0.attention_norm.weight" in untouched and "decoder.bias" in untouched
    assert all(np.array_equal(out[k], fresh[k]) for k in untouched)
    if student_config.tie_word_embeddings:
        assert np.array_equal(out["decoder.weight"], out["model.encoder.weight"])
    else:
        assert np.array_equal(out["decoder.weight"], fresh["decoder.weight"])


def test_cli_writes_a_neobert_student_that_transformers_loads_with_our_logits(tmp_path, capsys):
    import torch
    from transformers import AutoModelForMaskedLM

    teacher = teacher_model(seed=3)
    save_neobert_dir(teacher, str(tmp_path / "teacher"))
    out = str(tmp_path / "student")
    assert main(["--teacher", str(tmp_path / "teacher"), "--out", out, "--hidden-size", "32", "--num-heads", "2",
                 "--intermediate-size", "48", "--num-layers", "3", "--layers", "0:0,1:2",
                 "--max-position-embeddings", "48", "--selection", "uniform"]) == 0
    assert "default NeoBERT init" in capsys.readouterr().out
    ours = neobert_jax.from_pretrained(out)
    assert type(ours.module).__name__ == "NeoBertForMaskedLM"
    assert (ours.config.hidden_size, ours.config.num_hidden_layers, ours.config.max_length) == (32, 3, 48)
    api, _, _ = guide_init(neobert_state_dict_from_model(teacher), teacher.config,
                           teacher.config.replace(**STUDENT, max_length=48), layer_map={0: 0, 1: 2},
                           selection="uniform")
    written, expected = neobert_state_dict_from_model(ours.module), neobert_state_dict_from_model(api)
    assert all(np.array_equal(written[k], expected[k]) for k in expected)

    ids, mask = padded_batch(160, 16, [16, 9])
    hf = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    keep = mask.astype(bool)
    assert np.abs(logits - np.asarray(ours.module(ids, mask)))[keep].max() <= 1e-4


@pytest.mark.parametrize("flags,message", [
    (["--hidden-size", "128", "--num-heads", "8"], "wider than the teacher"),
    (["--hidden-size", "32", "--num-heads", "4"], "head_dim 8"),
    (["--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "120"], "FFN 80 wide"),
    (["--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "48", "--layers", "2:0"], "teacher layer 2"),
    (["--hidden-size", "32", "--num-heads", "2", "--intermediate-size", "48", "--weights-of", "modernbert"],
     "no tensor model.encoder.weight"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    from safetensors.numpy import save_file

    teacher_dir = str(tmp_path / "teacher")
    save_neobert_dir(teacher_model(seed=4), teacher_dir)
    if "--weights-of" in flags:  # a NeoBERT config.json over a ModernBERT's weights
        flags = flags[:-2]
        save_file({"model.embeddings.tok_embeddings.weight": np.zeros((160, 64), np.float32)},
                  os.path.join(teacher_dir, "model.safetensors"), metadata={"format": "pt"})
    before = sorted(os.listdir(tmp_path))
    assert main(["--teacher", teacher_dir, "--out", str(tmp_path / "student"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_teacher_and_student_of_different_architectures_are_refused():
    teacher = teacher_model(seed=5)
    student = ModernBertConfig(vocab_size=160, hidden_size=32, num_attention_heads=2, intermediate_size=48)
    with pytest.raises(GuideError, match="teacher is a NeoBert and the student a ModernBert"):
        guide_init(neobert_state_dict_from_model(teacher), teacher.config, student)
