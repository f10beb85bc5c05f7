"""Run by test_train_multidevice.py in a process with 4 simulated CPU devices: trains the same
tiny model on the same batches under several meshes and prints their losses as JSON."""

import json
import sys

import jax
import numpy as np
from conftest import compiled_step, mlm_batch, tiny_model, train_cfg

from neobert_jax.runtime import sharding
from neobert_jax.mlm.config import default_config

MESHES = {"one_device": (1, 1, 1), "data4": (4, 1, 1), "fsdp4": (1, 4, 1), "data2_tensor2": (2, 1, 2),
          "fsdp2_tensor2": (1, 2, 2)}
ROWS, SEQ, VOCAB, STEPS = 8, 24, 96, 3


def run(sizes, seq=SEQ, **model_overrides):
    cfg = default_config().mesh
    cfg.data, cfg.fsdp, cfg.tensor = sizes
    n = int(np.prod(sizes))
    mesh = sharding.make_mesh(cfg, devices=jax.devices()[:n])
    model = tiny_model(**model_overrides, mesh=mesh)
    train_step, st, _, shardings = compiled_step(model, train_cfg(grad_accum_steps=2, batch_size=ROWS), mesh)
    embedding_spec = tuple(shardings.params["model"]["embeddings"]["tok_embeddings"].spec)
    losses = []
    for s in range(STEPS):
        st, metrics = train_step(st, sharding.global_batch(mlm_batch(ROWS, seq, VOCAB, seed=s), mesh))
        losses.append(float(metrics["loss"]))
    embedding = np.asarray(jax.device_get(st.params["model"]["embeddings"]["tok_embeddings"]))
    return {"losses": losses, "embedding_spec": [str(a) for a in embedding_spec],
            "embedding_abs_sum": float(np.abs(embedding).sum())}


def kernel_runs():
    """The Pallas kernels (interpreted on CPU) inside the train step, on one device and on a 2x2
    data x fsdp mesh; records the rows each attention call sees when it is traced."""
    from neobert_jax.model import attention_pallas

    kernel, rows_seen = attention_pallas.pallas_attention, []

    def recording(q, *args, **kwargs):
        rows_seen.append(int(q.shape[0]))
        return kernel(q, *args, **kwargs)

    attention_pallas.pallas_attention = recording
    out = {}
    for name, sizes in (("kernels_one_device", (1, 1, 1)), ("kernels_data2_fsdp2", (2, 2, 1))):
        rows_seen.clear()
        out[name] = dict(run(sizes, seq=32, attn_implementation="pallas", layer_norm_backward="interpret",
                             logsumexp="interpret"), kernel_rows=sorted(set(rows_seen)))
    return out


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    runs = {name: run(sizes) for name, sizes in MESHES.items()}
    json.dump({**runs, **kernel_runs()}, sys.stdout)
