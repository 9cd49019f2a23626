#!/usr/bin/env bash
# Every check that only a GPU can make, in one command, everything into one folder (on a lent GPU machine
# that folder is all that comes back). Steps, each stopped at its own time limit so that one slow step
# cannot eat the others' time (the next step still runs):
#   env           device, driver and versions; no GPU (outside a dry run) stops here with exit status 2
#   kernel-tests  the kernel tests compiled on the GPU (tests/device.py), in parallel workers where
#                 pytest-xdist is installed. The compile-only tests (-k "sm80 or sm90": the real compiler for
#                 sm_80 and sm_90 without a GPU) are left out: on the GPU every kernel test compiles its kernels.
#   bench         python -m bench.run_checks: measured ceilings, train step (reference, engine without
#                 compile, engine), dense vs sparse encoder, every kernel vs its twin and the compiled twin;
#                 one process, each part under its own limit too
#   summary       python -m bench.summary: the short table, printed last
#
# Usage:
#   bash bench/gpu_checks.sh --quick --out DIR            # one H100/H200, at most 6 minutes from a cold start
#   bash bench/gpu_checks.sh --out DIR                    # every shape and batch size (a longer lease)
#   bash bench/gpu_checks.sh --quick --dry-run --out DIR  # the same script on a CPU: interpreter, tiny shapes
# Set INFMAE_GIT_SHA=<sha> where the tree has no .git (a copied working tree): the results carry it.
# PYTHON=/path/to/python picks the interpreter (default: python3, the one with torch on the GPU image).
# DIR receives log.txt (written as the run goes: a stopped run still leaves it), kernel_tests.xml,
# results.json, results.csv and summary.txt. Exit status: 0 when every step passed, 1 when one failed or ran
# out of time, 2 on a usage error or a missing GPU. DALI on a GPU: bench/gpu_dali.sh (bench/README.md).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

source bench/_args.sh # parse_args NAME LOG OPTIONS ARGS...: quick, dry, out, log
parse_args gpu_checks.sh log.txt "--quick --dry-run" "$@"

# Time limits in seconds. Quick: 15 + 70 + 230 = 315 s, 360 s if every step ignored its interrupt until
# the kill 15 s later; the bench parts' own limits (bench/run_checks.py LIMITS["quick"]: 10 + 120 + 30 + 60
# = 220 s, unused seconds passed on) fit in its 230. A cold first torch import can take seconds: env 15 s.
if [ "$quick" = 1 ]; then
    limit_env=15 limit_tests=70 limit_bench=230
else
    limit_env=30 limit_tests=1500 limit_bench=2400
fi
mode_flags=()
[ "$quick" = 1 ] && mode_flags+=(--quick)
test_selection="not sm80 and not sm90"
if [ "$dry" = 1 ]; then
    # the CPU: Triton's interpreter, no CUDA even where there is one; a handful of kernel tests (the whole
    # set under the interpreter is the CI suite's job)
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
    mode_flags+=(--dry-run)
    test_selection="not sm80 and not sm90 and (deterministic or launch_rule)"
    limit_tests=120 limit_bench=200
else
    export TRITON_INTERPRET=0
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"  # the image's torch is under python3; PYTHON=... picks another

source bench/_steps.sh  # step NAME LIMIT COMMAND...

step env "$limit_env" "$python" - "$dry" <<'PY'
import os, platform, shutil, subprocess, sys

import numpy, torch, triton

dry = sys.argv[1] == "1"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {triton.__version__} | numpy {numpy.__version__}"
      f" | Python {platform.python_version()} | {os.cpu_count()} CPUs | TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")
if dry:
    print("dry run: the CPU, Triton's interpreter, tiny shapes")
elif not torch.cuda.is_available():
    sys.exit("gpu_checks.sh: expected a CUDA GPU, got none; run it on a GPU machine, or add --dry-run on a CPU")
else:
    properties = torch.cuda.get_device_properties(0)
    print(f"{torch.cuda.get_device_name(0)} | sm_{properties.major}{properties.minor} | "
          f"{properties.total_memory / 2**30:.0f} GiB | {properties.multi_processor_count} SMs")
    if shutil.which("nvidia-smi"):  # a read-only query: clocks and temperature as found (nothing is set)
        query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu"
        print(subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True).stdout)
PY
env_rc=$?
if [ "$env_rc" -ne 0 ] && [ "$env_rc" -ne 124 ]; then
    "$python" -m bench.summary "$out" "${steps[@]}" | tee -a "$log"
    exit 2
fi

workers=()
if "$python" -c "import xdist" 2>/dev/null; then
    n=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS
    workers=(-n "$((n > 16 ? 16 : n))")
fi
step kernel-tests "$limit_tests" "$python" -m pytest -q -p no:cacheprovider -m kernel_device -k "$test_selection" \
    "${workers[@]}" --junitxml="$out/kernel_tests.xml" -o junit_family=xunit1

step bench "$limit_bench" "$python" -m bench.run_checks --out "$out" "${mode_flags[@]}"

# the table last on stdout (and in the log)
"$python" -m bench.summary "$out" "${steps[@]}" | tee -a "$log"
exit "$failed"
