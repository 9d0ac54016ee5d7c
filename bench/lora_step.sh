#!/usr/bin/env bash
# bench/lora_step.sh — one LoRA training step (forward + backward + AdamW,
# frozen base, r 8, q_proj,v_proj / c_attn, batch 4 x 256, 2 threads) of
# peft.c next to PyTorch + HF peft, on random-weight float32 GPT-2-124M and
# SmolLM2-135M shaped models.
#
#   bench/lora_step.sh [--steps N] [--warmup N] [--threads T] [--batch B]
#                      [--seq T] [--models "gpt2 smollm2"] [--no-peer]
#                      [--max-load L] [--wait S]
#
# Environment: BUILD (default build), PYTHON (default python3), MODELS
# (default /tmp/peft_lora_step_models: the models are made there once).
# Waits (up to --wait 300 s) for the 1-minute load average to drop below
# --max-load 1.5 before measuring, and notes it if it never does (the load at
# the start of each run is printed). Each
# implementation and model runs in its own process (peak RSS is its own).
# Prints per-step lines, then the table; exits 0 unless the C side fails.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
BUILD="${BUILD:-$root/build}"
PYTHON="${PYTHON:-python3}"
MODELS="${MODELS:-/tmp/peft_lora_step_models}"
STEPS=5 WARMUP=1 THREADS=2 BATCH=4 SEQ=256 PEER=1 MAX_LOAD=1.5 WAIT=300
KINDS="gpt2 smollm2"
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --seq) SEQ="$2"; shift 2 ;;
        --models) KINDS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --max-load) MAX_LOAD="$2"; shift 2 ;;
        --wait) WAIT="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "lora_step.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

# build
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$root" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
fi
cmake --build "$BUILD" --target bench_lora_step -j2 >/dev/null || {
    echo "lora_step.sh: building bench_lora_step failed" >&2; exit 1; }
BIN="$BUILD/bench_lora_step"

# OpenBLAS 0.3.21 takes Sapphire Rapids for "Prescott" (SSE3 kernels); the
# binary re-execs itself with a better core type, this covers the peer too.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
fi

# what python can do
if ! "$PYTHON" -c 'import torch, transformers, peft' 2>/dev/null; then
    echo "lora_step.sh: torch/transformers/peft are not importable by $PYTHON: C numbers only" >&2
    PEER=0
fi

# models (once)
for k in $KINDS; do
    if [ ! -f "$MODELS/$k/config.json" ] || [ ! -f "$MODELS/$k/model.safetensors" ]; then
        echo "making $k in $MODELS/$k" >&2
        "$PYTHON" "$here/lora_step_torch.py" make "$k" "$MODELS/$k" >&2 || {
            echo "lora_step.sh: could not make the $k model" >&2; exit 1; }
    fi
done

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_quiet() {
    local t=0
    while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
        if [ "$t" -ge "$WAIT" ]; then
            echo "note: load average still $(load1) after ${WAIT}s; measuring anyway" >&2
            return
        fi
        [ "$t" -eq 0 ] && echo "waiting for the load average ($(load1)) to drop below $MAX_LOAD ..." >&2
        sleep 10; t=$((t + 10))
    done
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
args=(--steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --batch "$BATCH" --seq "$SEQ")
echo "# $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Wait for quiet once: our own runs keep the load average up afterwards.
wait_quiet
for k in $KINDS; do
    echo "== $k: peft.c (load $(load1))" >&2
    "$BIN" "$MODELS/$k" "${args[@]}" > "$tmp/c_$k" || { echo "lora_step.sh: bench_lora_step failed on $k" >&2; exit 1; }
    grep '^RESULT' "$tmp/c_$k" >&2
    if [ "$PEER" = 1 ]; then
        echo "== $k: torch (load $(load1))" >&2
        OMP_NUM_THREADS="$THREADS" "$PYTHON" "$here/lora_step_torch.py" run "$MODELS/$k" "${args[@]}" \
            2> >(grep -v -i 'warn' >&2) > "$tmp/t_$k" || echo "lora_step.sh: the torch run on $k failed" >&2
        grep '^RESULT' "$tmp/t_$k" >&2
    fi
done

# field NAME FILE
field() { grep '^RESULT' "$2" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }

echo
echo "== LoRA training step: batch $BATCH x $SEQ, $THREADS threads, median of $STEPS steps after $WARMUP warmup =="
printf '%-8s %-14s %10s %9s %9s %12s %9s %8s %9s\n' model impl "tokens/s" "s/step" "RSS MiB" "arena MiB" "loss0" "peft/pt" "%peak"
for k in $KINDS; do
    c="$tmp/c_$k" t="$tmp/t_$k"
    ctps="$(field tokens_per_s "$c")"
    ttps="$(field tokens_per_s "$t")"
    ratio="-"
    [ -n "$ttps" ] && ratio="$(awk -v a="$ctps" -v b="$ttps" 'BEGIN { printf "%.2f", a / b }')"
    printf '%-8s %-14s %10s %9s %9s %12s %9s %8s %8s%%\n' "$k" peft.c "$ctps" "$(field median_s "$c")" \
        "$(field peak_rss_mib "$c")" "$(field arena_mib "$c")" "$(field loss0 "$c")" "$ratio" "$(field pct_peak "$c")"
    if [ -n "$ttps" ]; then
        tpk="$(awk -v g="$(field gflop_step "$c")" -v s="$(field median_s "$t")" -v p="$(field sgemm_gflops "$c")" \
            'BEGIN { printf "%.1f", 100 * g / s / p }')"
        printf '%-8s %-14s %10s %9s %9s %12s %9s %8s %8s%%\n' "$k" "torch+peft" "$ttps" "$(field median_s "$t")" \
            "$(field peak_rss_mib "$t")" "-" "$(field loss0 "$t")" "" "$tpk"
    fi
done
echo
for k in $KINDS; do
    echo "sgemm peak in the $k C run (cblas_sgemm 1024^3, $THREADS threads): $(field sgemm_gflops "$tmp/c_$k") GFLOP/s; OpenBLAS core: $(field core "$tmp/c_$k")"
done
for k in $KINDS; do
    c="$tmp/c_$k"
    echo "$k FLOPs/step: $(field gflop_step "$c") GFLOP = linears 4·P·tokens $(field gflop_lin "$c") + LoRA 6·r·(in+out)·tokens $(field gflop_lora "$c") + attention 12·L·d_attn·T·tokens $(field gflop_attn "$c") (full T×T)"
done
echo "%peak = FLOPs/step ÷ median s/step ÷ that model's sgemm peak (torch row: the same FLOPs over torch's time). peft/pt = tokens/s ratio."
echo "RSS: getrusage ru_maxrss of each process (the model is mmapped float32; torch's includes the python runtime)."
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
