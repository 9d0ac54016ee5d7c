#!/usr/bin/env bash
# make_wordnet_data.sh OUT_DIR — builds a small instruction dataset from
# WordNet's noun glosses (Debian package wordnet-base): chat messages
#   user: Define "bicycle".   assistant: a wheeled vehicle that has two wheels and is moved by foot pedals.
# Only common words: one-word lower-case nouns whose first (most frequent)
# sense was tagged at least twice in WordNet's sense-tagged corpus
# (cntlist.rev), with that sense's first gloss; about 5,000 words.
# OUT_DIR/val.jsonl holds out every 50th synset (about 100 words): none of
# their glosses is in OUT_DIR/train.jsonl, not even under a synonym, so the
# quickstart's "after" is measured on words and definitions the adapter
# never saw.
set -euo pipefail
out=${1:?usage: make_wordnet_data.sh OUT_DIR}
wn=/usr/share/wordnet
for f in data.noun index.noun cntlist.rev; do
    [ -f "$wn/$f" ] || { echo "make_wordnet_data: $wn/$f not found (apt-get install wordnet-base)" >&2; exit 1; }
done
mkdir -p "$out"
python3 - "$wn" "$out" <<'PY'
import json, os, random, re, sys
wn, out = sys.argv[1], sys.argv[2]

# sense key -> times tagged ("abandon%1:04:00:: 1 14": key, sense number, count)
tagged = {}
with open(os.path.join(wn, "cntlist.rev"), encoding="latin-1") as f:
    for line in f:
        key, _, count = line.split()
        tagged[key] = int(count)

# data.noun: offset lex_filenum ss_type w_cnt (word lex_id)... | gloss
synsets = {}
with open(os.path.join(wn, "data.noun"), encoding="latin-1") as f:
    for line in f:
        if line.startswith("  "):   # the licence header
            continue
        head, _, gloss = line.partition(" | ")
        fld = head.split()
        n = int(fld[3], 16)
        synsets[fld[0]] = (int(fld[1]), {fld[4 + 2 * i]: int(fld[5 + 2 * i], 16) for i in range(n)}, gloss.strip())

# index.noun: lemma pos synset_cnt p_cnt ptr... sense_cnt tagsense_cnt offsets (most frequent sense first)
words = []
with open(os.path.join(wn, "index.noun"), encoding="latin-1") as f:
    for line in f:
        if line.startswith("  "):
            continue
        fld = line.split()
        lemma, first = fld[0], fld[6 + int(fld[3])]
        lexfile, members, gloss = synsets[first]
        # lower-case one-word lemmas only: no proper nouns, no phrases
        if not re.fullmatch(r"[a-z]{3,}", lemma) or lemma not in members:
            continue
        if tagged.get("%s%%1:%02d:%02d::" % (lemma, lexfile, members[lemma]), 0) < 2:
            continue
        gloss = gloss.split(";")[0].strip()          # the definition, not the examples
        gloss = re.sub(r"^\([^)]*\) ", "", gloss)    # "(baseball) ..." domain labels
        if len(gloss) < 8 or lemma in re.findall(r"[a-z]+", gloss):
            continue   # a gloss that restates its word teaches tautologies
        words.append((lemma, first, gloss))

words.sort()
held_out = set(sorted({o for _, o, _ in words})[25::50])
def row(word, gloss):
    return json.dumps({"messages": [{"role": "user", "content": 'Define "%s".' % word},
                                    {"role": "assistant", "content": gloss + "."}]})
train = [w for w in words if w[1] not in held_out]
val = [w for w in words if w[1] in held_out]
random.Random(0).shuffle(val)   # the first rows, which the quickstart asks, from the whole alphabet
for name, rows in (("train", train), ("val", val)):
    with open(os.path.join(out, name + ".jsonl.part"), "w", encoding="utf-8") as f:
        for word, _, gloss in rows:
            f.write(row(word, gloss) + "\n")
    os.replace(os.path.join(out, name + ".jsonl.part"), os.path.join(out, name + ".jsonl"))
PY
echo "make_wordnet_data: $(wc -l < "$out/train.jsonl") training and $(wc -l < "$out/val.jsonl") held-out examples in $out"
