#!/usr/bin/env bash
# bench/scale.sh — the LoRA training step at the SmolLM2-135M, 1B and 8B
# shapes, peft.c next to PyTorch + HF peft (issue 12 item 6).
#
#   bench/scale.sh [--shapes "smollm2 1b 8b"] [--seqs "512 2048"] [--batch 1]
#                  [--steps 2] [--warmup 1] [--threads 2] [--compute "f32 bf16"]
#                  [--ckpt "0 1"] [--bases "f32 q4_0"] [--targets q_proj,v_proj]
#                  [--rounds 1] [--no-peer] [--force-peer] [--mem-gb G]
#                  [--peak-f32 GFLOPS] [--peak-bf16 GFLOPS]
#
# For every shape × seq × checkpointing × precision, in alternating rounds
# (peft.c, then PyTorch, --rounds times):
#   peft.c  bench_lora_step (forward + backward + clip + AdamW, LoRA r 8 on
#           --targets) on each of --bases:
#             f32   the HF float32 folder PyTorch loads (bench/lora_step_torch.py make)
#             q4_0  the Q4_0 GGUF of bench/make_llama_gguf.py (the quantized path)
#   torch   bench/lora_step_torch.py run on the same f32 folder: f32, or bf16
#           weights under torch.autocast; --checkpoint-layers as HF's
#           gradient_checkpointing_enable (every layer).
# A row shows the round with the median tokens/s (every round's RESULT line
# is printed to stderr as it runs).
# Columns: tokens/s, s/step (median of --steps after --warmup), peak RSS of
# the process (getrusage), cpu s = CPU seconds per step (peft.c; below
# s/step × threads when other work shares the cores), %peak = counted FLOPs
# per step / step time / the machine's GEMM peak of that precision (the best
# 1024^3 rate on --threads threads that any peft.c run of this invocation
# measured: sgemm for f32, the bf16 GEMM for bf16; or --peak-f32 /
# --peak-bf16, e.g. from bench_gemm on a quiet machine), and
# peft/pt = tokens/s ratio against PyTorch at the same precision, seq and
# checkpointing.
#
# bf16 runs only where the CPU has AMX-BF16 or AVX512-BF16 (/proc/cpuinfo);
# elsewhere the script says so and measures f32 only (PyTorch's bf16 on such
# a CPU is emulated and would say nothing about either side).
#
# Memory: a run is skipped, with the reason, when its estimated peak
# (weights + activations; see est_mib below) is over --mem-gb (default: 90 %
# of MemAvailable at the start). The 8B shape's float32 folder (32 GB) fits
# on few machines: there peft.c runs the Q4_0 GGUF only and PyTorch is
# skipped. --force-peer runs PyTorch anyway.
#
# Models are made once under $MODELS (default /tmp/peft_scale_models; never
# committed): the f32 folders with torch (4.3 GB at 1B), the GGUFs with gguf-py
# (they need models/SmolLM2-135M-Instruct.Q4_1.gguf for the tokenizer).
# Environment: BUILD (default build-bench, configured Release), PYTHON.
# A short run:  bench/scale.sh --shapes smollm2 --seqs 512 --steps 1 --warmup 1 --ckpt "0 1"
set -u -o pipefail

# Run from a copy: bash reads a script as it goes, so editing bench/scale.sh
# during a long run would change what the rest of the run executes.
here="${SCALE_SH_HERE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
if [ -z "${SCALE_SH_HERE:-}" ]; then
    copy="$(mktemp)"
    cp "$here/scale.sh" "$copy"
    SCALE_SH_HERE="$here" bash "$copy" "$@"
    rc=$?
    rm -f "$copy"
    exit "$rc"
fi
root="$(cd "$here/.." && pwd)"
BUILD="${BUILD:-$root/build-bench}"
PYTHON="${PYTHON:-python3}"
MODELS="${MODELS:-/tmp/peft_scale_models}"
SHAPES="smollm2 1b 8b" SEQS="512 2048" BATCH=1 STEPS=2 WARMUP=1 THREADS=2
COMPUTES="f32 bf16" CKPTS="0 1" BASES="f32 q4_0" TARGETS="q_proj,v_proj" ROUNDS=1
PEER=1 FORCE_PEER=0 MEM_GB="" PEAK_F32="" PEAK_BF16=""
while [ $# -gt 0 ]; do
    case "$1" in
        --shapes) SHAPES="$2"; shift 2 ;;
        --seqs) SEQS="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --compute) COMPUTES="$2"; shift 2 ;;
        --ckpt) CKPTS="$2"; shift 2 ;;
        --bases) BASES="$2"; shift 2 ;;
        --targets) TARGETS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --force-peer) FORCE_PEER=1; shift ;;
        --mem-gb) MEM_GB="$2"; shift 2 ;;
        --peak-f32) PEAK_F32="$2"; shift 2 ;;
        --peak-bf16) PEAK_BF16="$2"; shift 2 ;;
        -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
        *) echo "scale.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
