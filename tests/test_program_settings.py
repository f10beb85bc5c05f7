"""The executable cache's keys of the fine-tuning tasks (contrastive and classification): a run whose
settings equal an earlier run's must lower to the same program, or the cache would hand it the
earlier run's executable. Each config change below is lowered and compared: the ones read as data
(learning rate, warmup, weight decay, clipping norm, output dir) keep both the settings and the
program; the ones that change the program (loss, pooling, slots, dropout, precision, problem type,
head pooling) change the settings too. On the CPU the cache itself is off (runtime/executables.py),
so this checks its keys against the programs they stand for."""

import json
import os

from conftest import set_keys
from neobert_jax.classify import task as classify_task
from neobert_jax.classify.config import validate as validate_classify
from neobert_jax.classify.setup import setup_classify
from neobert_jax.contrastive import task as contrastive_task
from neobert_jax.contrastive.config import validate as validate_contrastive
from neobert_jax.contrastive.setup import setup_contrastive
from neobert_jax.runtime import config as runtime_config
from neobert_jax.runtime.runner import run_frame

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_CHANGES = {"train.learning_rate": 1e-4, "train.warmup_fraction": 0.3, "train.weight_decay": 0.05,
                "train.max_grad_norm": 0.5, "train.layer_lr_decay": 1.0}


def configured(config_file, output_dir, values: dict):
    cfg = runtime_config.load_config_file(os.path.join(REPO, "configs", config_file))
    cfg.output_dir = str(output_dir)
    return set_keys(cfg, values)


def lowered(cfg, validate, setup_fn, module, task_cls) -> tuple[str, str]:
    """(the settings the task keys its programs by, its train step's lowered text)."""
    validate(cfg)
    with run_frame(cfg):
        setup = setup_fn(cfg, lambda _: None)
        try:
            task = task_cls(cfg, setup, lambda _: None)
            batch, _ = task.next_batch(1)
            program = task._step.lower(setup.state, batch).as_text()
        finally:
            setup.checkpointer.close()
    return json.dumps(module.program_settings(cfg, setup), sort_keys=True, default=str), program


def check(results: dict[str, tuple[str, str]], structural: list[str]) -> None:
    base_settings, base_program = results["base"]
    assert results["data"] == (base_settings, base_program)
    for name in structural:
        settings, program = results[name]
        assert program != base_program, f"{name} was expected to change the program"
        assert settings != base_settings, f"{name} changes the program but not the cache's settings"


def test_contrastive_settings_stand_for_the_program(tmp_path, tiny_tokenizer_dir, tiny_hf_dir):
    hf_dir = tiny_hf_dir(str(tmp_path), tiny_tokenizer_dir(str(tmp_path)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": f"query {i} about code", "positive": f"answer {i} in prose"}) + "\n"
                             for i in range(24)))
    base = {"init_from": hf_dir, "data.train_files": str(pairs), "data.row_shapes": "one", "train.batch_size": 8,
            "train.seq_len": 32, "train.epochs": 1}
    variants = {"base": {}, "data": DATA_CHANGES, "scale": {"loss.scale": 10.0}, "gte": {"loss.name": "gte"},
                "cls pooling": {"pooling.mode": "cls"}, "texts per row": {"data.max_texts_per_row": 4},
                "dropout": {"model.attention_dropout": 0.1}, "bf16": {"train.precision": "bf16"}}
    results = {name: lowered(configured("contrastive.py", tmp_path / name, {**base, **change}), validate_contrastive,
                             setup_contrastive, contrastive_task, contrastive_task.ContrastiveTask)
               for name, change in variants.items()}
    check(results, [name for name in variants if name not in ("base", "data")])


def test_classification_settings_stand_for_the_program(tmp_path, tiny_tokenizer_dir, tiny_hf_dir):
    texts = [("good fine great", "pos"), ("bad awful poor", "neg")] * 12
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in texts))
    hf_dir = tiny_hf_dir(str(tmp_path), tiny_tokenizer_dir(str(tmp_path), texts=[t for t, _ in texts]))
    base = {"init_from": hf_dir, "data.train_files": str(train), 
            "train.batch_size": 8, "train.seq_len": 32, "train.epochs": 1}
    variants = {"base": {}, "data": DATA_CHANGES, "mean pooling": {"classifier.pooling": "mean"},
                "head dropout": {"classifier.dropout": 0.1}, "multi-label": {"classifier.problem_type": "multi_label_classification"}}
    results = {name: lowered(configured("classify.py", tmp_path / name, {**base, **change}), validate_classify,
                             setup_classify, classify_task, classify_task.ClassifyTask)
               for name, change in variants.items()}
    check(results, [name for name in variants if name not in ("base", "data")])
