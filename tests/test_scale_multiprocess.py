"""Multi-process training on CPU: 2 processes x 2 simulated devices train exactly like 1 process x 4
devices, only process 0 reports, the run's checkpoint continues on 1 process x 2 devices (another
mesh), a signal to one process stops both at the same step, and the data pipeline gives the same
global batches for any process count (what makes all that possible)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import portpicker
import pytest

from neobert_jax.data import build_mlm_iterator, default_data_config
from neobert_jax.data.tokenizer import save_tokenizer, train_tokenizer, vocab_fingerprint

pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
STEPS = 6
OVERRIDES = {
    "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
    "model.intermediate_size": 64, "model.local_attention": 16, "data.eval_samples": 16, "data.num_threads": 1,
    "train.max_steps": STEPS, "train.batch_size": 8, "train.seq_len": 64, "train.warmup_steps": 2,
    "train.learning_rate": 3e-3, "train.log_every": 1, "train.save_every": 2, "train.eval_batches": 2,
}
TIMEOUT_S = 300  # only so that a hung collective fails CI instead of stalling it
WORDS = ("hosts read their own rows of one global batch while devices split the parameters and every "
         "process saves its shards of the checkpoint so a run continues on any mesh").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(corpus file, tokenizer dir, tokenizer): 400 short documents and a 300-token BPE."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    (root / "train.txt").write_text("\n".join(f"doc {i} " + " ".join(rng.choice(WORDS, rng.integers(3, 40)))
                                              for i in range(400)) + "\n")
    tokenizer = train_tokenizer([str(root / "train.txt")], vocab_size=300)
    save_tokenizer(tokenizer, str(root / "tokenizer"))
    return str(root / "train.txt"), str(root / "tokenizer"), tokenizer


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _pretrain(corpus, output_dir, *flags) -> list[str]:
    train_file, tokenizer_dir, _ = corpus
    return [sys.executable, os.path.join(REPO, "scripts", "pretrain.py"), "--config",
            os.path.join(REPO, "configs", "tiny.py"), f"--config.output_dir={output_dir}",
            f"--config.tokenizer={tokenizer_dir}", f"--config.data.train_files={train_file}",
            *[f"--config.{k}={v}" for k, v in OVERRIDES.items()], *flags]


def _run_processes(commands: list[list[str]], envs: list[dict]) -> list[str]:
    """Runs the commands concurrently; -> their outputs (stdout + stderr), all having exited 0.

    Outputs go to files, not pipes: a process blocked on a full pipe would stall the others' collectives.
    """
    logs = [tempfile.TemporaryFile(mode="w+") for _ in commands]
    procs = [subprocess.Popen(c, cwd=REPO, env=e, stdout=log, stderr=subprocess.STDOUT, text=True)
             for c, e, log in zip(commands, envs, logs)]
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = []
    for p, log in zip(procs, logs):
        log.seek(0)
        outputs.append(log.read())
        log.close()
        assert p.returncode == 0, outputs[-1][-4000:]
    return outputs


def _losses(output_dir) -> tuple[list[int], list[float], float]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["step"] for r in records], [r["loss"] for r in records], records[-1]["eval_loss"]


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("one_process")
    _run_processes([_pretrain(corpus, output_dir)], [_env(4)])
    return output_dir


@pytest.fixture(scope="module")
def two_processes(corpus, tmp_path_factory):
    """Mesh data=2 x fsdp=2: batch rows and parameters both split across the processes."""
    output_dir = tmp_path_factory.mktemp("two_processes")
    address = f"localhost:{portpicker.pick_unused_port()}"
    commands = [_pretrain(corpus, output_dir, "--config.mesh.data=2", "--config.mesh.fsdp=2",
                          f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}")
                for i in (0, 1)]
    return output_dir, _run_processes(commands, [_env(2)] * 2)


def test_two_processes_train_like_one(one_process, two_processes):
    output_dir, (first, second) = two_processes
    steps, losses, eval_loss = _losses(output_dir)
    reference_steps, reference_losses, reference_eval = _losses(one_process)
    assert steps == reference_steps == list(range(1, STEPS + 1))  # one metrics line per step: process 0 alone
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert eval_loss == pytest.approx(reference_eval, rel=1e-5)
    assert "4 device(s) in 2 process(es)" in first and "Final Student Train Loss" in first
    assert "Final Student" not in second and "data:" not in second  # process 1 reports nothing

    from safetensors.numpy import load_file

    exported, reference = (load_file(os.path.join(d, "hf", "model.safetensors")) for d in (output_dir, one_process))
    assert exported.keys() == reference.keys()
    for name in reference:  # process 0 wrote parameters gathered from both processes' shards
        np.testing.assert_allclose(exported[name], reference[name], atol=1e-5, err_msg=name)
    assert sorted(os.listdir(output_dir / "checkpoints"), key=int) == ["2", "4", "6"]
    assert os.path.getsize(output_dir / "loss.png") > 1000 and os.listdir(output_dir / "tensorboard")


def test_checkpoint_of_two_processes_continues_on_one_process_and_another_mesh(corpus, one_process, two_processes,
                                                                               tmp_path):
    source, _ = two_processes
    output_dir = tmp_path / "continued"
    shutil.copytree(source, output_dir)
    shutil.rmtree(output_dir / "checkpoints" / "6")  # resume from step 4
    shutil.rmtree(output_dir / "hf")
    out, = _run_processes([_pretrain(corpus, output_dir, "--config.mesh.data=1", "--config.mesh.fsdp=2")], [_env(2)])
    assert f"resumed from {output_dir / 'checkpoints'}/4" in out and "2 device(s) in 1 process(es)" in out
    steps, losses, eval_loss = _losses(output_dir)
    reference_steps, reference_losses, reference_eval = _losses(one_process)
    assert steps == reference_steps
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert eval_loss == pytest.approx(reference_eval, rel=1e-5)


def test_a_signal_to_one_process_stops_all_after_the_same_step():
    env = dict(_env(2), JAX_COORDINATOR_ADDRESS=f"localhost:{portpicker.pick_unused_port()}", JAX_NUM_PROCESSES="2")
    worker = [sys.executable, os.path.join(REPO, "tests", "scale_stop_worker.py")]
    outputs = _run_processes([worker, worker], [dict(env, JAX_PROCESS_ID=str(i)) for i in (0, 1)])
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [r["process"] for r in results] == [0, 1] and results[0]["source"] == "explicit"
    assert [r["stopped_after"] for r in results] == [4, 4]  # signal after step 3, agreed on one step later


def test_rows_follow_the_mesh_and_process_0s_tokenizer_reaches_every_process(corpus):
    """Rows by `jax.process_index()` would put process 0's rows where the mesh keeps process 1's."""
    _, tokenizer_dir, tokenizer = corpus
    env = dict(_env(2), JAX_COORDINATOR_ADDRESS=f"localhost:{portpicker.pick_unused_port()}", JAX_NUM_PROCESSES="2")
    worker = [sys.executable, os.path.join(REPO, "tests", "scale_rows_worker.py"), tokenizer_dir]
    outputs = _run_processes([worker, worker], [dict(env, JAX_PROCESS_ID=str(i)) for i in (0, 1)])
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [r["rows"] for r in results] == [[4, 8], [0, 4]]  # process 0's devices hold the second half
    assert all(r["batch"] == list(range(8)) for r in results)
    assert [r["tokenizer"] for r in results] == [vocab_fingerprint(tokenizer)] * 2


@pytest.mark.parametrize("split", ["train", "eval"])
def test_processes_slice_the_same_global_batches_whatever_their_count(corpus, split):
    _, _, tokenizer = corpus
    cfg = default_data_config()
    cfg.train_files, cfg.eval_samples = corpus[0], 40

    def batches(process_index, process_count):
        iterator = build_mlm_iterator(cfg, tokenizer=tokenizer, seq_len=64, batch_size=8 // process_count,
                                      split=split, process_index=process_index, process_count=process_count,
                                      num_epochs=2 if split == "train" else None)
        steps = iterator.steps_per_epoch + 2 if split == "train" else iterator.steps_per_epoch  # into epoch 2
        return [next(iterator) for _ in range(steps)]

    whole = batches(0, 1)
    for count in (2, 4):
        parts = [batches(i, count) for i in range(count)]
        for step, batch in enumerate(whole):
            for key, value in batch.items():
                np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), value,
                                              err_msg=f"{count} processes, step {step}, {key}")
