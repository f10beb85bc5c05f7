"""scripts/bench_throughput.py's NeoBERT rows run end to end on CPU: our JAX NeoBERT and our torch one
(the remote code), each in its subprocess, in one table that names the architecture."""

import json
import math
import os
import subprocess
import sys

from neobert_jax.data import max_predictions
from neobert_jax.neobert_config import NeoBertConfig
from neobert_jax.runtime.throughput import train_flops_per_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_neobert_rows_give_a_table_of_both_frameworks(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "bench_throughput.py"), "--tiny", "--arch", "neobert",
         "--rows", "jax-fp32,torch-fp32", "--batch", "4", "--seq-len", "64", "--steps", "2", "--warmup", "1",
         "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "neobert (tiny): batch 4 x seq 64" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == ["jax-fp32", "torch-fp32"]
    tiny = NeoBertConfig(vocab_size=50368, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96)
    flops = 2 * train_flops_per_step(tiny, 4, 64, 4 * max_predictions(64, 0.3))  # NeoBERT's: SwiGLU, no head dense
    for r in rows:
        assert r["arch"] == "neobert" and r["tokens"] == 2 * 4 * 64 and r["seconds"] > 0 and r["flops"] == flops
        assert math.isfinite(r["loss"]) and abs(r["loss"] - math.log(50368)) < 1  # random init: about ln V
    table = proc.stdout[proc.stdout.index("neobert (tiny)"):].splitlines()
    assert [line.split()[0] for line in table[2:]] == ["jax-fp32", "torch-fp32"]
    assert float(table[2].split()[1].replace(",", "")) > 0


def test_the_benchmarks_model_runs_with_the_runtime_policy_a_run_gets():
    """The JAX rows' model takes its runtime fields from model_init.runtime_policy, as a run's does: on
    the GPU, fp32 rows then have the kernels' 3-pass TF32 dots (tf32x3) and the attention `auto` picks
    for them. Before, the rows built the model without the policy, so fp32's local layers ran XLA."""
    import argparse
    import importlib.util

    from neobert_jax.mlm.config import default_config
    from neobert_jax.runtime.model_init import runtime_policy

    spec = importlib.util.spec_from_file_location("bench_throughput", os.path.join(REPO, "scripts", "bench_throughput.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(arch="modernbert", tiny=True)
    cfg = default_config()
    for precision in ("fp32", "bf16"):
        cfg.train.precision = precision
        policy = runtime_policy(cfg, None)
        config = bench.model_config(args, 512, precision, "auto")
        assert {k: getattr(config, k) for k in policy} == policy, precision
    both = bench.model_config(args, 512, "fp32", "pallas+rope+split")
    assert (both.attn_implementation, both.rope_in_kernel, both.tf32_split) == ("pallas", True, True)
    assert not bench.model_config(args, 512, "fp32", "auto", algorithm="float32").tf32x3
