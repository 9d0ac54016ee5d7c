#!/usr/bin/env python3
"""heldout_eval.py — the quickstart's measure on held-out chat examples,
before or after fine-tuning, and the comparison of the two.

    python3 scripts/heldout_eval.py --model M [--adapter DIR] --data val.jsonl
        [--n 16] [--max-tokens 32] [--out result.json] [--before result.json]

--data is chat JSONL ({"messages": [user, assistant]}). Two numbers:
  loss    `peft eval` over every row: mean loss per answer token (the
          assistant turn; the prompt is context) and its perplexity;
  ROUGE-L the first --n user turns asked through `peft generate --chat`
          (greedy), each answer scored against the assistant turn by ROUGE-L
          F1 on lower-cased words (longest common subsequence of words, as
          rouge-score computes it without stemming), averaged.
--out writes both with every answer; --before FILE (an earlier --out) prints
the two side by side and a few answers next to the reference.
Only the Python standard library.
"""
import argparse
import json
import re
import subprocess
import sys


def words(s):
    return re.findall(r"[a-z0-9]+", s.lower())


def rouge_l(answer, reference):
    a, r = words(answer), words(reference)
    if not a or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, q = lcs / len(a), lcs / len(r)
    return 2 * p * q / (p + q)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("heldout_eval: %s failed:\n%s" % (" ".join(cmd), p.stderr.strip()))
    return p.stdout


def measure(a):
    adapter = ["--adapter", a.adapter] if a.adapter else []
    ev = json.loads(run([a.peft, "eval", "--model", a.model, *adapter, "--data", a.data, "--seq", "128", "--json"]))
    rows = []
    with open(a.data, encoding="utf-8") as f:
        for line in f:
            if len(rows) == a.n:
                break
            m = json.loads(line)["messages"]
            rows.append((m[0]["content"], m[1]["content"]))
    answers = []
    for prompt, ref in rows:
        out = run([a.peft, "generate", "--model", a.model, *adapter, "--chat", "--prompt", prompt,
                   "--max-tokens", str(a.max_tokens), "--no-echo"])
        answer = " ".join(out.split())
        answers.append({"prompt": prompt, "reference": ref, "answer": answer, "rouge_l": round(rouge_l(answer, ref), 4)})
        if not a.quiet:
            print("  %.2f  %s  %s" % (answers[-1]["rouge_l"], prompt, answer[:90] + ("..." if len(answer) > 90 else "")),
                  flush=True)
    n = max(1, len(answers))
    return {
        "adapter": a.adapter,
        "loss": ev["loss"], "perplexity": ev["perplexity"], "loss_examples": ev["examples"], "loss_tokens": ev["tokens"],
        "rouge_l": sum(x["rouge_l"] for x in answers) / n, "n": len(answers),
        "answer_words": sum(len(words(x["answer"])) for x in answers) / n,
        "reference_words": sum(len(words(x["reference"])) for x in answers) / n,
        "answers": answers,
    }


def compare(before, after, show):
    rows = [
        ("loss per answer token (peft eval, %d words)" % after["loss_examples"], "%.3f", "loss"),
        ("perplexity", "%.1f", "perplexity"),
        ("ROUGE-L F1 vs WordNet's gloss (%d greedy answers)" % after["n"], "%.3f", "rouge_l"),
        ("answer length in words (the glosses: %.1f)" % after["reference_words"], "%.1f", "answer_words"),
    ]
    width = max(len(r[0]) for r in rows)
    print("held-out words: in no training example, not even under a synonym")
    print("  %-*s %8s %8s" % (width, "", "before", "after"))
    for label, fmt, key in rows:
        print("  %-*s %8s %8s" % (width, label, fmt % before[key], fmt % after[key]))
    for b, x in list(zip(before["answers"], after["answers"]))[:show]:
        print()
        print("  %s" % x["prompt"])
        print("    WordNet: %s" % x["reference"])
        print("    before:  %s" % (b["answer"][:110] + ("..." if len(b["answer"]) > 110 else "")))
        print("    after:   %s" % x["answer"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=16, help="prompts to answer (default 16)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--peft", default="build/peft")
    ap.add_argument("--out", help="write the result (JSON)")
    ap.add_argument("--before", help="an earlier --out to compare with")
    ap.add_argument("--show", type=int, default=4, help="answers shown with --before (default 4)")
    ap.add_argument("--quiet", action="store_true", help="no line per answer")
    a = ap.parse_args()
    r = measure(a)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(r, f, ensure_ascii=False, indent=1)
    print("held-out: loss %.4f per answer token (perplexity %.2f) on %d examples; ROUGE-L F1 %.3f on %d answers"
          % (r["loss"], r["perplexity"], r["loss_examples"], r["rouge_l"], r["n"]))
    if a.before:
        with open(a.before, encoding="utf-8") as f:
            before = json.load(f)
        print()
        compare(before, r, a.show)


if __name__ == "__main__":
    main()
