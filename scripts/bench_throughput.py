"""Train-step throughput: our JAX step vs torch (HF ModernBertForMaskedLM, or our torch NeoBERT), one table.

    python scripts/bench_throughput.py                      # the student, batch 128, seq 512, on a GPU
    python scripts/bench_throughput.py --rows jax-bf16-pallas,torch-bf16 --steps 30
    python scripts/bench_throughput.py --arch neobert --rows jax-bf16-auto,torch-bf16,jax-fp32,torch-fp32
    python scripts/bench_throughput.py --tiny --rows jax-fp32-plain,jax-bf16-text   # CPU smoke run

--arch picks the family of both sides at the student's shape: the JAX model through the training's
architecture table (runtime/model_init.architectures), the torch one HF's ModernBERT or the NeoBERT
remote code our exports carry (hf/neobert_modeling.py, sdpa attention, the decoder applied to the
predicted tokens only, as HF ModernBERT's sparse_prediction does, so both sides do the same work).

Each row runs in its own subprocess (clean peak-memory counters, no allocator contention).
Random-id rows: every row is a full seq_len document, 30% of tokens predicted. Text rows: the
built-in corpus (paragraph lines); ours packs documents into rows, torch pads each batch of
whole documents to its longest (rounded up to 64, as HF's collator with pad_to_multiple_of);
only non-pad tokens count. MFU uses `train_flops_per_step` (docs/performance.md states it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

ROWS = {
    # name: (framework, precision, attention implementation[+rope: RoPE inside the Pallas kernel][+split: the
    # products' TF32 passes written out], data[, float32 matmul algorithm override])
    "torch-bf16": ("torch", "bf16", "sdpa", "random"),
    "jax-bf16-xla": ("jax", "bf16", "xla", "random"),
    "jax-bf16-cudnn": ("jax", "bf16", "cudnn", "random"),
    "jax-bf16-pallas": ("jax", "bf16", "pallas", "random"),
    "jax-bf16-auto": ("jax", "bf16", "auto", "random"),
    "jax-bf16-rope": ("jax", "bf16", "auto+rope", "random"),  # model.rope_in_kernel
    "torch-fp32": ("torch", "fp32", "sdpa", "random"),
    "jax-fp32": ("jax", "fp32", "auto", "random"),  # the project's fp32: 3-pass TF32 matmuls on GPU
    "jax-fp32-pallas": ("jax", "fp32", "pallas", "random"),  # our kernel with 3-pass TF32 dots
    "jax-fp32-rope": ("jax", "fp32", "auto+rope", "random"),
    "jax-fp32-split": ("jax", "fp32", "auto+split", "random"),  # model.tf32_split: the passes written out
    "jax-fp32-plain": ("jax", "fp32", "xla", "random", "float32"),  # single-pass IEEE float32 matmuls
    "torch-bf16-text": ("torch", "bf16", "sdpa", "text"),
    "jax-bf16-text": ("jax", "bf16", "auto", "text"),
    "jax-bf16-text-rope": ("jax", "bf16", "auto+rope", "text"),
}
STUDENT = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=768)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
SPECIAL_IDS = dict(pad_token_id=3, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)


def model_config(args, vocab_size: int, precision: str, implementation: str, algorithm: str | None = None, mesh=None):
    """The JAX config of --arch at the benchmark's shape (NeoBERT keeps only the pad id of the special ids), with
    the runtime fields a run at `precision` gets (model_init.runtime_policy: its kernels, and on GPU fp32 the 3-pass
    TF32 dots of the kernels), `implementation` as "backend[+rope][+split]" (model.rope_in_kernel,
    model.tf32_split); `algorithm` "float32": plain float32 matmuls, kernels included."""
    import dataclasses

    from neobert_jax.mlm.config import default_config
    from neobert_jax.runtime.model_init import architecture, runtime_policy

    config_class = architecture(args.arch).config_class
    names = {f.name for f in dataclasses.fields(config_class)}
    special = {k: v for k, v in SPECIAL_IDS.items() if k in names}
    implementation, *extras = implementation.split("+")
    cfg = default_config()
    cfg.train.precision = precision
    cfg.model.update(attn_implementation=implementation, rope_in_kernel="rope" in extras, tf32_split="split" in extras)
    policy = runtime_policy(cfg, mesh)
    if algorithm == "float32":
        policy["tf32x3"] = False
    return config_class(vocab_size=vocab_size, **(TINY if args.tiny else STUDENT), **special, **policy)


def random_batches(args, vocab_size: int, count: int) -> list[dict]:
    """Full rows of random ids with exactly 30% of the inner tokens predicted."""
    from neobert_jax.data import max_predictions

    rng = np.random.default_rng(0)
    B, T = args.batch, args.seq_len
    M = max_predictions(T, 0.3)
    batches = []
    for _ in range(count):
        ids = rng.integers(5, vocab_size, (B, T)).astype(np.int32)
        ids[:, 0], ids[:, -1] = 1, 2
        masked = np.sort(np.stack([rng.choice(np.arange(1, T - 1), M, replace=False) for _ in range(B)]), 1)
        labels = np.full((B, T), -100, np.int32)
        np.put_along_axis(labels, masked, np.take_along_axis(ids, masked, 1), 1)
        inputs = ids.copy()
        np.put_along_axis(inputs, masked, 4, 1)
        batches.append(dict(input_ids=inputs, segment_ids=np.ones((B, T), np.int32),
                            positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
                            labels=labels, masked_positions=masked.astype(np.int32),
                            masked_labels=np.take_along_axis(ids, masked, 1)))
    return batches


def text_batches(args, packing: str, count: int):
    """Batches of the built-in corpus through the project's own pipeline (tokenizer trained once)."""
    from neobert_jax.data import build_mlm_iterator, default_data_config, get_tokenizer

    cfg = default_data_config()
    cfg.packing = packing
    cfg.tokenizer_vocab_size = 16384
    tokenizer = get_tokenizer(None, "", args.work_dir, cfg.tokenizer_vocab_size)
    it = build_mlm_iterator(cfg, tokenizer=tokenizer, seq_len=args.seq_len, batch_size=args.batch, seed=0)
    vocab = int(np.ceil(len(tokenizer) / 64) * 64)
    return vocab, it, [next(it) for _ in range(count)]


