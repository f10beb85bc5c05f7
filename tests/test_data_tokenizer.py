"""Tokenizers: trained ModernBERT-style and cached per corpus, or loaded from a local folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from neobert_jax.data import DataError, get_tokenizer, load_tokenizer
from neobert_jax.data.tokenizer import RunTokenizer, save_tokenizer

WORDS = "byte level pairs merge into tokens the corpus teaches which pairs are frequent enough".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(3, 30))) for _ in range(200)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    get_tokenizer(None, corpus, str(out), vocab_size=300)
    return out


def test_trained_tokenizer_is_modernbert_style(run_dir, corpus):
    tokenizer = get_tokenizer(None, corpus, str(run_dir), vocab_size=300)
    ids = {name: getattr(tokenizer, f"{name}_token_id") for name in ("unk", "cls", "sep", "pad", "mask")}
    assert sorted(ids.values()) == [0, 1, 2, 3, 4] and 261 <= len(tokenizer) <= 300
    hf = tokenizer.to_transformers()
    encoded = hf("pairs merge")
    assert set(encoded) == {"input_ids", "attention_mask"}  # no token_type_ids
    assert encoded["input_ids"][0] == ids["cls"] and encoded["input_ids"][-1] == ids["sep"]
    text = "naïve café — 日本語 \t tabs"  # byte-level: nothing is unknown, decoding gives the text back
    assert hf.decode(hf(text, add_special_tokens=False)["input_ids"]) == text
    tokens = hf.convert_ids_to_tokens(hf("pairs [MASK] merge")["input_ids"])
    assert tokens[tokens.index("[MASK]") - 1] == "pairs"  # [MASK] takes its leading space, as in ModernBERT
    config = json.loads((run_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loads in transformers 4.x and 5.x
    assert (run_dir / "tokenizer" / "special_tokens_map.json").exists()
    assert sorted(os.listdir(run_dir)) == ["tokenizer"]  # no temp folder left behind


def test_rerun_reuses_the_cached_tokenizer(run_dir, corpus):
    tokenizer_json = run_dir / "tokenizer" / "tokenizer.json"
    before = tokenizer_json.stat().st_mtime_ns
    get_tokenizer(None, corpus, str(run_dir), vocab_size=300)
    assert tokenizer_json.stat().st_mtime_ns == before
    with pytest.raises(DataError, match=r"trained on other data or settings; delete it"):
        get_tokenizer(None, corpus, str(run_dir), vocab_size=500)
    with pytest.raises(DataError, match=r"trained on other data or settings"):
        get_tokenizer(None, "", str(run_dir), vocab_size=300)
    note = (run_dir / "tokenizer" / "trained_on.json").read_text()
    save_tokenizer(load_tokenizer(str(run_dir / "tokenizer")), str(run_dir / "tokenizer"), {"other": "note"})
    assert (run_dir / "tokenizer" / "trained_on.json").read_text() == note  # a finished folder is kept
    assert sorted(os.listdir(run_dir)) == ["tokenizer"]


def test_explicit_tokenizer_folder_is_loaded(run_dir):
    tokenizer = get_tokenizer(str(run_dir / "tokenizer"), None, "unused")
    assert tokenizer.mask_token == "[MASK]"
    assert get_tokenizer(str(run_dir), None, "unused").backend_tokenizer.get_vocab() == \
        tokenizer.backend_tokenizer.get_vocab()  # folder holding tokenizer/


def test_bad_tokenizer_paths(run_dir, tmp_path):
    with pytest.raises(DataError, match=r"tokenizer someorg/bert: no such folder \(only local tokenizers"):
        load_tokenizer("someorg/bert")
    incomplete = tmp_path / "no_mask"
    incomplete.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (incomplete / name).write_bytes((run_dir / "tokenizer" / name).read_bytes())
    config = json.loads((incomplete / "tokenizer_config.json").read_text())
    del config["mask_token"]
    (incomplete / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"no_mask: no mask token; MLM needs cls, sep, pad and mask tokens"):
        load_tokenizer(str(incomplete))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: cannot be loaded"):
        load_tokenizer(str(tmp_path / "empty"))


def _hf_style_folder(run_dir, out, **config_changes):
    """The run's tokenizer folder with tokenizer_config.json changed; None values delete keys."""
    out.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (out / name).write_bytes((run_dir / "tokenizer" / name).read_bytes())
    config = json.loads((run_dir / "tokenizer" / "tokenizer_config.json").read_text())
    config.update(config_changes)
    (out / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return str(out)


@pytest.mark.parametrize("changes", [
    {},
    {"model_max_length": None, "model_input_names": None, "tokenizer_class": "TokenizersBackend"},
    {"bos_token": "[CLS]", "eos_token": {"content": "[SEP]", "__type": "AddedToken"},
     "additional_special_tokens": ["pairs"]},
])
def test_the_run_tokenizer_reads_a_folder_as_transformers_does(run_dir, tmp_path, changes):
    from transformers import PreTrainedTokenizerFast

    path = _hf_style_folder(run_dir, tmp_path / "tok", **changes)
    ours, theirs = load_tokenizer(path), PreTrainedTokenizerFast.from_pretrained(path)
    assert len(ours) == len(theirs)
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    for name in ("unk", "cls", "sep", "pad", "mask", "bos", "eos"):
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert (ours.model_max_length, ours.model_input_names) == (theirs.model_max_length, theirs.model_input_names)
    text = "pairs merge into [MASK] tokens"
    assert ours.backend_tokenizer.encode(text).ids == theirs(text)["input_ids"]
    assert RunTokenizer.from_transformers(theirs).special_tokens_map == ours.special_tokens_map


def test_loading_a_plain_folder_does_not_import_transformers(run_dir):
    code = ("import sys; from neobert_jax.data import load_tokenizer; "
            f"load_tokenizer({str(run_dir / 'tokenizer')!r}); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
