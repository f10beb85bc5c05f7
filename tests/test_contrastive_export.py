"""The sentence-transformers export: `SentenceTransformer(dir).encode` equals our embeddings
(packed training rows and the evaluation embedder alike), and its folder reads back."""

import numpy as np
import pytest

import neobert_jax

from neobert_jax.contrastive.batching import Layout, assemble
from neobert_jax.contrastive.embedder import Embedder
from neobert_jax.contrastive.pooling import gather_texts, l2_normalize
from neobert_jax.contrastive.setup import load_model_parts
from neobert_jax.contrastive.step import encode_groups
from neobert_jax.contrastive.tokenized import TextTokenizer, TokenizedColumns
from neobert_jax.data import load_tokenizer
from neobert_jax.hf import load_pretrained
from neobert_jax.hf.sentence_transformers import read_sentence_transformers_pooling, save_sentence_transformers_dir
from neobert_jax.runtime import sharding
from neobert_jax.runtime.config import base_config

SEQ_LEN = 16  # shorter than the longest text: truncation must match too


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_tokenizer_dir, tiny_hf_dir):
    root = tmp_path_factory.mktemp("model")
    model_dir = tiny_hf_dir(root, tiny_tokenizer_dir(root))
    parts, params = load_model_parts(model_dir, seed=0, runtime={}, config_changes={})
    return model_dir, parts, params, TextTokenizer(load_tokenizer(model_dir), SEQ_LEN)


def packed_embeddings(parts, params, text_tokenizer, pooling, texts):
    """Through the training path: several texts per row, pooled per segment."""
    ids, offsets = text_tokenizer.encode(texts)
    data = TokenizedColumns(["text"], [ids], [offsets], None)
    batch, _ = assemble(data, np.arange(len(texts)), Layout("pack", SEQ_LEN, 8, 1, (0,)),
                        cls_id=text_tokenizer.cls_id, sep_id=text_tokenizer.sep_id, pad_id=text_tokenizer.pad_id)
    assert len(batch["groups"][0]["input_ids"]) < len(texts)  # rows really hold several texts
    pooled = encode_groups(parts.merge(params), batch["groups"], (8,), pooling)
    return np.asarray(gather_texts(pooled, batch["text_slot"]))


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_sentence_transformers_encode_matches_ours(model, tmp_path, pooling, normalize, contrastive_texts):
    from sentence_transformers import SentenceTransformer

    model_dir, parts, params, text_tokenizer = model
    st_dir = tmp_path / "st"
    save_sentence_transformers_dir(parts.merge(params), str(st_dir), tokenizer_dir=model_dir, pooling=pooling,
                                   normalize=normalize, max_seq_length=SEQ_LEN)
    assert (st_dir / "2_Normalize").is_dir() == normalize
    assert read_sentence_transformers_pooling(str(st_dir)) == {"pooling": pooling, "normalize": normalize,
                                                               "max_seq_length": SEQ_LEN}
    theirs = SentenceTransformer(str(st_dir), device="cpu").encode(contrastive_texts, batch_size=4)
    packed = packed_embeddings(parts, params, text_tokenizer, pooling, contrastive_texts)
    if normalize:
        packed = np.asarray(l2_normalize(packed))
    assert np.abs(packed - theirs).max() < 1e-4
    mesh = sharding.make_mesh(base_config().mesh)
    embedder = Embedder(parts, text_tokenizer, pooling_mode=pooling, mesh=mesh, batch_size=4)
    unit = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    assert np.abs(embedder.encode(params, contrastive_texts) - unit).max() < 1e-4

    reloaded, newly_initialized = load_pretrained(str(st_dir))  # the bare encoder: the MLM head is new
    assert newly_initialized and all(not name.startswith("model.") for name in newly_initialized)
    np.testing.assert_array_equal(np.asarray(reloaded.model.embeddings.tok_embeddings[...]),
                                  params["model"]["embeddings"]["tok_embeddings"])
    with pytest.warns(UserWarning, match="is a sentence-transformers folder: .*random init"):
        neobert_jax.from_pretrained(str(st_dir))  # the public loader says so rather than hand back a random head


