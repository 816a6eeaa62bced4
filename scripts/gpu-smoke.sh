#!/usr/bin/env bash
# tessera's first run on a real GPU, in one call of a few minutes (see docs/gpu-readiness.md).
#
# Steps: build (release), record the GPUs' MIG mode, pending MIG mode and compute mode, `tessera
# doctor` (which includes the read-only NVML placements of the catalog's profile IDs, answered
# with MIG off), `tessera agent status --backend nvml`, the contract suite with
# TESSERA_REAL_GPU=1 (read-only part), the MPS control protocol on a private pipe directory,
# `tessera bench sharing --modes timeslice,mps --keep-gpu-settings` on a short duration, and a
# final check that MIG mode, pending MIG mode and compute mode are what they were.
#
# It NEVER changes MIG mode and never sets a compute mode. Results go to $OUT (if set) or a new
# temporary directory: one log per step and summary.txt (one line per step: ok / skipped /
# FAILED). Without a GPU every GPU step is reported as skipped and the script exits 0; it exits
# 1 when a step that ran failed.
#
# Usage: scripts/gpu-smoke.sh [--no-build --bin PATH] [--no-gpu] [--duration SECS]
#   --no-build   do not build; use --bin (and skip the contract suite, which needs cargo)
#   --bin PATH   the tessera binary to use
#   --no-gpu     treat the machine as having no GPU (to test the script itself)
#   --duration   seconds per bench cell (default 3)

set -u -o pipefail

build=1
bin=""
force_no_gpu=0
duration=3
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --bin) bin="$2"; shift ;;
        --no-gpu) force_no_gpu=1 ;;
        --duration) duration="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu-smoke: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

repo=$(cd "$(dirname "$0")/.." && pwd)
out="${OUT:-}"
if [ -z "$out" ]; then
    out=$(mktemp -d "${TMPDIR:-/tmp}/tessera-smoke.XXXXXX")
fi
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
failed=0

# record NAME STATUS DETAIL: one summary line, echoed.
record() {
    printf '%-14s %-8s %s\n' "$1" "$2" "$3" | tee -a "$summary"
    if [ "$2" = "FAILED" ]; then failed=1; fi
}

# run NAME SECS CMD...: run with a time limit, output to NAME.log; returns the exit code.
run() {
    local name=$1 secs=$2
    shift 2
    echo "\$ $*" > "$out/$name.log"
    timeout --kill-after=10 "$secs" "$@" >> "$out/$name.log" 2>&1
}

gpu_state() {
    nvidia-smi --query-gpu=index,uuid,mig.mode.current,mig.mode.pending,compute_mode \
        --format=csv,noheader 2>&1
}

# --- GPU present? -------------------------------------------------------------------------
have_gpu=0
if [ "$force_no_gpu" = 0 ] && command -v nvidia-smi > /dev/null 2>&1 \
    && nvidia-smi -L > "$out/nvidia-smi-L.txt" 2>&1 && grep -q '^GPU ' "$out/nvidia-smi-L.txt"; then
    have_gpu=1
    record gpu ok "$(grep -c '^GPU ' "$out/nvidia-smi-L.txt") GPU(s): $(head -1 "$out/nvidia-smi-L.txt")"
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1
else
    record gpu skipped "no GPU (nvidia-smi missing or lists none); GPU steps are skipped"
fi

# --- build ----------------------------------------------------------------------------------
if [ "$build" = 1 ]; then
    if ! command -v cargo > /dev/null 2>&1; then
        record build FAILED "cargo not found; install Rust, or pass --no-build --bin PATH"
        echo "results in $out"
        exit 1
    fi
    target="${CARGO_TARGET_DIR:-$repo/target}"
    if run build 1200 cargo build --release --manifest-path "$repo/Cargo.toml" -p tessera-cli; then
        bin="$target/release/tessera"
        record build ok "$bin"
    else
        record build FAILED "see build.log"
        echo "results in $out"
        exit 1
    fi
elif [ -z "$bin" ]; then
    echo "gpu-smoke: --no-build needs --bin PATH" >&2
    exit 2
else
    record build skipped "--no-build: using $bin"
fi
if [ ! -x "$bin" ]; then
    record build FAILED "$bin is not an executable"
    exit 1
fi

# --- state before ---------------------------------------------------------------------------
if [ "$have_gpu" = 1 ]; then
    gpu_state > "$out/state-before.csv"
    record state-before ok "$(tr '\n' ';' < "$out/state-before.csv")"
else
    record state-before skipped "no GPU"
fi

# --- doctor (includes the read-only NVML placement probe) ----------------------------------
run doctor 120 "$bin" doctor
"$bin" -o json doctor > "$out/doctor.json" 2> /dev/null
code=$?
if [ "$have_gpu" = 1 ]; then
    if [ "$code" = 0 ]; then
        record doctor ok "no check failed (warnings in doctor.log)"
    else
        record doctor FAILED "exit $code: a check failed with a GPU present; see doctor.log"
    fi
    if grep -q 'placements' "$out/doctor.log"; then
        record nvml-probe ok "placements of the catalog's profile IDs: see 'placements' in doctor.log"
    else
        record nvml-probe FAILED "doctor printed no placements line"
    fi
