"""GUIDE initialization: every projected tensor equals an independent numpy computation."""

import numpy as np
import pytest
from transformers import ModernBertModel

import neobert_jax
from neobert_jax.config import ModernBertConfig
from neobert_jax.hf import state_dict_from_model
from neobert_jax.guide import GuideError, guide_init
from convert.guide_init import main

TEACHER = dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3)
STUDENT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=48, num_hidden_layers=4)


def reference_pca(emb, k):
    """Eigen-decomposition of the covariance: a different route to the same basis."""
    centred = emb.astype(np.float64) - emb.mean(0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(values)[::-1][:k]
    comps = vectors[:, order].T
    for row in comps:
        row *= np.sign(row[np.argmax(np.abs(row))])
    return comps, centred @ comps.T, values[order].sum() / values.sum()


@pytest.mark.parametrize("selection,heads", [("prefix", [0, 1]), ("uniform", [0, 3])])
def test_projected_tensors_match_numpy(selection, heads, hf_model):
    teacher_hf = hf_model(seed=5, **TEACHER)
    teacher = ModernBertConfig.from_hf_dict(teacher_hf.config.to_dict())
    student = teacher.replace(**STUDENT)
    sd = {k: v.numpy() for k, v in teacher_hf.state_dict().items()}
    model, explained, guided = guide_init(sd, teacher, student, layer_map={0: 0, 2: 3}, selection=selection)
    out = state_dict_from_model(model)

    comps, scores, ratio = reference_pca(sd["model.embeddings.tok_embeddings.weight"], 32)
    m = comps.T
    assert abs(explained - ratio) < 1e-9
    np.testing.assert_allclose(out["model.embeddings.tok_embeddings.weight"], scores, atol=1e-5)
    neurons = list(range(48)) if selection == "prefix" else [int(round(i * 95 / 47)) for i in range(48)]
    for t, s in ((0, 0), (2, 3)):
        wqkv = sd[f"model.layers.{t}.attn.Wqkv.weight"]
        parts = []
        for part in range(3):  # Q, K, V blocks of 64 rows, 16 per head
            for h in heads:
                rows = wqkv[part * 64 + h * 16: part * 64 + (h + 1) * 16]
                parts.append(rows @ m)
        np.testing.assert_allclose(out[f"model.layers.{s}.attn.Wqkv.weight"], np.concatenate(parts), atol=1e-5)
        wo = sd[f"model.layers.{t}.attn.Wo.weight"]
        cols = np.concatenate([wo[:, h * 16:(h + 1) * 16] for h in heads], axis=1)
        np.testing.assert_allclose(out[f"model.layers.{s}.attn.Wo.weight"], m.T @ cols, atol=1e-5)
        wi = sd[f"model.layers.{t}.mlp.Wi.weight"]
        expect_wi = np.concatenate([wi[n] @ m for n in neurons] + [wi[96 + n] @ m for n in neurons]).reshape(96, 32)
        np.testing.assert_allclose(out[f"model.layers.{s}.mlp.Wi.weight"], expect_wi, atol=1e-5)
        mlp_wo = sd[f"model.layers.{t}.mlp.Wo.weight"]
        np.testing.assert_allclose(out[f"model.layers.{s}.mlp.Wo.weight"], m.T @ mlp_wo[:, neurons], atol=1e-5)
    assert "model.layers.1.attn.Wqkv.weight" not in guided and len(guided) == 9
    # Reconstruction error of the embeddings is exactly the unexplained variance.
    emb = sd["model.embeddings.tok_embeddings.weight"].astype(np.float64)
    rebuilt = out["model.embeddings.tok_embeddings.weight"] @ comps + emb.mean(0)
    residual = np.square(emb - rebuilt).sum() / np.square(emb - emb.mean(0)).sum()
    assert abs((1 - residual) - explained) < 1e-5


def test_cli_from_bare_teacher_writes_loadable_student(tmp_path, capsys, hf_config):
    import torch

    torch.manual_seed(0)
    ModernBertModel(hf_config(**TEACHER)).save_pretrained(tmp_path / "teacher")
    args = ["--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "student"), "--hidden-size", "32",
            "--num-heads", "2", "--intermediate-size", "48", "--num-layers", "4", "--checkpoint", str(tmp_path / "ck")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "explained variance" in printed and "model.layers.0.mlp.Wi.weight" in printed
    a = neobert_jax.from_pretrained(str(tmp_path / "student"))
    b = neobert_jax.from_pretrained(str(tmp_path / "ck"))
    assert a.config.hidden_size == 32 and a.config.num_hidden_layers == 4
    ids = np.arange(5, 45)[None]
    np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))
    # Deterministic: a second run writes identical weights.
    assert main(args[:3] + [str(tmp_path / "again")] + args[4:12]) == 0
    sa = state_dict_from_model(a.module)
    sb = state_dict_from_model(neobert_jax.from_pretrained(str(tmp_path / "again")).module)
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    # An existing --checkpoint is refused before --out is written.
    capsys.readouterr()
    assert main(args[:3] + [str(tmp_path / "fresh")] + args[4:]) == 1
    assert "ck: exists and is not empty" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("change,message", [
    (dict(hidden_size=128, num_attention_heads=8), "wider than the teacher"),
    (dict(hidden_size=40, num_attention_heads=2), "head_dim"),
    (dict(vocab_size=512), "vocab_size"),
    (dict(intermediate_size=200), "intermediate_size"),
])
def test_bad_student_shapes_are_refused(change, message, hf_model):
    teacher_hf = hf_model(seed=5, **TEACHER)
    teacher = ModernBertConfig.from_hf_dict(teacher_hf.config.to_dict())
    sd = {k: v.numpy() for k, v in teacher_hf.state_dict().items()}
    with pytest.raises(GuideError, match=message):
        guide_init(sd, teacher, teacher.replace(**{**STUDENT, **change}))
