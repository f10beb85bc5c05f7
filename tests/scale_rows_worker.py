"""Run by test_scale_multiprocess.py as each of 2 processes x 2 devices (settings from JAX_* variables):
on a mesh whose data axis puts process 1's devices first, each process feeds the rows
`process_row_range` gives it; only process 0 has a tokenizer, `share_tokenizer` gives process 1
the same one. Prints what the test compares."""

import json
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from neobert_jax.data.tokenizer import load_tokenizer, vocab_fingerprint
from neobert_jax.runtime import distributed, sharding
from neobert_jax.runtime.run_dir import share_tokenizer

if __name__ == "__main__":
    distributed.initialize()
    devices = sorted(jax.devices(), key=lambda d: (-d.process_index, d.id))  # process 1's first
    mesh = Mesh(np.asarray(devices).reshape(2, 2), ("data", "fsdp"))
    rows = np.arange(8, dtype=np.int32)[:, None] * np.ones((1, 4), np.int32)  # row i holds i
    lo, hi = sharding.process_row_range(mesh, 8)
    batch = sharding.global_batch({"ids": rows[lo:hi]}, mesh)
    gathered = np.asarray(multihost_utils.process_allgather(batch["ids"], tiled=True))[:, 0]
    tokenizer = share_tokenizer(load_tokenizer(sys.argv[1]) if jax.process_index() == 0 else None)
    print("\n" + json.dumps({"process": jax.process_index(), "rows": [int(lo), int(hi)],
                             "batch": gathered.tolist(), "tokenizer": vocab_fingerprint(tokenizer)}))
