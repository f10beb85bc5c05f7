"""scripts/compile_passes.py: from the log of a process that compiled with XLA's timers on, it lists
the named program's compiler timers and its passes (and no other program's), and a log without
them is a one-line error."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "compile_passes.py")
PROGRAMS = """
import jax, jax.numpy as jnp
def train_step(x):
    return jnp.tanh(x @ x.T).sum()
def other(x):
    return x + 1
jax.jit(train_step)(jnp.ones((32, 32))).block_until_ready()
jax.jit(other)(jnp.ones(3)).block_until_ready()
"""


def run(args, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**os.environ, **env})


def test_reads_one_programs_timers_and_passes(tmp_path):
    compiled = run(["-c", PROGRAMS], TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="hlo_pass_pipeline=1,cpu_compiler=1")
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    log = tmp_path / "run.log"  # a run's progress bar can precede XLA's line on the same terminal line
    lines = compiled.stderr.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if "[jit_train_step]" in line)
    lines[first] = "train:   0%|    | 0/1 [00:00<?, ?step/s]" + lines[first]
    log.write_text("".join(lines))
    done = run([SCRIPT, str(log), "--module", "jit_train_step", "--top", "5"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    timers = [line for line in lines if line.startswith("| ") and "[jit_train_step]" in line]
    assert len(timers) >= 2 and all(float(line.split("|")[2]) > 0 for line in timers), done.stdout
    header = lines.index("| jit_train_step: HLO pass (top 5) | seconds | calls |")
    passes = lines[header + 2:]
    assert len(passes) == 5 and all(int(line.split("|")[3]) >= 1 for line in passes), done.stdout
    seconds = [float(line.split("|")[2]) for line in passes]
    assert seconds == sorted(seconds, reverse=True)
    assert "jit_other" not in done.stdout


def test_log_without_timers_is_a_one_line_error(tmp_path):
    log = tmp_path / "quiet.log"
    log.write_text("nothing from XLA here\n")
    done = run([SCRIPT, str(log)])
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "quiet.log" in done.stderr and "jit_train_step" in done.stderr