for s in $SHAPES; do
    case "$s" in smollm2|1b|8b) ;; *) echo "scale.sh: unknown shape $s (smollm2, 1b, 8b)" >&2; exit 2 ;; esac
done
for b in $BASES; do
    case "$b" in f32|q4_0) ;; *) echo "scale.sh: unknown base $b (f32, q4_0)" >&2; exit 2 ;; esac
done

# build
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$root" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
fi
cmake --build "$BUILD" --target bench_lora_step -j2 >/dev/null || { echo "scale.sh: building bench_lora_step failed" >&2; exit 1; }
BIN="$BUILD/bench_lora_step"

if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi
if [ "$PEER" = 1 ] && ! "$PYTHON" -c 'import torch, transformers, peft' 2>/dev/null; then
    echo "scale.sh: torch/transformers/peft are not importable by $PYTHON: peft.c numbers only" >&2
    PEER=0
fi

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
flags="$(grep -m1 '^flags' /proc/cpuinfo)"
isa=avx2
grep -qw avx512f <<<"$flags" && isa=avx512
echo "# $(nproc) CPUs, $cpu ($isa); uptime: $(uptime)"
if [ "$COMPUTES" != f32 ] && ! grep -qwE 'amx_bf16|avx512_bf16' <<<"$flags"; then
    echo "# bf16 skipped: this CPU has neither AMX-BF16 nor AVX512-BF16 (peft.c --compute bf16 refuses it; PyTorch's"
    echo "#   bf16 autocast would run emulated): f32 only on both sides"
    COMPUTES=f32
fi
avail_mib=$(awk '/MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)
[ -n "$MEM_GB" ] && budget_mib=$((MEM_GB * 1024)) || budget_mib=$((avail_mib * 9 / 10))
echo "# memory: $avail_mib MiB available, runs estimated over $budget_mib MiB are skipped"

# shape parameters: d layers heads kv ff
shape_of() {
    case "$1" in
        smollm2) echo "576 30 9 3 1536" ;;
        1b) echo "2048 16 32 8 8192" ;;
        8b) echo "4096 32 32 8 14336" ;;
    esac
}
# params (millions) of the shape: tied embeddings, vocab 49152
params_m() {
    read -r d L H KV FF <<<"$(shape_of "$1")"
    awk -v d="$d" -v L="$L" -v H="$H" -v kv="$KV" -v ff="$FF" \
        'BEGIN { hd = d / H; printf "%d", (49152 * d + L * (2 * d * d + 2 * d * kv * hd + 3 * d * ff)) / 1e6 }'
}
# est_mib SHAPE BASE SEQ CKPT IMPL: weights (f32: 4 bytes a parameter, q4_0: 0.5625 for the
# linears) plus activations: kept layers × tokens × (16·d + 3·ff) floats (torch: × 2, it keeps
# more per layer; its eager/SDPA attention adds B·H·T² per layer), the logits 3 × tokens × vocab,
# and 600 MiB of process (torch: 1 GiB).
est_mib() {
    read -r d L H KV FF <<<"$(shape_of "$1")"
    awk -v d="$d" -v L="$L" -v H="$H" -v ff="$FF" -v base="$2" -v T="$3" -v B="$BATCH" -v ck="$4" -v impl="$5" \
        -v p="$(params_m "$1")" 'BEGIN {
        w = (base == "q4_0") ? p * 1e6 * 0.5625 : p * 4e6
        tok = B * T; kept = (ck > 0) ? 1 : L
        per = tok * (16 * d + 3 * ff) * 4
        if (impl == "torch") per = per * 2 + (ck > 0 ? 0 : B * H * T * T * 4)
        a = kept * per + (ck > 0 ? L * tok * d * 4 : 0) + 3 * tok * 49152 * 4
        printf "%d", (w + a) / 1048576 + (impl == "torch" ? 1024 : 600) }'
}

