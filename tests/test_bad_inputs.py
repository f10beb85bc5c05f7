"""Every CLI, fed bad input the way users do: exit != 0, one `error:` line naming the file, key or
tensor, and the output dir exactly as it was. The CLIs run in-process (their `main`) so each case
costs no interpreter or JAX start; all cases fail before anything compiles."""

import argparse
import gc
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
from absl import flags

from neobert_jax.config import ATTENTION_BACKENDS, KERNEL_BACKENDS
from neobert_jax.classify.config import POOLINGS, PROBLEM_TYPES
from neobert_jax.contrastive.config import LAYOUTS, LOSSES, POOLING_MODES, ROW_SHAPES, SAMPLINGS, SIMILARITIES
from neobert_jax.data.packing import PACKING_METHODS
from neobert_jax.mlm.task import train
from neobert_jax.runtime.config import PRECISIONS, REMAT_POLICIES, SCHEDULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = "OUT"  # stands for the case's output dir in the arguments


def _script(relative):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], os.path.join(REPO, relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _absl_cli(train_fn, argv):
    from neobert_jax.runtime.cli import run

    sys.argv = argv
    try:
        run(train_fn, "configs/x.py")
        return 0
    finally:
        for name in list(flags.FLAGS):  # run() defines its flags afresh on every call
            if name.split(".")[0] in ("config", "coordinator_address", "num_processes", "process_id"):
                delattr(flags.FLAGS, name)


def _call(cli: str, args: list[str]):
    if cli == "pretrain":
        return _absl_cli(train, ["pretrain.py", "--config", os.path.join(REPO, "configs/tiny.py"), *args])
    if cli == "contrastive":
        from neobert_jax.contrastive.task import train_contrastive

        return _absl_cli(train_contrastive, ["contrastive.py", "--config", os.path.join(REPO, "configs/contrastive.py"),
                                             *args])
    if cli == "finetune":
        from neobert_jax.classify.task import train_classifier

        return _absl_cli(train_classifier, ["finetune.py", "--config", os.path.join(REPO, "configs/classify.py"), *args])
    if cli in ("convert/torch_to_flax.py", "convert/flax_to_torch.py"):
        from neobert_jax.hf import convert

        return convert.main(getattr(convert, os.path.basename(cli)[:-3]), "", args)
    return _script(cli).main(args)


def run_cli(cli: str, args: list[str]) -> tuple[int, str]:
    """-> (exit status, stderr plus the exit message) of one in-process CLI call."""
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            try:
                code = _call(cli, args)
            finally:
                gc.collect()  # what a failed restore abandoned prints when collected
    except SystemExit as e:
        code = e.code
    except Exception as e:  # what the user would see as a traceback
        return 99, f"{err.getvalue()}Traceback: {type(e).__name__}: {e}"
    if isinstance(code, str):
        return 1, err.getvalue() + code + "\n"
    return code or 0, err.getvalue()


@pytest.fixture(scope="module")
def w(tmp_path_factory, write_corpus, write_tokenizer, hf_model, tiny_config):
    """Inputs good and bad, and a finished tiny run whose checkpoints the resume cases damage."""
    root = tmp_path_factory.mktemp("inputs")
    corpus = write_corpus(root / "corpus.txt")
    tok = write_tokenizer(root / "tok", corpus, 300)
    write_tokenizer(root / "tok_other", corpus, 400)
    (root / "empty.txt").write_text("")
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (root / "nofield.jsonl").write_text('{"body": "a"}\n')
    (root / "binary.dat").write_bytes(bytes((i * 7919) % 255 + 1 for i in range(40000)))
    (root / "emptydir").mkdir()
    hf = root / "hf"
    hf_model(seed=0).save_pretrained(hf)
    for name in os.listdir(tok):
        shutil.copy(os.path.join(tok, name), hf / name)
    bad_config = root / "hf_str"
    shutil.copytree(hf, bad_config)
    config = json.loads((hf / "config.json").read_text())
    (bad_config / "config.json").write_text(json.dumps({**config, "hidden_size": "64"}))
    (root / "hf_pickle").mkdir()  # a .bin holding an object that only an unsafe load would rebuild
    shutil.copy(hf / "config.json", root / "hf_pickle")
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, root / "hf_pickle" / "pytorch_model.bin")
    (root / "hf_badjson").mkdir()
    (root / "hf_badjson" / "config.json").write_text("{not json")
    (root / "pairs.jsonl").write_text("".join(json.dumps({"anchor": f"a {i}", "positive": f"p {i}"}) + "\n"
                                              for i in range(16)))
    triplet = lambda i: {"anchor": f"a {i}", "positive": f"p {i}", "negative": f"n {i}"}
    (root / "triplets.jsonl").write_text("".join(json.dumps({**triplet(i), "score": 1.0}) + "\n" for i in range(16)))
    (root / "quads.jsonl").write_text("".join(json.dumps({**triplet(i), "other": f"o {i}", "score": [1.0, 2.0]}) + "\n"
                                              for i in range(16)))
    (root / "sts_bad.jsonl").write_text('{"sentence1": "a", "sentence2": "b"}\n')
    (root / "sts.jsonl").write_text("".join(json.dumps({"sentence1": f"a {i}", "sentence2": f"b {i}", "score": i})
                                            + "\n" for i in range(4)))
    (root / "cls.csv").write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(8)))
    (root / "cls_unknown.csv").write_text("text,label\nfirst,a\nsecond,maybe\n")
    (root / "cls_nolabel.csv").write_text("text,category\nfirst,a\n")
    (root / "cls_short.csv").write_text("text,label\nfirst,a\nsecond\n")
    (root / "scores.csv").write_text("text,label\nfirst,0.5\nsecond,abc\n")
    run = root / "run"
    train(tiny_config(run, corpus, tokenizer=tok, **{"train.max_steps": 2, "train.save_every": 1}))
    shutil.copytree(run, root / "damaged")
    _damage(root / "damaged", data_only=True)
    return dict(root=root, corpus=corpus, tok=tok, hf=str(hf), run=str(run))


