#!/usr/bin/env bash
# One-shot device check for serve-drift: run ONCE on a lent GPU machine from the repo root:
#   bash benchmarks/gpu_check.sh            # full run, ~1-2 min on an H100/H200
#   bash benchmarks/gpu_check.sh --quick    # tiny sizes (CPU smoke test)
# Uses the machine's own python3 (with torch); it does not import the serve_drift package
# (see benchmarks/gpu_check.py). Override the interpreter with PYTHON=/path/to/python.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

echo "=== serve-drift gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ==="
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
else
    echo "nvidia-smi: not available"
fi
echo "python: $(command -v "$PYTHON") ($("$PYTHON" --version 2>&1))"
# torch/CUDA versions are printed by gpu_check.py itself (saves a second torch import).

# Hard stop well under the 8-minute call budget: SIGINT lets the script print its SUMMARY.
runner=()
if command -v timeout >/dev/null 2>&1; then
    runner=(timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-420}")
fi
PYTHONPATH=. PYTHONUNBUFFERED=1 ${runner[@]+"${runner[@]}"} "$PYTHON" benchmarks/gpu_check.py "$@"
