#!/usr/bin/env python3
"""Writes tests/fixtures/models/tiny-llama3-rope/: tiny-llama's weights (a
symlink) with Llama 3 rope scaling in config.json, and transformers' float32
logits for tiny-llama's reference input_ids. Tests that peft.c applies the
llama3 frequency scaling as transformers does.

    python3 tools/make_rope_scaling_fixture.py
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "tests/fixtures/models/tiny-llama")
DST = os.path.join(ROOT, "tests/fixtures/models/tiny-llama3-rope")


def main() -> None:
    os.makedirs(DST, exist_ok=True)
    with open(os.path.join(SRC, "config.json")) as f:
        cfg = json.load(f)
    # original context 8 < the 16 reference positions, so every band of the
    # scaling (kept, blended, slowed) is exercised
    cfg["rope_parameters"] = {"rope_theta": 50000.0, "rope_type": "llama3", "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8}
    cfg.pop("rope_scaling", None)
    with open(os.path.join(DST, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    link = os.path.join(DST, "model.safetensors")
    if not os.path.lexists(link):
        os.symlink("../tiny-llama/model.safetensors", link)
    model = AutoModelForCausalLM.from_pretrained(DST, dtype=torch.float32).eval()
    ids = load_file(os.path.join(SRC, "reference.safetensors"))["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids.long()).logits.float().contiguous()
        plain = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32).eval()(input_ids=ids.long()).logits
    diff = (logits - plain).abs().max().item()
    print(f"llama3 scaling changes the logits by up to {diff:.3g} (must be clearly non-zero)")
    assert diff > 1e-2
    save_file({"input_ids": ids.contiguous(), "logits": logits}, os.path.join(DST, "reference.safetensors"))


if __name__ == "__main__":
    main()
