"""The command line shared by scripts/pretrain.py and scripts/contrastive.py.

Both take `--config FILE` with `--config.a.b=value` overrides (unknown keys fail listing the
valid ones), the multi-process flags of `distributed.initialize`, and turn bad input into one
`error:` line and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from neobert_jax.data import DataError
from neobert_jax.runtime import distributed, early_signals
from neobert_jax.runtime.config import check_override_keys, load_config_file, split_config_arg
from neobert_jax.runtime.runner import NonFiniteLossError
from neobert_jax.runtime.model_init import apply_xla_flags


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (library errors often wrap theirs)."""
    return " ".join(str(error).split())


def use_compilation_cache(config) -> None:
    """JAX's persistent compilation cache in config.compilation_cache_dir ("": none), bounded by
    config.compilation_cache_max_gb (negative: no bound): JAX removes the least recently used entries."""
    if not config.compilation_cache_dir:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the many small ones add up
    bound = config.compilation_cache_max_gb
    jax.config.update("jax_compilation_cache_max_size", int(bound * 2**30) if bound >= 0 else -1)


def run(train_fn: Callable, example_config: str) -> None:
    """Parses the command line and calls `train_fn(config)`; its result needs `.completed`, `.step`.

    The config file is executed once, here: its keys check the overrides before absl applies them.
    """
    early_signals.exit_if_received()  # one that came during the imports
    path, argv = split_config_arg(sys.argv)
    if path is None and not {"--help", "-h", "--helpfull"} & set(argv):
        sys.exit(f"error: --config is required, e.g. --config {example_config}")
    try:
        loaded = load_config_file(path) if path else ml_collections.ConfigDict()
        check_override_keys(loaded, argv[1:])
    except (KeyError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) else e}")
    config = config_flags.DEFINE_config_dict("config", loaded, f"--config FILE: a config file with get_config(), "
                                             f"e.g. {example_config}; --config.key=value overrides", sys_argv=argv)
    coordinator = flags.DEFINE_string("coordinator_address", None, "multi-process runs: host:port of process 0")
    num_processes = flags.DEFINE_integer("num_processes", None, "multi-process runs: how many processes in all")
    process_id = flags.DEFINE_integer("process_id", None, "multi-process runs: this process's index, 0..n-1")

    def main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]}; settings go in --config.key=value")
        apply_xla_flags(config.value.train.precision)  # before JAX starts its backend
        use_compilation_cache(config.value)
        try:
            distributed.initialize(coordinator.value, num_processes.value, process_id.value)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"error: {e}")
        early_signals.exit_if_received()
        try:
            result = train_fn(config.value)
        except (ValueError, OSError, DataError, NonFiniteLossError) as e:
            sys.exit(f"error: {one_line(e)}")
        if not result.completed:
            print(f"stopped at step {result.step}; rerun to {'resume' if result.step else 'start'}", file=sys.stderr)

    app.run(main, argv=argv)
