#!/usr/bin/env bash
# bench/generate.sh — end-to-end generation speed of `peft generate` next to
# llama.cpp (llama-cpp-python) on the same GGUF file, same thread count,
# same ~256-token prompt, greedy, 64 new tokens, on two models:
#   - SmolLM2-135M-Instruct Q4_1 (the real file; its head is Q8_0), and
#   - the 1B shape (d 2048, 16 layers, ff 8192), random Q4_0 weights made by
#     bench/make_llama_gguf.py into a temporary file (never committed).
# The two sides run alternately, one run each per round (the machine may be
# shared: alternating spreads the noise over both), after one warm-up run.
#
#   bench/generate.sh [--runs N] [--threads T] [--max-tokens N] [--no-peer]
#                     [--no-1b] [--exact-decode]
#
# Environment: PEFT (default build-bench/peft), MODEL (default
# models/SmolLM2-135M-Instruct.Q4_1.gguf), MODEL_1B (a 1B GGUF to use
# instead of making one), PYTHON (default python3), NO_INSTALL=1 to not try
# `pip install llama-cpp-python` when it is missing.
#
# Prints per-round lines, then per model: prompt-processing and generation
# tokens/s (medians over the rounds) for both, the ratios peft/llama.cpp
# (of the medians, and the range of the per-round ratios), and the peak RSS
# of our process (/usr/bin/time -v).
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
PEFT="${PEFT:-$root/build-bench/peft}"
MODEL="${MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
PYTHON="${PYTHON:-python3}"
RUNS=3
THREADS=2
MAX_TOKENS=64
PEER=1
ONE_B=1
EXACT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --no-1b) ONE_B=0; shift ;;
        --exact-decode) EXACT="--exact-decode"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "generate.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

