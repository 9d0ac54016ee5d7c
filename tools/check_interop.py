#!/usr/bin/env python3
"""check_interop.py BASE ADAPTER_DIR LOGITS.safetensors

Loads BASE (an HF folder) with transformers, applies ADAPTER_DIR (written by
peft.c) with HF peft's PeftModel.from_pretrained, runs the `input_ids` stored
in LOGITS.safetensors and compares with its `logits` (computed by peft.c).
Exit 0 when max |diff| <= 1e-4, 1 when it is larger, 77 when the reference
stack (torch, transformers, peft, safetensors) is not installed."""
import sys

try:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
except Exception as e:  # noqa: BLE001 - any import failure means "skip"
    print(f"reference stack not available: {e}")
    sys.exit(77)


def main() -> int:
    base, adapter, logits_path = sys.argv[1:4]
    ref = load_file(logits_path)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ref["input_ids"].long()).logits
    diff = (out - ref["logits"]).abs().max().item()
    print(f"peft vs peft.c logits: max |diff| = {diff:.3g}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
