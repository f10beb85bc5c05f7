#!/usr/bin/env bash
# Runs scripts/pretrain.py on every worker of a Cloud TPU VM slice: copies this checkout to each
# worker, installs it, and starts the same training command everywhere (JAX finds the other
# workers by itself). Creates nothing unless --create is given. See docs/scaling.md.
#
#   scripts/launch_tpu_pod.sh --tpu my-v5e --zone us-west4-a [--create v5litepod-16] [--dry-run] \
#       -- --config configs/student.py --config.output_dir=/mnt/shared/runs/student
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/launch_tpu_pod.sh --tpu NAME --zone ZONE [options] [-- pretrain.py arguments]

  --tpu NAME           the TPU VM slice (an existing one, unless --create)
  --zone ZONE          its zone, e.g. us-west4-a
  --project ID         Google Cloud project (default: gcloud's configured one)
  --create TYPE        first create the slice, e.g. v5litepod-16 or v6e-16
  --version VERSION    runtime for --create (default: v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e)
  --spot               with --create: a Spot slice (cheaper, preemptible)
  --remote-dir DIR     where the code goes on each worker (default: neobert_jax, in the home dir)
  --skip-install       copy the code but skip `pip install` (workers already set up)
  --detach             start training in the background on each worker (output in DIR/train.log)
  --dry-run            print the commands and run nothing
pretrain.py arguments default to: --config configs/student.py
EOF
}

die() { echo "error: $*" >&2; exit 2; }

TPU="" ZONE="" PROJECT="" CREATE="" VERSION="" SPOT=false REMOTE_DIR="neobert_jax"
SKIP_INSTALL=false DETACH=false DRY_RUN=false
while (($#)); do
  case "$1" in
    --tpu) TPU="${2:?--tpu needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --create) CREATE="${2:?--create needs an accelerator type}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --spot) SPOT=true; shift ;;
    --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
    --skip-install) SKIP_INSTALL=true; shift ;;
    --detach) DETACH=true; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" ]] || { usage >&2; die "--tpu and --zone are required"; }
TRAIN_ARGS=("$@")
((${#TRAIN_ARGS[@]})) || TRAIN_ARGS=(--config configs/student.py)
if [[ -n "$CREATE" && -z "$VERSION" ]]; then
  case "$CREATE" in
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime for $CREATE; pass --version" ;;
  esac
fi
[[ -z "$VERSION" || -n "$CREATE" ]] || die "--version only applies with --create"
$DRY_RUN || command -v gcloud >/dev/null || die "gcloud not found; install the Google Cloud CLI"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/neobert_jax-code-$$.tar.gz"
GCLOUD_SCOPE=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || GCLOUD_SCOPE+=(--project="$PROJECT")

quote() {  # the arguments as one shell command line, single-quoting where needed
  local words=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then words+=("$arg"); else words+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}
run() {  # prints the command under --dry-run, runs it otherwise
  if $DRY_RUN; then quote "$@"; else "$@"; fi
}
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_SCOPE[@]}" --worker=all --command="$1"
}

$DRY_RUN && echo "# dry run: the commands a real run executes, in order"
if [[ -n "$CREATE" ]]; then
  create=(gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_SCOPE[@]}" --accelerator-type="$CREATE"
          --version="$VERSION")
  $SPOT && create+=(--spot)
  run "${create[@]}"
fi

# The code: every file git tracks or would track (no runs/, caches or virtualenvs).
if $DRY_RUN; then
  echo "$(quote git -C "$REPO" ls-files -z --cached --others --exclude-standard) |" \
       "$(quote tar -czf "$ARCHIVE" -C "$REPO" --null -T -)"
else
  trap 'rm -f "$ARCHIVE"' EXIT
  git -C "$REPO" ls-files -z --cached --others --exclude-standard | tar -czf "$ARCHIVE" -C "$REPO" --null -T -
fi
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU:neobert_jax-code.tar.gz" "${GCLOUD_SCOPE[@]}" --worker=all
dir="$(quote "$REMOTE_DIR")"
on_all_workers "mkdir -p $dir && tar -xzf neobert_jax-code.tar.gz -C $dir && rm neobert_jax-code.tar.gz"
$SKIP_INSTALL || on_all_workers "cd $dir && $(quote python3 -m pip install --quiet -e '.[tpu]')"

train="$(quote python3 scripts/pretrain.py "${TRAIN_ARGS[@]}")"
if $DETACH; then
  on_all_workers "cd $dir && nohup $train > train.log 2>&1 < /dev/null &"
else
  on_all_workers "cd $dir && $train"
fi
