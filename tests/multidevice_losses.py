"""Run by test_train_multidevice.py in a process with 4 simulated CPU devices: trains the same
tiny model on the same batches under several meshes and prints their losses as JSON."""

import json
import sys

import jax
import numpy as np
from train_batches import compiled_step, mlm_batch, tiny_model, train_cfg

from neobert_jax.train import sharding
from neobert_jax.train.config import default_config

MESHES = {"one_device": (1, 1, 1), "data4": (4, 1, 1), "fsdp4": (1, 4, 1), "data2_tensor2": (2, 1, 2),
          "fsdp2_tensor2": (1, 2, 2)}
ROWS, SEQ, VOCAB, STEPS = 8, 24, 96, 3


def run(sizes):
    cfg = default_config().mesh
    cfg.data, cfg.fsdp, cfg.tensor = sizes
    n = int(np.prod(sizes))
    mesh = sharding.make_mesh(cfg, devices=jax.devices()[:n])
    train_step, st, _, shardings = compiled_step(tiny_model(), train_cfg(grad_accum_steps=2, batch_size=ROWS), mesh)
    embedding_spec = tuple(shardings.params["model"]["embeddings"]["tok_embeddings"].spec)
    losses = []
    for s in range(STEPS):
        st, metrics = train_step(st, sharding.global_batch(mlm_batch(ROWS, SEQ, VOCAB, seed=s), mesh))
        losses.append(float(metrics["loss"]))
    embedding = np.asarray(jax.device_get(st.params["model"]["embeddings"]["tok_embeddings"]))
    return {"losses": losses, "embedding_spec": [str(a) for a in embedding_spec],
            "embedding_abs_sum": float(np.abs(embedding).sum())}


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    json.dump({name: run(sizes) for name, sizes in MESHES.items()}, sys.stdout)
