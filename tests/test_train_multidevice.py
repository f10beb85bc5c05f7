"""One device and a 4-device mesh (data, fsdp, tensor and mixes) train to the same losses."""

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def test_meshes_give_the_same_losses():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_losses.py")], env=env, cwd=HERE,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout)
    assert runs["fsdp4"]["embedding_spec"] == ["None", "fsdp"]  # the parameters really are split
    assert runs["data2_tensor2"]["embedding_spec"] == ["tensor", "None"]
    reference = runs["one_device"]
    for name, run in runs.items():
        np.testing.assert_allclose(run["losses"], reference["losses"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(run["embedding_abs_sum"], reference["embedding_abs_sum"], rtol=1e-5, err_msg=name)
    assert reference["losses"][-1] != reference["losses"][0]  # the parameters were updated between steps
