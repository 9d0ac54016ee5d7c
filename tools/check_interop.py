#!/usr/bin/env python3
"""check_interop.py BASE ADAPTER_DIR LOGITS.safetensors [seqcls:NUM_LABELS]
   check_interop.py --cases LIST   (one "BASE ADAPTER_DIR LOGITS [seqcls:N]" a line)

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

With --cases every line is one case, run in this one process (torch starts
once: about ten seconds saved a case); each prints `case K: ... ok` or
`case K: ... FAIL`.

Exit 0 when max |diff| <= 1e-4 (in every case), 1 when it is larger (or the
shapes do not fit), 77 when the reference stack (torch, transformers, peft,
safetensors) is not installed, 2 on bad arguments."""
import sys

try:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
except Exception as e:  # noqa: BLE001 - any import failure means "skip"
    print(f"reference stack not available: {e}")
    sys.exit(77)


def check(base: str, adapter: str, logits_path: str, mode: str | None) -> tuple[bool, str]:
    num_labels = None
    if mode is not None:
        if not mode.startswith("seqcls:"):
            raise ValueError(f"unknown mode {mode!r} (expected seqcls:<num_labels>)")
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
        return False, f"shape mismatch: peft {tuple(out.shape)} vs peft.c {tuple(want.shape)}"
    diff = (out - want).abs().max().item()
    return diff <= 1e-4, f"peft vs peft.c logits: max |diff| = {diff:.3g}"


def main() -> int:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--cases":
        with open(args[1], encoding="utf-8") as fh:
            cases = [line.split() for line in fh if line.strip()]
    elif len(args) in (3, 4):
        cases = [args]
    else:
        print(__doc__)
        return 2
    all_ok = True
    for k, c in enumerate(cases):
        if len(c) not in (3, 4):
            print(f"case {k}: bad line {' '.join(c)!r} FAIL")
            all_ok = False
            continue
        try:
            ok, msg = check(c[0], c[1], c[2], c[3] if len(c) == 4 else None)
        except Exception as e:  # noqa: BLE001 - a case that cannot load fails, with the reason
            ok, msg = False, f"{type(e).__name__}: {e}"
        all_ok &= ok
        print(f"case {k}: {msg} {'ok' if ok else 'FAIL'}", flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
