#!/usr/bin/env python3
"""check_interop.py BASE ADAPTER_DIR LOGITS.safetensors [seqcls:NUM_LABELS]

Loads BASE (an HF folder) with transformers, applies ADAPTER_DIR (written by
peft.c) with HF peft's PeftModel.from_pretrained, runs the `input_ids` stored
in LOGITS.safetensors (with its `attention_mask`, when it has one) and compares
with its `logits` (computed by peft.c).

- Causal LM (default): logits are (B, T, V). For prompt tuning peft returns
  P + T rows (the P virtual tokens come first); only the last T rows are
  compared, so peft.c's file may hold either the T real rows or all P + T.
- `seqcls:NUM_LABELS`: BASE is loaded with AutoModelForSequenceClassification
  (num_labels=NUM_LABELS) and the pooled logits (B, NUM_LABELS) are compared.
  The classification head comes from the adapter (modules_to_save `score`).

Exit 0 when max |diff| <= 1e-4, 1 when it is larger (or the shapes do not fit),
77 when the reference stack (torch, transformers, peft, safetensors) is not
installed, 2 on bad arguments."""
import sys

try:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
except Exception as e:  # noqa: BLE001 - any import failure means "skip"
    print(f"reference stack not available: {e}")
    sys.exit(77)


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__)
        return 2
    base, adapter, logits_path = sys.argv[1:4]
    num_labels = None
    if len(sys.argv) == 5:
        mode = sys.argv[4]
        if not mode.startswith("seqcls:"):
            print(f"unknown mode {mode!r} (expected seqcls:<num_labels>)")
            return 2
        num_labels = int(mode.split(":", 1)[1])
    ref = load_file(logits_path)
    if num_labels is None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(base, dtype=torch.float32,
                                                                   num_labels=num_labels)
    model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    kwargs = {"input_ids": ref["input_ids"].long()}
    if "attention_mask" in ref:
        kwargs["attention_mask"] = ref["attention_mask"].long()
    with torch.no_grad():
        out = model(**kwargs).logits
    want = ref["logits"].float()
    if num_labels is None and out.dim() == 3 and want.dim() == 3 and out.shape[1] > want.shape[1]:
        out = out[:, out.shape[1] - want.shape[1]:, :]  # prompt tuning: drop the virtual-token rows
    if tuple(out.shape) != tuple(want.shape):
        print(f"shape mismatch: peft {tuple(out.shape)} vs peft.c {tuple(want.shape)}")
        return 1
    diff = (out - want).abs().max().item()
    print(f"peft vs peft.c logits: max |diff| = {diff:.3g}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
