"""The command line shared by scripts/pretrain.py and scripts/contrastive.py.

Both take `--config FILE` with `--config.a.b=value` overrides (unknown keys fail listing the
valid ones), the multi-process flags of `distributed.initialize`, and turn bad input into one
`error:` line and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from neobert_jax.data import DataError
from neobert_jax.runtime import distributed, early_signals
from neobert_jax.runtime.config import check_override_keys, load_config_file, split_config_arg
from neobert_jax.runtime.runner import NonFiniteLossError
from neobert_jax.runtime.resolved import xla_flags


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (library errors often wrap theirs)."""
    return " ".join(str(error).split())


def set_xla_flags(precision: str, environ=None) -> bool:
    """XLA_FLAGS for train.precision (`neobert_jax.runtime.resolved.xla_flags`, the value the run's record
    holds), set once at process start: XLA reads them when JAX starts its backend. The one place that
    writes XLA_FLAGS. -> whether they hold: a caller whose JAX backend has started already (a command
    run in-process, as tests do) keeps the flags it started with, which its record then shows."""
    from jax._src import xla_bridge

    environ = os.environ if environ is None else environ
    given = environ.get("XLA_FLAGS", "")
    flags = xla_flags(precision, given)
    if flags == given:
        return True
    if xla_bridge.backends_are_initialized():
        logging.warning("train.precision=%s's XLA flags not applied: JAX's backend started before the command "
                        "line could set them (XLA_FLAGS stays %r)", precision, given)
        return False
    environ["XLA_FLAGS"] = flags
    return True


def use_compilation_cache(config) -> None:
    """JAX's persistent compilation cache in config.compilation_cache_dir ("": none), bounded by
    config.compilation_cache_max_gb (negative: no bound): JAX removes the least recently used entries."""
    if not config.compilation_cache_dir:
        return
    import jax

    path = os.path.expanduser(config.compilation_cache_dir)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the many small ones add up
    bound = config.compilation_cache_max_gb
    if bound >= 0:
        _date_unbounded_entries(path)
    jax.config.update("jax_compilation_cache_max_size", int(bound * 2**30) if bound >= 0 else -1)


def _date_unbounded_entries(path: str) -> None:
    """Gives each cache entry written without a bound (an earlier release, or max_gb < 0) the
    last-use file that JAX's bounded cache reads for every entry on each write; without it every
    write fails with a warning. Their last use is taken to be their write."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if name.endswith("-cache"):
            used = os.path.join(path, name.removesuffix("-cache") + "-atime")
            if not os.path.exists(used):
                with open(used, "wb") as f:
                    f.write(os.stat(os.path.join(path, name)).st_mtime_ns.to_bytes(8, "little"))


HELP_FLAGS = {"--help", "-h", "--helpfull", "--helpshort"}
MULTI_PROCESS_HELP = """multi-process flags (docs/scaling.md; found by themselves on TPU VMs and under srun/mpirun):
  --coordinator_address HOST:PORT   process 0's address
  --num_processes N                 how many processes in all
  --process_id I                    this process's index, 0..N-1"""


def print_help(doc: str, path: str | None, example_config: str) -> None:
    """The script's usage, then the config's keys, nested, with the values the file gives them.

    absl's own help lists other libraries' flags and flattens the config; users need its keys.
    """
    print(textwrap.dedent(doc).strip())
    if path is None:  # the example config, from the current dir or beside this package
        here = Path(example_config)
        path = str(here if here.exists() else Path(__file__).resolve().parents[2] / example_config)
    try:
        config = load_config_file(path)
    except (ValueError, FileNotFoundError) as e:
        print(f"\n(no config keys to show: {e})")
    else:
        print(f"\nconfig keys of {path}, with its values (override any: --config.KEY=VALUE):\n")
        print(textwrap.indent(str(config).rstrip(), "  "))
    print("\n" + MULTI_PROCESS_HELP)


def run(train_fn: Callable, example_config: str, doc: str = "") -> None:
    """Parses the command line and calls `train_fn(config)`, which says itself how the run ended.

    The config file is executed once, here: its keys check the overrides before absl applies them.
    `doc` (the script's docstring) heads `--help`.
    """
    early_signals.exit_if_received()  # one that came during the imports
    path, argv = split_config_arg(sys.argv)
    if HELP_FLAGS & set(argv[1:]):
        print_help(doc, path, example_config)
        sys.exit(0)
    if path is None:
        sys.exit(f"error: --config is required, e.g. --config {example_config}")
    try:
        loaded = load_config_file(path)
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
        set_xla_flags(config.value.train.precision)  # first: before anything starts JAX's backend
        use_compilation_cache(config.value)
        try:
            distributed.initialize(coordinator.value, num_processes.value, process_id.value)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"error: {e}")
        early_signals.exit_if_received()
        try:
            train_fn(config.value)
        except (ValueError, OSError, DataError, NonFiniteLossError) as e:
            sys.exit(f"error: {one_line(e)}")

    app.run(main, argv=argv)