def trim(batch: dict) -> dict:
    """Dynamic padding: cut a one-document-per-row batch to its longest row, rounded up to 64."""
    length = int(min(batch["input_ids"].shape[1], -(-int((batch["segment_ids"] != 0).sum(1).max()) // 64) * 64))
    return {k: v[:, :length] for k, v in batch.items() if k in ("input_ids", "segment_ids", "labels")}


def matmul_error(algorithm: str) -> float:
    """Relative error of a (4096x384)@(384x1152) float32 product under `algorithm`, vs float64."""
    import jax

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4096, 384), np.float32), rng.standard_normal((384, 1152), np.float32)
    with jax.default_matmul_precision(algorithm):
        out = np.asarray(jax.jit(lambda x, y: x @ y)(a, b), np.float64)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def run_jax(args, precision: str, implementation: str, data: str, algorithm: str | None = None) -> dict:
    import jax

    from neobert_jax.runtime import sharding
    from neobert_jax.mlm.config import default_config
    from neobert_jax.runtime.model_init import architecture, matmul_precision
    from neobert_jax.runtime.optim import Optimizer, hyperparameters
    from neobert_jax.runtime.state import ModelParts, create_train_state, state_shardings
    from neobert_jax.mlm.step import make_train_step
    from neobert_jax.runtime.throughput import peak_flops_per_device, train_flops_per_step
    from flax import nnx

    jax.config.update("jax_default_matmul_precision", algorithm or matmul_precision(precision))
    if precision == "fp32":
        print(f"matmul relative error vs float64: {matmul_error(algorithm or 'float32'):.2e}")
    if data == "random":
        vocab = 50368
        batches = random_batches(args, vocab, 4)
    else:
        vocab, _, batches = text_batches(args, "best_fit", args.steps + args.warmup)
    cfg = default_config()
    cfg.train.grad_accum_steps, cfg.train.precision = 1, precision
    mesh = sharding.make_mesh(cfg.mesh)
    config = model_config(args, vocab, precision, implementation, algorithm, mesh)
    parts, params = ModelParts.split(architecture(args.arch).model_class(config, rngs=nnx.Rngs(0)))
    optimizer, hparams = Optimizer(cfg.train), hyperparameters(cfg.train, 10_000)
    tx = optimizer.tx(hparams)
    state_sh = state_shardings(parts, tx, hparams, mesh)
    state = create_train_state(params, tx, hparams, state_sh, seed=0)
    step = make_train_step(parts, optimizer, cfg.train, state_sh, mesh)
    device_batches = [sharding.global_batch(b, mesh) for b in batches]

    def batch_at(i):  # random rows live on the device; text rows come from the host every step
        return device_batches[i % len(device_batches)] if data == "random" else sharding.global_batch(batches[i % len(batches)], mesh)

    for i in range(args.warmup):
        state, metrics = step(state, batch_at(i))
    jax.block_until_ready(metrics)
    real = predicted = 0
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        state, metrics = step(state, batch_at(i))
        real += int(np.sum(batches[i % len(batches)]["segment_ids"] != 0))
        predicted += int(np.sum(batches[i % len(batches)]["masked_labels"] != -100))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    if args.profile:
        holder = [state]

        def traced_step(i):
            holder[0], out = step(holder[0], batch_at(i))
            return out

        hlo = step.lower(holder[0], batch_at(0)).compile().as_text()
        os.makedirs(args.profile, exist_ok=True)
        with open(os.path.join(args.profile, f"{args.worker}.hlo.txt"), "w") as f:
            f.write(hlo)
        profile_steps(args, traced_step, hlo)
        state = holder[0]
    flops = train_flops_per_step(config, args.batch, args.seq_len, predicted // args.steps) * args.steps
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    peak = peak_flops_per_device(device.device_kind, precision)
    return dict(tokens=real, seconds=seconds, flops=flops, peak_flops=peak,
                peak_bytes=stats.get("peak_bytes_in_use", 0), loss=float(metrics["loss"]))


def profile_steps(args, run_step, hlo: str, steps: int = 5) -> None:
    """Traces a few steps and prints where device time goes: top kernels and the idle share."""
    import glob
    import gzip
    from collections import defaultdict

    import jax

    log_dir = os.path.join(args.profile, args.worker)
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        for i in range(steps):
            out = run_step(i)
        jax.block_until_ready(out)
    path = sorted(glob.glob(os.path.join(log_dir, "**", "*perfetto_trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    kernels = [e for e in events if e.get("ph") == "X" and "GPU" in names.get(e["pid"], "")
               and "dur" in e and not e["name"].startswith(("Memcpy", "Memset"))]
    if not kernels:
        print(f"profile: no GPU kernel events in {path}; processes: {sorted(set(names.values()))}")
        return
    busy = defaultdict(float)
    for e in kernels:
        busy[e["name"]] += e["dur"]
    start = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    total = sum(busy.values())
    print(f"profile {args.worker}: {steps} steps, device span {(end - start) / 1e3 / steps:.2f} ms/step, "
          f"kernels {total / 1e3 / steps:.2f} ms/step ({len(kernels) / steps:.0f} launches/step), "
          f"idle {1 - total / (end - start):.1%}")
    for name, us in sorted(busy.items(), key=lambda kv: -kv[1])[:40]:
        print(f"  {us / 1e3 / steps:8.3f} ms/step {us / total:6.1%}  {name[:110]}")
        if us / total > 0.01:  # what the fusion is: its HLO instruction (shape, operands, fused computation)
            hlo_name = re.sub(r"_(\d+)$", r".\1", name)  # kernel fusion_12 is HLO instruction %fusion.12
            defs = [line.strip() for line in hlo.splitlines() if line.strip().startswith(f"%{hlo_name} = ")]
            if defs:
                print(f"{'':28}{defs[0][:260]}")


def torch_model(args, vocab: int, precision: str):
    """-> (the torch masked LM of --arch, its loss on a dict of input_ids, attention_mask, labels).

    The loss function, not the module, is what gets compiled: NeoBERT's calls the model's parts,
    which a compiled module would run uncompiled."""
    import torch

    if args.arch == "neobert":
        from neobert_jax.hf.neobert_modeling import NeoBERTConfig, NeoBERTLMHead

        model = NeoBERTLMHead(NeoBERTConfig(**model_config(args, vocab, precision, "xla").to_hf_dict()))

        def loss(b):
            hidden = model.model(b["input_ids"], b["attention_mask"]).last_hidden_state
            picked = b["labels"] != -100
            logits = model.decoder(hidden[picked])
            return torch.nn.functional.cross_entropy(logits.float(), b["labels"][picked])

        return model, loss
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    hf_config = ModernBertConfig(vocab_size=vocab, **(TINY if args.tiny else STUDENT), **SPECIAL_IDS,
                                 sparse_prediction=True)
    hf_config._attn_implementation = "sdpa"
    model = ModernBertForMaskedLM(hf_config)
    return model, lambda b: model(**b).loss


def run_torch(args, precision: str, data: str) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if data == "random":
        vocab = 50368
        batches = [{k: b[k] for k in ("input_ids", "segment_ids", "labels")} for b in random_batches(args, vocab, 4)]
    else:
        vocab, _, raw = text_batches(args, "none", args.steps + args.warmup)
        batches = [trim(b) for b in raw]
    model, loss_of = torch_model(args, vocab, precision)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=device == "cuda")
    compiled = torch.compile(loss_of) if device == "cuda" else loss_of
    tensors = [{k: torch.from_numpy(np.ascontiguousarray(v)).to(device).long() for k, v in b.items()} for b in batches]
    for b in tensors:
        # Padding is marked attended: HF's sdpa path gives NaN when a padded query has no visible key in
        # its local window. The work is the same, and a mask-free global layer can only make torch faster.
        b["attention_mask"] = torch.ones_like(b["input_ids"])

    def step(b):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = compiled({k: b[k] for k in ("input_ids", "attention_mask", "labels")})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    shapes_seen = set()
    for i, b in enumerate(tensors):  # compile every padded shape before timing
        if i < args.warmup or tuple(b["input_ids"].shape) not in shapes_seen:
            step(b)
            shapes_seen.add(tuple(b["input_ids"].shape))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    real = predicted = 0
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        b = tensors[i % len(tensors)]
        loss = step(b)
        real += int((b["segment_ids"] != 0).sum())  # non-pad tokens only
        predicted += int((b["labels"] != -100).sum())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    from neobert_jax.runtime.throughput import peak_flops_per_device, train_flops_per_step

    seq = args.seq_len if data == "random" else int(np.mean([b["input_ids"].shape[1] for b in batches]))
    flops = train_flops_per_step(model_config(args, vocab, precision, "xla"), args.batch, seq,
                                 predicted // args.steps) * args.steps
    kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return dict(tokens=real, seconds=seconds, flops=flops, peak_flops=peak_flops_per_device(kind, precision),
                peak_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else 0, loss=float(loss))


def worker(args) -> None:
    framework, precision, implementation, data, *algorithm = ROWS[args.worker]
    if framework == "jax":
        from neobert_jax.runtime.cli import set_xla_flags

        set_xla_flags(precision)  # what scripts/pretrain.py does, before JAX starts its backend
    if framework == "jax":
        result = run_jax(args, precision, implementation, data, *algorithm)
    else:
        result = run_torch(args, precision, data)
    print("RESULT " + json.dumps(dict(row=args.worker, arch=args.arch, **result)), flush=True)


def main() -> None:
    from neobert_jax.runtime.model_init import architectures

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--batch", type=int, default=128, help="global rows per step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    p.add_argument("--arch", default="modernbert", choices=tuple(architectures()),
                   help="the model family of every row (JAX and torch)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model: a CPU smoke run")
    p.add_argument("--work-dir", default="runs/bench", help="where the text rows cache their tokenizer")
    p.add_argument("--out", help="also write the results as JSON lines here")
    p.add_argument("--profile", help="JAX rows: trace 5 more steps into this dir and print the top kernels")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; choose from {', '.join(ROWS)}")
    results = []
    for row in rows:
        cmd = [sys.executable, __file__, "--worker", row, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--work-dir", args.work_dir,
               "--arch", args.arch]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--profile", args.profile] if args.profile else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{row}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("RESULT ")))
        print(f"done {row}", file=sys.stderr, flush=True)
    print_table(results, args)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)


def print_table(results: list[dict], args) -> None:
    print(f"\n{args.arch}{' (tiny)' if args.tiny else ''}: batch {args.batch} x seq {args.seq_len}, "
          f"{args.steps} timed steps; tokens = non-pad tokens")
    print(f"{'row':18} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>9} {'step ms':>9} {'loss':>8} {'vs torch':>9}")
    def kind(name: str) -> str:
        return ("text-" if name.endswith("text") else "") + ("bf16" if "bf16" in name else "fp32")

    base = {kind(r["row"]): r["tokens"] / r["seconds"] for r in results if r["row"].startswith("torch")}
    for r in results:
        name = r["row"]
        rate = r["tokens"] / r["seconds"]
        mfu = r["flops"] / r["seconds"] / r["peak_flops"] if r["peak_flops"] else float("nan")
        ratio = rate / base[kind(name)] if kind(name) in base else float("nan")
        print(f"{name:18} {rate:12,.0f} {mfu:7.1%} {r['peak_bytes'] / 2**30:9.2f} "
              f"{1e3 * r['seconds'] / args.steps:9.1f} {r['loss']:8.3f} {ratio:9.2f}")


if __name__ == "__main__":
    main()
