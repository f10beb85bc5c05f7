"""The shared held-out MLM evaluator (neobert_jax/hf/mlm_eval.py): masking, determinism, batching, the loss."""

import numpy as np
import pytest
import torch

from neobert_jax.data.tokenizer import save_tokenizer, train_tokenizer
from neobert_jax.hf.mlm_eval import IGNORE_INDEX, heldout_mlm_loss, mlm_loss, prepare_heldout, pseudo_perplexity

WORDS = "masked tokens are predicted from the words around them in every held out paragraph".split()


@pytest.fixture(scope="module")
def paragraphs():
    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 25))) for _ in range(300)]


@pytest.fixture(scope="module")
def tokenizer(paragraphs, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(paragraphs) + "\n")
    return train_tokenizer([str(path)], vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer, hf_model):
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (1, 2, 3)  # hf_model's ids
    return hf_model(seed=0, vocab_size=320, num_hidden_layers=2)


def test_masking_counts_and_proportions(tokenizer, paragraphs):
    heldout = prepare_heldout(tokenizer, paragraphs)
    encoded = tokenizer.to_transformers()(paragraphs, truncation=True, max_length=512, return_special_tokens_mask=True)
    assert heldout.paragraphs == len(paragraphs)
    kinds = np.zeros(3)  # [MASK], random id, unchanged
    for ids, special, masked, labels in zip(encoded["input_ids"], encoded["special_tokens_mask"],
                                            heldout.input_ids, heldout.labels):
        ids, special = np.asarray(ids), np.asarray(special, bool)
        picked = labels != IGNORE_INDEX
        assert picked.sum() == max(1, round(0.3 * (~special).sum()))
        assert not (picked & special).any()
        np.testing.assert_array_equal(labels[picked], ids[picked])
        np.testing.assert_array_equal(masked[~picked], ids[~picked])
        is_mask = masked[picked] == tokenizer.mask_token_id
        unchanged = masked[picked] == ids[picked]
        kinds += [is_mask.sum(), (~is_mask & ~unchanged).sum(), unchanged.sum()]
    assert heldout.masked_tokens == kinds.sum() > 1000
    np.testing.assert_allclose(kinds / kinds.sum(), [0.8, 0.1, 0.1], atol=0.03)  # random ids rarely hit the original


def test_masking_is_deterministic_and_seeded(tokenizer, paragraphs):
    a, b = prepare_heldout(tokenizer, paragraphs), prepare_heldout(tokenizer, paragraphs)
    c = prepare_heldout(tokenizer, paragraphs, seed=1)
    for x, y in zip(a.input_ids + a.labels, b.input_ids + b.labels):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.labels, c.labels))
    short = prepare_heldout(tokenizer, paragraphs, max_length=8)  # truncation, as the users' script tokenizes
    assert max(len(ids) for ids in short.input_ids) == 8


