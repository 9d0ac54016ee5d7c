#!/usr/bin/env bash
# methods.sh — the method comparison of docs/methods.md: every method on
# SmolLM2-135M-Instruct (Q4_1 GGUF base) with the same step budget and seed,
# on two real tasks from ../shared/data:
#   sst2  SST-2 sentence classification ({text,label}); a classification head
#         on the last token; metric: accuracy on a held-out 20 % of a seeded
#         sample of the training file
#   e2e   E2E NLG data-to-text ({prompt,completion}); metric: validation loss
# For each run: trainable parameters (count, %), adapter file size, the
# metric, training tokens/s and peak RSS. Writes runs/methods/results.md.
#   STEPS=60 THREADS=2 TASKS="sst2 e2e" METHODS="lora dora ..." bash bench/methods.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/methods}
STEPS=${STEPS:-60}
THREADS=${THREADS:-2}
SEED=${SEED:-42}
TASKS=${TASKS:-"sst2 e2e"}
METHODS=${METHODS:-"lora loraplus dora adapter-pfeiffer adapter-houlsby prompt prefix prefix-vocab ia3 vera loha lokr bitfit full"}
PEFT=${PEFT:-build/peft}
. bench/need_data.sh
case " $TASKS " in *" sst2 "*) need_data sst2 "$DATA/sst2/train.jsonl" DATA ;; esac
case " $TASKS " in *" e2e "*) need_data e2e "$DATA/e2e/dev.jsonl" DATA ;; esac
[ -f "$MODEL" ] || bash scripts/setup.sh --model
[ -x "$PEFT" ] || bash scripts/setup.sh --build
mkdir -p "$OUT/data"

# seeded samples: 2000 SST-2 sentences (400 held out by --val-split), and
# 1000 E2E training pairs + 250 validation pairs from restaurants the
# training pairs lack (the file is grouped by restaurant)
if [ -f "$DATA/sst2/train.jsonl" ]; then
    shuf -n 2000 --random-source=<(yes "$SEED") "$DATA/sst2/train.jsonl" > "$OUT/data/sst2.jsonl"
fi
if [ -f "$DATA/e2e/dev.jsonl" ]; then
    sed 's/", "completion": "/\\n", "completion": "/' "$DATA/e2e/dev.jsonl" > "$OUT/data/e2e_all.jsonl"
    head -n 4172 "$OUT/data/e2e_all.jsonl" | shuf -n 1000 --random-source=<(yes "$SEED") > "$OUT/data/e2e_train.jsonl"
    tail -n 250 "$OUT/data/e2e_all.jsonl" > "$OUT/data/e2e_val.jsonl"
fi

# per-method learning rates (each method's usual range; one value for both tasks)
lr_of() {
    case "$1" in
    lora | dora | adapter-pfeiffer | adapter-houlsby) echo 1e-3 ;;
    loraplus) echo 5e-4 ;;   # A's lr; B's is 16x (HF: LoRA+ wants a somewhat lower base lr)
    prompt) echo 3e-2 ;;
    prefix | prefix-vocab) echo 1e-2 ;;
    ia3 | vera) echo 5e-3 ;;
    bitfit) echo 1e-3 ;;
    full) echo 5e-5 ;;
    loha) echo 5e-3 ;;
    lokr) echo 5e-3 ;;
    esac
}

row() {  # task method
    local task=$1 method=$2 dir="$OUT/$1_$2" args
    case "$task" in
    sst2) args=(--data "$OUT/data/sst2.jsonl" --val-split 0.2 --batch 8 --seq 64) ;;
    e2e) args=(--data "$OUT/data/e2e_train.jsonl" --val "$OUT/data/e2e_val.jsonl" --batch 4 --seq 96) ;;
    esac
    rm -rf "$dir"
    mkdir -p "$dir"
    local margs=(--method "$method")
    # prefix-vocab: prefix tuning whose table starts as the keys/values of sampled tokens
    [ "$method" = prefix-vocab ] && margs=(--method prefix --prompt-init sample-vocab)
    # loraplus: LoRA (r 8, alpha 16, q_proj,v_proj) with LoRA+'s B learning rate 16 x lr
    [ "$method" = loraplus ] && margs=(--method lora --loraplus-lr-ratio 16)
    if ! /usr/bin/time -v -o "$dir/time.txt" "$PEFT" train --model "$MODEL" "${args[@]}" "${margs[@]}" \
        --lr "$(lr_of "$method")" --warmup 6 --schedule cosine --steps "$STEPS" --seed "$SEED" \
        --threads "$THREADS" --quiet --out "$dir" > "$dir/stdout.txt" 2> "$dir/train.log"; then
        local why
        why=$(grep 'peft train:' "$dir/train.log" | tail -1 | sed 's/.*peft train: //; s/|/\\|/g')
        echo "| $task | $method | — | — | — | — | — | — | not available: ${why:-failed, see $dir/train.log} |"
        return
    fi
    local tp pct size metric tps rss file
    tp=$(sed -n 's/^trainable params: \([0-9,]*\) .*/\1/p' "$dir/stdout.txt")
    pct=$(sed -n 's/.*trainable%: \([0-9.]*\).*/\1/p' "$dir/stdout.txt")
    file="$dir/adapter_model.safetensors"
    [ -f "$file" ] || file="$dir/model.gguf"
    [ -f "$file" ] || file="$dir/model.safetensors"
    size=$(du -k "$file" | awk '{printf "%.1f MiB", $1 / 1024}')
    if [ "$task" = sst2 ]; then
        metric=$(grep -o 'accuracy [0-9.]*' "$dir/train.log" | tail -1 | awk '{printf "acc %.3f", $2}')
    else
        metric=$(grep -o 'validation [0-9.]* -> [0-9.]*' "$dir/train.log" | tail -1 | awk '{printf "val loss %s → %s", $2, $4}')
    fi
    tps=$(grep -o '([0-9]* tokens/s)' "$dir/train.log" | tail -1 | tr -d '()' | awk '{print $1}')
    rss=$(awk -F: '/Maximum resident/ {gsub(/ /, "", $2); printf "%.0f MiB", $2 / 1024}' "$dir/time.txt")
    local note="lr $(lr_of "$method")"
    [ "$method" = loraplus ] && note="lr $(lr_of "$method"), B at 16 x lr"
    echo "| $task | $method | $tp | $pct % | $size | $metric | $tps | $rss | $note |"
}

{
    echo "Model: $MODEL ($(nproc) cores, $THREADS threads); $STEPS steps per run, seed $SEED, warmup 6, cosine."
    echo "SST-2: 2000 sampled sentences, 400 held out (--val-split 0.2), batch 8 x 64; E2E: 1000 training pairs,"
    echo "250 validation pairs, batch 4 x 96. LoRA/DoRA: r 8, alpha 16 on q_proj,v_proj; bottleneck: reduction"
    echo "factor 16; prompt/prefix: 20 virtual tokens; IA3: k_proj, v_proj, down_proj; VeRA: r 256 on q_proj,v_proj;"
    echo "LoHa: r 8, alpha 8 on q_proj,v_proj."
    echo "LoKr: r 8, alpha 8 on q_proj,v_proj (HF defaults; W1 full, W2 low-rank)."
    echo
    echo "| task | method | trainable params | trainable % | file | metric | train tokens/s | peak RSS | notes |"
    echo "|---|---|---|---|---|---|---|---|---|"
} > "$OUT/results.md"
for task in $TASKS; do
    for method in $METHODS; do
        r=$(row "$task" "$method")
        echo "$r"
        echo "$r" >> "$OUT/results.md"
    done
done
echo
echo "written: $OUT/results.md"
