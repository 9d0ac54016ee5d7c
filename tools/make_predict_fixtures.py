#!/usr/bin/env python3
"""The reference for `peft predict` / peft_classify: tests/fixtures/predict/.

For each case a classifier adapter is trained by peft.c itself (`peft train` on the tiny fixture
model and train.jsonl, a few steps, so that the head and the LoRA weights are no longer their
initial values), and its probabilities on inputs.jsonl are computed by transformers + peft:
AutoModelForSequenceClassification (float32, eager attention, eval mode) wrapped by
PeftModel.from_pretrained on the adapter folder peft.c wrote, each input alone (no padding),
tokenized as tokenizer(text, text_pair, truncation=True), softmax in float64.

    cmake --build build --target peft_cli
    python3 tools/make_predict_fixtures.py [--peft build/peft]

Writes tests/fixtures/predict/{train.jsonl, train_pairs.jsonl, inputs.jsonl, inputs_pairs.jsonl,
<case>/adapter/, expected.json}. The adapters are peft.c's output: rerunning with another build
may change them in the last bits, and expected.json follows them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fixture_common  # noqa: F401  (hermetic: PYTHONHASHSEED=0, offline)
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/predict"
MODELS = "tests/fixtures/models"

# Three classes (0 negative, 1 neutral, 2 positive: tiny-bert's and tiny-roberta's id2label).
TRAIN = [
    ("the film was wonderful and moving", 2), ("a dull, boring movie", 0), ("it was fine I guess", 1),
    ("great acting and a great story", 2), ("terrible plot and worse dialogue", 0), ("nothing special", 1),
    ("I loved every minute", 2), ("a waste of time", 0), ("some parts good, some bad", 1),
    ("brilliant", 2), ("awful", 0), ("okay", 1),
]
TRAIN_PAIRS = [
    ("the cat sat on the mat", "a cat is sitting", 2), ("the cat sat on the mat", "dogs bark loudly", 0),
    ("he plays the guitar", "he makes music", 2), ("he plays the guitar", "maybe he sings too", 1),
    ("it is raining", "the streets are dry", 0), ("it is raining", "people carry umbrellas", 2),
    ("she reads a book", "she might be a student", 1), ("she reads a book", "she is asleep", 0),
]
# Inputs of very different lengths (padding in a batch), one empty-ish, unicode, a label missing.
INPUTS = [
    ("a truly wonderful film", 2), ("boring", 0), ("it was an ordinary afternoon at the cinema, nothing more, "
                                                   "nothing less, and the popcorn was fine", 1),
    ("great", 2), ("Ça m'a beaucoup plu — très émouvant", None), ("worst movie ever made", 0), ("meh", 1),
]
INPUT_PAIRS = [
    ("the cat sat on the mat", "a cat sits", 2), ("it is raining", "the ground is wet and people hurry home", 2),
    ("he plays the guitar", "he is silent", 0), ("she reads", "she may be studying for an exam tomorrow", 1),
    ("short", "a much longer second text that makes this pair the longest input of all", None),
]

# case: (model folder, train file, inputs file, extra train options)
CASES = {
    "bert_pairs": ("tiny-bert", "train_pairs.jsonl", "inputs_pairs.jsonl", []),
    "roberta": ("tiny-roberta", "train.jsonl", "inputs.jsonl", []),
    "llama": ("tiny-llama", "train.jsonl", "inputs.jsonl", []),
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def rows_of(items, pairs: bool) -> list[dict]:
    out = []
    for it in items:
        r = {"text": it[0]}
        if pairs:
            r["text_pair"] = it[1]
        lab = it[-1]
        if lab is not None:
            r["label"] = lab
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peft", default=str(ROOT / "build/peft"))
    args = ap.parse_args()
    os.chdir(ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "train.jsonl", rows_of(TRAIN, False))
    write_jsonl(OUT / "train_pairs.jsonl", rows_of(TRAIN_PAIRS, True))
    write_jsonl(OUT / "inputs.jsonl", rows_of(INPUTS, False))
    write_jsonl(OUT / "inputs_pairs.jsonl", rows_of(INPUT_PAIRS, True))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    expected = {}
    for case, (model, train, inputs, extra) in CASES.items():
        dst = OUT / case / "adapter"
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cmd = [args.peft, "train", "--model", f"{MODELS}/{model}", "--data", str(OUT / train), "--out", str(run),
                   "--steps", "12", "--batch", "4", "--lr", "2e-2", "--r", "4", "--seed", "7", "--threads", "1",
                   "--quiet", *extra]
            subprocess.run(cmd, check=True)
            if dst.exists():
                shutil.rmtree(dst)
            dst.mkdir(parents=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(run / name, dst / name)
            # peft train writes the base's absolute path; the fixture names it from the
            # repository root, where the tests run, so that `--adapter` alone finds it
            cfg_path = dst / "adapter_config.json"
            text = cfg_path.read_text()
            text = text.replace(json.dumps(str(ROOT / MODELS / model)), json.dumps(f"{MODELS}/{model}"))
            assert f'"{MODELS}/{model}"' in text, "base_model_name_or_path not rewritten"
            cfg_path.write_text(text)
        tok = AutoTokenizer.from_pretrained(f"{MODELS}/{model}")
        cfg = json.loads((dst / "adapter_config.json").read_text())
        base = AutoModelForSequenceClassification.from_pretrained(
            f"{MODELS}/{model}", num_labels=cfg.get("num_labels", 3), dtype=torch.float32,
            attn_implementation="eager")
        net = PeftModel.from_pretrained(base, str(dst))
        net.eval()
        probs = []
        for line in (OUT / inputs).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            enc = tok(r["text"], r.get("text_pair"), truncation=True, return_tensors="pt")
            with torch.no_grad():
                logits = net(**enc).logits[0].double()
            probs.append([float(x) for x in torch.softmax(logits, -1)])
        expected[case] = {"model": f"{MODELS}/{model}", "inputs": f"tests/fixtures/predict/{inputs}",
                          "adapter": f"tests/fixtures/predict/{case}/adapter", "probs": probs}
        print(f"{case}: {len(probs)} inputs; argmax {[max(range(len(p)), key=p.__getitem__) for p in probs]}")
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
