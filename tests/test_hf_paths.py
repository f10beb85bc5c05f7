"""One rule for a model's files: a model dir, a run dir or a checkpoint step dir, never a parent's."""

import os

from neobert_jax.hf.paths import locate


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_a_run_dir_and_its_step_dirs_find_the_runs_config_and_tokenizer(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "tiny"
    touch(run / "config.json")
    touch(run / "tokenizer" / "tokenizer.json")
    for step in (4, 8):
        (run / "checkpoints" / str(step) / "params").mkdir(parents=True)
    (run / "checkpoints" / "12").mkdir()  # a save killed before its params were written
    monkeypatch.chdir(tmp_path)  # relative paths, as the README writes them
    files = locate("runs/tiny")
    assert (files.kind, files.params, files.config, files.tokenizer) == (
        "run dir", str(run / "checkpoints" / "8" / "params"), str(run / "config.json"), str(run / "tokenizer"))
    step = locate("runs/tiny/checkpoints/4")
    assert (step.kind, step.params, step.config, step.tokenizer) == (
        "checkpoint step dir", str(run / "checkpoints" / "4" / "params"), str(run / "config.json"),
        str(run / "tokenizer"))


def test_a_model_dir_never_takes_a_tokenizer_or_config_from_its_parents(tmp_path):
    touch(tmp_path / "tokenizer.json")  # another model's, one level up
    touch(tmp_path / "config.json")
    touch(tmp_path / "teacher" / "model.safetensors")
    files = locate(str(tmp_path / "teacher"))
    assert (files.kind, files.params, files.config, files.tokenizer) == ("model dir", None, None, None)
    assert "tokenizer none" in files.describe()
    touch(tmp_path / "teacher" / "config.json")
    touch(tmp_path / "teacher" / "tokenizer_config.json")
    files = locate(str(tmp_path / "teacher"))
    assert (files.config, files.tokenizer) == (str(tmp_path / "teacher" / "config.json"), str(tmp_path / "teacher"))
