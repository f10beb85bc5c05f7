"""MLM pretraining: `python scripts/pretrain.py --config configs/student.py [--config.a.b=value ...]`.

Rerunning with the same output_dir resumes from its latest checkpoint (--config.resume=False
starts over). SIGTERM/SIGINT save a checkpoint and exit 0.

The same command runs on every host of a multi-host run (docs/scaling.md): on a TPU VM slice
and under `srun` / `mpirun` the processes find each other by themselves; elsewhere pass
--coordinator_address, --num_processes and --process_id (or the JAX_* variables).
"""

from neobert_jax.runtime import early_signals

early_signals.install()

from neobert_jax.runtime.cli import run  # noqa: E402
from neobert_jax.mlm.task import train  # noqa: E402

if __name__ == "__main__":
    run(train, "configs/student.py", __doc__)