mkdir -p "$MODELS"
need_f32() { grep -qw f32 <<<"$BASES" || [ "$PEER" = 1 ]; }
model_path() {   # SHAPE BASE
    if [ "$2" = f32 ]; then echo "$MODELS/$1"; else echo "$MODELS/llama-$1-q4_0.gguf"; fi
}
make_model() {   # SHAPE BASE; 0 when there
    local p; p="$(model_path "$1" "$2")"
    if [ "$2" = f32 ]; then
        [ -f "$p/config.json" ] && [ -f "$p/model.safetensors" ] && return 0
        echo "making $1 (f32 HF folder) in $p" >&2
        "$PYTHON" "$here/lora_step_torch.py" make "$1" "$p" >&2
    else
        [ -f "$p" ] && return 0
        [ -f "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" ] || bash "$root/scripts/setup.sh" --model >&2 || return 1
        echo "making $1 (Q4_0 GGUF) in $p" >&2
        (cd "$root" && "$PYTHON" bench/make_llama_gguf.py "$1" "$p.tmp" >&2) && mv "$p.tmp" "$p"
    fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
field() { grep '^RESULT' "$2" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }
load1() { cut -d' ' -f1 /proc/loadavg; }

ROWS=""
for s in $SHAPES; do
    for T in $SEQS; do
        for ck in $CKPTS; do
            for p in $COMPUTES; do
                key="${s}_${T}_${ck}_$p"
                for r in $(seq 1 "$ROUNDS"); do
                    for b in $BASES; do
                        e="$(est_mib "$s" "$b" "$T" "$ck" peft)"
                        if [ "$e" -gt "$budget_mib" ]; then
                            echo "skip: peft.c $s $b seq $T ckpt $ck: estimated $e MiB > $budget_mib MiB" | tee -a "$tmp/skips" >&2
                            continue
                        fi
                        make_model "$s" "$b" || { echo "scale.sh: could not make the $s $b model" >&2; continue; }
                        args=(--batch "$BATCH" --seq "$T" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS"
                              --targets "$TARGETS" --compute "$p")
                        [ "$ck" != 0 ] && args+=(--checkpoint-layers "$ck")
                        o="$tmp/c_${key}_$b.$r"
                        echo "== $s $b seq $T ckpt $ck $p round $r: peft.c (load $(load1))" >&2
                        "$BIN" "$(model_path "$s" "$b")" "${args[@]}" > "$o" 2> "$o.err" || {
                            echo "scale.sh: bench_lora_step failed on $s $b seq $T ckpt $ck $p:" >&2; tail -3 "$o.err" >&2; }
                        grep '^RESULT' "$o" >&2
                        grep -q "^$key $b peft.c$" "$tmp/rows" 2>/dev/null || echo "$key $b peft.c" >> "$tmp/rows"
                    done
                    [ "$PEER" = 1 ] || continue
                    e="$(est_mib "$s" f32 "$T" "$ck" torch)"
                    if [ "$e" -gt "$budget_mib" ] && [ "$FORCE_PEER" = 0 ]; then
                        [ "$r" = 1 ] && echo "skip: torch $s seq $T ckpt $ck: estimated $e MiB > $budget_mib MiB" | tee -a "$tmp/skips" >&2
                        continue
                    fi
                    make_model "$s" f32 || continue
                    o="$tmp/t_${key}.$r"
                    echo "== $s f32 seq $T ckpt $ck $p round $r: torch (load $(load1))" >&2
                    OMP_NUM_THREADS="$THREADS" "$PYTHON" "$here/lora_step_torch.py" run "$(model_path "$s" f32)" \
                        --batch "$BATCH" --seq "$T" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" \
                        --dtype "$p" --targets "$TARGETS" --checkpoint-layers "$ck" > "$o" 2> "$o.err" || {
                        echo "scale.sh: the torch run on $s seq $T ckpt $ck $p failed:" >&2; tail -3 "$o.err" >&2; }
                    grep '^RESULT' "$o" >&2
                    grep -q "^$key f32 torch$" "$tmp/rows" 2>/dev/null || echo "$key f32 torch" >> "$tmp/rows"
                done
            done
        done
    done
done

