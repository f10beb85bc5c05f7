#!/usr/bin/env bash
# The GPU figures the open issues owe (docs/embedder.md, docs/performance.md, docs/neobert.md), as
# phases that each fit one 10-minute call of the lent machine.
#
#   bash scripts/owed_gpu_runs.sh prepare      # here, with network to the package registry: wheels + pair sets
#   bash scripts/owed_gpu_runs.sh A As [B ...]  # on the GPU machine, from the repo root
#
# prepare: the device image lacks grain, array_record, ml_collections, tensorboardX, portpicker and
# datasets (+ dill, multiprocess), so their cp312 wheels go to .whl/; the pair sets are built here
# (the stdlib set depends on the Python that reads it, the info set on /usr/share/info) into
# runs/owed/. Carry `.whl` and `runs/owed`.
# Phases: A stdlib pairs, B info pairs (both: pretrain the student start, then the users'
# trainer fp32/bf16 and ours fp32/bf16), As / Bs ours' recipe variants from the same start (in the
# same call as A / B: a new machine has lost the start), An / Bn three seeds of st and ours (noise), C the 117k-pair timing, D train-step
# throughput (ModernBERT and NeoBERT rows), E the `gpu` test set, F classification against the users'
# Trainer from A's (else B's) student start, M float32 matrix products by algorithm (scripts/bench_matmul.py),
# P where a contrastive run's start-up goes (from A's or B's start, else a few pretraining steps'). Everything is also packed into
# $OUT/owed_results.tgz (the device returns at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
PAIRS=runs/owed

if [ "${1:-}" = prepare ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 tensorboardX==2.6.5 portpicker==1.6.0 \
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 || exit 1
    [ -d "$PAIRS/stdlib" ] || python3 -m neobert_jax.data.builtin_retrieval "$PAIRS/stdlib" || exit 1
    [ -d "$PAIRS/info" ] || python3 -m neobert_jax.data.info_retrieval "$PAIRS/info" || exit 1
    exit 0
fi

for phase in "$@"; do
    case "$phase" in A|B|As|Bs|An|Bn|C|D|E|F|M|P) ;; *) echo "unknown phase $phase (prepare, A, B, As, Bs, An, Bn, C, D, E, F, M, P)" >&2; exit 2 ;; esac