def _damage(run, data_only=False) -> None:
    """Zeroes 64 bytes inside the large files of checkpoint 2's params; `data_only`: cuts the tensors'
    data files to half instead, leaving the metadata whole (zeroed bytes in the data can land where
    nothing checks them, depending on the order the save wrote its chunks in)."""
    for root, _, files in os.walk(os.path.join(run, "checkpoints", "2", "params")):
        for name in files:
            path = os.path.join(root, name)
            if data_only and "ocdbt.process_0" in path:
                os.truncate(path, os.path.getsize(path) // 2)
            elif os.path.getsize(path) > 1000 and not data_only:
                data = bytearray(open(path, "rb").read())
                data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
                open(path, "wb").write(bytes(data))


TINY = ["--config.model.hidden_size=32", "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=2",
        "--config.model.intermediate_size=64", "--config.model.local_attention=16", "--config.train.seq_len=32",
        "--config.train.batch_size=4", "--config.train.max_steps=2", "--config.data.tokenizer_vocab_size=300",
        "--config.model.max_position_embeddings=64"]


def P(*args, data="corpus.txt"):
    """A pretraining case: the tiny model on `data` (a name under the inputs dir) plus `args`."""
    return ("pretrain", [f"--config.output_dir={OUT}", f"--config.data.train_files=IN/{data}", *TINY, *args])


def C(*args):
    return ("contrastive", [f"--config.output_dir={OUT}", "--config.init_from=IN/hf",
                            "--config.data.train_files=IN/pairs.jsonl", "--config.train.batch_size=4",
                            "--config.train.seq_len=32", "--config.train.max_steps=2", *args])


def S(*args):
    return ("finetune", [f"--config.output_dir={OUT}", "--config.init_from=IN/hf", "--config.data.train_files=IN/cls.csv",
                         "--config.train.batch_size=4", "--config.train.seq_len=32", "--config.train.max_steps=2", *args])


CASES = {
    # pretraining: files
    "p-missing-file": (P(data="missing.txt"), "missing.txt"),
    "p-empty-file": (P(data="empty.txt"), "empty.txt"),
    "p-bad-jsonl": (P(data="bad.jsonl"), "bad.jsonl:2"),
    "p-jsonl-no-field": (P(data="nofield.jsonl"), "'text'"),
    "p-binary-no-nul": (P(data="binary.dat"), "binary.dat"),
    "p-missing-eval": (P("--config.data.eval_files=IN/nope.txt"), "nope.txt"),
    "p-empty-glob": (P(data="*.nothing"), "*.nothing"),
    "p-init-missing": (P("--config.init_from=IN/none"), "init_from"),
    "p-init-empty-dir": (P("--config.init_from=IN/emptydir", "--config.tokenizer=IN/tok"), "emptydir"),
    "p-init-bad-json": (P("--config.init_from=IN/hf_badjson", "--config.tokenizer=IN/tok"), "config.json"),
    "p-init-str-size": (P("--config.init_from=IN/hf_str"), "hidden_size"),
    "p-init-damaged-data": (P("--config.init_from=IN/damaged"), "damaged/checkpoints/2/params: cannot be read"),
    "p-init-other-size": (P("--config.init_from=IN/hf"), "model.hidden_size"),
    "p-tokenizer-missing": (P("--config.tokenizer=IN/none"), "none"),
    "p-tokenizer-empty-dir": (P("--config.tokenizer=IN/emptydir"), "emptydir"),
    "p-preprocessed-missing": (P("--config.data.train_files=", "--config.data.preprocessed_dir=IN/none"), "none"),
    "p-config-missing": (("pretrain", ["--config=IN/none.py"]), "none.py"),
    # pretraining: values
    "p-vocab-negative": (P("--config.data.tokenizer_vocab_size=-1"), "data.tokenizer_vocab_size"),
    "p-vocab-zero": (P("--config.data.tokenizer_vocab_size=0"), "data.tokenizer_vocab_size"),
    "p-lr-negative": (P("--config.train.learning_rate=-0.001"), "train.learning_rate"),
    "p-lr-zero": (P("--config.train.learning_rate=0"), "train.learning_rate"),
    "p-warmup-both": (P("--config.train.warmup_fraction=0.2", "--config.train.warmup_steps=5"),
                      "train.warmup_steps: 5 and train.warmup_fraction=0.2 are both set"),
    "p-max-steps-negative": (P("--config.train.max_steps=-5"), "train.max_steps"),
    "p-epochs-negative": (P("--config.train.epochs=-1"), "train.epochs"),
    "p-batch-negative": (P("--config.train.batch_size=-4"), "train.batch_size"),
    "p-batch-accum": (P("--config.train.batch_size=3", "--config.train.grad_accum_steps=2"), "train.batch_size"),
    "p-seq-too-long": (P("--config.train.seq_len=4096"), "train.seq_len"),
    "p-precision": (P("--config.train.precision=fp64"), "train.precision"),
    "p-schedule": (P("--config.train.schedule=step"), "train.schedule"),
    "p-unknown-key": (P("--config.train.lr=1"), "config.train.lr"),
    "p-mlm-prob": (P("--config.data.mlm_probability=1.5"), "data.mlm_probability"),
    "p-heads": (P("--config.model.num_attention_heads=3"), "model.num_attention_heads"),
    "p-odd-head": (P("--config.model.hidden_size=36", "--config.model.num_attention_heads=4"), "odd head size"),
    "p-hidden-zero": (P("--config.model.hidden_size=0"), "model.hidden_size"),
    "p-layers-zero": (P("--config.model.num_hidden_layers=0"), "model.num_hidden_layers"),
    "p-mesh-zero": (P("--config.mesh.data=0"), "mesh.data"),
    "p-save-every-zero": (P("--config.train.save_every=0"), "train.save_every"),
    "p-log-every-zero": (P("--config.train.log_every=0"), "train.log_every"),
    "p-weight-decay": (P("--config.train.weight_decay=-1"), "train.weight_decay"),
    "p-stray-argument": (P("extra"), "extra"),
    "p-keep-best-no-evals": (P("--config.train.keep_best_checkpoint=True", "--config.train.eval_every=0"),
                             "train.keep_best_checkpoint"),
    "p-keep-best-no-eval-data": (P("--config.train.keep_best_checkpoint=True", "--config.data.eval_samples=0"),
                                 "train.keep_best_checkpoint"),
    # pretraining: resuming a run dir (OUT is a copy of a finished run, damaged per case)
    "r-flipped-bytes": (P("--config.tokenizer=IN/tok", "--config.train.max_steps=4"), "checkpoints/2"),
    "r-no-trainer-item": (P("--config.tokenizer=IN/tok", "--config.train.max_steps=4"), "checkpoints/2"),
    "r-other-hidden": (P("--config.tokenizer=IN/tok", "--config.train.max_steps=4", "--config.model.hidden_size=64",
                         "--config.model.intermediate_size=64"), "run_config.json"),
    "r-other-tokenizer": (P("--config.tokenizer=IN/tok_other", "--config.train.max_steps=4"), "tokenizer"),
    "r-other-batch": (P("--config.tokenizer=IN/tok", "--config.train.max_steps=4", "--config.train.batch_size=8"),
                      "train.batch_size"),
    "r-locked": (P("--config.tokenizer=IN/tok", "--config.train.max_steps=4"), "in use by pid"),
    # contrastive
    "c-init-missing": (C("--config.init_from=IN/none"), "init_from"),
    "c-init-unset": (C("--config.init_from="), "init_from"),
    "c-train-missing": (C("--config.data.train_files=IN/none.jsonl"), "none.jsonl"),
    "c-bad-jsonl": (C("--config.data.train_files=IN/bad.jsonl"), "bad.jsonl"),
    "c-lr-negative": (C("--config.train.learning_rate=-1e-5"), "train.learning_rate"),
    "c-loss": (C("--config.loss.name=triplet"), "loss.name"),
    "c-pooling": (C("--config.pooling.mode=max"), "pooling.mode"),
    "c-matryoshka": (C("--config.loss.matryoshka_dims=4096"), "matryoshka_dims"),
    "c-seq-too-long": (C("--config.train.seq_len=100000"), "seq_len"),
    "c-init-str-size": (C("--config.init_from=IN/hf_str"), "hidden_size"),
    "c-sts-missing": (C("--config.eval.sts_files=IN/none.jsonl"), "none.jsonl"),
    "c-unknown-key": (C("--config.loss.temprature=1"), "config.loss.temprature"),
    "c-source-unnamed": (C("--config.data.train_files=", "--config.data.sources=IN/pairs.jsonl"), "config.data.sources"),
    "c-source-missing": (C("--config.data.train_files=", "--config.data.sources=a=IN/pairs.jsonl,b=IN/none.jsonl"),
                         "data.sources (b): "),
    "c-sources-and-train-files": (C("--config.data.sources=a=IN/pairs.jsonl"), "config.data.sources: give one of"),
    "c-mixed-columns-margin-mse": (C("--config.data.train_files=", "--config.loss.name=margin_mse",
                                     "--config.data.sources=a=IN/triplets.jsonl,b=IN/quads.jsonl"),
                                   "data source 'b': 4 text columns (anchor, positive, negative, other) but source "
                                   "'a' has 3 (anchor, positive, negative); every source of a run needs the same "
                                   "number for loss margin_mse (only mnrl and gte mix them)"),
    "c-mixed-columns-named": (C("--config.data.train_files=", "--config.data.columns=anchor,positive,negative",
                                "--config.data.sources=a=IN/triplets.jsonl,b=IN/pairs.jsonl"),
                              "pairs.jsonl: no column 'negative' (columns: anchor, positive); see data.columns (it"),
    "c-keep-best-no-eval-sets": (C("--config.train.keep_best_checkpoint=True", "--config.train.eval_every=1"),
                                 "train.keep_best_checkpoint"),
    # sequence classification
    "s-unknown-eval-label": (S("--config.data.eval_files=IN/cls_unknown.csv"), "cls_unknown.csv:3: column 'label'"),
    "s-no-label-column": (S("--config.data.train_files=IN/cls_nolabel.csv"), "cls_nolabel.csv: no column 'label'"),
    "s-regression-not-number": (S("--config.data.train_files=IN/scores.csv", "--config.classifier.problem_type=regression"),
                                "scores.csv:3: column 'label' holds 'abc'"),
    "s-train-missing": (S("--config.data.train_files=IN/none.csv"), "none.csv"),
    "s-txt-file": (S("--config.data.train_files=IN/corpus.txt"), "corpus.txt: unsupported file type"),
    "s-short-row": (S("--config.data.train_files=IN/cls_short.csv"), "cls_short.csv:3: fewer fields"),
    "s-init-unset": (S("--config.init_from="), "init_from"),
    "s-dropout": (S("--config.classifier.dropout=1.5"), "classifier.dropout"),
    # conversion
    "t-missing": (("convert/torch_to_flax.py", ["IN/none", OUT]), "none"),
    "t-no-weights": (("convert/torch_to_flax.py", ["IN/hf_badjson", OUT]), "config.json"),
    "t-str-size": (("convert/torch_to_flax.py", ["IN/hf_str", OUT]), "hidden_size"),
    "t-empty-dir": (("convert/torch_to_flax.py", ["IN/emptydir", OUT]), "emptydir"),
    "t-busy-out": (("convert/torch_to_flax.py", ["IN/hf", OUT]), "--overwrite"),
    "t-pickle-objects": (("convert/torch_to_flax.py", ["IN/hf_pickle", OUT]), "argparse.Namespace"),
    "t-unwritable-out": (("convert/torch_to_flax.py", ["IN/hf", "/proc/self/nbj-out"]), "'/proc/self/nbj-out'"),
    "f-missing": (("convert/flax_to_torch.py", ["IN/none", OUT]), "none"),
    "f-flipped-bytes": (("convert/flax_to_torch.py", ["RUN", OUT]), "params"),
    "f-str-size": (("convert/flax_to_torch.py", ["RUN", OUT]), "hidden_size"),
    "f-damaged-data": (("convert/flax_to_torch.py", ["IN/damaged", OUT]), "checkpoints/2/params: cannot be read"),
    "g-teacher-missing": (("convert/guide_init.py", ["--teacher", "IN/none", "--out", OUT]), "none"),
    "g-heads": (("convert/guide_init.py", ["--teacher", "IN/hf", "--out", OUT, "--hidden-size", "32",
                                           "--num-heads", "5"]), "head"),
    "g-too-wide": (("convert/guide_init.py", ["--teacher", "IN/hf", "--out", OUT, "--hidden-size", "128"]), "128"),
    "g-layers": (("convert/guide_init.py", ["--teacher", "IN/hf", "--out", OUT, "--hidden-size", "32",
                                            "--num-heads", "2", "--layers", "9:0"]), "9"),
    # data scripts
    "d-missing": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/none.txt"]), "none.txt"),
    "d-empty": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/empty.txt",
                                           "--vocab-size", "300"]), "empty.txt"),
    "d-bad-jsonl": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/bad.jsonl", "--tokenizer",
                                               "IN/tok"]), "bad.jsonl:2"),
    "d-tokenizer-missing": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/corpus.txt",
                                                       "--tokenizer", "IN/none"]), "none"),
    "d-vocab-zero": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/corpus.txt",
                                                "--vocab-size", "0"]), "vocab"),
    "d-shard-zero": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/corpus.txt",
                                                "--tokenizer", "IN/tok", "--shard-tokens", "0"]), "shard-tokens"),
    "d-exists": (("scripts/preprocess.py", ["--output", OUT, "--train-files", "IN/corpus.txt",
                                            "--tokenizer", "IN/tok"]), "exists"),
    "k-vocab-zero": (("scripts/train_tokenizer.py", ["--output-dir", OUT, "--train-files", "IN/corpus.txt",
                                                     "--vocab-size", "0"]), "vocab"),
    "k-vocab-negative": (("scripts/train_tokenizer.py", ["--output-dir", OUT, "--train-files", "IN/corpus.txt",
                                                         "--vocab-size", "-1"]), "vocab"),
    "k-missing": (("scripts/train_tokenizer.py", ["--output-dir", OUT, "--train-files", "IN/none.txt"]), "none.txt"),
    "k-empty": (("scripts/train_tokenizer.py", ["--output-dir", OUT, "--train-files", "IN/empty.txt",
                                                "--vocab-size", "300"]), "empty.txt"),
    "k-binary": (("scripts/train_tokenizer.py", ["--output-dir", OUT, "--train-files", "IN/binary.dat",
                                                 "--vocab-size", "300"]), "binary.dat"),
    "k-other-cache": (("scripts/train_tokenizer.py", ["--output-dir", OUT, "--train-files", "IN/corpus.txt",
                                                      "--vocab-size", "500"]), "tokenizer"),
    "e-missing": (("scripts/evaluate_embeddings.py", ["IN/none", "--sts", "IN/sts.jsonl"]), "none"),
    "e-nothing": (("scripts/evaluate_embeddings.py", ["IN/hf"]), "nothing to evaluate"),
    "e-sts-missing": (("scripts/evaluate_embeddings.py", ["IN/hf", "--sts", "IN/none.jsonl"]), "none.jsonl"),
    "e-sts-bad": (("scripts/evaluate_embeddings.py", ["IN/hf", "--sts", "IN/sts_bad.jsonl"]), "score"),
    "e-retrieval-empty": (("scripts/evaluate_embeddings.py", ["IN/hf", "--retrieval", "IN/emptydir"]), "emptydir"),
    "e-no-tokenizer": (("scripts/evaluate_embeddings.py", ["IN/emptydir", "--sts", "IN/sts.jsonl"]), "emptydir"),
}


