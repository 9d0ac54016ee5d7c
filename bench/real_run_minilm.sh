#!/usr/bin/env bash
# real_run_minilm.sh — the README's encoder run: all-MiniLM-L6-v2 (BERT,
# sentence-transformers' folder) with LoRA r=8 on query, key, value and the
# dense layers, and BertForSequenceClassification's head (its pooler, a new
# 2-label classifier), on a seeded 3,000-sentence sample of SST-2
# (../shared/data/sst2/train.jsonl), 600 of them held out by --val-split
# with the seed. Prints validation loss and accuracy before and after.
#   STEPS=300 THREADS=2 bash bench/real_run_minilm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/minilm_sst2}
STEPS=${STEPS:-300}
THREADS=${THREADS:-2}
SEED=${SEED:-42}
PEFT=${PEFT:-build/peft}
[ -d "$MODEL" ] || bash scripts/setup.sh --model
[ -x "$PEFT" ] || bash scripts/setup.sh --build
. bench/need_data.sh
need_data sst2 "$DATA/sst2/train.jsonl" DATA
rm -rf "$OUT/run"; mkdir -p "$OUT"
shuf -n 3000 --random-source=<(yes "$SEED") "$DATA/sst2/train.jsonl" > "$OUT/sst2.jsonl"
"$PEFT" train --model "$MODEL" --data "$OUT/sst2.jsonl" --val-split 0.2 --num-labels 2 --method lora --r 8 --alpha 16 \
    --target query,key,value,dense --lr 2e-3 --schedule constant --clip 0 --steps "$STEPS" --batch 16 --seq 64 \
    --eval-every 100 --seed "$SEED" --threads "$THREADS" --out "$OUT/run" 2>&1 | grep -v '^step [0-9]*/[0-9]* | loss' || true
