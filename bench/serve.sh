#!/usr/bin/env bash
# bench/serve.sh — `peft serve` under load: C concurrent clients (32) send a
# fixed number of streaming completions (256, 64 new tokens, greedy) spread
# over 8 LoRA adapters of SmolLM2-135M Q4_1; then the same load on one
# adapter; then llama.cpp's OpenAI-compatible server (llama-cpp-python,
# `python -m llama_cpp.server`) on the same GGUF with the same LoRA exported
# by `peft export --format gguf`. Reports for each: requests ok / lost
# (every response checked: HTTP 200, well-formed events, data: [DONE]),
# throughput (generated tokens/s), latency p50/p99, time to first token
# p50/p99 (bench/serve_load.py).
#
#   bench/serve.sh [--clients 32] [--requests 256] [--max-tokens 64] [--threads T] [--no-peer]
#
# Environment: PEFT (default build-bench/peft, else build/peft), MODEL
# (default models/SmolLM2-135M-Instruct.Q4_1.gguf), PYTHON (python3),
# NO_INSTALL=1 to not `pip install 'llama-cpp-python[server]'` when missing.
# The 8 adapters are trained once (a few steps each, different seeds, so
# that they differ) into runs/serve-bench/ and reused.
#
# llama-cpp-python's server runs one request at a time per model (no
# continuous batching; --interrupt_requests False makes the others wait
# instead of cutting the running stream off) and applies one LoRA per
# loaded model, so its comparison is the one-adapter load.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
if [ -z "${PEFT:-}" ]; then
    PEFT="$root/build-bench/peft"
    [ -x "$PEFT" ] || PEFT="$root/build/peft"
fi
MODEL="${MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PYTHON="${PYTHON:-python3}"
CLIENTS=32
REQUESTS=256
MAX_TOKENS=64
THREADS="$(nproc)"
PEER=1
N_ADAPTERS=8
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "serve.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

