"""What every encoder-with-decoder MLM model shares: the encoder states, the logits and the fused loss.

A family supplies `self.model` (its encoder, returning final hidden states), `self.config` (with
`dtype`, `logsumexp` and `mesh`), `_features` (what sits between the encoder and the decoder) and
`_decoder` (the (V, D) weight and (V,) bias in the compute dtype).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from neobert_jax.model import tf32
from neobert_jax.model.decoder_loss import decoder_nll


class MaskedLM(nnx.Module):
    def _features(self, h_BTD):
        raise NotImplementedError

    def _decoder(self):
        raise NotImplementedError

    def encode(self, input_ids_BT, attention_mask_BT=None, *, segment_ids_BT=None, positions_BT=None,
               dropout_rng=None):
        """Final hidden states (after the encoder's final norm) in float32."""
        h = self.model(input_ids_BT, attention_mask_BT, segment_ids_BT=segment_ids_BT, positions_BT=positions_BT,
                       dropout_rng=dropout_rng)
        return h.astype(jnp.float32)

    def _decoder_inputs(self, input_ids_BT, attention_mask_BT, segment_ids_BT, positions_BT, masked_positions_BM,
                        dropout_rng):
        """The decoder's input at every token, or only at the masked positions (fewer rows to decode)."""
        h_BTD = self.model(input_ids_BT, attention_mask_BT, segment_ids_BT=segment_ids_BT,
                           positions_BT=positions_BT, dropout_rng=dropout_rng)
        if masked_positions_BM is not None:
            h_BTD = jnp.take_along_axis(h_BTD, jnp.asarray(masked_positions_BM)[..., None], axis=1)
        return self._features(h_BTD)

    def __call__(self, input_ids_BT, attention_mask_BT=None, *, segment_ids_BT=None, positions_BT=None,
                 masked_positions_BM=None, dropout_rng=None):
        """MLM logits for every token (B, T, V), or only at `masked_positions_BM` (B, M, V)."""
        x = self._decoder_inputs(input_ids_BT, attention_mask_BT, segment_ids_BT, positions_BT, masked_positions_BM,
                                 dropout_rng)
        weight_VD, bias_V = self._decoder()
        return jnp.einsum("...d,vd->...v", x, weight_VD) + bias_V

    def mlm_nll(self, input_ids_BT, labels, *, attention_mask_BT=None, segment_ids_BT=None, positions_BT=None,
                masked_positions_BM=None, dropout_rng=None):
        """Per-position float32 cross-entropy against `labels` (B, M) or (B, T); -100 positions give 0.

        Same value as a softmax cross-entropy of `__call__`'s logits, through `decoder_nll`, whose
        backward pass moves far fewer bytes than autodiff of the logits would.
        """
        x = self._decoder_inputs(input_ids_BT, attention_mask_BT, segment_ids_BT, positions_BT, masked_positions_BM,
                                 dropout_rng)
        weight_VD, bias_V = self._decoder()
        labels = jnp.asarray(labels, jnp.int32)
        nll = decoder_nll(x.reshape(-1, x.shape[-1]), weight_VD, bias_V, labels.reshape(-1),
                          self.config.logsumexp, self.config.mesh,
                          tf32.applies(self.config, x.dtype))
        return nll.reshape(labels.shape)
