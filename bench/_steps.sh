# shellcheck shell=bash disable=SC2034,SC2154  # `failed` is read, `log` set, by the sourcing script
# Sourced by bench/gpu_checks.sh and bench/gpu_dali.sh: one step of a run, under its own time limit.
# The caller sets `log` (the log file, appended to as the step runs); `steps` (the --step arguments of
# bench/summary.py) and `failed` (1 once a step failed) are kept here.
steps=()
failed=0

step() { # step NAME LIMIT COMMAND...: COMMAND under LIMIT seconds (SIGINT, then KILL 15 s later), output into the log
    local name=$1 limit=$2 start=$SECONDS rc status
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=passed ;;
        124 | 137) status=timeout ;;
        *) status="failed(exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || failed=1
    steps+=(--step "$name=$status:$((SECONDS - start))")
    echo "=== $name: $status in $((SECONDS - start))s" | tee -a "$log"
    return "$rc"
}