[ -x "$PEFT" ] || { echo "serve.sh: $PEFT not built (cmake --build build)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "serve.sh: model $MODEL not found (bash scripts/setup.sh --model)" >&2; exit 1; }

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2> /dev/null && wait "$server_pid" 2> /dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# ---- the adapters ----------------------------------------------------------
cache="$root/runs/serve-bench/$(basename "$MODEL")"
mkdir -p "$cache"
"$PYTHON" - "$tmp/data.jsonl" <<'PY'
import json, sys
texts = ["the keeper wrote about the storm and the ships that passed",
         "a letter from the mainland asked him to retire",
         "the swallows arrived a little earlier each decade",
         "the herring boats became rare and then disappeared"]
with open(sys.argv[1], "w") as f:
    for t in texts * 4:
        f.write(json.dumps({"text": t}) + "\n")
PY
names=()
for i in $(seq 0 $((N_ADAPTERS - 1))); do
    d="$cache/a$i"
    if [ ! -f "$d/adapter_model.safetensors" ]; then
        echo "# training adapter a$i (3 steps, seed $((i + 1))) into $d"
        if ! "$PEFT" train --model "$MODEL" --data "$tmp/data.jsonl" --out "$d" --steps 3 --batch 2 --seq 32 \
                --lr 1e-2 --seed $((i + 1)) --threads "$THREADS" --quiet > "$tmp/train.log" 2>&1; then
            echo "serve.sh: training a$i FAILED:" >&2
            tail -5 "$tmp/train.log" >&2
            exit 1
        fi
    fi
    names+=("a$i")
done
if [ ! -f "$cache/a0.gguf" ]; then
    "$PEFT" export --adapter "$cache/a0" --format gguf --model "$MODEL" --out "$cache/a0.gguf" > "$tmp/export.log" 2>&1 ||
        { echo "serve.sh: peft export FAILED:" >&2; tail -5 "$tmp/export.log" >&2; exit 1; }
fi

wait_ready() {   # url, pid: until GET /v1/models answers (the server is up), or the server died
    for _ in $(seq 1 1200); do
        kill -0 "$2" 2> /dev/null || return 1
        "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/v1/models', timeout=5)" "$1" \
            2> /dev/null && return 0
        sleep 0.5
    done
    return 1
}

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "# model: $MODEL"
echo "# load: $CLIENTS clients, $REQUESTS streaming completions, max_tokens $MAX_TOKENS, greedy; threads $THREADS"
status=0
load() {   # label, url, models
    "$PYTHON" "$here/serve_load.py" --url "$2" --models "$3" --clients "$CLIENTS" --requests "$REQUESTS" \
        --max-tokens "$MAX_TOKENS" --label "$1" $4 | tee -a "$tmp/results" || status=1
}

# ---- peft serve ------------------------------------------------------------
port="$(free_port)"
args=()
for n in "${names[@]}"; do args+=(--adapter "$n=$cache/$n"); done
"$PEFT" serve --model "$MODEL" "${args[@]}" --port "$port" --threads "$THREADS" --max-batch "$CLIENTS" \
    > "$tmp/serve.log" 2>&1 &
server_pid=$!
if ! wait_ready "http://127.0.0.1:$port" "$server_pid"; then
    echo "serve.sh: peft serve did not start:" >&2
    tail -5 "$tmp/serve.log" >&2
    exit 1
fi
all="$(IFS=,; echo "${names[*]}")"
load "peft serve, $N_ADAPTERS adapters" "http://127.0.0.1:$port" "$all" --usage
load "peft serve, 1 adapter" "http://127.0.0.1:$port" "a0" --usage
"$PYTHON" -c "import urllib.request, sys
m = urllib.request.urlopen(sys.argv[1] + '/metrics').read().decode()
rows = steps = 0
for l in m.splitlines():
    if l.startswith('peft_batch_rows_total '): rows = float(l.split()[1])
    if l.startswith('peft_batch_steps_total '): steps = float(l.split()[1])
print(f'# peft serve: {steps:.0f} batch steps, mean batch {rows / max(steps, 1):.1f} sessions')" "http://127.0.0.1:$port"
kill "$server_pid"
wait "$server_pid" 2> /dev/null
server_pid=""

# ---- llama.cpp -------------------------------------------------------------
if [ "$PEER" = 1 ]; then
    if ! "$PYTHON" -c 'import llama_cpp.server, uvicorn, sse_starlette' 2> /dev/null; then
        if [ "${NO_INSTALL:-0}" = 1 ]; then
            echo "llama.cpp: llama-cpp-python[server] is not installed (NO_INSTALL=1); peft numbers only"
        else
            echo "# llama-cpp-python[server] missing: pip install 'llama-cpp-python[server]' (builds llama.cpp, minutes)"
            # as bench/generate.sh: no AMX where the VM may not grant its tile state
            if [ -z "${CMAKE_ARGS:-}" ] && grep -q amx_tile /proc/cpuinfo 2> /dev/null; then
                flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
                if grep -q avx512f /proc/cpuinfo; then
                    flags="$flags -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
                fi
                export CMAKE_ARGS="$flags -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
            fi
            "$PYTHON" -m pip install 'llama-cpp-python[server]' > "$tmp/pip.log" 2>&1 ||
                { echo "llama.cpp: pip install FAILED (last lines below); peft numbers only"; tail -5 "$tmp/pip.log"; }
        fi
    fi
    if "$PYTHON" -c 'import llama_cpp.server, uvicorn, sse_starlette' 2> /dev/null; then
        port="$(free_port)"
        "$PYTHON" -m llama_cpp.server --model "$MODEL" --lora_path "$cache/a0.gguf" --model_alias a0 --host 127.0.0.1 \
            --port "$port" --n_threads "$THREADS" --n_ctx 2048 --interrupt_requests False > "$tmp/llama.log" 2>&1 &
        server_pid=$!
        if wait_ready "http://127.0.0.1:$port" "$server_pid"; then
            load "llama.cpp server, 1 adapter" "http://127.0.0.1:$port" "a0" ""
        else
            echo "llama.cpp: server did not start:"
            tail -5 "$tmp/llama.log"
        fi
        kill "$server_pid" 2> /dev/null
        wait "$server_pid" 2> /dev/null
        server_pid=""
    fi
fi

echo "# summary (tokens/s, latency p50/p99 s, first token p50/p99 s):"
grep '^#json ' "$tmp/results" | sed 's/^#json //' > "$tmp/results.json"
"$PYTHON" - "$tmp/results.json" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(f"  {r['label']:32s} {r['ok']}/{r['requests']} ok  {r['tokens_per_s']:8.1f} tok/s  "
          f"latency {r['latency_p50_s']:.2f}/{r['latency_p99_s']:.2f}  ttft {r['ttft_p50_s']:.2f}/{r['ttft_p99_s']:.2f}")
PY
exit $status
