#!/usr/bin/env bash
# bench/lora_step.sh — one LoRA training step (forward + backward + AdamW,
# frozen base, r 8, q_proj,v_proj / c_attn, batch 4 x 256, 2 threads) of
# peft.c next to PyTorch + HF peft, on random-weight float32 GPT-2-124M and
# SmolLM2-135M shaped models.
#
#   bench/lora_step.sh [--steps N] [--warmup N] [--threads T] [--batch B]
#                      [--seq T] [--models "gpt2 smollm2"] [--no-peer]
#                      [--compute "f32 bf16"] [--rounds R] [--max-load L] [--wait S]
#                      [--checkpoint-layers K]
#
# --checkpoint-layers K (default 0: off) runs both sides with gradient
# checkpointing: peft.c keeps every K-th layer's input (tg_options), PyTorch
# runs HF's gradient_checkpointing_enable (every layer, whatever K).
#
# --rounds R (default 1) alternates the two sides R times per model and
# precision and reports the round with the median peft/pt ratio (all
# rounds' ratios are printed): on a shared machine a single pair can land
# in a fast or a slow window.
#
# Each precision runs on both sides: f32 (everything float32) and bf16 (the
# frozen products in bfloat16 with f32 sums: peft.c --compute bf16 on AMX
# or AVX512-BF16; PyTorch with a bf16 base under CPU autocast, oneDNN's
# kernels). bf16 is skipped where the CPU has neither.
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
STEPS=5 WARMUP=1 THREADS=2 BATCH=4 SEQ=256 PEER=1 MAX_LOAD=1.5 WAIT=300 CKPT=0
KINDS="gpt2 smollm2"
COMPUTES="f32 bf16"
ROUNDS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --seq) SEQ="$2"; shift 2 ;;
        --models) KINDS="$2"; shift 2 ;;
        --compute) COMPUTES="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --max-load) MAX_LOAD="$2"; shift 2 ;;
        --wait) WAIT="$2"; shift 2 ;;
        --checkpoint-layers) CKPT="$2"; shift 2 ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
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
[ "$CKPT" != 0 ] && args+=(--checkpoint-layers "$CKPT")
echo "# $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Wait for quiet once: our own runs keep the load average up afterwards.
wait_quiet
if ! grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo && [ "$COMPUTES" != f32 ]; then
    echo "lora_step.sh: this CPU has neither AMX-BF16 nor AVX512-BF16: f32 only" >&2
    COMPUTES=f32
fi
# field NAME FILE
field() { grep '^RESULT' "$2" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }

RUNS=""
for k in $KINDS; do
    for p in $COMPUTES; do
        RUNS="$RUNS $k:$p"
        : > "$tmp/ratios_${k}_$p"
        for r in $(seq 1 "$ROUNDS"); do
            echo "== $k $p round $r: peft.c (load $(load1))" >&2
            "$BIN" "$MODELS/$k" "${args[@]}" --compute "$p" > "$tmp/c_${k}_$p.$r" 2> >(tee "$tmp/c_${k}_$p.$r.err" >&2) || {
                echo "lora_step.sh: bench_lora_step failed on $k ($p)" >&2; exit 1; }
            grep '^RESULT' "$tmp/c_${k}_$p.$r" >&2
            if [ "$PEER" = 1 ]; then
                echo "== $k $p round $r: torch (load $(load1))" >&2
                OMP_NUM_THREADS="$THREADS" "$PYTHON" "$here/lora_step_torch.py" run "$MODELS/$k" "${args[@]}" --dtype "$p" \
                    2> >(grep -v -i 'warn' >&2) > "$tmp/t_${k}_$p.$r" || echo "lora_step.sh: the torch run on $k ($p) failed" >&2
                grep '^RESULT' "$tmp/t_${k}_$p.$r" >&2
                a="$(field tokens_per_s "$tmp/c_${k}_$p.$r")" b="$(field tokens_per_s "$tmp/t_${k}_$p.$r")"
                [ -n "$b" ] && echo "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }') $r" >> "$tmp/ratios_${k}_$p"
            fi
        done
        # the round with the median ratio (round 1 without a peer)
        pick=1
        if [ -s "$tmp/ratios_${k}_$p" ]; then
            n="$(wc -l < "$tmp/ratios_${k}_$p")"
            pick="$(sort -n "$tmp/ratios_${k}_$p" | sed -n "$(( (n + 1) / 2 ))p" | cut -d' ' -f2)"
        fi
        cp "$tmp/c_${k}_$p.$pick" "$tmp/c_${k}_$p"
        cp "$tmp/c_${k}_$p.$pick.err" "$tmp/c_${k}_$p.err"
        [ -f "$tmp/t_${k}_$p.$pick" ] && cp "$tmp/t_${k}_$p.$pick" "$tmp/t_${k}_$p"
    done
