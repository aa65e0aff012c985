#!/usr/bin/env bash
# One-GPU check (H200 in under 5 minutes): LoRA-SFT tokens/s, MFU (6N convention) and memory for
# ~1B and 8B-shaped Llamas with random weights, attention implementations side by side.
#
#   scripts/gpu_check.sh [RESULTS_DIR]        # default: $OUT if set, else ./gpu_check_results
#
# Writes RESULTS_DIR/gpu_check.json (every run, with the MFU convention spelled out),
# RESULTS_DIR/gpu_check.txt (a table), RESULTS_DIR/nvidia-smi.txt and the log.
# Needs a Python with jaxtune's dependencies and a CUDA build of jax (pip install "jax[cuda12]").
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-gpu_check_results}}"
mkdir -p "$RESULTS"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$RESULTS/nvidia-smi.txt"
if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "jax in $PY has no GPU backend; install one: $PY -m pip install -U \"jax[cuda12]==\$($PY -c 'import jax; print(jax.__version__)')\"" | tee "$RESULTS/gpu_check.txt"
  exit 1
fi

export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
timeout 290 "$PY" scripts/gpu_check.py --out "$RESULTS/gpu_check.json" --budget 240 \
  2>&1 | tee "$RESULTS/gpu_check.log" || echo "gpu_check.py stopped early (see log)"

"$PY" - "$RESULTS/gpu_check.json" > "$RESULTS/gpu_check.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["device"], "| jax", r["jax"])
print(r["mfu_convention"])
print(f"{'model':10} {'attn':10} {'B x T':>10} {'remat':6} {'tok/s':>10} {'MFU':>6} "
      f"{'step GiB':>9} {'peak GiB':>9} {'compile s':>9}  loss")
for e in r["runs"]:
    head = f"{e['model']:10} {e['attention']:10} {e['batch']}x{e['seq']:<8} {e['remat']:6}"
    if "tokens_per_s" in e:
        print(f"{head} {e['tokens_per_s']:>10.0f} {e['mfu_6n']:>6.1%} {e['step_memory_gib']:>9}"
              f" {e['device_peak_gib']:>9} {e['compile_s']:>9}  {e['loss_first_last']}")
    else:
        print(f"{head} {e.get('error') or e.get('skipped')}")
PY
cat "$RESULTS/gpu_check.txt"
