"""Negatives are global: 1 device and 4 simulated devices (data; data x fsdp with packed rows and
GradCache micro-batches) give the same losses for the same global batches, and these differ
from what per-device negatives would give. The evaluation's embedder, whose packed rows are split
over the devices too, gives the same embeddings on each mesh.

Run as a script (by the test, in a process with 4 CPU devices) it prints the runs as JSON."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {  # name: ((data, fsdp, tensor), layout, micro-batches)
    "one_device_bucket": ((1, 1, 1), "bucket", 1),
    "data4_bucket": ((4, 1, 1), "bucket", 1),
    "data2_fsdp2_pack_gradcache2": ((2, 2, 1), "pack", 2),
}
EXAMPLES, BATCH, STEPS, SEQ, VOCAB = 24, 8, 3, 24, 96
CLS, SEP = 1, 2  # conftest.tiny_model's
BODY_LENGTHS = (3, 9, 6)  # anchor, positive, hard negative: one length per column keeps each run to one
#                           compiled shape (the layouts' handling of mixed lengths is tested elsewhere)


def _run_all() -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections
    from conftest import PAD, tiny_model, train_cfg

    from neobert_jax.contrastive.batching import ContrastiveBatches, Layout
    from neobert_jax.contrastive.embedder import Embedder
    from neobert_jax.contrastive.losses import make_objective
    from neobert_jax.contrastive.pooling import gather_texts
    from neobert_jax.contrastive.setup import encoder_only
    from neobert_jax.contrastive.step import encode_groups, make_contrastive_step
    from neobert_jax.contrastive.tokenized import TokenizedColumns
    from neobert_jax.runtime import optim, sharding, state
    from neobert_jax.runtime.config import base_config

    rng = np.random.default_rng(0)
    ids, offsets = [], []
    for length in BODY_LENGTHS:
        lengths = np.full(EXAMPLES, length)
        offsets.append(np.concatenate([[0], np.cumsum(lengths)]))
        ids.append(rng.integers(5, VOCAB, lengths.sum()).astype(np.int32))
    data = TokenizedColumns(["anchor", "positive", "negative"], ids, offsets, None)
    loss_cfg = ml_collections.ConfigDict({"name": "mnrl", "scale": 20.0, "symmetric": True})
    objective = make_objective(loss_cfg, columns=3, normalize=True, dims=[32, 8], weights=[1.0, 0.5])

    class Texts:  # the embedder's tokenizer side: text "n" is the first n ids of one random body
        body_len, cls_id, sep_id, pad_id = SEQ - 2, CLS, SEP, PAD
        words = rng.integers(5, VOCAB, SEQ).astype(np.int32)

        def encode(self, texts):
            bodies = [self.words[:min(int(t), self.body_len)] for t in texts]
            return np.concatenate(bodies), np.concatenate([[0], np.cumsum([len(b) for b in bodies])])

    texts = [str(n) for n in rng.integers(1, SEQ + 4, 30)]

    def run(sizes, kind, accum):
        mesh_cfg = base_config().mesh
        mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = sizes
        mesh = sharding.make_mesh(mesh_cfg, devices=jax.devices()[:int(np.prod(sizes))])
        parts, params = state.ModelParts.split(tiny_model())
        t = train_cfg(learning_rate=3e-3, grad_accum_steps=accum)
        optimizer = optim.Optimizer(t, wrap=lambda tx: encoder_only(tx, params))
        hparams = optim.hyperparameters(t, 10)
        tx = optimizer.tx(hparams)
        shardings = state.state_shardings(parts, tx, hparams, mesh)
        st = state.create_train_state(params, tx, hparams, shardings, seed=0)
        layout = Layout(kind, SEQ, 6, sharding.batch_rows_divisor(mesh) * accum, (0, 1, 2))
        batches = ContrastiveBatches(data, batch_size=BATCH, seed=0, shuffle=True, layout=layout,
                                     special_ids=dict(cls_id=CLS, sep_id=SEP, pad_id=PAD),
                                     row_range=lambda rows: sharding.process_row_range(mesh, rows))
        step = make_contrastive_step(parts, optimizer, objective, slots=layout.slots, pooling_mode="mean",
                                     accum=accum, has_targets=False, state_sh=shardings, mesh=mesh)
        losses, norms, first_batch = [], [], None
        for _ in range(STEPS):
            batch, stats = next(batches)
            if first_batch is None:
                first_batch = (batch, layout.slots)
            st, metrics = step(st, sharding.place_groups(batch, stats["rows"], mesh))
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
        head_moved = float(jnp.abs(st.params["head"]["dense"]["kernel"] - params["head"]["dense"]["kernel"]).max())
        embedder = Embedder(parts, Texts(), pooling_mode="mean", mesh=mesh, batch_size=2, texts_per_row=3)
        embeddings = embedder.encode(jax.device_put(params, shardings.params), texts).tolist()
        return ({"losses": losses, "grad_norms": norms, "head_moved": head_moved, "embeddings": embeddings},
                parts, params, first_batch)

    out = {}
    for name, (sizes, kind, accum) in RUNS.items():
        out[name], parts, params, (batch, slots) = run(sizes, kind, accum)
    emb_ND = gather_texts(encode_groups(parts.merge(params), batch["groups"], slots, "mean"), batch["text_slot"])
    emb_CBD = emb_ND.reshape(3, BATCH, -1)
    quarters = [objective(emb_CBD[:, q * 2:(q + 1) * 2].reshape(-1, emb_ND.shape[-1])) for q in range(4)]
    out["per_device_negatives_loss"] = float(np.mean(quarters))
    return out


def test_one_and_four_devices_give_the_same_loss():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=HERE, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout)
    reference = runs["one_device_bucket"]
    for name in RUNS:
        np.testing.assert_allclose(runs[name]["losses"], reference["losses"], rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(runs[name]["grad_norms"], reference["grad_norms"], rtol=2e-4, err_msg=name)
        assert runs[name]["head_moved"] == 0.0  # only the encoder trains
        np.testing.assert_allclose(runs[name]["embeddings"], reference["embeddings"], atol=1e-5, err_msg=name)
    assert reference["losses"][-1] != reference["losses"][0]
    assert abs(runs["per_device_negatives_loss"] - reference["losses"][0]) > 0.1


if __name__ == "__main__":
    json.dump(_run_all(), sys.stdout)
