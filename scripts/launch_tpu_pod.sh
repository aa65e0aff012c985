#!/usr/bin/env bash
# Run jaxtune on every host of a Cloud TPU pod slice: one process per TPU VM worker, all joined by
# jax.distributed (jaxtune detects the TPU VM and calls jax.distributed.initialize() itself).
#
#   scripts/launch_tpu_pod.sh setup TPU_NAME ZONE             # copy this repo, install, on all workers
#   scripts/launch_tpu_pod.sh run   TPU_NAME ZONE -- jaxtune train --config=configs/sft_lora.py \
#       --config.sharding.fsdp=-1 --config.output_dir=gs://BUCKET/run1
#
# PROJECT=... picks the GCP project (default: gcloud's). The same command runs on every worker
# (--worker=all); process 0 writes logs, checkpoints' metadata and exports, every process loads
# only its own rows of each batch. Write outputs to a bucket (gs://...) that all workers see.
# Each worker's output goes to ~/jaxtune/logs/<hostname>.log and is streamed here (interleaved).
set -euo pipefail

usage() { sed -n '2,13p' "$0"; exit 2; }
[ $# -ge 3 ] || usage
ACTION=$1 TPU=$2 ZONE=$3
shift 3
GCLOUD=(gcloud compute tpus tpu-vm)
PROJECT_FLAG=()
[ -n "${PROJECT:-}" ] && PROJECT_FLAG=(--project "$PROJECT")
REPO="$(cd "$(dirname "$0")/.." && pwd)"

on_all() {  # on_all "shell command": run it on every worker at once
  "${GCLOUD[@]}" ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"
}

case "$ACTION" in
  setup)
    tarball="$(mktemp -d)/jaxtune.tar.gz"
    git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD
    "${GCLOUD[@]}" scp "$tarball" "$TPU":~/jaxtune.tar.gz --zone "$ZONE" "${PROJECT_FLAG[@]}" \
      --worker=all
    on_all 'set -e; mkdir -p ~/jaxtune/logs && tar -xzf ~/jaxtune.tar.gz -C ~/jaxtune &&
      cd ~/jaxtune && python3 -m venv .venv && .venv/bin/pip install -q -U pip &&
      .venv/bin/pip install -q -e . "jax[tpu]" &&
      .venv/bin/python -c "import jax; print(jax.local_device_count(), \"local TPU chips\")"'
    ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || usage
    printf -v cmd '%q ' "$@"
    on_all "cd ~/jaxtune && export PATH=\$HOME/jaxtune/.venv/bin:\$PATH &&
      ($cmd) 2>&1 | tee logs/\$(hostname).log"
    ;;
  *) usage ;;
esac
