"""Reliability of runs as users drive them: relative paths, the run's tokenizer, divergence,
one run per output dir (issue 14, items 0-3)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neobert_jax
from neobert_jax.data import DataError
from neobert_jax.data.tokenizer import load_tokenizer, vocab_fingerprint
from neobert_jax.hf.checkpoint import save_checkpoint_dir
from neobert_jax.hf.convert import flax_to_torch, main
from neobert_jax.runtime.checkpoint import RunCheckpointer
from neobert_jax.mlm.task import NonFiniteLossError, train
from neobert_jax.runtime.run_dir import RunDirInUse, RunDirLock
from neobert_jax.runtime.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory, write_corpus, write_tokenizer):
    root = tmp_path_factory.mktemp("reliability")
    corpus = write_corpus(root / "corpus.txt")
    return dict(root=root, corpus=corpus, tok_a=write_tokenizer(root / "tok_a", corpus, 300),
                tok_b=write_tokenizer(root / "tok_b", corpus, 400))


def _fingerprint(path):
    return vocab_fingerprint(load_tokenizer(str(path)))


def test_relative_paths_load_like_absolute_ones(tmp_path, monkeypatch, capsys, tiny_model):
    """Orbax read no metadata from a relative path: every tensor looked missing."""
    model = tiny_model(seed=1)
    save_checkpoint_dir(model, str(tmp_path / "ckpt"))
    monkeypatch.chdir(tmp_path)
    ids = np.arange(5, 17, dtype=np.int32)[None]
    relative, absolute = neobert_jax.from_pretrained("ckpt"), neobert_jax.from_pretrained(str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(np.asarray(relative(ids)), np.asarray(absolute(ids)))
    assert main(flax_to_torch, "", ["ckpt", "out"]) == 0, capsys.readouterr().err
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")


SHARDED_SAVE = """
import jax, numpy as np, orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from neobert_jax.hf.checkpoint import restore_params
mesh = Mesh(np.asarray(jax.devices()), ("d",))
params = {"w": jax.device_put(np.ones((4, 2), np.float32), NamedSharding(mesh, PartitionSpec("d")))}
with ocp.StandardCheckpointer() as c:
    c.save(PATH, params)
restored = restore_params(PATH, {"w": jax.ShapeDtypeStruct((4, 2), np.float32)})
print(len(restored["w"].sharding.device_set))
"""


def test_restored_params_sit_on_one_device_whatever_the_saving_layout(tmp_path):
    """A given sharding: orbax otherwise reuses the saving run's device layout (unsafe on another topology)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    code = SHARDED_SAVE.replace("PATH", repr(str(tmp_path / "params")))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"  # before: 2, the saving run's layout


def test_a_failed_run_writes_nothing(env, tmp_path, tiny_config, snapshot):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="missing.txt"):
        train(tiny_config(out, env["corpus"], **{"data.eval_files": str(tmp_path / "missing.txt")}))
    assert not out.exists()  # before: a tokenizer trained into out/tokenizer stayed behind
    (out / "keep").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(tiny_config(out, env["corpus"], init_from=str(tmp_path / "nothing")))
    assert snapshot(out) == {"keep": "dir"}


def test_the_run_tokenizer_is_the_one_trained_with(env, tmp_path, tiny_config, snapshot):
    out = tmp_path / "run"
    shutil.copytree(env["tok_a"], out / "tokenizer")  # left by an earlier, failed run
    cfg = tiny_config(out, env["corpus"], tokenizer=env["tok_b"], **{"train.max_steps": 2, "train.export_hf": True})
    train(cfg)
    assert _fingerprint(out / "tokenizer") == _fingerprint(env["tok_b"])
    assert _fingerprint(out / "hf") == _fingerprint(env["tok_b"])
    before = snapshot(out)
    other = tiny_config(out, env["corpus"], tokenizer=env["tok_a"], **{"train.max_steps": 4})
    with pytest.raises(ValueError, match="were trained with this tokenizer"):
        train(other)
    wider = tiny_config(out, env["corpus"], tokenizer=env["tok_b"], **{"train.max_steps": 4, "train.batch_size": 8})
    with pytest.raises(ValueError, match=r"train.batch_size=8 .* trained with 4"):
        train(wider)
    assert snapshot(out) == before


def test_divergence_keeps_the_checkpoints_from_before_it(env, tmp_path, tiny_config):
    good = {"train.max_steps": 10, "train.keep_checkpoints": 3}
    train(tiny_config(tmp_path, env["corpus"], tokenizer=env["tok_a"], **good))
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [6, 8, 10]
    diverging = tiny_config(tmp_path, env["corpus"], tokenizer=env["tok_a"],
                            **{**good, "train.max_steps": 30, "train.learning_rate": 1e12,
                               "train.max_nonfinite_steps": 3})
    with pytest.raises(NonFiniteLossError) as failure:
        train(diverging)
    kept = sorted(map(int, os.listdir(tmp_path / "checkpoints")))
    assert 10 in kept and max(kept) <= 12, kept  # before: 26, 28, 30 of a diverged model
    assert f"step {max(kept)}) is intact" in str(failure.value)


