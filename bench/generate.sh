#!/usr/bin/env bash
# bench/generate.sh — end-to-end generation speed of `peft generate` on the
# SmolLM2-135M Q4_1 GGUF, next to llama.cpp (llama-cpp-python) on the same
# file, same thread count, same ~256-token prompt, greedy, 64 new tokens.
#
#   bench/generate.sh [--runs N] [--threads T] [--max-tokens N] [--no-peer]
#
# Environment: PEFT (default build-bench/peft), MODEL (default
# models/SmolLM2-135M-Instruct.Q4_1.gguf), PYTHON (default python3),
# NO_INSTALL=1 to not try `pip install llama-cpp-python` when it is missing.
#
# Prints per-run lines, then a summary: prompt-processing and generation
# tokens/s (median over runs, after one warm-up run) for both, the ratio
# peft/llama.cpp, and the peak RSS of our process (/usr/bin/time -v).
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
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
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

echo "# model: $MODEL"
echo "# peft:  $PEFT, --threads $THREADS, --max-tokens $MAX_TOKENS, greedy, $RUNS runs after 1 warm-up"

# ---- ours ------------------------------------------------------------------
ours_ok=1
: > "$tmp/pp"; : > "$tmp/tg"; : > "$tmp/rss"
for r in $(seq 0 "$RUNS"); do
    if ! timed "$PEFT" generate --model "$MODEL" --prompt "$(cat "$tmp/prompt.txt")" \
            --max-tokens "$MAX_TOKENS" --stats --threads "$THREADS" --no-echo \
            > "$tmp/out.$r" 2> "$tmp/err.$r"; then
        echo "peft generate FAILED (run $r):" >&2
        grep -v -E '^\s+[A-Z].*: ' "$tmp/err.$r" | head -20 >&2
        ours_ok=0
        break
    fi
    pl="$(grep -E '^prompt: [0-9]+ tokens in' "$tmp/err.$r")"
    gl="$(grep -E '^generation: [0-9]+ tokens in' "$tmp/err.$r")"
    rss="$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/err.$r")"
    if [ -z "$pl" ] || [ -z "$gl" ]; then
        echo "peft generate: no --stats lines in stderr (run $r):" >&2
        head -20 "$tmp/err.$r" >&2
        ours_ok=0
        break
    fi
    if [ "$r" -eq 0 ]; then
        echo "peft warm-up: $pl | $gl"
        continue
    fi
    echo "peft run $r: $pl | $gl | peak RSS $((rss / 1024)) MiB"
    n_pp="$(sed -E 's/^prompt: ([0-9]+) tokens.*/\1/' <<< "$pl")"
    n_tg="$(sed -E 's/^generation: ([0-9]+) tokens.*/\1/' <<< "$gl")"
    sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<< "$pl" >> "$tmp/pp"
    sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<< "$gl" >> "$tmp/tg"
    echo "$rss" >> "$tmp/rss"
done
if [ "$ours_ok" = 1 ]; then
    echo "peft greedy text: $(head -c 300 "$tmp/out.1" | tr '\n' ' ')"
    ours_pp="$(median < "$tmp/pp")"
    ours_tg="$(median < "$tmp/tg")"
    ours_rss="$(sort -g "$tmp/rss" | tail -1)"
fi

# ---- llama.cpp -------------------------------------------------------------
peer_ok=0
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
    if "$PYTHON" -c 'import llama_cpp' 2> /dev/null; then
        "$PYTHON" "$here/llama_cpp_peer.py" --model "$MODEL" --prompt-file "$tmp/prompt.txt" \
            --max-tokens "$MAX_TOKENS" --threads "$THREADS" --runs "$RUNS" \
            > "$tmp/peer.out" 2> "$tmp/peer.err"
        peer_rc=$?
        if [ "$peer_rc" = 0 ]; then
            cat "$tmp/peer.err"
            peer_line="$(grep '^llama.cpp: prompt' "$tmp/peer.out")"
            peer_pp="$(sed -E 's/.*prompt [0-9]+ tokens, median ([0-9.]+) tokens\/s.*/\1/' <<< "$peer_line")"
            peer_tg="$(sed -E 's/.*generation [0-9]+ tokens, median ([0-9.]+) tokens\/s.*/\1/' <<< "$peer_line")"
            peer_n_pp="$(sed -E 's/.*prompt ([0-9]+) tokens.*/\1/' <<< "$peer_line")"
            peer_rss="$(sed -E 's/.*peak RSS ([0-9.]+) MiB.*/\1/' <<< "$peer_line")"
            peer_ok=1
        else
            echo "llama.cpp: llama_cpp_peer.py failed (exit $peer_rc); peft numbers only"
            [ "$peer_rc" = 132 ] && echo "  (SIGILL: llama.cpp was built for CPU features this machine does not allow, often AMX in a VM; reinstall with CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF\" pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python)"
            tail -5 "$tmp/peer.err"
        fi
    fi
fi

# ---- summary ---------------------------------------------------------------
echo
echo "== summary (median tokens/s, threads $THREADS) =="
printf '%-10s %14s %14s %14s\n' "" "prompt tok/s" "gen tok/s" "peak RSS MiB"
if [ "$ours_ok" = 1 ]; then
    printf '%-10s %14s %14s %14s   (prompt %s tokens, generated %s)\n' "peft" "$ours_pp" "$ours_tg" \
        "$((ours_rss / 1024))" "$n_pp" "$n_tg"
else
    echo "peft       FAILED (see above)"
fi
if [ "$peer_ok" = 1 ]; then
    printf '%-10s %14s %14s %14s   (prompt %s tokens, generated %s; RSS of the python process)\n' \
        "llama.cpp" "$peer_pp" "$peer_tg" "$peer_rss" "$peer_n_pp" "$MAX_TOKENS"
    if [ "$ours_ok" = 1 ]; then
        awk -v a="$ours_pp" -v b="$peer_pp" -v c="$ours_tg" -v d="$peer_tg" 'BEGIN {
            printf "%-10s %14.2f %14.2f\n", "peft/llama", a / b, c / d }'
    fi
fi
[ "$ours_ok" = 1 ] || exit 1
