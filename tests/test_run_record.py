"""A run never modifies the config it was given: what it decides (the automatic batch and steps per
call, init_from's or ModernBERT's model keys, the kernels and attention backends, the contrastive
row shapes) is one record, written to run_config.json beside the config it settles; both tasks time
their start-up phases; a run dir
whose run_config.json predates the record still resumes, and its batch size is still checked."""

import json
import os

import jax
import pytest

from neobert_jax.contrastive.config import contrastive_config
from neobert_jax.contrastive.task import train_contrastive
from neobert_jax.mlm.task import train


def read_run_config(output_dir) -> dict:
    with open(os.path.join(output_dir, "run_config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, write_corpus):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c.txt", lines=200)


def test_mlm_run_leaves_its_config_as_given_and_records_what_it_decided(tmp_path, corpus, tiny_config):
    config = tiny_config(tmp_path / "run", corpus, **{"train.batch_size": 0, "train.steps_per_call": 0,
                                                      "train.max_steps": 2, "train.auto_batch_steps": 10})
    given = config.to_dict()
    assert train(config).completed
    assert config.to_dict() == given

    written = read_run_config(tmp_path / "run")
    resolved = written["resolved"]
    platform = jax.default_backend()
    assert resolved["batch_size"] > 0 and written["train"]["batch_size"] == resolved["batch_size"]
    assert resolved["total_steps"] == 2
    assert written["train"]["steps_per_call"] == resolved["steps_per_call"] == (1 if platform == "cpu" else 16)
    assert written["model"]["global_attn_every_n_layers"] == resolved["model"]["global_attn_every_n_layers"] == 3
    kernel = "pallas" if platform == "gpu" else "xla"
    assert written["model"]["logsumexp"] == resolved["logsumexp"] == kernel
    assert set(resolved["attention"]) == {"global", "local"}
    assert written["given"] == {"train.batch_size": 0, "train.steps_per_call": 0, "model.logsumexp": "auto",
                                "model.layer_norm_backward": "auto", "model.global_attn_every_n_layers": None,
                                "model.global_rope_theta": None}
    assert written["model"]["global_rope_theta"] == resolved["model"]["global_rope_theta"] == 160000.0


def test_a_run_dir_written_before_the_record_still_resumes(tmp_path, corpus, tiny_config):
    out = tmp_path / "run"
    assert train(tiny_config(out, corpus, **{"train.max_steps": 2})).completed
    old = read_run_config(out)
    del old["resolved"], old["given"]  # the flat layout of earlier releases
    with open(out / "run_config.json", "w") as f:
        json.dump(old, f)
    with pytest.raises(ValueError, match="train.batch_size=8 .* trained with 4"):
        train(tiny_config(out, corpus, **{"train.max_steps": 4, "train.batch_size": 8}))
    result = train(tiny_config(out, corpus, **{"train.max_steps": 4}))
    assert result.completed and result.step == 4
    assert read_run_config(out)["resolved"]["total_steps"] == 4


def test_contrastive_run_leaves_its_config_as_given_and_records_the_row_shapes(tmp_path, contrastive_texts,
                                                                               tiny_tokenizer_dir, tiny_hf_dir,
                                                                               capsys):
    root = str(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for i in range(0, len(contrastive_texts) - 1, 2):
            f.write(json.dumps({"anchor": contrastive_texts[i], "positive": contrastive_texts[i + 1]}) + "\n")
    config = contrastive_config()
    config.init_from, config.output_dir, config.data.train_files = tiny_hf_dir(root, tiny_tokenizer_dir(root)), \
        str(tmp_path / "run"), str(pairs)
    config.train.update(max_steps=6, batch_size=2, seq_len=32, warmup_steps=0, log_every=1)
    given = config.to_dict()
    assert train_contrastive(config).completed
    assert config.to_dict() == given
    start_up = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("start-up:"))
    for phase in ("devices", "model", "tokenizer", "data", "state", "run files", "reporting"):
        assert f"{phase} " in start_up, start_up
    assert "programs (" in start_up and "XLA " in start_up, start_up  # what the first steps compiled
    summary = json.load(open(tmp_path / "run" / "run_summary.json"))
    assert summary["compilation"]["programs"] > 0 and summary["compilation"]["xla_s"] > 0, summary
    host = summary["host_s"]  # after the first step only (not its compilation): within the training time
    assert sum(host.values()) > 0 and sum(host.values()) <= summary["training_s"] + 0.01, summary

    written = read_run_config(tmp_path / "run")
    shapes = "ladder" if jax.default_backend() == "cpu" else "one"
    assert written["data"]["row_shapes"] == written["resolved"]["row_shapes"] == shapes
    assert written["given"]["data.row_shapes"] == "auto" and "train.steps_per_call" not in written["train"]
