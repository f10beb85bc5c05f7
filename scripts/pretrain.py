"""MLM pretraining: `python scripts/pretrain.py --config configs/student.py [--config.a.b=value ...]`.

Rerunning with the same output_dir resumes from its latest checkpoint (--config.resume=False
starts over). SIGTERM/SIGINT save a checkpoint and exit 0.

The same command runs on every host of a multi-host run (docs/scaling.md): on a TPU VM slice
and under `srun` / `mpirun` the processes find each other by themselves; elsewhere pass
--coordinator_address, --num_processes and --process_id (or the JAX_* variables).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from neobert_jax.data import DataError
from neobert_jax.train import distributed
from neobert_jax.train.config import check_override_keys
from neobert_jax.train.loop import NonFiniteLossError, train
from neobert_jax.train.model_init import apply_xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "a config file with get_config(), e.g. configs/student.py")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-process runs: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process runs: how many processes in all")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process runs: this process's index, 0..n-1")


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; settings go in --config.key=value")
    if _CONFIG.value is None:
        sys.exit("error: --config is required, e.g. --config configs/student.py")
    apply_xla_flags(_CONFIG.value.train.precision)
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    try:
        result = train(_CONFIG.value)
    except (ValueError, OSError, DataError, NonFiniteLossError) as e:
        sys.exit(f"error: {e}")
    if not result.completed:
        print(f"stopped at step {result.step}; rerun to resume", file=sys.stderr)


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:])
    except (KeyError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) else e}")
    app.run(main)
