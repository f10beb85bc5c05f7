"""Recovery after kills, signals and torn files; bounded tokenizer training; what init_from and
GUIDE take from their options (issue 14, items 6, 7 and 9)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neobert_jax.data.tokenizer import TRAINING_CHUNK_CHARS, _bounded
from neobert_jax.hf.checkpoint import save_checkpoint_dir
from neobert_jax.mlm import config as train_config
from neobert_jax.runtime import early_signals, signals
from neobert_jax.mlm import task as loop
from neobert_jax.mlm.task import train
from neobert_jax.runtime.model_init import build_model
from neobert_jax.runtime.reporting import RunReporter
from neobert_jax.runtime.run_dir import RunDirLock
from neobert_jax.runtime.signals import StopRequest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tokenizer_training_sees_bounded_pieces_of_long_lines():
    """BPE training time grows with the square of a word: a 20 MB line without spaces ran > 300 s."""
    text = "x" * (3 * TRAINING_CHUNK_CHARS) + " " + "words with spaces " * 400
    pieces = list(_bounded([text, "short"]))
    assert max(map(len, pieces)) <= TRAINING_CHUNK_CHARS and "".join(pieces) == text + "short"
    assert all(not p.startswith("ords") for p in pieces)  # cut at spaces where there are any


def test_a_rerun_removes_temp_dirs_of_a_killed_export(tmp_path):
    (tmp_path / ".hf.tmp-abc123" / "x").mkdir(parents=True)
    (tmp_path / "hf").mkdir()
    with RunDirLock(str(tmp_path)):
        assert sorted(os.listdir(tmp_path)) == [".lock", "hf"]


def test_a_second_signal_does_not_interrupt_the_save():
    said = []
    with StopRequest(on_signal=said.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # before: KeyboardInterrupt, the steps since the last save lost
        assert stop.requested()
    assert len(said) == 2 and "again" in said[1]


def _catches_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def test_sigterm_during_imports_exits_cleanly():
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "pretrain.py")],
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    while process.poll() is None and not _catches_sigterm(process.pid):
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 0 and "Traceback" not in err, err[-2000:]  # before: -15


def test_a_signal_during_start_up_is_kept_for_the_run_and_raises_nothing(tmp_path, write_corpus, write_tokenizer,
                                                                          tiny_config, capsys):
    """Before, the handler raised SystemExit wherever Python ran next, e.g. in JAX's gc callback, which
    swallowed it: the run trained and exported. Now the run takes the request over and stops before step 1."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    tok = write_tokenizer(tmp_path / "tok", corpus)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        early_signals.install()
        os.kill(os.getpid(), signal.SIGINT)  # returns: nothing is raised in the interrupted code
        assert early_signals.received() == "SIGINT"
        result = train(tiny_config(tmp_path / "run", corpus, tokenizer=tok))
    finally:
        early_signals._received = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert (result.completed, result.step) == (False, 0)
    assert os.listdir(tmp_path / "run" / "checkpoints") == []  # nothing trained, nothing saved
    assert "stopped before step 1: nothing to save" in "".join(capsys.readouterr())


def _send_when(process, err: list[str], marker: str | None, delay: float, sig) -> bool:
    """Reads the process's output (stdout, stderr merged into it) into `err`; sends `sig` `delay` s after its handler is installed
    (marker None) or after `marker` is printed. -> whether the process was still running then."""
    threading.Thread(target=lambda: err.extend(iter(lambda: process.stdout.read(1), "")), daemon=True).start()
    while process.poll() is None and not _catches_sigterm(process.pid):
        time.sleep(0.005)
    while marker is not None and process.poll() is None and marker not in "".join(err):
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(sig)
    return True