def test_equal_length_batching_matches_one_at_a_time(model, tokenizer, paragraphs):
    heldout = prepare_heldout(tokenizer, paragraphs[:120])
    lengths = [len(ids) for ids in heldout.input_ids]
    assert len(set(lengths)) < len(lengths) / 2  # many paragraphs share a length, so batches do form
    alone = mlm_loss(model, heldout, device="cpu", batch_tokens=1)
    batched = mlm_loss(model, heldout, device="cpu", batch_tokens=4096)
    assert alone["masked_tokens"] == batched["masked_tokens"] == heldout.masked_tokens
    assert alone["paragraphs"] == batched["paragraphs"] == 120
    assert batched["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert batched["perplexity"] == pytest.approx(np.exp(batched["loss"]))


def test_loss_is_torch_cross_entropy_over_masked_tokens(model, tokenizer, paragraphs):
    heldout = prepare_heldout(tokenizer, paragraphs[3:4])
    ids, labels = (torch.from_numpy(a[None]) for a in (heldout.input_ids[0], heldout.labels[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    expected = torch.nn.functional.cross_entropy(logits, labels[0], ignore_index=IGNORE_INDEX).item()
    assert mlm_loss(model, heldout, device="cpu")["loss"] == pytest.approx(expected, rel=1e-6)


def test_model_dir_with_its_tokenizer(model, tokenizer, paragraphs, tmp_path):
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer, str(tmp_path / "tok"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((tmp_path / "tok" / name).read_bytes())
    text_file = tmp_path / "heldout.txt"
    text_file.write_text("\n\n".join(paragraphs[:40]) + "\n")  # empty lines are not paragraphs
    from_dir = heldout_mlm_loss(str(tmp_path), str(text_file), device="cpu", seed=5)
    in_memory = mlm_loss(model, prepare_heldout(tokenizer, paragraphs[:40], seed=5), device="cpu")
    assert from_dir["paragraphs"] == 40
    assert from_dir["loss"] == pytest.approx(in_memory["loss"], rel=1e-6)


def test_pseudo_perplexity_masks_each_token_alone(model, tokenizer, paragraphs):
    """Against one forward pass per masked position, written out; batching must not change it."""
    texts = paragraphs[:4]
    got = pseudo_perplexity(model, tokenizer, texts, device="cpu")
    hf_tokenizer = tokenizer.to_transformers()
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            encoded = hf_tokenizer(text, return_special_tokens_mask=True)
            for position in np.flatnonzero(np.asarray(encoded["special_tokens_mask"]) == 0):
                ids = torch.tensor([encoded["input_ids"]])
                original = int(ids[0, position])
                ids[0, position] = hf_tokenizer.mask_token_id
                log_probs = torch.log_softmax(model.float()(input_ids=ids).logits[0, position], -1)
                nll -= float(log_probs[original])
                count += 1
    assert got["tokens"] == count and got["paragraphs"] == 4
    assert got["pseudo_nll"] == pytest.approx(nll / count, rel=1e-5)
    assert got["pseudo_perplexity"] == pytest.approx(np.exp(nll / count), rel=1e-5)
    small_batches = pseudo_perplexity(model, tokenizer, texts, device="cpu", batch_tokens=8)
    assert small_batches["pseudo_nll"] == pytest.approx(got["pseudo_nll"], rel=1e-6)


def test_evaluate_mlm_script(model, tokenizer, paragraphs, tmp_path, capsys):
    import importlib.util
    import json
    import os

    model_dir = tmp_path / "model"
    save_tokenizer(tokenizer, str(model_dir))
    model.save_pretrained(model_dir)
    (tmp_path / "heldout.txt").write_text("\n".join(paragraphs[:6]) + "\n\n")
    spec = importlib.util.spec_from_file_location(
        "evaluate_mlm", os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "evaluate_mlm.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "scores.json"
    assert script.main([str(model_dir), "--heldout", str(tmp_path / "heldout.txt"), "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["mlm"]["loss"] == pytest.approx(heldout_mlm_loss(str(model_dir), paragraphs[:6])["loss"])
    assert scores["pseudo"]["paragraphs"] == 6
    assert f"pseudo-perplexity {scores['pseudo']['pseudo_perplexity']:.2f}" in capsys.readouterr().out
    assert script.main([str(tmp_path), "--heldout", str(tmp_path / "heldout.txt")]) == 1  # no config.json
    assert "error: " in capsys.readouterr().err


def test_pretraining_ends_with_the_exports_pseudo_perplexity(write_corpus, tiny_config, tmp_path, capsys):
    """The run's own pseudo-perplexity (copies packed side by side, the eval step) equals the torch
    evaluator's on its export, one copy per forward; documents past seq_len are cut alike."""
    import json
    import os

    from neobert_jax.hf.mlm_eval import read_paragraphs
    from neobert_jax.mlm.task import train

    corpus = write_corpus(tmp_path / "train.txt")
    heldout = write_corpus(tmp_path / "heldout.txt", lines=9, seed=5)
    cfg = tiny_config(tmp_path / "run", corpus, **{"data.eval_files": heldout, "train.export_hf": True,
                                                   "train.pseudo_perplexity_documents": 7})
    result = train(cfg)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    final = [r for r in records if "eval_pseudo_perplexity" in r]
    assert len(final) == 1 and final[0]["step"] == result.step and final[0]["eval_pseudo_documents"] == 7
    expected = pseudo_perplexity(result.hf_dir, result.hf_dir, read_paragraphs(heldout)[:7], max_length=32,
                                 device="cpu")
    assert final[0]["eval_pseudo_tokens"] == expected["tokens"]
    assert final[0]["eval_pseudo_nll"] == pytest.approx(expected["pseudo_nll"], rel=1e-4)
    assert f"Final Student Pseudo-Perplexity: {final[0]['eval_pseudo_perplexity']:.2f}" in capsys.readouterr().out

    # the export's model card comes from the run's records, and so does the converter's
    card = open(os.path.join(result.hf_dir, "README.md")).read()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")
    assert f"| steps | {result.step:,} optimizer steps of 4 rows x 32" in card
    assert f"| evaluation data | `{heldout}` |" in card and "Pseudo-Perplexity" in card
    assert "![training loss](loss.png)" in card and os.path.isfile(os.path.join(result.hf_dir, "loss.png"))
    from neobert_jax.runtime.model_card import model_card
    assert "| steps | 2 optimizer steps" not in model_card(result.hf_dir, str(tmp_path / "run"), step=2)  # not the end
    import subprocess
    import sys
    converter = os.path.join(os.path.dirname(os.path.dirname(__file__)), "convert", "flax_to_torch.py")
    subprocess.run([sys.executable, converter, str(tmp_path / "run"), str(tmp_path / "converted")], check=True)
    assert open(tmp_path / "converted" / "README.md").read() == card.replace('# run\n', '# converted\n').replace(
        'path = "run"', 'path = "converted"')


def test_pseudo_perplexity_needs_eval_data(write_corpus, tiny_config, tmp_path):
    from neobert_jax.mlm.config import validate

    cfg = tiny_config(tmp_path / "run", write_corpus(tmp_path / "train.txt"),
                      **{"train.pseudo_perplexity_documents": 3})
    with pytest.raises(ValueError, match=r"config.train.pseudo_perplexity_documents: needs eval data"):
        validate(cfg)
