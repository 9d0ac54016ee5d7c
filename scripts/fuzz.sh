#!/usr/bin/env bash
# fuzz.sh — builds the libFuzzer harnesses (build-fuzz/: clang, ASan + UBSan,
# files read into exact-size heap buffers) and runs each one for SECONDS.
#   bash scripts/fuzz.sh [SECONDS] [HARNESS...]    # default 60 s, every harness
# A harness is the NAME of fuzz/fuzz_NAME.c (gguf, model_gguf, safetensors, hf,
# tokenizer, adapter, jsonl, embed). Inputs that grow coverage go to
# build-fuzz/corpus/NAME (the committed seeds in fuzz/corpus/NAME are only
# read); a crash, leak, sanitizer report, timeout (over 10 s) or allocation
# over 1 GB is a finding: its input is saved as build-fuzz/findings/NAME/*,
# the log as build-fuzz/logs/NAME.log, and the script exits 1.
# Reproduce one: build-fuzz/fuzz_NAME FILE (or copy FILE into
# fuzz/regressions/NAME/ once fixed, for tests/test_fuzz_corpus.c).
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
case "$secs" in ''|*[!0-9]*) echo "usage: $0 [SECONDS] [HARNESS...]" >&2; exit 2 ;; esac
if [ $# -gt 0 ]; then
    harnesses="$*"
else
    harnesses=$(ls fuzz/fuzz_*.c | sed 's|fuzz/fuzz_||; s|\.c$||')
fi

command -v clang >/dev/null || { echo "fuzz: clang not found (bash scripts/setup.sh --deps installs it)" >&2; exit 2; }
CC=clang cmake -S . -B build-fuzz -DPEFT_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 2
cmake --build build-fuzz -j"$(nproc)" >build-fuzz/build.log 2>&1 || { tail -n 30 build-fuzz/build.log; echo "fuzz: build failed" >&2; exit 2; }

# One thread each: the harness models are tiny and the runs go one at a time.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

total_exec=0 total_s=0 n=0 found=0
for h in $harnesses; do
    bin=build-fuzz/fuzz_$h
    [ -x "$bin" ] || { echo "fuzz: no harness $h" >&2; exit 2; }
    dict=fuzz/json.dict
    case "$h" in gguf|model_gguf) dict=fuzz/gguf.dict ;; esac
    mkdir -p "build-fuzz/corpus/$h" "build-fuzz/findings/$h" build-fuzz/logs
    dirs="build-fuzz/corpus/$h fuzz/corpus/$h"
    [ -d "fuzz/regressions/$h" ] && dirs="$dirs fuzz/regressions/$h"
    log=build-fuzz/logs/$h.log
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -dict="$dict" -artifact_prefix="build-fuzz/findings/$h/" -print_final_stats=1 \
        $dirs >"$log" 2>&1
    rc=$?
    t1=$(date +%s)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    execs=${execs:-0}
    el=$((t1 - t0))
    total_exec=$((total_exec + execs)); total_s=$((total_s + el)); n=$((n + 1))
    if [ $rc -eq 0 ]; then
        printf 'fuzz %-12s %9d executions %5d s  no findings\n' "$h" "$execs" "$el"
    else
        found=$((found + 1))
        art=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/Test unit written to //')
        what=$(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer): [^ ]+( [^ ]+)?|runtime error: .*' "$log")
        printf 'fuzz %-12s %9d executions %5d s  FINDING: %s\n' "$h" "$execs" "$el" "${what:-exit $rc}"
        printf '     input: %s\n     log:   %s\n' "${art:-none}" "$log"
    fi
done
if [ $found -eq 0 ]; then
    echo "fuzzed $n harnesses for $total_s s, $total_exec executions, no findings"
else
    echo "fuzzed $n harnesses for $total_s s, $total_exec executions, $found with findings"
    exit 1
fi