@pytest.mark.slow
def test_a_stop_at_any_point_of_start_up_exits_cleanly_and_the_rerun_goes_on(tmp_path, write_corpus):
    """SIGTERM/SIGINT during the imports, the model's set-up and the first compilation: exit 0 and a stop
    message, never a finished run (13 of 24 before) or a crash (2 of 24: -6 and a segfault)."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    args = [sys.executable, os.path.join(REPO, "scripts", "pretrain.py"), "--config",
            os.path.join(REPO, "configs/tiny.py"), f"--config.data.train_files={corpus}",
            "--config.compilation_cache_dir=", "--config.data.tokenizer_vocab_size=300",
            *[f"--config.{k}={v}" for k, v in {
                "model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
                "model.intermediate_size": 64, "model.local_attention": 16, "model.max_position_embeddings": 64,
                "train.seq_len": 32, "train.batch_size": 4, "train.max_steps": 2}.items()]]
    points = [(None, 0.0, signal.SIGTERM), (None, 0.3, signal.SIGINT), (None, 0.8, signal.SIGTERM),
              ("data:", 0.0, signal.SIGINT), ("steps (", 0.2, signal.SIGTERM), ("train:", 0.3, signal.SIGTERM)]
    outcomes = {}
    for i, (marker, delay, sig) in enumerate(points):
        out = tmp_path / f"run{i}"
        process = subprocess.Popen([*args, f"--config.output_dir={out}"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, cwd=REPO)
        chars = []
        assert _send_when(process, chars, marker, delay, sig), (marker, delay, "".join(chars)[-3000:])
        process.wait()
        time.sleep(0.1)
        err = "".join(chars)
        assert process.returncode == 0 and "Traceback" not in err, (marker, delay, err[-3000:])
        assert "stopped" in err or "received during start-up" in err, (marker, delay, err[-3000:])
        saved = sorted(os.listdir(out / "checkpoints")) if (out / "checkpoints").exists() else []
        assert not (out / "hf").exists() and all(name.isdigit() for name in saved), saved
        outcomes.setdefault(bool(saved), out)
    for resumes, out in outcomes.items():  # one that saved a step (if any did) and one that saved none
        done = subprocess.run([*args, f"--config.output_dir={out}"], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0 and (out / "hf").is_dir(), done.stderr[-3000:]
        assert ("resumed from" in done.stderr) == resumes, done.stderr[-3000:]


def test_a_torn_metrics_line_does_not_block_the_resume_and_a_fresh_run_keeps_no_records(tmp_path, capsys):
    records = [{"step": 0, "eval_x": 1.0}, {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "lo')
    reporter = RunReporter(str(tmp_path), 10, 2, enabled=True)  # step 3 is redone: nothing lost
    assert reporter.records == records
    reporter.close()
    assert "torn" not in "".join(capsys.readouterr())
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 3, "lo')
    reporter = RunReporter(str(tmp_path), 10, 3, enabled=True)  # before: step 3's record gone without a word
    assert reporter.records == records
    reporter.close()
    assert f"{tmp_path}/metrics.jsonl:4: a torn last line was dropped; the record of step 3 is lost" in "".join(
        capsys.readouterr())
    fresh = RunReporter(str(tmp_path), 10, 0, enabled=True)  # resume=False: not the old run's step 0
    assert fresh.records == []
    fresh.close()


def test_a_resumed_run_logs_what_an_uninterrupted_one_does(tmp_path, write_corpus, write_tokenizer, tiny_config):
    corpus = write_corpus(tmp_path / "corpus.txt")
    tok = write_tokenizer(tmp_path / "tok", corpus)
    options = {"train.max_steps": 64, "train.log_every": 8, "train.save_every": 1000}
    train(tiny_config(tmp_path / "whole", corpus, tokenizer=tok, **options))
    stopped = tmp_path / "stopped"
    metrics = stopped / "metrics.jsonl"

    def stop_after_the_second_record():
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_after_the_second_record, daemon=True).start()
    assert not train(tiny_config(stopped, corpus, tokenizer=tok, **options)).completed
    train(tiny_config(stopped, corpus, tokenizer=tok, **options))

    def read(path):
        return [(r["step"], r["loss"]) for r in map(json.loads, open(path / "metrics.jsonl"))]

    whole, resumed = read(tmp_path / "whole"), read(stopped)
    assert [s for s, _ in resumed] == [s for s, _ in whole] == [1, *range(8, 65, 8)]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in whole], rtol=1e-6)


def test_init_from_takes_dropout_window_and_positions_from_the_config(tmp_path, tiny_model):
    loaded = tiny_model(seed=2)
    save_checkpoint_dir(loaded, str(tmp_path / "ckpt"))
    config = train_config.default_config()
    config.init_from = str(tmp_path / "ckpt")
    for key, value in dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           local_attention=16, max_position_embeddings=1024, attention_dropout=0.1).items():
        config.model[key] = value
    said = []
    model, _ = build_model(config, 90, {}, log=said.append)
    assert (model.config.local_attention, model.config.max_position_embeddings, model.config.attention_dropout) == (
        16, 1024, 0.1)
    assert any("model.local_attention 8 -> 16" in line for line in said), said
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(loaded, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_guide_writes_the_students_positions(tmp_path, hf_model):
    from convert.guide_init import main

    hf_model(seed=0).save_pretrained(tmp_path / "teacher")
    args = ["--teacher", str(tmp_path / "teacher"), "--hidden-size", "32", "--num-heads", "2",
            "--intermediate-size", "48", "--num-layers", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--max-position-embeddings", "2048"]) == 0
    positions = [json.loads((tmp_path / d / "config.json").read_text())["max_position_embeddings"] for d in "ab"]
    assert positions == [1024, 2048]  # before: the teacher's 8192


def test_slow_steps_are_awaited_before_the_next_is_dispatched_fast_ones_are_not(monkeypatch):
    clock = iter([0.0, 0.01, 0.02, 1.52, 1.53])
    monkeypatch.setattr(signals.time, "perf_counter", lambda: next(clock))

    class Step:
        awaited = 0

        def block_until_ready(self):
            Step.awaited += 1

    stop = StopRequest()
    awaited = []
    for _ in range(5):
        stop.requested(Step())
        awaited.append(Step.awaited)
    assert awaited == [0, 0, 0, 1, 1]  # only after the 1.5 s step; fast steps keep the pipeline


@jax.jit
def _about_a_second_more(loss):
    """Device work that the host does not wait for at dispatch (on CPU a host callback would be run inline)."""
    m = jnp.full((1000, 1000), 1e-3) + 0 * loss
    return loss + 0 * jax.lax.fori_loop(0, 150, lambda i, a: a @ m, m).sum()


def test_a_stop_ends_the_run_after_the_step_it_arrives_in(tmp_path, monkeypatch, capsys, write_corpus, write_tokenizer,
                                                          tiny_config):
    """SIGTERM while step 3 runs. Before, step 4 was already queued behind it: the run finished it too."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    tok = write_tokenizer(tmp_path / "tok", corpus)
    monkeypatch.setattr(signals, "SLOW_STEP_S", 0.0)  # every tiny step counts as slow
    make_step, dispatched = loop.make_train_step, []
    third, fourth = threading.Event(), threading.Event()

    def signal_during_step_3():
        third.wait()
        fourth.wait(0.05)  # returns at once when step 4 gets queued (before)
        os.kill(os.getpid(), signal.SIGTERM)

    def slow_third_step(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def run(state, batch):
            state, metrics = step(state, batch)
            dispatched.append(len(dispatched) + 1)
            if len(dispatched) == 3:
                metrics = {**metrics, "loss": _about_a_second_more(metrics["loss"])}
            (third if len(dispatched) == 3 else fourth if len(dispatched) == 4 else threading.Event()).set()
            return state, metrics

        return run

    _about_a_second_more(jnp.float32(0)).block_until_ready()  # compiled before the run
    monkeypatch.setattr(loop, "make_train_step", slow_third_step)
    threading.Thread(target=signal_during_step_3, daemon=True).start()
    result = train(tiny_config(tmp_path / "run", corpus, tokenizer=tok,
                               **{"train.max_steps": 8, "train.save_every": 100}))
    assert (result.completed, result.step, dispatched) == (False, 3, [1, 2, 3])  # before: 4, [1, 2, 3, 4]
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["3"]
    assert re.search(r"saving checkpoint 3: [0-9.]+ MiB", "".join(capsys.readouterr()))


def test_init_from_keeps_its_positions_and_window_unless_the_config_sets_them(tmp_path, tiny_model):
    """The student config leaves them unset: a GUIDE init's 1024 positions reach the export."""
    loaded = tiny_model(seed=2, max_position_embeddings=1024)
    save_checkpoint_dir(loaded, str(tmp_path / "ckpt"))
    config = train_config.default_config()
    config.init_from = str(tmp_path / "ckpt")
    for key, value in dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2).items():
        config.model[key] = value
    said = []
    model, _ = build_model(config, 90, {}, log=said.append)
    assert (model.config.local_attention, model.config.max_position_embeddings,
            model.config.global_attn_every_n_layers) == (loaded.config.local_attention,
                                                         loaded.config.max_position_embeddings,
                                                         loaded.config.global_attn_every_n_layers)
    assert not any("->" in line for line in said), said


def test_the_stop_handler_writes_past_a_busy_stderr(capfd, monkeypatch):
    """The handler runs between two bytecodes of whatever was running, e.g. the progress bar writing to
    sys.stderr; writing there again raised "reentrant call" and killed the run instead of stopping it."""
    class Busy:
        def write(self, text):
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

        def flush(self):
            raise RuntimeError("reentrant call")

    stop = StopRequest()
    monkeypatch.setattr(sys, "stderr", Busy())
    stop._handle(signal.SIGTERM, None)
    monkeypatch.undo()
    assert stop.requested() and "SIGTERM received: finishing the step" in capfd.readouterr().err
