#!/usr/bin/env bash
# Submits scripts/pretrain.py as a multi-node GPU job: one process per node, each owning all of
# its node's GPUs; JAX finds the other processes from SLURM's variables. The checkout and the
# activated Python environment must be visible on every node (a shared filesystem), and so must
# --config.output_dir. See docs/scaling.md.
#
#   scripts/launch_slurm.sh --nodes 2 --gpus-per-node 8 --time 24:00:00 [--dry-run] \
#       -- --config configs/student.py --config.output_dir=/shared/runs/student --config.train.precision=bf16
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/launch_slurm.sh --nodes N --gpus-per-node G [options] [-- pretrain.py arguments]

  --nodes N            nodes, one training process each
  --gpus-per-node G    GPUs per node, all used by that node's process
  --time HH:MM:SS      time limit; 5 minutes before it, SIGTERM makes the run save and exit 0
  --partition NAME     SLURM partition
  --account NAME       SLURM account
  --cpus-per-node C    CPU cores for each process (data loading); default: SLURM's
  --job-name NAME      default: neobert
  --dry-run            print the batch script instead of submitting it (> job.sh, edit, sbatch job.sh)
pretrain.py arguments default to: --config configs/student.py
EOF
}

die() { echo "error: $*" >&2; exit 2; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

NODES="" GPUS="" TIME="" PARTITION="" ACCOUNT="" CPUS="" JOB_NAME="neobert" DRY_RUN=false
while (($#)); do
  case "$1" in
    --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
    --gpus-per-node) GPUS="${2:?--gpus-per-node needs a value}"; shift 2 ;;
    --time) TIME="${2:?--time needs a value}"; shift 2 ;;
    --partition) PARTITION="${2:?--partition needs a value}"; shift 2 ;;
    --account) ACCOUNT="${2:?--account needs a value}"; shift 2 ;;
    --cpus-per-node) CPUS="${2:?--cpus-per-node needs a value}"; shift 2 ;;
    --job-name) JOB_NAME="${2:?--job-name needs a value}"; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
[[ -n "$NODES" && -n "$GPUS" ]] || { usage >&2; die "--nodes and --gpus-per-node are required"; }
positive --nodes "$NODES"
positive --gpus-per-node "$GPUS"
[[ -z "$CPUS" ]] || positive --cpus-per-node "$CPUS"
TRAIN_ARGS=("$@")
((${#TRAIN_ARGS[@]})) || TRAIN_ARGS=(--config configs/student.py)
$DRY_RUN || command -v sbatch >/dev/null || die "sbatch not found; run this on a SLURM login node"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="$(command -v python3 || command -v python || echo python3)"
quoted_args="$(printf ' %q' "${TRAIN_ARGS[@]}")"

batch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$GPUS"
  [[ -z "$CPUS" ]] || echo "#SBATCH --cpus-per-task=$CPUS"
  [[ -z "$TIME" ]] || echo "#SBATCH --time=$TIME"
  [[ -z "$PARTITION" ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z "$ACCOUNT" ]] || echo "#SBATCH --account=$ACCOUNT"
  echo "#SBATCH --signal=TERM@300"
  echo "#SBATCH --output=$REPO/slurm-%x-%j.out"
  echo "set -euo pipefail"
  echo "cd $(printf '%q' "$REPO")"
  echo "# One process per node sees all the node's GPUs (JAX would otherwise give each SLURM task one)."
  echo "export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS - 1)))"
  echo "srun --kill-on-bad-exit=1 $(printf '%q' "$PYTHON") scripts/pretrain.py$quoted_args"
}

if $DRY_RUN; then
  echo "# dry run: the batch script below is what sbatch would get" >&2
  batch_script
else
  batch_script | sbatch
fi