else
    if [ "$code" = 1 ] && grep -q 'install the NVIDIA driver' "$out/doctor.log"; then
        record doctor ok "exit 1 without a GPU, naming what is missing (as it should)"
    else
        record doctor FAILED "expected exit 1 naming the driver without a GPU; got exit $code"
    fi
    record nvml-probe skipped "no GPU"
fi

# --- agent status ---------------------------------------------------------------------------
if [ "$have_gpu" = 1 ]; then
    if run agent-status 60 "$bin" agent status --backend nvml; then
        record agent-status ok "see agent-status.log"
    else
        record agent-status FAILED "see agent-status.log"
    fi
else
    record agent-status skipped "no GPU"
fi

# --- contract suite, read-only part ----------------------------------------------------------
if [ "$have_gpu" = 1 ] && [ "$build" = 1 ]; then
    if TESSERA_REAL_GPU=1 run contract 900 cargo test --release --manifest-path "$repo/Cargo.toml" \
        -p tessera-gpu --test contract -- --nocapture; then
        record contract ok "TESSERA_REAL_GPU=1 (read-only part); see contract.log"
    else
        record contract FAILED "see contract.log"
    fi
elif [ "$have_gpu" = 1 ]; then
    record contract skipped "--no-build (the suite is built by cargo)"
else
    record contract skipped "no GPU"
fi

# --- MPS control protocol on a private pipe directory -------------------------------------
if [ "$have_gpu" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null 2>&1; then
    # Short path: the control socket must fit a Unix socket address.
    mps=$(mktemp -d /tmp/tsm.XXXXXX)
    mkdir -p "$mps/p" "$mps/l"
    uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0 2>/dev/null | head -1)
    export CUDA_MPS_PIPE_DIRECTORY="$mps/p" CUDA_MPS_LOG_DIRECTORY="$mps/l"
    {
        echo "pipe directory $mps/p, CUDA_VISIBLE_DEVICES=$uuid"
        CUDA_VISIBLE_DEVICES="$uuid" timeout 15 nvidia-cuda-mps-control -d < /dev/null > /dev/null 2>&1
        echo "-d exit $?"
        for _ in $(seq 1 150); do [ -S "$mps/p/control" ] && break; sleep 0.1; done
        [ -S "$mps/p/control" ] && echo "control socket present" || echo "control socket MISSING"
        for cmd in get_default_active_thread_percentage "set_default_active_thread_percentage 50" \
            get_default_active_thread_percentage "set_default_device_pinned_mem_limit 0 2G" \
            get_server_list bogus_command quit; do
            echo "> $cmd"
            echo "$cmd" | timeout 15 nvidia-cuda-mps-control 2>&1
            echo "(exit $?)"
        done
        for _ in $(seq 1 150); do [ -S "$mps/p/control" ] || break; sleep 0.1; done
        [ -S "$mps/p/control" ] && echo "control socket still there after quit" || echo "daemon gone"
        echo "--- control.log"
        cat "$mps/l/control.log" 2>/dev/null
    } > "$out/mps-protocol.log" 2>&1
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    if grep -q "control socket present" "$out/mps-protocol.log" \
        && grep -q "daemon gone" "$out/mps-protocol.log"; then
        record mps-protocol ok "replies in mps-protocol.log"
    else
        record mps-protocol FAILED "see mps-protocol.log"
    fi
    rm -rf "$mps"
elif [ "$have_gpu" = 1 ]; then
    record mps-protocol FAILED "nvidia-cuda-mps-control not on PATH"
else
    record mps-protocol skipped "no GPU"
fi

# --- bench sharing (time-slicing and MPS, GPU settings untouched) -------------------------
if [ "$have_gpu" = 1 ]; then
    if run bench 420 "$bin" bench sharing --modes timeslice,mps --keep-gpu-settings \
        --tenants 2 --duration "$duration" --out "$out/bench"; then
        record bench ok "tables in bench/ and bench.log"
    else
        record bench FAILED "see bench.log"
    fi
else
    record bench skipped "no GPU"
fi

# --- state after: nothing changed -------------------------------------------------------------
if [ "$have_gpu" = 1 ]; then
    gpu_state > "$out/state-after.csv"
    if cmp -s "$out/state-before.csv" "$out/state-after.csv"; then
        record state-after ok "MIG mode, pending MIG mode and compute mode unchanged"
    else
        record state-after FAILED "changed: $(diff "$out/state-before.csv" "$out/state-after.csv" | tr '\n' ' ')"
    fi
else
    record state-after skipped "no GPU"
fi

echo "results in $out"
exit "$failed"