@pytest.mark.parametrize("row_shapes", ["ladder", "one"])
def test_evaluation_packs_texts_into_calls_of_one_shape(model, contrastive_texts, row_shapes):
    """Several texts to a row and a fixed row count per call: the embeddings equal each text's
    encoded alone, and text sets of any lengths that need several calls compile one shape. A set
    that fits one call takes the rows it needs under "ladder" (CPU), the full count under "one"."""
    _, parts, params, text_tokenizer = model
    mesh = sharding.make_mesh(base_config().mesh)
    alone = np.concatenate([Embedder(parts, text_tokenizer, pooling_mode="mean", mesh=mesh, batch_size=1)
                            .encode(params, [t]) for t in contrastive_texts])
    embedder = Embedder(parts, text_tokenizer, pooling_mode="mean", mesh=mesh, batch_size=2, texts_per_row=3,
                        row_shapes=row_shapes)
    texts = contrastive_texts * 3
    assert len(texts) > 2 * 3  # more than one call
    np.testing.assert_allclose(embedder.encode(params, texts), np.tile(alone, (3, 1)), atol=1e-5)
    words = sorted({w for t in contrastive_texts for w in t.split()}, key=len)
    short = [w for w in words if np.diff(text_tokenizer.encode([w])[1])[0] <= 3][:7]
    assert len(short) == 7  # 3 to a row: a full call of 6 and a call of 1 text
    embedder.encode(params, short)
    assert embedder._embed._cache_size() == 1
    assert embedder.encode(params, []).shape == (0, parts.config.hidden_size)
    # sets of 1..8 texts of a full row each, every set in one call: 8 row counts under "ladder", 1 under "one"
    full = [t for t in contrastive_texts if np.diff(text_tokenizer.encode([t])[1])[0] >= SEQ_LEN - 2]
    assert len(full) >= 3
    small_sets = Embedder(parts, text_tokenizer, pooling_mode="mean", mesh=mesh, batch_size=8, row_shapes=row_shapes)
    for k in range(1, 9):
        small_sets.encode(params, (full * 3)[:k])
    assert small_sets._embed._cache_size() == (8 if row_shapes == "ladder" else 1)


def test_reads_the_pooling_of_folders_saved_by_sentence_transformers(model, tmp_path):
    from sentence_transformers import SentenceTransformer

    model_dir, parts, params, _ = model
    save_sentence_transformers_dir(parts.merge(params), str(tmp_path / "ours"), tokenizer_dir=model_dir,
                                   pooling="cls", normalize=True, max_seq_length=SEQ_LEN)
    SentenceTransformer(str(tmp_path / "ours"), device="cpu").save(str(tmp_path / "resaved"))
    read = read_sentence_transformers_pooling(str(tmp_path / "resaved"))
    assert (read["pooling"], read["normalize"]) == ("cls", True)
    assert read_sentence_transformers_pooling(model_dir) is None


def test_prompts_round_trip_through_the_export(model, tmp_path, contrastive_texts):
    """encode(prompt_name="query") / encode_document of the folder equal our embeddings of the
    prompted texts: the prompt's tokens are pooled (include_prompt), as in training."""
    from sentence_transformers import SentenceTransformer

    from neobert_jax.hf.sentence_transformers import read_sentence_transformers_prompts

    model_dir, parts, params, text_tokenizer = model
    st_dir = str(tmp_path / "st")
    save_sentence_transformers_dir(parts.merge(params), st_dir, tokenizer_dir=model_dir, max_seq_length=SEQ_LEN,
                                   prompts=("query: ", "passage: "))
    assert read_sentence_transformers_prompts(st_dir) == ("query: ", "passage: ")
    st = SentenceTransformer(st_dir, device="cpu")
    embedder = Embedder(parts, text_tokenizer, pooling_mode="mean", mesh=sharding.make_mesh(base_config().mesh),
                        batch_size=4)
    for name, prompt in (("query", "query: "), ("document", "passage: ")):
        theirs = st.encode(contrastive_texts, prompt_name=name, batch_size=4)
        ours = embedder.encode(params, [prompt + t for t in contrastive_texts])
        assert np.abs(ours - theirs).max() < 1e-4
        assert np.abs(ours - embedder.encode(params, contrastive_texts)).max() > 1e-3  # the prompt changes them
    np.testing.assert_allclose(st.encode_document(contrastive_texts[:2]),
                               st.encode(contrastive_texts[:2], prompt_name="document"), atol=1e-6)