def _prepare(case: str, w, out):
    """Per-case state of the output dir (and damage to a copied run) before the call."""
    if case.startswith("r-") or case in ("f-flipped-bytes", "f-str-size"):
        shutil.copytree(w["run"], out)
    if case in ("r-flipped-bytes", "f-flipped-bytes"):
        _damage(out)
    if case == "r-no-trainer-item":
        shutil.rmtree(os.path.join(out, "checkpoints", "2", "trainer"))
    if case == "f-str-size":
        config = json.loads(open(os.path.join(out, "config.json")).read())
        open(os.path.join(out, "config.json"), "w").write(json.dumps({**config, "hidden_size": "32"}))
    if case in ("t-busy-out", "d-exists"):
        os.makedirs(os.path.join(out, "x"))
    if case == "k-other-cache":
        _script("scripts/train_tokenizer.py").main(["--output-dir", str(out), "--train-files", w["corpus"],
                                                    "--vocab-size", "300"])
    if case == "r-locked":
        from neobert_jax.runtime.run_dir import RunDirLock

        return RunDirLock(str(out))
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_line_and_changes_nothing(case, w, tmp_path, snapshot):
    (cli, args), expected = CASES[case]
    out = tmp_path / "out"
    lock = _prepare(case, w, out)
    args = [a.replace("IN/", f"{w['root']}/").replace("RUN", str(out)).replace(OUT, str(out)) for a in args]
    if lock is not None:
        lock.__enter__()
    before = snapshot(out)
    try:
        code, err = run_cli(cli, args)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0, err[-2000:]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert expected in errors[0] and "weights_only=False" not in err, errors[0]
    if case.startswith("r-") and lock is None:  # the paths it names are whole (one was cut: ".../run/check); move ...")
        named = re.findall(re.escape(str(out)) + r"[^\s'\"();,]*", errors[0])
        assert named and all(os.path.exists(path.rstrip(".:")) for path in named), errors[0]
    if lock is not None:
        before.pop(".lock")
    assert snapshot(out) == before


