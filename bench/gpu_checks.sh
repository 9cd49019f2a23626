#!/usr/bin/env bash
# Every check that only a GPU can make, in one go, results into bench/results/ (commit them):
#   1. the kernel tests compiled on the GPU (the interpreter off: tests/device.py),
#   2. bench_kernels.py (every op against its twin and torch.compile of the twin),
#   3. bench_sparse.py (dense vs sparse encoder, forward+backward, B=64/128/256),
#   4. bench_train.py (eager reference vs engine; the DALI input too where DALI is installed),
#   5. bench_data.py (reference loader vs DALI on files and packs) where DALI is installed.
# Each step runs even if an earlier one failed; the exit status says whether all passed.
# Usage: bash bench/gpu_checks.sh        (about 15 minutes on one H100)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=bench/results
mkdir -p "$results"
log="$results/gpu_checks_$(date -u +%Y%m%dT%H%M%SZ).log"
failed=()

step() {  # step NAME COMMAND...: runs COMMAND, its output appended to the log
    echo "=== $1: ${*:2}" | tee -a "$log"
    "${@:2}" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || failed+=("$1 (exit $rc)")
}

python - <<'PY' | tee -a "$log"
import torch, triton
assert torch.cuda.is_available(), "gpu_checks.sh: expected a CUDA GPU, got none; run it on a GPU machine"
print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2

step kernel-tests python -m pytest -q -p no:cacheprovider -m kernel_device
step bench-kernels python -m bench.bench_kernels
step bench-sparse python -m bench.bench_sparse
if python -c "import nvidia.dali" 2>/dev/null; then
    step bench-train python -m bench.bench_train --input synthetic,dali
    step bench-data python -m bench.bench_data
else
    echo "DALI is not installed (pip install nvidia-dali-cuda130): bench_train on synthetic input only, no bench_data" | tee -a "$log"
    step bench-train python -m bench.bench_train --input synthetic
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (log: $log)"
    exit 1
fi
echo "all GPU checks passed (log: $log)"
