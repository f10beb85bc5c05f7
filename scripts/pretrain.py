"""MLM pretraining: `python scripts/pretrain.py --config configs/student.py [--config.a.b=value ...]`.

Rerunning with the same output_dir resumes from its latest checkpoint (--config.resume=False
starts over). SIGTERM/SIGINT save a checkpoint and exit 0.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from neobert_jax.data import DataError
from neobert_jax.train.config import check_override_keys
from neobert_jax.train.loop import NonFiniteLossError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "a config file with get_config(), e.g. configs/student.py")


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; settings go in --config.key=value")
    if _CONFIG.value is None:
        sys.exit("error: --config is required, e.g. --config configs/student.py")
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
