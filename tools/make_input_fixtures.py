"""Model inputs as Hugging Face tokenizers make them for training and embedding:
tokenizer(a, b, truncation=True, max_length=m) on the tiny BERT, RoBERTa and Llama
fixtures' tokenizer.json, for single texts and pairs, with and without truncation.

Writes tests/fixtures/tokenizer/inputs.json:
  {"<model>": [{"a", "b" (or null), "max_length" (0 = none), "ids", "type_ids"}]}
type_ids are all 0 where the tokenizer returns none (RoBERTa, Llama).
Run from the repository root: python3 tools/make_input_fixtures.py
"""
import json
import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from transformers import AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["tiny-bert", "tiny-roberta", "tiny-llama"]
TEXTS = [
    ("A man is playing a guitar.", "Someone is playing music."),
    ("hello world", "second one"),
    ("a b c d e f g h", "i j"),
    ("short", "a much longer second text that will be cut first"),
    ("Café naïve ÉCOLE", "北京 emoji 🙂 [SEP] inside"),
    ("", "only the second"),
    ("equal len text", "same size here"),
]
LENGTHS = [0, 6, 9, 12]


def main():
    out = {}
    for name in MODELS:
        tok = AutoTokenizer.from_pretrained(str(ROOT / "tests/fixtures/models" / name))
        pairs = name != "tiny-llama"   # the Llama template has no pair form here
        cases = []
        for a, b in TEXTS:
            for bb in ([None, b] if pairs else [None]):
                for m in LENGTHS:
                    kw = {"truncation": True, "max_length": m} if m else {}
                    e = tok(a, bb, **kw) if bb is not None else tok(a, **kw)
                    ids = e["input_ids"]
                    if m and len(ids) > m:
                        continue   # the template alone does not fit: peft.c refuses it
                    cases.append({"a": a, "b": bb, "max_length": m, "ids": ids,
                                  "type_ids": e.get("token_type_ids", [0] * len(ids))})
        out[name] = cases
    path = ROOT / "tests/fixtures/tokenizer/inputs.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(path, sum(len(v) for v in out.values()), "cases")


if __name__ == "__main__":
    main()