# pick FILES...: the round with the median tokens/s (the lower of the middle two), so that a row's
# numbers all come from one run
pick() { for x in "$@"; do echo "$(field tokens_per_s "$x") $x"; done | grep -v '^ ' | sort -n |
    awk '{ v[NR] = $2 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
echo
echo "== LoRA step (r 8, $TARGETS), batch $BATCH, $THREADS threads, median of $STEPS steps after $WARMUP warm-up; of $ROUNDS round(s) the one with the median tokens/s =="
printf '%-8s %-5s %5s %-5s %-5s %-7s %10s %9s %8s %9s %7s %8s %9s\n' shape base seq ckpt prec impl "tokens/s" "s/step" \
    "cpu s" "RSS MiB" "%peak" "peft/pt" "loss0"
[ -f "$tmp/rows" ] || { echo "(nothing ran)"; exit 1; }
# The machine's GEMM peak: --peak-f32 / --peak-bf16, or the best 1024^3 rate any peft.c run measured
# before its steps (a run on a busy machine measures a fraction of it).
best() { for x in $(ls "$tmp"/c_* 2>/dev/null | grep -v '\.err$'); do field "$1" "$x"; done | sort -n | tail -1; }
[ -n "$PEAK_F32" ] || PEAK_F32="$(best sgemm_gflops)"
[ -n "$PEAK_BF16" ] || PEAK_BF16="$(best bf16_gflops)"
while read -r key b impl; do
    IFS=_ read -r s T ck p <<<"$key"
    if [ "$impl" = peft.c ]; then files=("$tmp/c_${key}_$b".[0-9]*); else files=("$tmp/t_${key}".[0-9]*); fi
    files=($(ls "${files[@]}" 2>/dev/null | grep -v '\.err$'))
    [ "${#files[@]}" -gt 0 ] || continue
    f="$(pick "${files[@]}")"
    tps="$(field tokens_per_s "$f")"
    [ -n "$tps" ] || { printf '%-8s %-5s %5s %-5s %-5s %-7s %10s\n' "$s" "$b" "$T" "$ck" "$p" "$impl" failed; continue; }
    sps="$(field median_s "$f")"
    # the FLOPs come from a peft.c run of the same shape and seq
    c="$(ls "$tmp"/c_"${key}"_*.[0-9]* 2>/dev/null | grep -v '\.err$' | head -1)"
    pk="$PEAK_F32"
    [ "$p" = bf16 ] && pk="$PEAK_BF16"
    pct="-"
    [ -n "$c" ] && [ -n "$pk" ] && pct="$(awk -v g="$(field gflop_step "$c")" -v t="$sps" -v k="$pk" 'BEGIN { printf "%.1f%%", 100 * g / t / k }')"
    ratio="-"
    if [ "$impl" = peft.c ]; then
        tt=($(ls "$tmp/t_${key}".[0-9]* 2>/dev/null | grep -v '\.err$'))
        [ "${#tt[@]}" -gt 0 ] && ttps="$(field tokens_per_s "$(pick "${tt[@]}")")" && [ -n "$ttps" ] &&
            ratio="$(awk -v a="$tps" -v b="$ttps" 'BEGIN { printf "%.2f", a / b }')"
    fi
    cpu="$(field cpu_s "$f")"
    printf '%-8s %-5s %5s %-5s %-5s %-7s %10s %9s %8s %9s %7s %8s %9s\n' "$s" "$b" "$T" "$ck" "$p" "$impl" "$tps" "$sps" \
        "${cpu:--}" "$(field peak_rss_mib "$f")" "$pct" "$ratio" "$(field loss0 "$f")"
done < "$tmp/rows"
echo
cs=($(ls "$tmp"/c_* 2>/dev/null | grep -v '\.err$'))
if [ "${#cs[@]}" -gt 0 ]; then
    g="$(for x in "${cs[@]}"; do field sgemm_gflops "$x"; done | sort -n | tr '\n' ' ')"
    bnote=""
    grep -qw bf16 <<<"$COMPUTES" && bnote=" (bf16: $PEAK_BF16)"
    echo "GEMM peak: sgemm 1024^3 on $THREADS threads, measured before each peft.c run: $g GFLOP/s (OpenBLAS core $(field core "${cs[0]}")); %peak uses $PEAK_F32$bnote"
fi
[ -f "$tmp/skips" ] && { echo "skipped:"; sed 's/^skip: /  /' "$tmp/skips" | sort -u; }
echo "%peak: bench_lora_step's FLOP count (4·P_linear·tokens + LoRA + 12·L·d_attn·T·tokens) over the step time and the"
echo "  GEMM peak of that precision; checkpointing's recomputed forward is not counted. ckpt 1: peft.c keeps every layer's"
echo "  input, PyTorch runs gradient_checkpointing_enable. RSS: the process's ru_maxrss (torch: with the Python runtime)."
echo "uptime at the end: $(uptime)"
exit 0
