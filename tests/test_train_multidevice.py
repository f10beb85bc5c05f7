"""One device and a 4-device mesh (data, fsdp, tensor and mixes) train to the same losses."""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.multiprocess

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _runs() -> dict:
    """multidevice_losses.py's results: one subprocess with 4 simulated devices, shared by the tests."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_losses.py")], env=env, cwd=HERE,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_meshes_give_the_same_losses():
    runs = dict(_runs())
    assert runs["fsdp4"]["embedding_spec"] == ["None", "fsdp"]  # the parameters really are split
    assert runs["data2_tensor2"]["embedding_spec"] == ["tensor", "None"]
    for name in ("kernels_one_device", "kernels_data2_fsdp2"):  # their own test, below
        runs.pop(name)
    reference = runs["one_device"]
    for name, run in runs.items():
        np.testing.assert_allclose(run["losses"], reference["losses"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(run["embedding_abs_sum"], reference["embedding_abs_sum"], rtol=1e-5, err_msg=name)
    assert reference["losses"][-1] != reference["losses"][0]  # the parameters were updated between steps


def test_kernels_run_per_device_under_a_mesh():
    """Pallas kernels cannot be partitioned by XLA: under a 2x2 data x fsdp mesh each call must see
    its device's rows (a 4-row micro-batch -> 1 row) and the losses must match one device."""
    runs = _runs()
    one, split = runs["kernels_one_device"], runs["kernels_data2_fsdp2"]
    assert one["kernel_rows"] == [4] and split["kernel_rows"] == [1]
    np.testing.assert_allclose(split["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(split["embedding_abs_sum"], one["embedding_abs_sum"], rtol=1e-5)
