"""The TPU-slice and SLURM launchers: what --dry-run says they will do, and one-line refusals."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
TRAIN_ARGS = ["--config", "configs/student.py", "--config.output_dir=/shared/runs/it's mine", "--config.mesh.fsdp=-1"]
TOOLS = ("bash", "dirname", "cat", "seq", "git", "tar")  # what the launchers use besides gcloud / sbatch


@pytest.fixture(scope="module")
def bare_path(tmp_path_factory):
    """A PATH with the launchers' shell tools and python, but no gcloud or sbatch: nothing real can run."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for tool in TOOLS:
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    os.symlink(sys.executable, bin_dir / "python3")
    return str(bin_dir)


@pytest.fixture
def launch(bare_path):
    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([shutil.which("bash"), os.path.join(REPO, "scripts", script), *args], capture_output=True,
                              text=True, env=dict(os.environ, PATH=bare_path), timeout=60)
    return run


def remote_command(line: str) -> list[str]:
    """The words a worker's shell runs for one `gcloud ... ssh --command=...` line."""
    command = next(w for w in shlex.split(line) if w.startswith("--command="))
    return shlex.split(command.removeprefix("--command="))


def test_tpu_dry_run_copies_installs_and_trains_on_every_worker(launch):
    out = launch("launch_tpu_pod.sh", "--tpu", "slice-a", "--zone", "us-east5-b", "--project", "proj", "--dry-run",
                 "--", *TRAIN_ARGS)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()[1:]
    assert not any("tpu-vm create" in line for line in lines)  # nothing is created unless asked
    pack, copy, unpack, install, train = lines
    assert "ls-files" in pack and "tar -czf" in pack and REPO in pack
    for line in lines[1:]:
        assert "slice-a" in line and "--zone=us-east5-b" in line and "--project=proj" in line
        assert "--worker=all" in line
    assert copy.startswith("gcloud compute tpus tpu-vm scp ")
    assert remote_command(unpack)[:3] == ["mkdir", "-p", "neobert_jax"]
    assert remote_command(install) == ["cd", "neobert_jax", "&&", "python3", "-m", "pip", "install", "--quiet", "-e",
                                       ".[tpu]"]
    words = remote_command(train)
    assert words[:5] == ["cd", "neobert_jax", "&&", "python3", "scripts/pretrain.py"] and words[5:] == TRAIN_ARGS


def test_tpu_dry_run_creates_only_when_asked_and_can_detach(launch):
    out = launch("launch_tpu_pod.sh", "--tpu", "s", "--zone", "z", "--create", "v6e-16", "--spot", "--skip-install",
                 "--detach", "--remote-dir", "code", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()[1:]
    assert lines[0] == ("gcloud compute tpus tpu-vm create s --zone=z --accelerator-type=v6e-16 "
                        "--version=v2-alpha-tpuv6e --spot")
    assert not any("pip" in line for line in lines)
    words = remote_command(lines[-1])
    assert words[:4] == ["cd", "code", "&&", "nohup"] and words[4:8] == ["python3", "scripts/pretrain.py", "--config",
                                                                         "configs/student.py"]
    assert words[-6:] == [">", "train.log", "2>&1", "<", "/dev/null", "&"]


def test_slurm_dry_run_prints_a_valid_batch_script(launch, bare_path):
    out = launch("launch_slurm.sh", "--nodes", "2", "--gpus-per-node", "4", "--time", "02:00:00", "--partition", "gpu",
                 "--dry-run", "--", *TRAIN_ARGS)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    assert script.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=02:00:00", "#SBATCH --partition=gpu", "#SBATCH --signal=TERM@300",
                 f"cd {REPO}", "export JAX_LOCAL_DEVICE_IDS=0,1,2,3"):
        assert line in script.splitlines(), line
    python = os.path.join(bare_path, "python3")  # the submitting environment's interpreter
    assert shlex.split(script.strip().splitlines()[-1]) == ["srun", "--kill-on-bad-exit=1", python,
                                                            "scripts/pretrain.py", *TRAIN_ARGS]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("script, args, message", [
    ("launch_tpu_pod.sh", ["--zone", "z", "--dry-run"], "error: --tpu and --zone are required"),
    ("launch_tpu_pod.sh", ["--tpu", "s", "--zone", "z", "--create", "v4-32", "--dry-run"],
     "error: no default runtime for v4-32; pass --version"),
    ("launch_tpu_pod.sh", ["--tpu", "s", "--zone", "z"], "error: gcloud not found; install the Google Cloud CLI"),
    ("launch_slurm.sh", ["--nodes", "2", "--gpus-per-node", "0", "--dry-run"],
     "error: --gpus-per-node must be a positive integer, got '0'"),
    ("launch_slurm.sh", ["--nodes", "2", "--gpus-per-node", "8"],
     "error: sbatch not found; run this on a SLURM login node"),
    ("launch_slurm.sh", ["--nodes", "2", "--gpu", "8"], "error: unknown option --gpu"),
])
def test_bad_input_is_refused_in_one_line(launch, script, args, message):
    out = launch(script, *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1] == message
