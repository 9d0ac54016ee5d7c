#!/usr/bin/env python3
"""Writes tests/fixtures/kernels/grads.safetensors: inputs and PyTorch autograd
gradients (computed in float64, stored as float32) for the training kernels,
checked by tests/test_kernels_grad.c (torch_autograd_reference).

    python3 tools/make_kernel_fixtures.py

Tensors (fixed seed):
  attn.*   causal grouped-query attention with a prefix: T=5, P=3, n_head=4,
           n_kv=2, hd=8, scale=1/sqrt(hd). q (T, n_head*hd); k, v (P+T, n_kv*hd),
           rows 0..P-1 the prefix; query t sees key rows 0..P+t. dout is the
           upstream gradient; out, dq, dk, dv the results.
  xent.*   logits (6, 11), targets (6,) int32 with -100 ignored; loss_sum is the
           summed loss, dlogits the gradient of the mean (grad_scale 1/n_counted).
  rms.*    RMSNorm eps=1e-5: x (5, 16), w, dy -> y, dx, dw.
  ln.*     LayerNorm eps=1e-5: x, w, b, dy -> y, dx, dw, db.
  swiglu.* g, u, da (40,) -> a, dg, du.
  gelu.*   x, dy (40,) -> y, dx (tanh approximation).

and tests/fixtures/kernels/flash_attn.safetensors, for tests/test_flash_attn.c:
  causal.* T=66 (two 64-query blocks), P=2, n_head=4, n_kv=2, hd=4: q, k, v,
           dout -> out, lse (n_head, T: each row's log-sum-exp of its scaled
           scores), dq, dk, dv.
  bidir.*  an encoder row of T=66, the first 45 tokens, the rest padding,
           n_head=n_kv=2, hd=4: block-diagonal mask (the tokens see the
           tokens, the padding sees the padding, as the training graph's
           segments do); q, k, v, dout (66, 8) -> out, dq, dk, dv.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "kernels")


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def attention(q, k, v, T, L, H, KV, hd, mask):
    qh = q.view(T, H, hd).transpose(0, 1)
    kh = k.view(L, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
    vh = v.view(L, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
    s = (qh @ kh.transpose(1, 2) / hd ** 0.5).masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ vh).transpose(0, 1).reshape(T, H * hd), s.logsumexp(-1)


def flash_fixtures():
    g = torch.Generator().manual_seed(4321)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    out = {}
    T, P, H, KV, hd = 66, 2, 4, 2, 4
    L = P + T
    q, k, v = leaf(rn(T, H * hd)), leaf(rn(L, KV * hd)), leaf(rn(L, KV * hd))
    dout = rn(T, H * hd)
    mask = torch.arange(L)[None, :] <= (P + torch.arange(T))[:, None]
    o, lse = attention(q, k, v, T, L, H, KV, hd, mask)
    o.backward(dout)
    for n, t in dict(q=q, k=k, v=v, dout=dout, out=o, lse=lse, dq=q.grad, dk=k.grad, dv=v.grad).items():
        out["causal." + n] = t.detach()

    T, NV, H, hd = 66, 45, 2, 4
    q, k, v = leaf(rn(T, H * hd)), leaf(rn(T, H * hd)), leaf(rn(T, H * hd))
    dout = rn(T, H * hd)
    seg = torch.arange(T) >= NV
    o, _ = attention(q, k, v, T, T, H, H, hd, seg[None, :] == seg[:, None])
    o.backward(dout)
    for n, t in dict(q=q, k=k, v=v, dout=dout, out=o, dq=q.grad, dk=k.grad, dv=v.grad).items():
        out["bidir." + n] = t.detach()
    return out


def save(out, name):
    out = {n: (t.to(torch.float32) if t.is_floating_point() else t).contiguous()
           for n, t in out.items()}
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    save_file(out, path, metadata={"generator": "tools/make_kernel_fixtures.py",
                                   "torch": torch.__version__})
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")


def main():
    g = torch.Generator().manual_seed(1234)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    out = {}

    # attention
    T, P, H, KV, hd = 5, 3, 4, 2, 8
    L = P + T
    q, k, v = leaf(rn(T, H * hd)), leaf(rn(L, KV * hd)), leaf(rn(L, KV * hd))
    dout = rn(T, H * hd)
    qh = q.view(T, H, hd).transpose(0, 1)                       # (H, T, hd)
    kh = k.view(L, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
    vh = v.view(L, KV, hd).transpose(0, 1).repeat_interleave(H // KV, 0)
    s = qh @ kh.transpose(1, 2) / hd ** 0.5                      # (H, T, L)
    mask = torch.arange(L)[None, :] <= (P + torch.arange(T))[:, None]
    s = s.masked_fill(~mask, float("-inf"))
    o = (s.softmax(-1) @ vh).transpose(0, 1).reshape(T, H * hd)
    o.backward(dout)
    for n, t in dict(q=q, k=k, v=v, dout=dout, out=o).items():
        out["attn." + n] = t.detach()
    out["attn.dq"], out["attn.dk"], out["attn.dv"] = q.grad, k.grad, v.grad

    # cross-entropy
    logits = leaf(rn(6, 11) * 3)
    targets = torch.tensor([3, -100, 0, 10, -100, 5], dtype=torch.int64)
    loss = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    n_counted = int((targets != -100).sum())
    (loss / n_counted).backward()
    out["xent.logits"] = logits.detach()
    out["xent.targets"] = targets.to(torch.int32)
    out["xent.loss_sum"] = loss.detach().reshape(1)
    out["xent.dlogits"] = logits.grad

    # RMSNorm / LayerNorm
    eps = 1e-5
    x, w, b = leaf(rn(5, 16)), leaf(1 + 0.3 * rn(16)), leaf(0.3 * rn(16))
    dy = rn(5, 16)
    y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w
    y.backward(dy)
    out.update({"rms.x": x.detach(), "rms.w": w.detach(), "rms.dy": dy, "rms.y": y.detach(),
                "rms.dx": x.grad, "rms.dw": w.grad})
    x, w = leaf(x.detach()), leaf(w.detach())
    y = F.layer_norm(x, (16,), w, b, eps)
    y.backward(dy)
    out.update({"ln.x": x.detach(), "ln.w": w.detach(), "ln.b": b.detach(), "ln.dy": dy,
                "ln.y": y.detach(), "ln.dx": x.grad, "ln.dw": w.grad, "ln.db": b.grad})

    # activations
    gg, u, da = leaf(rn(40) * 3), leaf(rn(40)), rn(40)
    a = F.silu(gg) * u
    a.backward(da)
    out.update({"swiglu.g": gg.detach(), "swiglu.u": u.detach(), "swiglu.da": da,
                "swiglu.a": a.detach(), "swiglu.dg": gg.grad, "swiglu.du": u.grad})
    x, dy = leaf(rn(40) * 3), rn(40)
    y = F.gelu(x, approximate="tanh")
    y.backward(dy)
    out.update({"gelu.x": x.detach(), "gelu.dy": dy, "gelu.y": y.detach(), "gelu.dx": x.grad})

    save(out, "grads.safetensors")
    save(flash_fixtures(), "flash_attn.safetensors")


if __name__ == "__main__":
    main()
