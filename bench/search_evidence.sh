#!/usr/bin/env bash
# bench/search_evidence.sh — the numbers of docs/search.md: what `peft search`
# picks on real tasks, against the usual guess (LoRA r=8 on the default
# modules, lr 2e-4) and AdaLoRA, on held-out data none of them saw.
#
#   bash bench/search_evidence.sh                 # SST-2 and E2E
#   TASKS=sst2 TRIALS=6 MIN_STEPS=8 bash bench/search_evidence.sh
#
# Per task: a train / validation / test split of the real data by SEED (E2E
# split by meaning representation, so no test prompt was trained on); a
# search with a fixed plan (--trials, --min-steps, --eta: the same trials on
# any machine, at any load); then, on the same training data,
#   - the usual guess trained as long as the winner's last rung (equal steps)
#     and as long as the whole search (equal total compute);
#   - AdaLoRA (init_r 12, target_r 8) for the winner's steps;
# and every adapter's loss (and accuracy for SST-2) on the test split.
# Needs ../shared/data (the project's test data; see README) or DATA=DIR with
# sst2/train.jsonl and e2e/dev.jsonl; the model comes from scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PEFT=${PEFT:-build/peft}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/search_evidence}
TASKS=${TASKS:-"sst2 e2e"}
THREADS=${THREADS:-2}
SEED=${SEED:-42}
TRIALS=${TRIALS:-9}
MIN_STEPS=${MIN_STEPS:-12}
ETA=${ETA:-3}
BUDGET=${BUDGET:-0.35%}

[ -x "$PEFT" ] || { echo "search_evidence: build first ($PEFT not found)" >&2; exit 1; }
[ -e "$MODEL" ] || { echo "search_evidence: $MODEL not found: bash scripts/setup.sh fetches it" >&2; exit 1; }
for t in $TASKS; do
  case $t in
    sst2) f=$DATA/sst2/train.jsonl ;;
    e2e) f=$DATA/e2e/dev.jsonl ;;
    *) echo "search_evidence: unknown task $t (sst2, e2e)" >&2; exit 2 ;;
  esac
  [ -f "$f" ] || { echo "search_evidence: $f not found. It is the project's shared test data (../shared/data, see README);" \
                        "point DATA= at a folder with sst2/train.jsonl ({text,label}) and e2e/dev.jsonl ({prompt,completion})" >&2; exit 1; }
done
mkdir -p "$OUT"

split() {  # task src dir
  python3 - "$1" "$2" "$3" "$SEED" <<'EOF'
import json, random, sys, collections
task, src, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [json.loads(l) for l in open(src, encoding="utf-8")]
rng = random.Random(seed)
if task == "sst2":
    rng.shuffle(rows)
    parts = {"train": rows[:2000], "val": rows[2000:2256], "test": rows[2256:3128]}
else:
    # E2E has several references per meaning representation: split by it
    groups = collections.OrderedDict()
    for r in rows: groups.setdefault(r["prompt"], []).append(r)
    keys = list(groups); rng.shuffle(keys)
    take = lambda ks: [r for k in ks for r in groups[k]]
    parts = {"test": take(keys[:80]), "val": take(keys[80:110]), "train": take(keys[110:])[:2000]}
for name, rs in parts.items():
    with open(f"{out}/{name}.jsonl", "w", encoding="utf-8") as f:
        for r in rs: f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{task} {name}: {len(rs)} rows", file=sys.stderr)
EOF
}

evaluate() {  # adapter test -> json line
  "$PEFT" eval --model "$MODEL" --adapter "$1" --data "$2" --json --threads "$THREADS" $3
}

for t in $TASKS; do
  d=$OUT/$t
  mkdir -p "$d"
  if [ $t = sst2 ]; then src=$DATA/sst2/train.jsonl; opts="--seq 64 --batch 8"; else src=$DATA/e2e/dev.jsonl; opts="--seq 128 --batch 4"; fi
  split $t "$src" "$d"
  resume=""
  [ -f "$d/search/search.json" ] && resume=--resume
  t0=$(date +%s)
  "$PEFT" search --model "$MODEL" --data "$d/train.jsonl" --val "$d/val.jsonl" --out "$d/search" --budget-params "$BUDGET" \
    --budget-time 24h --trials $TRIALS --min-steps $MIN_STEPS --eta $ETA --seed $SEED --threads $THREADS $opts $resume
  t1=$(date +%s)
  read -r final total <<<"$(python3 -c "
import json; s = json.load(open('$d/search/search.json'))
print(s['plan']['rung_steps'][-1], sum(t['steps'] for t in s['trials']))")"
  train() {  # name steps extra...
    local name=$1 steps=$2; shift 2
    [ -f "$d/$name/adapter_config.json" ] && return 0
    "$PEFT" train --model "$MODEL" --data "$d/train.jsonl" --out "$d/$name" \
      --steps $steps --warmup $((steps / 10)) --schedule cosine --seed $SEED --threads $THREADS --quiet $opts "$@" \
      >"$d/$name.log" 2>&1 || { cat "$d/$name.log" >&2; return 1; }
    cat "$d/$name.log" >&2
  }
  s0=$(date +%s); train guess_equal_steps $final --lr 2e-4 --r 8; s1=$(date +%s)
  train guess_equal_compute $total --lr 2e-4 --r 8; s2=$(date +%s)
  train adalora_equal_steps $final --method adalora --lr 2e-4; s3=$(date +%s)
  python3 - "$d" "$t" $((t1 - t0)) $((s1 - s0)) $((s2 - s1)) $((s3 - s2)) $final $total "$PEFT" "$MODEL" "$THREADS" <<'EOF'
import json, subprocess, sys
d, task, t_search, t_eq, t_comp, t_ada, final, total, peft, model, threads = sys.argv[1:]
lb = json.load(open(f"{d}/search/leaderboard.json"))["leaderboard"]
win = lb[0]
def ev(adapter):
    out = subprocess.run([peft, "eval", "--model", model, "--adapter", adapter, "--data", f"{d}/test.jsonl", "--json",
                          "--threads", threads], check=True, capture_output=True, text=True).stdout
    return json.loads(out)
def params(name):
    for line in open(f"{d}/{name}.log"):
        if line.startswith("trainable params:"): return int(line.split()[2].replace(",", ""))
    return "?"
rows = [("peft search's pick: " + win["label"], f"{d}/search/best", win["steps"], win["params"], t_search + " (whole search)"),
        ("usual guess, equal steps: lora r=8 default lr=2e-4", f"{d}/guess_equal_steps", final, params("guess_equal_steps"), t_eq),
        ("usual guess, equal total compute", f"{d}/guess_equal_compute", total, params("guess_equal_compute"), t_comp),
        ("AdaLoRA init_r 12 -> target_r 8, lr 2e-4", f"{d}/adalora_equal_steps", final, params("adalora_equal_steps"), t_ada)]
res = []
with open(f"{d}/evidence.md", "w") as f:
    f.write(f"| {task}: configuration | steps | trainable params | test loss | test accuracy | seconds |\n|---|---:|---:|---:|---:|---:|\n")
    for name, ad, steps, p, secs in rows:
        e = ev(ad)
        acc = f"{e['accuracy']:.4f}" if "accuracy" in e else "–"
        f.write(f"| {name} | {steps} | {p} | {e['loss']:.4f} | {acc} | {secs} |\n")
        res.append(dict(name=name, steps=int(steps), loss=e["loss"], accuracy=e.get("accuracy"), seconds=secs))
json.dump(res, open(f"{d}/evidence.json", "w"), indent=1)
print(open(f"{d}/evidence.md").read())
EOF
done