[ -x "$PEFT" ] || { echo "generate.sh: $PEFT not built (cmake --build build-bench)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "generate.sh: model $MODEL not found" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The prompt: about 256 SmolLM2 tokens of plain English (no chat template),
# written without a trailing newline so both tokenizers see the same text.
printf '%s' "The lighthouse keeper on the northern island kept a logbook for forty years. \
Every evening he wrote down the direction of the wind, the height of the waves, the ships \
that passed, and the birds that rested on the gallery rail. But on some nights he wrote \
longer notes, about the storms that shook the tower, about the supply boat that came late in \
winter, about the letters from his sister on the mainland who wanted him to retire. When the \
lighthouse was automated, the logbooks were boxed and sent to the harbour museum, where a \
young archivist began to read them one by one. She noticed patterns that nobody had looked \
for: the first swallows arrived a little earlier each decade, the autumn gales grew stronger, \
and the herring boats that once crowded the strait became rare and then disappeared. She \
typed the numbers into a spreadsheet, drew charts, and showed them to a professor at the \
university, who asked whether other keepers had kept similar records. Within a year, \
volunteers along the coast had found dozens of logbooks in attics, churches and council \
basements. Together they described more than a century of weather and wildlife in a way no \
instrument had. The archivist was asked to write a short summary for the museum's visitors. \
She began like this:" > "$tmp/prompt.txt"

# Peak RSS: GNU time when present, else getrusage of the child via python.
if [ -x /usr/bin/time ]; then
    timed() { /usr/bin/time -v "$@"; }
else
    timed() {
        "$PYTHON" -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print("\tMaximum resident set size (kbytes): %d" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(r.returncode)' "$@"
    }
fi

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- llama.cpp available? ------------------------------------------------
if [ "$PEER" = 1 ]; then
    if ! "$PYTHON" -c 'import llama_cpp' 2> /dev/null; then
        if [ "${NO_INSTALL:-0}" = 1 ]; then
            echo "llama.cpp: llama-cpp-python is not installed (NO_INSTALL=1); peft numbers only"
        else
            echo "# llama-cpp-python missing: pip install llama-cpp-python (builds llama.cpp, minutes)"
            # ggml's native build turns on AMX when the CPU lists it, but many
            # VMs do not grant AMX tile state: the library then dies with SIGILL
            # (tilezero). Build without AMX there (override with CMAKE_ARGS).
            if [ -z "${CMAKE_ARGS:-}" ] && grep -q amx_tile /proc/cpuinfo 2> /dev/null; then
                flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
                if grep -q avx512f /proc/cpuinfo; then
                    flags="$flags -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
                fi
                export CMAKE_ARGS="$flags -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
                echo "# CPU lists AMX: building llama.cpp with CMAKE_ARGS=$CMAKE_ARGS"
            fi
            if ! "$PYTHON" -m pip install llama-cpp-python > "$tmp/pip.log" 2>&1; then
                echo "llama.cpp: pip install llama-cpp-python FAILED (last lines below); peft numbers only"
                tail -5 "$tmp/pip.log"
            fi
        fi
    fi
fi
have_peer=0
if [ "$PEER" = 1 ] && "$PYTHON" -c 'import llama_cpp' 2> /dev/null; then have_peer=1; fi

# One peft run: appends prompt and generation tokens/s to $1.pp, $1.tg and
# the peak RSS (KiB) to $1.rss; prints one line. $2 model, $3 label.
ours_run() {
    local out="$1" model="$2" label="$3" err="$tmp/err"
    if ! timed "$PEFT" generate --model "$model" --prompt "$(cat "$tmp/prompt.txt")" \
            --max-tokens "$MAX_TOKENS" --stats --threads "$THREADS" --no-echo $EXACT \
            > "$tmp/text" 2> "$err"; then
        echo "peft generate FAILED:" >&2
        grep -v -E '^\s+[A-Z].*: ' "$err" | head -20 >&2
        return 1
    fi
    local pl gl rss
    pl="$(grep -E '^prompt: [0-9]+ tokens in' "$err")"
    gl="$(grep -E '^generation: [0-9]+ tokens in' "$err")"
    rss="$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$err")"
    if [ -z "$pl" ] || [ -z "$gl" ]; then
        echo "peft generate: no --stats lines in stderr:" >&2
        head -20 "$err" >&2
        return 1
    fi
    echo "  peft      $label: $pl | $gl | peak RSS $((rss / 1024)) MiB"
    sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<< "$pl" >> "$out.pp"
    sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<< "$gl" >> "$out.tg"
    echo "$rss" >> "$out.rss"
}

# One llama.cpp run (the peer loads the file, warms up, times one run).
peer_run() {
    local out="$1" model="$2" label="$3"
    if ! "$PYTHON" "$here/llama_cpp_peer.py" --model "$model" --prompt-file "$tmp/prompt.txt" \
            --max-tokens "$MAX_TOKENS" --threads "$THREADS" --runs 1 > "$tmp/peer.out" 2> "$tmp/peer.err"; then
        echo "llama.cpp: llama_cpp_peer.py failed; peft numbers only" >&2
        tail -5 "$tmp/peer.err" >&2
        return 1
    fi
    local line
    line="$(grep '^llama.cpp: prompt' "$tmp/peer.out")"
    echo "  llama.cpp $label: $(grep 'llama.cpp run 1' "$tmp/peer.err" | sed 's/^llama.cpp run 1: //')"
    sed -E 's/.*prompt [0-9]+ tokens, median ([0-9.]+) tokens\/s.*/\1/' <<< "$line" >> "$out.pp"
    sed -E 's/.*generation [0-9]+ tokens, median ([0-9.]+) tokens\/s.*/\1/' <<< "$line" >> "$out.tg"
    sed -E 's/.*peak RSS ([0-9.]+) MiB.*/\1/' <<< "$line" >> "$out.rss"
}

# Warm-up, then RUNS rounds of (peft, llama.cpp); a summary block per model.
bench_model() {
    local model="$1" name="$2" o="$tmp/ours.$2" p="$tmp/peer.$2"
    : > "$o.pp"; : > "$o.tg"; : > "$o.rss"; : > "$p.pp"; : > "$p.tg"; : > "$p.rss"
    echo "# $name: $model"
    ours_run "$tmp/warm" "$model" "warm-up" || return 1
    echo "  peft greedy text: $(head -c 200 "$tmp/text" | tr '\n' ' ')"
    local peer=$have_peer
    for r in $(seq 1 "$RUNS"); do
        ours_run "$o" "$model" "round $r" || return 1
        if [ "$peer" = 1 ]; then peer_run "$p" "$model" "round $r" || peer=0; fi
    done
    [ "$peer" = 1 ] && grep 'greedy text' "$tmp/peer.err" | sed 's/^/  /'
    local opp otg orss
    opp="$(median < "$o.pp")"; otg="$(median < "$o.tg")"; orss="$(sort -g "$o.rss" | tail -1)"
    summary+="$(printf '%-9s %-10s %14s %14s %14s' "$name" "peft" "$opp" "$otg" "$((orss / 1024))")"$'\n'
    if [ "$peer" = 1 ]; then
        local ppp ptg prss
        ppp="$(median < "$p.pp")"; ptg="$(median < "$p.tg")"; prss="$(sort -g "$p.rss" | tail -1)"
        summary+="$(printf '%-9s %-10s %14s %14s %14s' "$name" "llama.cpp" "$ppp" "$ptg" "$prss")"$'\n'
        local lo hi
        lo="$(paste "$o.tg" "$p.tg" | awk '{ print $1 / $2 }' | sort -g | head -1)"
        hi="$(paste "$o.tg" "$p.tg" | awk '{ print $1 / $2 }' | sort -g | tail -1)"
        summary+="$(awk -v a="$opp" -v b="$ppp" -v c="$otg" -v d="$ptg" -v lo="$lo" -v hi="$hi" -v n="$name" 'BEGIN {
            printf "%-9s %-10s %14.2f %14.2f   (generation per round: %.2f .. %.2f)", n, "peft/llama", a / b, c / d, lo, hi }')"$'\n'
    fi
}

echo "# peft:  $PEFT ${EXACT:-(fast decoding)}, --threads $THREADS, --max-tokens $MAX_TOKENS, greedy, $RUNS rounds after 1 warm-up"
echo "# cpu:   $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
summary=""
status=0
bench_model "$MODEL" "smollm2" || status=1
if [ "$ONE_B" = 1 ]; then
    m1b="${MODEL_1B:-}"
    if [ -z "$m1b" ]; then
        m1b="$tmp/llama-1b.q4_0.gguf"
        echo "# making the 1B Q4_0 model (bench/make_llama_gguf.py 1b, random weights)"
        if ! (cd "$root" && "$PYTHON" "$here/make_llama_gguf.py" 1b "$m1b" --type q4_0 > "$tmp/make.log" 2>&1); then
            echo "generate.sh: make_llama_gguf.py failed:" >&2
            tail -5 "$tmp/make.log" >&2
            m1b=""
            status=1
        fi
    fi
    [ -n "$m1b" ] && { bench_model "$m1b" "1b-q4_0" || status=1; }
fi

echo
echo "== summary (median tokens/s over $RUNS rounds, threads $THREADS) =="
printf '%-9s %-10s %14s %14s %14s\n' "model" "" "prompt tok/s" "gen tok/s" "peak RSS MiB"
printf '%s' "$summary"
[ "$have_peer" = 1 ] || echo "(llama.cpp not available: peft numbers only)"
exit $status
