"""Several steps per compiled call (train.steps_per_call) give the run one step per call gives:
the same per-step records, evaluations and checkpoints, calls cut at eval/save points and the
run's end, and a resume from a step no call boundary falls on."""

import json
import os
import shutil

import numpy as np
import pytest

from neobert_jax.mlm.task import train

SETTINGS = {"train.max_steps": 11, "train.save_every": 4, "train.eval_every": 5, "train.keep_checkpoints": 5,
            "data.eval_samples": 16}


def records(output_dir) -> dict[int, dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def assert_same_records(got: dict, want: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "grad_norm", "learning_rate", "eval_loss", "masked_tokens"):
            if key in want[step]:
                np.testing.assert_allclose(got[step][key], want[step][key], rtol=2e-6, err_msg=f"step {step} {key}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c.txt", lines=400)


@pytest.fixture(scope="module")
def one_per_call(corpus, tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("k1") / "run"
    result = train(tiny_config(out, corpus, **SETTINGS, **{"train.steps_per_call": 1}))
    assert result.completed and result.step == 11
    return out


def test_three_per_call_matches_one_per_call(one_per_call, corpus, tmp_path, tiny_config):
    out = tmp_path / "run"
    result = train(tiny_config(out, corpus, **SETTINGS, **{"train.steps_per_call": 3}))
    assert result.completed and result.step == 11
    want, got = records(one_per_call), records(out)
    assert sorted(got) == sorted(want) == list(range(1, 12))
    assert [s for s in got if "eval_loss" in got[s]] == [5, 10, 11]
    assert_same_records(got, want, range(1, 12))
    assert sorted(os.listdir(out / "checkpoints")) == sorted(os.listdir(one_per_call / "checkpoints"))
    with open(out / "run_config.json") as f:
        assert json.load(f)["train"]["steps_per_call"] == 3


def test_resume_off_a_call_boundary(one_per_call, corpus, tmp_path, tiny_config):
    """Checkpoint 8 of the one-per-call run, continued three per call: calls of 2 (to the eval at
    10) and 1 (the end) give steps 9-11 as the uninterrupted run had them."""
    out = tmp_path / "run"
    shutil.copytree(one_per_call, out)
    shutil.rmtree(out / "checkpoints" / "11")
    result = train(tiny_config(out, corpus, **SETTINGS, **{"train.steps_per_call": 3}))
    assert result.completed and result.step == 11
    assert_same_records(records(out), records(one_per_call), range(1, 12))
