#!/usr/bin/env bash
# memory.sh — the memory plan against the measured peak RSS, and what
# gradient checkpointing costs, on random-weight Llama-shaped GGUF models
# (bench/make_llama_gguf.py: SmolLM2-135M, 1B and 8B shapes, Q4_0; written
# to $MODELS once, never committed). For each model and setting: the plan
# `peft train` prints before training, then the peak RSS and tokens/s of a
# short run (packed E2E rows, so every planned buffer is used).
#   SHAPES="smollm2 1b" SEQ=1024 STEPS=2 bash bench/memory.sh
#   SHAPES=8b SEQ=256 STEPS=1 bash bench/memory.sh     # about 4.5 GB of model, minutes per step
set -euo pipefail
cd "$(dirname "$0")/.."
PEFT=${PEFT:-build/peft}
DATA=${DATA:-../shared/data/e2e/dev.jsonl}
MODELS=${MODELS:-/tmp/peft_bench_models}
SHAPES=${SHAPES:-"smollm2 1b"}
SEQ=${SEQ:-1024}
BATCH=${BATCH:-1}
STEPS=${STEPS:-2}
THREADS=${THREADS:-2}
[ -x "$PEFT" ] || bash scripts/setup.sh --build
[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] || bash scripts/setup.sh --model   # its tokenizer
# any text serves (rows are packed full); without ../shared/data, WordNet's
# glosses (Debian's wordnet-base) as scripts/make_wordnet_data.sh writes them
if [ ! -f "$DATA" ]; then
    echo "memory.sh: $DATA (E2E, from the project's ../shared/data) not found; packing WordNet definitions instead" >&2
    [ -f data/wordnet/train.jsonl ] || bash scripts/make_wordnet_data.sh data/wordnet >&2
    DATA=data/wordnet/train.jsonl
fi
mkdir -p "$MODELS"
printf '%-8s %-16s %10s %10s %7s %8s\n' model setting planned_MiB peak_MiB ratio tok/s
for s in $SHAPES; do
    m="$MODELS/llama-$s-q4_0.gguf"
    [ -f "$m" ] || python3 bench/make_llama_gguf.py "$s" "$m" 2>/dev/null
    for ck in "" "--checkpoint-layers"; do
        out=$(mktemp -d)
        log=$("$PEFT" train --model "$m" --data "$DATA" --out "$out/run" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" \
              --pack --threads "$THREADS" --quiet $ck 2>&1) || { echo "$log" >&2; exit 1; }
        rm -rf "$out"
        plan=$(sed -n 's/.*= peak \([0-9]*\) MiB.*/\1/p' <<<"$log")
        peak=$(sed -n 's/^peak RSS: \([0-9]*\) MiB.*/\1/p' <<<"$log")
        tps=$(sed -n 's/^done: .*(\([0-9.]*\) tokens\/s).*/\1/p' <<<"$log")
        printf '%-8s %-16s %10s %10s %7.3f %8s\n' "$s" "${ck:-everything kept}" "$plan" "$peak" \
            "$(awk -v a="$plan" -v b="$peak" 'BEGIN { print a / b }')" "$tps"
    done
done
