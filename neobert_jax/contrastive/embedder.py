"""Texts -> L2-normalized sentence embeddings with the (sharded) JAX model, for evaluation.

One text per row, sorted by length and padded per batch to a power of two, so a corpus compiles
a handful of shapes and sorted batches waste little on padding. The rows of a batch are split over the
mesh's batch axes; the embeddings come back replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from neobert_jax.contrastive.batching import Layout, assemble, round_up
from neobert_jax.contrastive.pooling import l2_normalize, pool_rows
from neobert_jax.contrastive.step import ROW_KEYS
from neobert_jax.contrastive.tokenized import TextTokenizer, TokenizedColumns
from neobert_jax.runtime import sharding
from neobert_jax.runtime.state import ModelParts


class Embedder:
    def __init__(self, parts: ModelParts, text_tokenizer: TextTokenizer, *, pooling_mode: str, mesh: Mesh,
                 batch_size: int):
        self.text_tokenizer, self.mesh, self.dim = text_tokenizer, mesh, parts.config.hidden_size
        self.rows = round_up(batch_size, sharding.batch_rows_divisor(mesh))
        self.layout = Layout("bucket", text_tokenizer.body_len + 2, 1, self.rows, (0,), power_of_two_lengths=True)
        self.special_ids = dict(cls_id=text_tokenizer.cls_id, sep_id=text_tokenizer.sep_id,
                                pad_id=text_tokenizer.pad_id)
        params_sh = sharding.param_shardings(parts.abstract_params, parts.axes, mesh)
        rows_sh = sharding.batch_sharding(mesh)

        def embed(params, group):
            hidden_RTD = parts.merge(params).encode(group["input_ids"], segment_ids_BT=group["segment_ids"],
                                                    positions_BT=group["positions"])
            return l2_normalize(pool_rows(hidden_RTD, group["segment_ids"], group["positions"], 1, pooling_mode)[:, 0])

        self._embed = jax.jit(embed,
                              in_shardings=(params_sh, {k: rows_sh for k in ROW_KEYS}),
                              out_shardings=sharding.replicated(mesh))

    def encode(self, params, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32 unit vectors, in the order of `texts`."""
        ids, offsets = self.text_tokenizer.encode(list(texts))
        data = TokenizedColumns(["text"], [ids], [offsets], None)
        order = np.argsort(-np.diff(offsets), kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(order), self.rows):
            chunk = order[start:start + self.rows]
            batch, stats = assemble(data, chunk, self.layout,
                                    row_range=lambda r: sharding.process_row_range(self.mesh, r), **self.special_ids)
            placed = sharding.place_groups(batch, stats["rows"], self.mesh)
            emb_RD = np.asarray(jax.device_get(self._embed(params, placed["groups"][0])))
            out[chunk] = emb_RD[batch["text_slot"]]
        return out


def load_encoder(model_dir: str, *, pooling: str | None, seq_len: int | None, batch_size: int, mesh_config=None):
    """-> (texts -> unit embeddings, a description) of the model at `model_dir`: a sentence-transformers
    folder (its pooling and max_seq_length are read), an HF ModernBERT dir or a project checkpoint
    (`pooling`, default mean; `seq_len`, default 512), on all local devices."""
    from neobert_jax.contrastive.setup import load_model_parts
    from neobert_jax.data import DataError, load_tokenizer
    from neobert_jax.hf.paths import locate
    from neobert_jax.hf.sentence_transformers import read_sentence_transformers_pooling
    from neobert_jax.runtime.config import base_config

    st = read_sentence_transformers_pooling(model_dir) or {}
    pooling = pooling or st.get("pooling") or "mean"
    seq_len = seq_len or st.get("max_seq_length") or 512
    tokenizer_dir = locate(model_dir).tokenizer
    if tokenizer_dir is None:
        raise DataError(f"{model_dir}: no tokenizer files beside the model")
    mesh = sharding.make_mesh(mesh_config or base_config().mesh)
    parts, params = load_model_parts(model_dir, seed=0, runtime={"mesh": mesh}, config_changes={}, log=lambda _: None)
    params = jax.device_put(params, sharding.param_shardings(parts.abstract_params, parts.axes, mesh))
    embedder = Embedder(parts, TextTokenizer(load_tokenizer(tokenizer_dir), seq_len), pooling_mode=pooling,
                        mesh=mesh, batch_size=batch_size)
    return (lambda texts: embedder.encode(params, texts)), f"jax, {pooling} pooling, {seq_len} tokens"