done

echo
ck_note=""
[ "$CKPT" != 0 ] && ck_note=", gradient checkpointing (peft.c every $CKPT layers, torch every layer)"
echo "== LoRA training step: batch $BATCH x $SEQ, $THREADS threads, median of $STEPS steps after $WARMUP warmup; the median of $ROUNDS round(s)$ck_note =="
printf '%-8s %-5s %-11s %10s %9s %9s %10s %9s %8s %7s\n' model prec impl "tokens/s" "s/step" "RSS MiB" "arena MiB" "loss0" "peft/pt" "%peak"
for kp in $RUNS; do
    k="${kp%%:*}" p="${kp##*:}"
    c="$tmp/c_${k}_$p" t="$tmp/t_${k}_$p"
    ctps="$(field tokens_per_s "$c")"
    ttps="$(field tokens_per_s "$t")"
    # the peak this precision is measured against: sgemm for f32, our bf16 GEMM (AMX or AVX512-BF16) for bf16
    pk="$(field sgemm_gflops "$c")"
    [ "$p" = bf16 ] && pk="$(field bf16_gflops "$c")"
    ratio="-"
    [ -n "$ttps" ] && ratio="$(awk -v a="$ctps" -v b="$ttps" 'BEGIN { printf "%.2f", a / b }')"
    printf '%-8s %-5s %-11s %10s %9s %9s %10s %9s %8s %6s%%\n' "$k" "$p" peft.c "$ctps" "$(field median_s "$c")" \
        "$(field peak_rss_mib "$c")" "$(field arena_mib "$c")" "$(field loss0 "$c")" "$ratio" "$(field pct_peak "$c")"
    if [ -n "$ttps" ]; then
        tpk="$(awk -v g="$(field gflop_step "$c")" -v s="$(field median_s "$t")" -v p="$pk" \
            'BEGIN { printf "%.1f", 100 * g / s / p }')"
        printf '%-8s %-5s %-11s %10s %9s %9s %10s %9s %8s %6s%%\n' "$k" "$p" "torch+peft" "$ttps" "$(field median_s "$t")" \
            "$(field peak_rss_mib "$t")" "-" "$(field loss0 "$t")" "" "$tpk"
    fi
done
echo
for kp in $RUNS; do
    k="${kp%%:*}" p="${kp##*:}"
    c="$tmp/c_${k}_$p"
    line="$k $p: sgemm 1024^3 on $THREADS threads $(field sgemm_gflops "$c") GFLOP/s (OpenBLAS core $(field core "$c"))"
    [ "$p" = bf16 ] && line="$line; bf16 GEMM 1024^3 $(field bf16_gflops "$c") GFLOP/s"
    echo "$line"
done
for k in $KINDS; do
    c="$tmp/c_${k}_$(echo $COMPUTES | cut -d' ' -f1)"
    echo "$k FLOPs/step: $(field gflop_step "$c") GFLOP = linears 4·P·tokens $(field gflop_lin "$c") + LoRA 6·r·(in+out)·tokens $(field gflop_lora "$c") + attention 12·L·d_attn·T·tokens $(field gflop_attn "$c") (full T×T)"
done
for kp in $RUNS; do
    k="${kp%%:*}" p="${kp##*:}"
    echo "$k $p peft.c $(grep '^phases' "$tmp/c_${k}_$p.err" 2>/dev/null)"
    [ "$ROUNDS" -gt 1 ] && [ -s "$tmp/ratios_${k}_$p" ] && echo "$k $p peft/pt of each round: $(cut -d' ' -f1 "$tmp/ratios_${k}_$p" | tr '\n' ' ')"
done
echo "%peak = FLOPs/step ÷ median s/step ÷ the peak of that precision (f32: sgemm; bf16: our bf16 GEMM on the CPU's unit) (torch row: the same FLOPs over torch's time). peft/pt = tokens/s ratio at equal precision."
echo "RSS: getrusage ru_maxrss of each process (the model is mmapped float32; torch's includes the python runtime)."
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