done
[ $# -gt 0 ] || { echo "usage: $0 prepare | A [As B Bs C D E]" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1  # tokenizers keep their default parallelism, as users run them
OUT=${OUT:-runs/owed/out}
RES=/tmp/owed/results
mkdir -p "$OUT" "$RES"
trap 'tar czf "$OUT/owed_results.tgz" -C "$RES" .' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/gpu.txt"
python3 -c "import jax, torch, transformers, sentence_transformers; print(jax.__version__, jax.devices(), \
torch.__version__, transformers.__version__, sentence_transformers.__version__)" | tee -a "$OUT/gpu.txt"
work=/tmp/owed
embedder() {  # pair set, name, extra flags
    python3 scripts/bench_embedder.py --pairs "$PAIRS/$1" --work-dir "$work/$1" --name "$2" "${@:3}" 2>&1 \
        | grep -v -e 'Loading weights' -e 'UNEXPECTED' | tee "$RES/$2.log"
    { echo "## $2"; grep -e '^|' -e '^compilation' -e '^nDCG@10' -e '^error' -e 'Error' "$RES/$2.log"; } >> "$OUT/summary.log"
    cp "docs/results/embedder_$2.json" "docs/embedder_$2.png" "$RES/" 2>/dev/null
}
variants() {  # pair set: ours (fp32) from the phase's start, one override each
    for kv in train.learning_rate=5e-5 train.learning_rate=1e-4 train.learning_rate=5e-4 train.learning_rate=1e-3 \
              train.layer_lr_decay=0.8 loss.name=gte; do
        name=${kv#*.}
        embedder "$1" "gpu_$1_${name//=/-}" --sides ours --eval-points 1 --ours "$kv"
    done
}
for phase in "$@"; do
    case "$phase" in
    A) embedder stdlib gpu_stdlib --sides st,st-bf16,ours,ours-bf16 ;;
    B) embedder info gpu_info --sides st,st-bf16,ours,ours-bf16 ;;
    An) embedder stdlib gpu_stdlib_seeds --sides st,ours --seeds 0,1,2 --eval-points 1 ;;  # run-to-run noise
    Bn) embedder info gpu_info_seeds --sides st,ours --seeds 0,1,2 --eval-points 1 ;;
    As) variants stdlib ;;
    Bs) variants info ;;
    C) embedder stdlib gpu_stdlib_100k --repeat 50 --sides st,ours-bf16 --eval-points 1 ;;
    D) for arch in modernbert neobert; do
           split=; [ $arch = modernbert ] && split=,jax-fp32-split  # the fp32 products' passes written out (model.tf32_split)
           python3 scripts/bench_throughput.py --arch "$arch" --rows jax-bf16-auto,jax-bf16-rope,torch-bf16,jax-fp32,jax-fp32-rope$split,torch-fp32 \
               --out "$RES/throughput_$arch.json" 2>&1 | tee "$RES/throughput_$arch.log"
           sed -n '/: batch [0-9]* x seq/,$p' "$RES/throughput_$arch.log" >> "$OUT/summary.log"  # the table
       done
       # a small step (the student's 2 rows on a small corpus) is launch-bound: where its device time goes
       python3 scripts/bench_throughput.py --rows jax-bf16-auto --batch 2 --profile "$RES/profile_2rows" \
           --out "$RES/throughput_2rows.json" > "$RES/profile_2rows.log" 2>&1
       awk '/^profile/ {p = 16} /: batch [0-9]+ x seq/ {t = 1} p > 0 || t {print; p--}' "$RES/profile_2rows.log" >> "$OUT/summary.log" ;;
    P) # where the first run's start-up goes (its start-up line), the largest programs and, on the cold runs, XLA's passes
       # (scripts/compile_passes.py); cold caches: as shipped, autotuning without its buffer initialisation and result
       # checks (level 1), without the fusion autotuner (native vs Triton emitters for reductions and transposes), with no
       # Triton GEMMs (cuBLAS only), bf16; a rerun on the first cache (the executable cache: no tracing), and one with
       # another learning rate and length. (No autotuning at all: 10.2 s of 28.8, 4.5x slower steps, 2026-12-07.)
       start=$work/stdlib/mlm/hf; [ -d "$start" ] || start=$work/info/mlm/hf
       if [ ! -d "$start" ]; then  # no A or B before it: a few pretraining steps give a start (only its shape matters)
           python3 -c "import json, sys; [print(' '.join(json.loads(l)['positive'].split())) for l in sys.stdin if l.strip()]" \
               < "$PAIRS/info/train.jsonl" > $work/probe_passages.txt
           python3 scripts/pretrain.py --config configs/student.py --config.data.train_files=$work/probe_passages.txt \
               --config.output_dir=$work/probe_mlm --config.train.max_steps=16 --config.train.eval_every=0 \
               > "$RES/probe_start.log" 2>&1 || { echo "## probe: no start (probe_start.log)" >> "$OUT/summary.log"; continue; }
           start=$work/probe_mlm/hf
       fi
       for mode in cold autotune1 nofusiontune cold-bf16 rerun notriton rerun-lr; do
           flags=; other=
           case $mode in
           autotune1) flags=--xla_gpu_autotune_level=1 ;;
           nofusiontune) flags=--xla_gpu_experimental_enable_fusion_autotuner=false ;;
           notriton) flags=--xla_gpu_enable_triton_gemm=false ;;
           cold-bf16) other=--config.train.precision=bf16 ;;
           rerun-lr) other="--config.train.learning_rate=1e-4 --config.train.epochs=2" ;;
           esac
           timers=(); case $mode in cold|cold-bf16) timers=(TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1,gpu_compiler=1,nvptx_compiler=1) ;; esac
           cache=/tmp/owed/cache_$mode; [ "${mode#rerun}" != $mode ] && cache=/tmp/owed/cache_cold
           env "${timers[@]}" XLA_FLAGS=$flags JAX_LOG_COMPILES=1 python3 scripts/contrastive.py --config configs/contrastive.py \
               --config.init_from="$start" --config.data.train_files="$PAIRS/info/train.jsonl" $other \
               --config.output_dir=/tmp/owed/probe_$mode --config.resume=False --config.compilation_cache_dir=$cache \
               > "$RES/probe_$mode.log" 2>&1
           { echo "## probe $mode"; grep -o -e 'start-up: .*' -e '^run: .*' -e '^error.*' "$RES/probe_$mode.log"
             echo "programs loaded from the executable cache: $(grep -c 'compiled program loaded from' "$RES/probe_$mode.log")"
             grep -o 'Finished XLA compilation of [^ ]* in [0-9.]* sec' "$RES/probe_$mode.log" | sort -t' ' -k7 -g | tail -4
             [ ${#timers[@]} -gt 0 ] && python3 scripts/compile_passes.py "$RES/probe_$mode.log" --top 20 2>&1
           } >> "$OUT/summary.log"
       done ;;
    F) start=$work/stdlib/mlm/hf; [ -d "$start" ] || start=$work/info/mlm/hf
       python3 scripts/bench_classify.py --init "$start" --task builtin --work-dir "$work/classify" \
           --sides hf,hf-bf16,ours,ours-bf16 --name gpu_builtin 2>&1 | tee "$RES/gpu_builtin.log"
       cp docs/results/classify_gpu_builtin.json "$RES/" 2>/dev/null
       { echo "## gpu_builtin"; grep -e '^|' -e '^error' "$RES/gpu_builtin.log"; } >> "$OUT/summary.log" ;;
    M) python3 scripts/bench_matmul.py --out "$RES/matmul.jsonl" 2>&1 | tee "$RES/matmul.log"
       grep -e '^|' -e '^error' "$RES/matmul.log" >> "$OUT/summary.log" ;;
    E) python3 -m pytest -q -m gpu tests 2>&1 | tee "$RES/gpu_tests.log"; tail -5 "$RES/gpu_tests.log" >> "$OUT/summary.log" ;;
    esac
done