ENUMERATED = [  # (cli, key, allowed values): every key that takes one of a list
    ("pretrain", "train.precision", PRECISIONS), ("pretrain", "train.schedule", SCHEDULES),
    ("pretrain", "model.remat", REMAT_POLICIES), ("pretrain", "model.attn_implementation", ATTENTION_BACKENDS),
    ("pretrain", "model.layer_norm_backward", KERNEL_BACKENDS), ("pretrain", "model.logsumexp", KERNEL_BACKENDS),
    ("pretrain", "data.packing", PACKING_METHODS), ("pretrain", "model.architecture", ("modernbert", "neobert")),
    ("contrastive", "model.attn_implementation", ATTENTION_BACKENDS),
    ("contrastive", "data.layout", LAYOUTS), ("contrastive", "data.row_shapes", ROW_SHAPES),
    ("contrastive", "loss.name", LOSSES), ("contrastive", "pooling.mode", POOLING_MODES),
    ("contrastive", "loss.similarity", SIMILARITIES), ("contrastive", "data.source_sampling", SAMPLINGS),
    ("finetune", "classifier.problem_type", PROBLEM_TYPES), ("finetune", "classifier.pooling", POOLINGS),
]


@pytest.mark.parametrize("cli,key,allowed", ENUMERATED, ids=[f"{c}-{k}" for c, k, _ in ENUMERATED])
def test_a_wrong_enumerated_value_is_refused_before_anything_is_written(cli, key, allowed, w, tmp_path, snapshot):
    """A typo such as attn_implementation=palas used to pass validation and fail at the first trace."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    before = snapshot(out)
    _, args = {"pretrain": P, "contrastive": C, "finetune": S}[cli](f"--config.{key}=palas")
    code, err = run_cli(cli, [a.replace("IN/", f"{w['root']}/").replace(OUT, str(out)) for a in args])
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert errors[0].startswith(f"error: config.{key}: 'palas' is not one of"), errors[0]
    assert all(repr(value) in errors[0] for value in allowed), errors[0]
    assert snapshot(out) == before


FULL_DISK = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("limit, shard_tokens", [(20000, []), (8000, ["--shard-tokens", "1000"])],
                         ids=["shards", "tokenizer"])  # tokenizer: the Rust library's bare Exception, a traceback
def test_a_full_disk_during_preprocess_gets_one_line_naming_the_output(w, tmp_path, write_corpus, limit,
                                                                        shard_tokens):
    out = tmp_path / "shards"
    args = [os.path.join(REPO, "scripts", "preprocess.py"), "--output", str(out), "--train-files",
            write_corpus(tmp_path / "big.txt", lines=3000), "--tokenizer", w["tok"], *shard_tokens]
    done = subprocess.run([sys.executable, "-c", FULL_DISK.replace("20000", str(limit)), *args],
                          capture_output=True, text=True, cwd=REPO)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and str(out) in errors[0], done.stderr[-2000:]  # before: "[Errno 27] File too large"
    assert sorted(os.listdir(tmp_path)) == ["big.txt"]


def test_a_full_disk_during_a_checkpoint_save_gets_one_line_and_keeps_the_previous_one(w, tmp_path, tiny_config):
    out = tmp_path / "run"
    shutil.copytree(w["run"], out)  # checkpoints 1 and 2; resuming saves 3, which does not fit
    args = [os.path.join(REPO, "scripts", "pretrain.py"), "--config", os.path.join(REPO, "configs/tiny.py"),
            f"--config.output_dir={out}", f"--config.data.train_files={w['corpus']}", f"--config.tokenizer={w['tok']}",
            *TINY, "--config.train.max_steps=4", "--config.train.save_every=1", "--config.data.eval_samples=0",
            "--config.train.learning_rate=3e-3", "--config.train.warmup_steps=2", "--config.compilation_cache_dir="]
    done = subprocess.run([sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True, cwd=REPO)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]  # before: 45 tracebacks
    assert len(errors) == 1 and f"{out}/checkpoints/3 failed (File too large)" in errors[0], done.stderr[-3000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]  # before: 3.orbax-checkpoint-tmp too
    resumed = train(tiny_config(out, w["corpus"], tokenizer=w["tok"], **{"train.max_steps": 4}))
    assert resumed.completed and sorted(os.listdir(out / "checkpoints")) == ["1", "2", "4"]
