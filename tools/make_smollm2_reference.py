#!/usr/bin/env python3
"""Reference logits for the real-model test: SmolLM2-135M-Instruct (Q4_1 GGUF).

    python3 tools/make_smollm2_reference.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

The GGUF defaults to models/SmolLM2-135M-Instruct.Q4_1.gguf (git-ignored; the
test skips when it is absent). transformers loads the GGUF itself and
dequantizes every tensor to f32, so the reference runs on exactly the
dequantized weights that peft.c sees; the forward then runs in f32 (eval, full
causal attention, no cache).

Writes tests/fixtures/smollm2/reference.json: for each of 4 fixed prompts
(two plain text, two through the tokenizer's chat template with
add_generation_prompt=True) the exact input_ids, and at the last position the
top-128 token ids with their logits, the argmax id, the logsumexp over the full
vocabulary, and the greedy continuation of 16 tokens (argmax each step,
recomputed from scratch, not stopped at EOS).

Deterministic: the output depends only on the GGUF and the library versions
(recorded in the file).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "smollm2" / "reference.json"

TOP_K = 128
N_GREEDY = 16

PLAIN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
]


def main() -> int:
    gguf_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    if not gguf_path.is_file():
        print(f"error: {gguf_path} not found", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    d, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()

    cases = []
    for text in PLAIN_PROMPTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({"kind": "plain", "text": text, "input_ids": list(map(int, ids))})
    for msgs in CHAT_PROMPTS:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {"kind": "chat", "messages": msgs, "text": text, "input_ids": list(map(int, ids))}
        )

    with torch.no_grad():
        for c in cases:
            ids = torch.tensor([c["input_ids"]], dtype=torch.long)
            logits = model(input_ids=ids, use_cache=False).logits[0, -1].double()
            top = torch.topk(logits, TOP_K)
            c["top_ids"] = [int(i) for i in top.indices]
            c["top_logits"] = [round(float(v), 5) for v in top.values]
            c["argmax"] = int(torch.argmax(logits))
            c["logsumexp"] = round(float(torch.logsumexp(logits, 0)), 6)
            seq = list(c["input_ids"])
            greedy = []
            for _ in range(N_GREEDY):
                out = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
                nxt = int(torch.argmax(out))
                greedy.append(nxt)
                seq.append(nxt)
            c["greedy"] = greedy
            c["greedy_text"] = tok.decode(greedy)
            print(f"{c['kind']:5s} n={len(c['input_ids']):3d} argmax={c['argmax']:6d} "
                  f"lse={c['logsumexp']:.4f} -> {c['greedy_text']!r}")

    cfg = model.config
    doc = {
        "model": name,
        "generator": "tools/make_smollm2_reference.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "dtype": "float32 (GGUF tensors dequantized by transformers)",
        "vocab_size": int(cfg.vocab_size),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "top_k": TOP_K,
        "n_greedy": N_GREEDY,
        "notes": "logits at the last prompt position; greedy = argmax continuation, "
                 "full recompute each step, not stopped at EOS",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
