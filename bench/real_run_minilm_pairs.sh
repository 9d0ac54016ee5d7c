#!/usr/bin/env bash
# real_run_minilm_pairs.sh — the README's contrastive run: all-MiniLM-L6-v2
# fine-tuned with LoRA r=8 (query, key, value, dense) on E2E
# (../shared/data/e2e/dev.jsonl) as {anchor: meaning representation,
# positive: a reference text} pairs with in-batch negatives
# (MultipleNegativesRankingLoss, scale 20). 100 meaning representations are
# held out by the seed; the measure is retrieval: for each held-out one, is
# its own reference the best-scored of the 100 held-out references
# (`peft eval --batch 100`: in-batch accuracy = recall@1 among 100).
#   STEPS=200 THREADS=2 bash bench/real_run_minilm_pairs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/minilm_e2e_pairs}
STEPS=${STEPS:-200}
THREADS=${THREADS:-2}
SEED=${SEED:-42}
PEFT=${PEFT:-build/peft}
[ -d "$MODEL" ] || bash scripts/setup.sh --model
[ -x "$PEFT" ] || bash scripts/setup.sh --build
. bench/need_data.sh
need_data e2e "$DATA/e2e/dev.jsonl" DATA
rm -rf "$OUT/run"; mkdir -p "$OUT"
python3 - "$DATA/e2e/dev.jsonl" "$OUT" "$SEED" <<'PY'
import json, random, sys
src, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
refs = {}
for line in open(src, encoding="utf-8"):
    r = json.loads(line)
    refs.setdefault(r["prompt"], []).append(r["completion"])
mrs = sorted(refs)
random.Random(seed).shuffle(mrs)
with open(f"{out}/val.jsonl", "w", encoding="utf-8") as f:
    for m in mrs[:100]:
        f.write(json.dumps({"anchor": m, "positive": refs[m][0]}, ensure_ascii=False) + "\n")
with open(f"{out}/train.jsonl", "w", encoding="utf-8") as f:
    for m in mrs[100:]:
        for c in refs[m]:
            f.write(json.dumps({"anchor": m, "positive": c}, ensure_ascii=False) + "\n")
PY
echo "before: $("$PEFT" eval --model "$MODEL" --data "$OUT/val.jsonl" --batch 100 --seq 128 --threads "$THREADS")"
"$PEFT" train --model "$MODEL" --data "$OUT/train.jsonl" --method lora --r 8 --alpha 16 --target query,key,value,dense \
    --lr 1e-3 --schedule constant --clip 0 --steps "$STEPS" --batch 16 --seq 128 --seed "$SEED" --threads "$THREADS" \
    --out "$OUT/run" 2>&1 | grep -v '^step [0-9]*/[0-9]* | loss' || true
echo "after:  $("$PEFT" eval --model "$MODEL" --adapter "$OUT/run" --data "$OUT/val.jsonl" --batch 100 --seq 128 --threads "$THREADS")"