def _finite_logits(path) -> bool:
    return bool(np.isfinite(np.asarray(neobert_jax.from_pretrained(str(path))(np.arange(5, 17)[None]))).all())


def test_the_checkpoint_called_intact_after_a_divergence_gives_finite_logits(env, tmp_path, tiny_config):
    """Step 2's update is finite but leaves parameters that give non-finite losses from step 3 on; its
    checkpoint was called intact (the check looked at the step's loss, not at what it saved)."""
    options = {"train.max_steps": 8, "train.save_every": 1, "train.learning_rate": 1e12,
               "train.max_nonfinite_steps": 3, "data.eval_samples": 0}
    with pytest.raises(NonFiniteLossError) as failure:
        train(tiny_config(tmp_path, env["corpus"], tokenizer=env["tok_a"], **options))
    checkpoints = tmp_path / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["1", "2"]
    assert not _finite_logits(checkpoints / "2")
    assert f"checkpoint {checkpoints}/2 holds the parameters" in str(failure.value)
    assert "resume from step 1, the last intact one" in str(failure.value)  # before: "(step 2) is intact"
    assert _finite_logits(checkpoints / "1")
    shutil.move(checkpoints / "2", tmp_path / "diverged")  # the advice, at a sane learning rate
    resumed = train(tiny_config(tmp_path, env["corpus"], tokenizer=env["tok_a"],
                                **{**options, "train.learning_rate": 3e-3}))
    assert resumed.completed and np.isfinite(resumed.train_loss)


def test_a_second_run_on_one_output_dir_is_refused(env, tmp_path, tiny_config, snapshot):
    out = tmp_path / "run"
    with RunDirLock(str(out)):
        before = snapshot(out)
        with pytest.raises(RunDirInUse, match=rf"in use by pid {os.getpid()} on host"):
            train(tiny_config(out, env["corpus"], tokenizer=env["tok_a"]))
        assert snapshot(out) == before
    assert not out.exists()  # the lock made the dir and leaves nothing behind


def test_a_killed_holder_does_not_keep_the_lock(tmp_path):
    out = tmp_path / "run"
    code = ("import sys; from neobert_jax.runtime.run_dir import RunDirLock; "
            f"lock = RunDirLock({str(out)!r}).__enter__(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(RunDirInUse, match=rf"pid {holder.pid}"):
        RunDirLock(str(out)).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(out / ".lock")  # a stale file: its flock died with the holder
    with RunDirLock(str(out)):
        pass


def _tiny_state(step: int) -> TrainState:
    scalar = jnp.zeros((), jnp.int32)
    return TrainState(params={"w": jnp.full((4,), float(step))}, opt_state={}, step=scalar + step,
                      rng=jax.random.PRNGKey(0), nonfinite_streak=scalar, nonfinite_total=scalar)


def test_the_best_checkpoint_outlives_the_rotation_and_a_restart(tmp_path):
    def run(checkpointer, losses):
        for step, loss in losses.items():
            metrics = None if loss is None else {"eval_loss": loss}
            checkpointer.save(step, _tiny_state(step), {}, {}, metrics=metrics)
        checkpointer.close()
        return sorted(map(int, os.listdir(tmp_path / "checkpoints")))

    best = ("eval_loss", "min")
    assert run(RunCheckpointer(str(tmp_path), 2, 2, best=best), {2: 5.0, 4: 3.0, 6: 4.0, 8: 4.5, 10: 6.0}) == [4, 8, 10]
    # The metrics are read back from disk; a save between eval points carries none.
    assert run(RunCheckpointer(str(tmp_path), 2, 2, best=best), {12: 7.0, 14: None}) == [4, 12, 14]
    assert run(RunCheckpointer(str(tmp_path), 2, 2), {16: None}) == [14, 16]  # without best: the latest only


def test_a_run_that_degrades_keeps_its_best_checkpoint(env, tmp_path, tiny_config):
    """Finite but diverging: the keep-2 rotation alone would keep only the two worst checkpoints."""
    options = {"train.max_steps": 8, "train.keep_checkpoints": 2, "train.keep_best_checkpoint": True,
               "train.eval_every": 2, "train.save_every": 4, "data.eval_samples": 20}
    train(tiny_config(tmp_path, env["corpus"], tokenizer=env["tok_a"], **options))
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [6, 8]  # eval points save too
    train(tiny_config(tmp_path, env["corpus"], tokenizer=env["tok_a"],
                      **{**options, "train.max_steps": 16, "train.learning_rate": 3.0}))
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "eval_loss" in r}
    assert sorted(evals) == list(range(2, 17, 2)) and all(map(np.isfinite, evals.values()))
    best = min(evals, key=evals.get)
    assert best <= 12, evals  # the scenario: the best is older than the two latest
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [best, 14, 16]  # before: [14, 16]
