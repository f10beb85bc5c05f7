"""Where a process's multi-process settings come from, and one-line errors for inconsistent ones."""

import os
import subprocess
import sys

import pytest

from neobert_jax.runtime.distributed import DistributedSettings, resolve_settings

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
         "SLURM_LOCALID": "0"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_RANK": "3"}


def resolve(environ=None, on_tpu_vm=False, **flags):
    return resolve_settings(**flags, environ=environ or {}, on_tpu_vm=on_tpu_vm)


def test_single_process_is_a_no_op():
    assert resolve() is None
    assert resolve(num_processes=1) is None
    assert resolve({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None  # one srun task
    assert resolve({**OMPI, "OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}) is None


def test_flags_then_jax_variables_then_cluster_then_tpu():
    flags = dict(coordinator_address="node0:8476", num_processes=2, process_id=1)
    assert resolve(**flags) == DistributedSettings("explicit", "node0:8476", 2, 1)
    env = {"JAX_COORDINATOR_ADDRESS": "head:9000", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert resolve(env) == DistributedSettings("explicit", "head:9000", 4, 2)
    assert resolve({**env, **SLURM}, process_id=3) == DistributedSettings("explicit", "head:9000", 4, 3)
    assert resolve(SLURM, on_tpu_vm=True) == DistributedSettings("SLURM", None, 2, 1)  # JAX finds the address
    assert resolve(OMPI) == DistributedSettings("Open MPI", None, 4, 3)
    assert resolve({"SLURM_JOB_ID": "77"}, on_tpu_vm=True) == DistributedSettings("TPU VM")
    assert resolve(on_tpu_vm=True, num_processes=1) is None  # a single-host TPU VM can opt out


@pytest.mark.parametrize("flags, environ, message", [
    (dict(num_processes=2, process_id=0), {}, r"missing --coordinator_address$"),
    (dict(coordinator_address="h:1"), {}, r"missing --num_processes, --process_id$"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, r"process_id 2 is out of range for 2 "),
    (dict(num_processes=1, process_id=1), {}, r"process_id 1 is out of range for 1 processes"),
    (dict(num_processes=0), {}, r"num_processes must be at least 1, got 0"),
    (dict(coordinator_address="node0", num_processes=2, process_id=0), {}, r"'node0' must be host:port"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, r"JAX_NUM_PROCESSES\)='two' is not an integer"),
])
def test_inconsistent_settings_fail_with_one_line(flags, environ, message):
    with pytest.raises(ValueError, match=message) as error:
        resolve(environ, **flags)
    assert "\n" not in str(error.value)


def test_pretrain_cli_reports_bad_process_settings_in_one_line():
    command = [sys.executable, os.path.join(REPO, "scripts", "pretrain.py"), "--config",
               os.path.join(REPO, "configs", "tiny.py"), "--num_processes=2", "--process_id=5",
               "--coordinator_address=localhost:1234"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "error: process_id 5 is out of range for 2 processes (0..1)"
