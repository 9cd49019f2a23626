#!/usr/bin/env bash
# DALI on a GPU, on a lease of its own (the GPU image has neither DALI nor lz4: carry and install them
# first, bench/README.md "DALI on a lent GPU"). At most 5 minutes; each step stopped at its own limit:
#   env    DALI, lz4, torch and the GPU (none of them: exit status 2)
#   data   python -m bench.bench_data on a small generated set (256 frames of 640x512 and 2 of 6912x1024,
#          in the generator's PNG/TIFF/JPEG/BMP mix, and their pack): each DALI source's first batch checked
#          against the reference loader's (parity), then every loader's images/s
#   train  python -m bench.bench_train: the engine's training step on the synthetic batch and on DALI's
#          batches from the pack, side by side (whether the input keeps up with the step)
#   summary  the two result tables, printed last
#
# Usage:
#   bash bench/gpu_dali.sh --out DIR            # one H100/H200
#   bash bench/gpu_dali.sh --dry-run --out DIR  # the same on a CPU: DALI's CPU mode, tiny sizes
# PYTHON=/path/to/python picks the interpreter (default: python3). DIR receives dali_log.txt,
# bench_data_*.{json,csv} and bench_train_*.{json,csv}. Exit status: 0 when every step passed, 1 when one
# failed or ran out of time, 2 on a usage error or something missing. Budget: 20 + 100 + 160 = 280 s.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

source bench/_args.sh # parse_args NAME LOG OPTIONS ARGS...: quick, dry, out, log
parse_args gpu_dali.sh dali_log.txt "--dry-run" "$@"
data="${TMPDIR:-/tmp}/infmae_gpu_dali_data"
threads=$(getconf _NPROCESSORS_ONLN)
threads=$((threads > 16 ? 16 : threads))
if [ "$dry" = 1 ]; then
    export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
    data_args=(--count 12 --wide 1 --batch 4 --batches 2 --img 64 --threads 1)
    train_args=(--quick --batch-sizes 4 --reps 1 --variants engine --backend aot_eager --threads 1)
    limit_data=120 limit_train=120
    data="$data-dry"
else
    # 64 per batch, 8 timed batches per loader; the train step at B=128 (the 256 frames are two batches of
    # DALI's per epoch, cycled), engine only: the reference's speed without DALI is gpu_checks.sh's
    data_args=(--count 256 --wide 2 --batch 64 --batches 8 --img 224 --threads "$threads")
    train_args=(--batch-sizes 128 --reps 10 --variants engine --threads "$threads")
    limit_data=100 limit_train=160
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"  # the image's torch is under python3; PYTHON=... picks another

source bench/_steps.sh # step NAME LIMIT COMMAND...

if ! step env 20 "$python" - "$dry" <<'PY'
import sys

import lz4
import nvidia.dali as dali
import torch

print(f"DALI {dali.__version__} | lz4 {lz4.__version__} | torch {torch.__version__} (CUDA {torch.version.cuda})")
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit("gpu_dali.sh: expected a CUDA GPU, got none; run it on a GPU machine, or add --dry-run on a CPU")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
PY
then
    echo "gpu_dali.sh: DALI, lz4 or the GPU is missing (bench/README.md says how to carry them)" | tee -a "$log"
    exit 2
fi

step data "$limit_data" "$python" -m bench.bench_data "${data_args[@]}" --data "$data" --out "$out"
# the pack bench_data made (written once per data folder): DALI inflates it on the GPU
step train "$limit_train" "$python" -m bench.bench_train "${train_args[@]}" --input synthetic,dali --data "$data/pack" \
    --out "$out"

"$python" - "$out" "${steps[@]}" <<'PY' | tee -a "$log"
import json
import sys
from pathlib import Path

folder = Path(sys.argv[1])
print("=" * 100)
for item in sys.argv[3::2]:  # the --step NAME=STATUS:SECONDS values
    print("step", item)
for path in sorted(folder.glob("bench_data*.json")) + sorted(folder.glob("bench_train*.json")):
    data = json.loads(path.read_text())
    env = data["environment"]
    print(f"\n{path.name}: {env['device']} | torch {env['torch']} | DALI {env.get('dali', '')} | git {env['git_sha']}")
    for row in data["results"]:
        if "loader" in row:
            print(f"  {row['loader']:9s} {row['source']:6s} {row['images_per_s']:9.1f} images/s"
                  f"  parity max {row['parity_max']:.3g} mean {row['parity_mean']:.3g}")
        elif "error" in row:
            print(f"  {row['input']:9s} B={row['batch']} {row['variant']} FAILED: {row['error'][:200]}")
        else:
            print(f"  {row['input']:9s} B={row['batch']} {row['variant']:16s} {row['img_per_s']:9.1f} img/s"
                  f"  {row['ms_per_step']:.1f} ms/step")
PY
[ "$failed" = 0 ] && echo "all DALI checks passed" || echo "FAILED: see the steps above"
exit "$failed"
