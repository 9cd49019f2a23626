# shellcheck shell=bash disable=SC2034  # quick, dry, out and log are read by the sourcing script
# Sourced by bench/gpu_checks.sh and bench/gpu_dali.sh: their shared command line.
# parse_args NAME LOG OPTIONS ARGS...: OPTIONS lists the flags the script takes besides --out DIR ("--quick
# --dry-run" or "--dry-run"); sets `quick` and `dry` (0 or 1), `out` (the results folder, created, as an
# absolute path) and `log` (the empty file LOG in it). --help prints the script's header comment; a usage
# error exits with status 2.
parse_args() {
    local name=$1 log_name=$2 options=$3 expected
    shift 3
    expected="${options// /, } or --out DIR"
    quick=0 dry=0 out=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick | --dry-run)
                if [[ " $options " != *" $1 "* ]]; then
                    echo "$name: expected $expected, got '$1'; see --help" >&2
                    exit 2
                fi
                if [ "$1" = --quick ]; then quick=1; else dry=1; fi
                ;;
            --out) out="${2:-}"; shift ;;
            --out=*) out="${1#--out=}" ;;
            -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) echo "$name: expected $expected, got '$1'; see --help" >&2; exit 2 ;;
        esac
        shift
    done
    if [ -z "$out" ]; then
        echo "$name: expected --out DIR (the results folder), got none; see --help" >&2
        exit 2
    fi
    mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
    log="$out/$log_name"
    : >"$log"
}
