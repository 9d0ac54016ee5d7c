#!/usr/bin/env bash
# make_wordnet_data.sh OUT_DIR — builds a small instruction dataset from
# WordNet's noun glosses (Debian package wordnet-base): chat messages
#   user: Define "abstraction".   assistant: a general concept formed by ...
# OUT_DIR/train.jsonl gets most synsets, OUT_DIR/val.jsonl every 100th.
set -euo pipefail
out=${1:?usage: make_wordnet_data.sh OUT_DIR}
src=/usr/share/wordnet/data.noun
[ -f "$src" ] || { echo "make_wordnet_data: $src not found (apt-get install wordnet-base)" >&2; exit 1; }
mkdir -p "$out"
# fields: offset lex_filenum ss_type w_cnt word lex_id ... | gloss ("definition; \"example\"")
awk -v train="$out/train.jsonl.part" -v val="$out/val.jsonl.part" '
/^  / { next }                                   # licence header
{
    bar = index($0, " | "); if (bar == 0) next
    gloss = substr($0, bar + 3)
    sub(/[ \t]+$/, "", gloss)
    semi = index(gloss, ";"); if (semi > 0) gloss = substr(gloss, 1, semi - 1)
    word = $5; gsub(/_/, " ", word); gsub(/\([a-z]+\)$/, "", word)
    if (length(gloss) < 12 || word ~ /[^A-Za-z -]/) next
    gsub(/\\/, "\\\\", gloss); gsub(/"/, "\\\"", gloss)
    line = sprintf("{\"messages\": [{\"role\": \"user\", \"content\": \"Define \\\"%s\\\".\"}, {\"role\": \"assistant\", \"content\": \"%s.\"}]}", word, gloss)
    n++
    if (n % 100 == 0) print line > val; else print line > train
}' "$src"
mv "$out/train.jsonl.part" "$out/train.jsonl"
mv "$out/val.jsonl.part" "$out/val.jsonl"
echo "make_wordnet_data: $(wc -l < "$out/train.jsonl") training and $(wc -l < "$out/val.jsonl") validation examples in $out"
