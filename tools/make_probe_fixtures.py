#!/usr/bin/env python3
"""Generate the `peft probe` oracle fixtures (tests/fixtures/probe/, read by tests/test_probe.c).

    python3 tools/make_probe_fixtures.py

For tiny-llama and tiny-gpt2 (tests/fixtures/models), on a fixed batch of 4 rows of 16 tokens
with some labels masked (-100), torch autograd gives the gradient of the mean causal-LM loss
(HF's shifted cross-entropy over every unmasked target of the 4 rows: the loss `peft train`
normalises by tokens) with respect to the weight of every linear of every layer, and numpy
its singular values. Written to <model>/reference.safetensors:

  input_ids (4, 16) int32, labels (4, 16) int32, loss (1,) float32
  <module>.grad  (out, in) float32  the weight gradient, as (out, in) also for GPT-2's
                                    Conv1D (whose weight is stored (in, out))
  <module>.sv    (min(in, out),)    its singular values, descending (float64 SVD, stored f32)

<module> is the HF module name ("model.layers.0.self_attn.q_proj", "transformer.h.1.attn.c_attn").
Deterministic (fixed seeds, float32 eager attention, eval mode).
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fixture_common import ROOT, clean_dir, load_base, shifted_ce  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "probe"
B, T = 4, 16
# masked targets: row 0 positions 0..5, row 2 positions 9..15
MASK = {0: range(0, 6), 2: range(9, 16)}


def linears(model, name: str):
    """(module name, weight, conv1d) of every linear inside the blocks, in model order."""
    out = []
    for n, mod in model.named_modules():
        if not (".layers." in n or ".h." in n):
            continue
        w = getattr(mod, "weight", None)
        if w is None or w.dim() != 2:
            continue
        cls = type(mod).__name__
        if cls == "Linear" or cls == "Conv1D":
            out.append((n, w, cls == "Conv1D"))
    assert out, name
    return out


def make(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = load_base(name)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(vocab, 317), size=(B, T)).astype(np.int32)
    labels = ids.copy()
    for r, cols in MASK.items():
        labels[r, list(cols)] = -100
    for p in model.parameters():
        p.requires_grad_(True)
    logits = model(input_ids=torch.from_numpy(ids).long()).logits
    loss = shifted_ce(logits, torch.from_numpy(labels))
    loss.backward()
    tensors = {"input_ids": ids, "labels": labels, "loss": np.array([loss.item()], dtype=np.float32)}
    for n, w, conv in linears(model, name):
        g = w.grad.detach().double().numpy()
        if conv:
            g = g.T  # Conv1D stores (in, out): the probe's G is (out, in)
        sv = np.linalg.svd(g, compute_uv=False)
        tensors[f"{n}.grad"] = np.ascontiguousarray(g.astype(np.float32))
        tensors[f"{n}.sv"] = sv.astype(np.float32)
    d = OUT / name
    clean_dir(d)
    save_file(tensors, str(d / "reference.safetensors"))
    print(f"{name}: loss {loss.item():.6f}, {len(tensors) - 3} tensors")


if __name__ == "__main__":
    make("tiny-llama", 1401)
    make("tiny-gpt2", 1402)
