"""Multi-process start-up: `initialize()` joins this process to a multi-host run, or does nothing.

JAX's multi-controller runtime runs one process per host (or per GPU); every process runs the
same program and must call `jax.distributed.initialize` before touching a device. Where the
settings come from, first match wins:

1. explicit values (scripts' `--coordinator_address/--num_processes/--process_id` flags),
   each falling back to `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`;
2. a SLURM job step (`srun`) or an Open MPI launch (`mpirun`) with more than one task;
3. a Cloud TPU VM: JAX reads the slice's workers from the TPU metadata (GCE) or environment (GKE);
4. otherwise a single process: nothing to do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OMPI = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """What `jax.distributed.initialize` gets; None = JAX detects it from `source`."""

    source: str  # "explicit" (flags or JAX_* variables), "SLURM", "Open MPI" or "TPU VM"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _integer(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _explicit(coordinator_address, num_processes, process_id, environ) -> DistributedSettings | None:
    address = coordinator_address or environ.get(ENV_COORDINATOR) or None
    count = _integer(num_processes if num_processes is not None else environ.get(ENV_NUM_PROCESSES),
                     f"num_processes (--num_processes or {ENV_NUM_PROCESSES})")
    index = _integer(process_id if process_id is not None else environ.get(ENV_PROCESS_ID),
                     f"process_id (--process_id or {ENV_PROCESS_ID})")
    if address is None and count is None and index is None:
        return None
    if count is not None and count < 1:
        raise ValueError(f"num_processes must be at least 1, got {count}")
    if count is not None and index is not None and not 0 <= index < count:
        raise ValueError(f"process_id {index} is out of range for {count} processes (0..{count - 1})")
    if count == 1:
        return DistributedSettings("explicit", address, 1, 0)
    missing = [name for name, value in (("--coordinator_address", address), ("--num_processes", count),
                                        ("--process_id", index)) if value is None]
    if missing:
        raise ValueError(f"a multi-process run needs --coordinator_address, --num_processes and --process_id "
                         f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing {', '.join(missing)}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address {address!r} must be host:port, e.g. node0:8476")
    return DistributedSettings("explicit", address, count, index)


def _on_cloud_tpu_vm() -> bool:
    """Set by `import jax` when libtpu finds TPU chips; JAX keys its own TPU detection on it. A JAX
    without this (private) flag falls back to the explicit flags."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def resolve_settings(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, environ: Mapping[str, str] | None = None,
                     on_tpu_vm: bool | None = None) -> DistributedSettings | None:
    """The settings of this process by the order in the module docstring; None = single process."""
    environ = os.environ if environ is None else environ
    explicit = _explicit(coordinator_address, num_processes, process_id, environ)
    if explicit is not None:
        return explicit if explicit.num_processes > 1 else None
    if all(key in environ for key in _SLURM_STEP):
        count = _integer(environ["SLURM_NTASKS"], "SLURM_NTASKS")
        index = _integer(environ["SLURM_PROCID"], "SLURM_PROCID")
        return DistributedSettings("SLURM", None, count, index) if count > 1 else None
    if all(key in environ for key in _OMPI):
        count = _integer(environ["OMPI_COMM_WORLD_SIZE"], "OMPI_COMM_WORLD_SIZE")
        index = _integer(environ["OMPI_COMM_WORLD_RANK"], "OMPI_COMM_WORLD_RANK")
        return DistributedSettings("Open MPI", None, count, index) if count > 1 else None
    if _on_cloud_tpu_vm() if on_tpu_vm is None else on_tpu_vm:
        return DistributedSettings("TPU VM")
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> DistributedSettings | None:
    """Joins the multi-process run this process belongs to (call before any JAX computation).

    Returns the settings used, or None when this is a single-process run (nothing is done).
    """
    settings = resolve_settings(coordinator_address, num_processes, process_id)
    if settings is None or jax.distributed.is_initialized():
        return settings
    # Explicit settings are complete: JAX's cluster detection would otherwise still narrow the
    # visible GPUs to one per SLURM/MPI task (JAX_LOCAL_DEVICE_IDS still applies).
    detection = "deactivate" if settings.source == "explicit" else None
    try:
        jax.distributed.initialize(settings.coordinator_address, settings.num_processes, settings.process_id,
                                   cluster_detection_method=detection)
    except (ValueError, RuntimeError) as e:
        message = " ".join(str(e).split())
        hint = "; on a single-host TPU VM pass --num_processes=1" if settings.source == "TPU VM" else ""
        raise RuntimeError(f"jax.distributed.initialize ({settings.source} settings) failed: {message}{hint}") from e
    return settings

