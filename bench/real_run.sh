#!/usr/bin/env bash
# real_run.sh — the documented real run: LoRA r=8 on q,k,v,o of
# SmolLM2-135M-Instruct (Q4_1 GGUF, frozen, 4-bit in memory) on E2E NLG
# (prompt/completion), 300 steps on 2 threads. Prints validation loss and a
# sample before and after, time and peak memory; writes runs/real/summary.md.
#   STEPS=300 THREADS=2 bash bench/real_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
E2E=${E2E:-../shared/data/e2e/dev.jsonl}
OUT=${OUT:-runs/real}
STEPS=${STEPS:-300}
THREADS=${THREADS:-2}
PEFT=${PEFT:-build/peft}
. bench/need_data.sh
need_data e2e "$E2E" E2E
[ -f "$MODEL" ] || bash scripts/setup.sh --model
[ -x "$PEFT" ] || bash scripts/setup.sh --build
mkdir -p "$OUT/data"
# a newline ends the meaning representation; the file is grouped by
# restaurant, so the last 500 rows are restaurants the training rows lack
sed 's/", "completion": "/\\n", "completion": "/' "$E2E" > "$OUT/data/all.jsonl"
head -n 4172 "$OUT/data/all.jsonl" > "$OUT/data/train.jsonl"
tail -n 500 "$OUT/data/all.jsonl" > "$OUT/data/val.jsonl"
PROMPTS=("name[The Punter], eatType[restaurant], food[Italian], priceRange[cheap], area[riverside], familyFriendly[yes]"
         "name[Blue Spice], eatType[coffee shop], customer rating[5 out of 5], area[city centre]")

sample() {  # $1: extra args
    for p in "${PROMPTS[@]}"; do
        printf -- '- `%s` → ' "$p"
        $PEFT generate --model "$MODEL" $1 --prompt "$p"$'\n' --max-tokens 40 --no-echo --threads "$THREADS" | tr '\n' ' '
        echo
    done
}

before_loss=$($PEFT eval --model "$MODEL" --data "$OUT/data/val.jsonl" --seq 128 --threads "$THREADS" --json)
before_sample=$(sample "")
/usr/bin/time -v -o "$OUT/time.txt" $PEFT train --model "$MODEL" --data "$OUT/data/train.jsonl" \
    --val "$OUT/data/val.jsonl" --method lora --r 8 --alpha 16 --target q_proj,k_proj,v_proj,o_proj \
    --lr 1e-3 --warmup 20 --schedule cosine --steps "$STEPS" --batch 8 --seq 128 \
    --eval-every 100 --save-every 100 --threads "$THREADS" --out "$OUT/run" --overwrite 2>&1 | tee "$OUT/train.log"
after_loss=$($PEFT eval --model "$MODEL" --adapter "$OUT/run" --data "$OUT/data/val.jsonl" --seq 128 --threads "$THREADS" --json)
after_sample=$(sample "--adapter $OUT/run")
rss=$(awk -F: '/Maximum resident/ {gsub(/ /, "", $2); printf "%.0f", $2 / 1024}' "$OUT/time.txt")
wall=$(awk -F': ' '/Elapsed \(wall/ {print $2}' "$OUT/time.txt")
tps=$(grep -o '([0-9]* tokens/s)' "$OUT/train.log" | tail -1 | tr -d '()')
{
    echo "| | validation loss | perplexity |"
    echo "|---|---|---|"
    echo "| before | $(echo "$before_loss" | sed 's/.*"loss": \([0-9.]*\).*/\1/') | $(echo "$before_loss" | sed 's/.*"perplexity": \([0-9.]*\).*/\1/') |"
    echo "| after $STEPS steps | $(echo "$after_loss" | sed 's/.*"loss": \([0-9.]*\).*/\1/') | $(echo "$after_loss" | sed 's/.*"perplexity": \([0-9.]*\).*/\1/') |"
    echo
    echo "Training took $wall wall-clock ($tps, $THREADS threads), peak RSS $rss MiB."
    echo
    echo "Before (greedy):"
    echo "$before_sample"
    echo
    echo "After:"
    echo "$after_sample"
} | tee "$OUT/summary.md"
