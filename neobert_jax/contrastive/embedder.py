"""Texts -> L2-normalized sentence embeddings with the (sharded) JAX model, for evaluation.

Texts are packed, longest first, several to a row of `seq_len` tokens (each its own segment,
positions from 0, attention inside it, pooled per segment), into calls of a fixed number of rows:
a text set compiles one shape whatever its lengths, and short texts pay for little padding. Row
shapes follow `data.row_shapes`: with "one" (GPU/TPU by default) every call has the full row count,
so a whole evaluation, however many sets, compiles once; with "ladder" (CPU) a set that fits one
call gets only the rows it needs, rounded up by `ladder`. The rows of a call are split over the
mesh's batch axes; the embeddings come back replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from neobert_jax.contrastive.batching import SPECIALS, first_fit, ladder, resolve_row_shapes, round_up
from neobert_jax.contrastive.pooling import l2_normalize, pool_rows
from neobert_jax.contrastive.step import ROW_KEYS
from neobert_jax.contrastive.tokenized import TextTokenizer
from neobert_jax.runtime import sharding
from neobert_jax.runtime.state import ModelParts


class Embedder:
    def __init__(self, parts: ModelParts, text_tokenizer: TextTokenizer, *, pooling_mode: str, mesh: Mesh,
                 batch_size: int, texts_per_row: int = 32, row_shapes: str = "auto", cache=None):
        """batch_size: rows of `text_tokenizer`'s seq_len tokens per call; texts_per_row bounds the
        pooling work (segments per row); row_shapes: "one" | "ladder" | "auto" (by platform); cache: a
        run's executable cache (runtime.executables.for_run), whose settings name the pooling and slots."""
        self.text_tokenizer, self.mesh, self.dim = text_tokenizer, mesh, parts.config.hidden_size
        self.divisor = sharding.batch_rows_divisor(mesh)
        self.rows = round_up(batch_size, self.divisor)
        self.width, self.slots = text_tokenizer.body_len + SPECIALS, texts_per_row
        self.one_shape = resolve_row_shapes(row_shapes) == "one"
        params_sh = sharding.param_shardings(parts.abstract_params, parts.axes, mesh)
        rows_sh = sharding.batch_sharding(mesh)

        def embed(params, group):
            hidden_RTD = parts.merge(params).encode(group["input_ids"], segment_ids_BT=group["segment_ids"],
                                                    positions_BT=group["positions"])
            return l2_normalize(pool_rows(hidden_RTD, group["segment_ids"], group["positions"], self.slots,
                                          pooling_mode))

        self._embed = jax.jit(embed,
                              in_shardings=(params_sh, {k: rows_sh for k in ROW_KEYS}),
                              out_shardings=sharding.replicated(mesh))
        if cache is not None:
            self._embed = cache(self._embed, "contrastive_embed")

    def encode(self, params, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32 unit vectors, in the order of `texts`."""
        ids, offsets = self.text_tokenizer.encode(list(texts))
        lengths = np.diff(offsets) + SPECIALS
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        done = 0
        while done < len(order):
            ahead = lengths[order[done:done + self.rows * self.slots]]  # no call holds more texts
            placed, row, slot, start, used = first_fit(ahead, self.width, self.slots, self.rows)
            chunk = order[done:done + placed]
            whole_set = done == 0 and placed == len(order)
            rows = self.rows if self.one_shape or not whole_set else min(self.rows, round_up(ladder(used), self.divisor))
            group = self._rows(ids, offsets, chunk, row, slot, start, rows)
            placed_group = sharding.place_groups({"groups": [group]}, [rows], self.mesh)["groups"][0]
            emb_RSD = np.asarray(jax.device_get(self._embed(params, placed_group)))
            out[chunk] = emb_RSD.reshape(-1, self.dim)[row * self.slots + slot]
            done += placed
        return out

    def _rows(self, ids, offsets, chunk, row, slot, start, rows: int) -> dict[str, np.ndarray]:
        """This process's rows of one call: [CLS] body [SEP] of each text at its row and start."""
        lo, hi = sharding.process_row_range(self.mesh, rows)
        tok = self.text_tokenizer
        input_ids = np.full((hi - lo, self.width), tok.pad_id, np.int32)
        segments, positions = np.zeros_like(input_ids), np.zeros_like(input_ids)
        for t, r, s, first in zip(chunk, row, slot, start):
            if lo <= r < hi:
                body = ids[offsets[t]:offsets[t + 1]]
                end = first + len(body) + SPECIALS
                input_ids[r - lo, first:end] = np.concatenate([[tok.cls_id], body, [tok.sep_id]])
                segments[r - lo, first:end] = s + 1
                positions[r - lo, first:end] = np.arange(end - first)
        return {"input_ids": input_ids, "segment_ids": segments, "positions": positions}


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
