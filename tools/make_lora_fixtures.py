#!/usr/bin/env python3
"""Generate the LoRA fixtures used by the peft.c tests (interop, gradients, training).

    python3 tools/make_lora_fixtures.py        # (re)writes tests/fixtures/lora/

Deterministic: running it twice yields byte-identical files. The script re-executes
itself with PYTHONHASHSEED=0 because peft writes `target_modules` (a Python set) into
adapter_config.json as `list(set)`, whose order depends on the string hash seed.

For every case (see tests/fixtures/lora/README.md) it writes
  <case>/adapter/                 peft save_pretrained of the freshly initialised adapter
                                  (lora_A and lora_B re-drawn as 0.1*N(0,1), so B != 0)
  <case>/reference.safetensors    input_ids, labels, loss, logits, merged_logits and one
                                  "<adapter key>.grad" per LoRA tensor
  <case>/train.json               30-step AdamW + cosine/warmup + clipping + 2-way grad
                                  accumulation trajectory from that adapter
  <case>/final_adapter/           save_pretrained after the 30 steps
and, for llama_all, gguf_lora.json: what llama.cpp convert_lora_to_gguf.py (outtype f32)
would write for that adapter (names, GGUF ne shapes, metadata, q/k lora_b permutation).

Requires: torch, transformers (v5), peft, safetensors, numpy. Inputs are the tiny HF
models in tests/fixtures/models/ (made by tools/make_fixtures.py).
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fixture_common import (INIT_SCALE, MASK, MODELS_REL, ROOT, clean_dir, f, load_base,  # noqa: E402,F401
                            make_labels)
from fixture_common import save_peft_adapter as save_adapter  # noqa: E402
from fixture_common import shifted_ce as manual_loss  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "lora"

N_STEPS = 30
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
WARMUP = 5
MAX_NORM = 1.0
ACCUM = 2

CASES = [
    dict(name="llama_all", model="tiny-llama", seed=101,
         lora=dict(r=4, lora_alpha=8, use_rslora=False,
                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    dict(name="llama_qv_rslora", model="tiny-llama", seed=102,
         lora=dict(r=8, lora_alpha=16, use_rslora=True, layers_to_transform=[1],
                   target_modules=["q_proj", "v_proj"])),
    dict(name="gpt2_all", model="tiny-gpt2", seed=103,
         lora=dict(r=4, lora_alpha=8, fan_in_fan_out=True,
                   target_modules=["c_attn", "c_proj", "c_fc"])),
    dict(name="qwen2_qv", model="tiny-qwen2", seed=104,
         lora=dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
]






def adapter_key(param_name: str) -> str:
    """peft parameter name -> key in adapter_model.safetensors (adapter name dropped)."""
    assert ".default." in param_name, param_name
    return param_name.replace(".default.", ".")


def lora_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    out = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert out and all(".lora_A." in n or ".lora_B." in n for n, _ in out), [n for n, _ in out]
    return out








def lr_lambda(step: int) -> float:
    """HF get_cosine_schedule_with_warmup multiplier (num_cycles=0.5), restated."""
    if step < WARMUP:
        return step / max(1, WARMUP)
    progress = (step - WARMUP) / max(1, N_STEPS - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress)))


def replay_step(ws, ms, vs, grads, step, total_norm_torch) -> None:
    """One optimizer step exactly as README.md states it (float64), on accumulated grads."""
    lr = LR * lr_lambda(step)
    total_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    assert abs(total_norm - total_norm_torch) <= 1e-5 * total_norm, (total_norm, total_norm_torch)
    coef = min(1.0, MAX_NORM / (total_norm + 1e-6))
    t = step + 1
    b1, b2 = BETAS
    for w, m, v, g in zip(ws, ms, vs, grads):
        g = g * coef
        w *= 1.0 - lr * WEIGHT_DECAY
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * g * g
        m_hat = m / (1.0 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + EPS
        w -= lr * m_hat / denom




def run_case(case: dict, report: list[str]) -> dict:
    name = case["name"]
    d = OUT / name
    clean_dir(d)
    ref_in = np_load_file(str(ROOT / MODELS_REL / case["model"] / "reference.safetensors"))
    input_ids = ref_in["input_ids"].astype(np.int32)
    assert input_ids.shape == (2, 16)
    labels = make_labels(input_ids)
    ids_t = torch.from_numpy(input_ids.astype(np.int64))
    lab_t = torch.from_numpy(labels.astype(np.int64))

    # ---- build + initialise ------------------------------------------------------------
    torch.manual_seed(0)
    base = load_base(case["model"])
    base_logits = base(input_ids=ids_t, use_cache=False).logits.detach()
    # the models README's logits were computed from the in-memory model; reloading the folder
    # reproduces them to ~5e-6 here (not bit-exact), which is all this sanity check asks
    base_diff = float(np.abs(base_logits.numpy() - ref_in["logits"]).max())
    assert base_diff < 1e-4, f"{name}: base logits moved by {base_diff}"
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **case["lora"])
    model = get_peft_model(base, cfg)
    model.eval()
    gen = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for _, p in lora_params(model):  # named_parameters order (module order, A before B)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * INIT_SCALE)
    save_adapter(model, d / "adapter")

    # ---- reload from disk: the fixture adapter must reproduce the in-memory model -------
    base2 = load_base(case["model"])
    model = PeftModel.from_pretrained(base2, str(d / "adapter"), is_trainable=True)
    model.eval()
    params = lora_params(model)
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    keys = [adapter_key(n) for n, _ in params]
    assert sorted(keys) == sorted(saved), (sorted(keys), sorted(saved))
    for (n, p), k in zip(params, keys):
        assert np.array_equal(p.detach().numpy(), saved[k]), k

    # scaling the C side must use: alpha/r, or alpha/sqrt(r) with use_rslora
    lc = case["lora"]
    want = lc["lora_alpha"] / (math.sqrt(lc["r"]) if lc.get("use_rslora") else lc["r"])
    scal = {mod.scaling["default"] for _, mod in model.named_modules()
            if isinstance(getattr(mod, "scaling", None), dict) and "default" in mod.scaling}
    assert scal == {want}, (scal, want)

    # ---- forward / backward on the whole batch ----------------------------------------
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids_t, labels=lab_t, use_cache=False)
    out.loss.backward()
    logits = out.logits.detach()
    loss = out.loss.detach()
    ml = manual_loss(logits, lab_t)
    assert abs(f(ml) - f(loss)) < 1e-5, (f(ml), f(loss))
    n_counted = int((lab_t[:, 1:] != -100).sum())
    grads = {k + ".grad": p.grad.detach().numpy().copy() for (n, p), k in zip(params, keys)}
    for k, g in grads.items():
        assert g.shape == saved[k[:-5]].shape
        assert np.abs(g).max() > 0, f"{name}: zero gradient {k}"
    max_delta = f((logits - base_logits).abs().max())
    assert max_delta > 1e-2, f"{name}: adapter has no visible effect ({max_delta})"

    # ---- merged model -------------------------------------------------------------------
    with torch.no_grad():
        merged = copy.deepcopy(model).merge_and_unload()
        merged.eval()
        merged_logits = merged(input_ids=ids_t, use_cache=False).logits.detach()
    merge_diff = f((merged_logits - logits).abs().max())
    assert merge_diff < 1e-4, merge_diff
    del merged

    ref = {
        "input_ids": input_ids,
        "labels": labels,
        "loss": np.array([f(loss)], dtype=np.float32),
        "logits": logits.numpy().astype(np.float32),
        "merged_logits": merged_logits.numpy().astype(np.float32),
        **grads,
    }
    np_save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(d / "reference.safetensors"),
                 metadata={"generator": f"tools/make_lora_fixtures.py {name}"})

    # ---- 30-step training trajectory --------------------------------------------------
    model.zero_grad(set_to_none=True)
    model.eval()  # eval even while training: GPT-2's config has attn/resid/embd_pdrop; lora_dropout is 0
    tparams = [p for _, p in params]
    opt = torch.optim.AdamW(tparams, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                            foreach=False, fused=False)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=N_STEPS)
    steps = []
    replay = [p.detach().numpy().astype(np.float64).copy() for p in tparams]  # documented-formula replay
    m_st = [np.zeros_like(w) for w in replay]
    v_st = [np.zeros_like(w) for w in replay]
    for step in range(N_STEPS):
        lr = sched.get_last_lr()[0]
        assert abs(lr - LR * lr_lambda(step)) < 1e-15, (step, lr)
        opt.zero_grad(set_to_none=True)
        micro = []
        for mb in range(ACCUM):
            o = model(input_ids=ids_t[mb:mb + 1], labels=lab_t[mb:mb + 1], use_cache=False)
            (o.loss / ACCUM).backward()
            micro.append(f(o.loss.detach()))
        g = [p.grad.detach().numpy().astype(np.float64) for p in tparams]
        gnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm=MAX_NORM)
        replay_step(replay, m_st, v_st, g, step, f(gnorm))
        opt.step()
        sched.step()
        steps.append({"step": step, "lr": lr, "loss": (micro[0] + micro[1]) / 2.0,
                      "micro_losses": micro, "grad_norm": f(gnorm)})
    model.eval()
    with torch.no_grad():
        final_loss = f(model(input_ids=ids_t, labels=lab_t, use_cache=False).loss)
    save_adapter(model, d / "final_adapter")
    fin = np_load_file(str(d / "final_adapter" / "adapter_model.safetensors"))
    assert sorted(fin) == sorted(saved)
    moved = max(float(np.abs(fin[k] - saved[k]).max()) for k in saved)
    assert moved > 1e-3, moved
    replay_diff = max(float(np.abs(fin[k] - w).max()) for k, w in zip(keys, replay))
    assert replay_diff < 1e-6, f"{name}: README optimizer formulas disagree with torch by {replay_diff}"

    train = {
        "generator": f"tools/make_lora_fixtures.py {name}",
        "start_adapter": "adapter/",
        "final_adapter": "final_adapter/",
        "optimizer": {"type": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "amsgrad": False,
                      "params": "all lora_A/lora_B tensors, one param group"},
        "schedule": {"type": "transformers.get_cosine_schedule_with_warmup", "num_warmup_steps": WARMUP,
                     "num_training_steps": N_STEPS, "num_cycles": 0.5},
        "clip_grad_norm": {"max_norm": MAX_NORM, "norm_type": 2.0, "eps_in_coef": 1e-6},
        "grad_accumulation": {"micro_batches": ACCUM, "micro_batch_rows": [[0], [1]],
                              "backward_of": "micro_loss / 2"},
        "n_steps": N_STEPS,
        "steps": steps,
        "final_full_batch_loss": final_loss,
    }
    (d / "train.json").write_text(json.dumps(train, indent=1) + "\n")

    report.append(f"{name}: loss={f(loss):.6f} (manual {f(ml):.6f}, {n_counted} tokens) "
                  f"|logits-base|max={max_delta:.3f} |merged-logits|max={merge_diff:.2e} "
                  f"n_lora={len(keys)} step0 loss={steps[0]['loss']:.5f} gn={steps[0]['grad_norm']:.4f} "
                  f"step29 loss={steps[-1]['loss']:.5f} final={final_loss:.5f} max|dW|={moved:.4f} "
                  f"replay max|diff|={replay_diff:.1e}")
    return {"keys": keys, "saved": saved, "config": cfg}


# --------------------------------------------------------------------------------------
# what llama.cpp convert_lora_to_gguf.py would write for llama_all
# --------------------------------------------------------------------------------------

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute_rows(w: np.ndarray, n: int) -> np.ndarray:
    """llama.cpp LlamaModel.permute on the row axis (what LoraTorchTensor applies to lora_B)."""
    rows = w.shape[0]
    return w.reshape(n, 2, rows // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_lora_description(info: dict, report: list[str]) -> dict:
    hp = json.loads((ROOT / MODELS_REL / "tiny-llama" / "config.json").read_text())
    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    saved = info["saved"]
    lcfg = json.loads((OUT / "llama_all" / "adapter" / "adapter_config.json").read_text())
    tensors = []
    # the converter walks the adapter's keys in file order (safetensors load_file order),
    # groups A/B by base name and emits "<gguf base>.lora_a" then ".lora_b"
    bases = []
    for k in saved:
        b = k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight").replace(".lora_B.weight", ".weight")
        if b not in bases:
            bases.append(b)
    for b in bases:
        parts = b.split(".")  # model.layers.N.<self_attn|mlp>.<proj>.weight
        bid, mod = int(parts[2]), f"{parts[3]}.{parts[4]}"
        gname = f"blk.{bid}.{HF_TO_GGUF[mod]}.weight"
        a = saved[f"base_model.model.{b[:-len('.weight')]}.lora_A.weight"]
        bm = saved[f"base_model.model.{b[:-len('.weight')]}.lora_B.weight"]
        perm = None
        if mod == "self_attn.q_proj":
            perm = n_head
        elif mod == "self_attn.k_proj":
            perm = n_kv
        # check the algebra the converter relies on: permuting B's rows == permuting (B@A)'s rows
        if perm is not None:
            assert np.allclose(permute_rows(bm, perm) @ a, permute_rows(bm @ a, perm), atol=1e-6)
        for suffix, arr, src, permuted in ((".lora_a", a, "lora_A", False), (".lora_b", bm, "lora_B", perm is not None)):
            tensors.append({
                "name": gname + suffix,
                "hf_key": f"base_model.model.{b[:-len('.weight')]}.{src}.weight",
                "torch_shape": list(arr.shape),
                "ne": list(reversed(arr.shape)),
                "dtype": "F32",
                "rows_permuted": (f"LlamaModel.permute, n={perm}" if permuted else None),
            })
    out = {
        "generator": "tools/make_lora_fixtures.py llama_all",
        "source": "derived by reading llama.cpp convert_lora_to_gguf.py + convert_hf_to_gguf.py "
                  "(LlamaModel) with --outtype f32 and --base tests/fixtures/models/tiny-llama; "
                  "no GGUF file is written here",
        "metadata": {
            "general.architecture": {"type": "STRING", "value": "llama"},
            "general.type": {"type": "STRING", "value": "adapter"},
            "adapter.type": {"type": "STRING", "value": "lora"},
            "adapter.lora.alpha": {"type": "FLOAT32", "value": float(lcfg["lora_alpha"])},
            "general.quantization_version": {"type": "UINT32", "value": 2},
        },
        "metadata_notes": [
            "general.name / general.size_label etc. come from gguf.Metadata (model card / folder name) "
            "and are cosmetic; they are not listed.",
            "No llama.* hyper-parameters (block_count, head counts, rope) and no tokenizer: the LoRA "
            "subclass overrides set_gguf_parameters() and set_vocab(); no general.file_type either.",
            "The rank is not stored: it is ne[1] of lora_a (== ne[0] of lora_b). llama.cpp uses "
            "scale = adapter.lora.alpha / rank * user_scale; use_rslora is NOT represented.",
        ],
        "permutation": {
            "rule": "w.reshape(n, 2, rows//n//2, cols).swapaxes(1, 2).reshape(rows, cols) on lora_b (torch [out, r]); lora_a untouched",
            "attn_q": {"n": n_head}, "attn_k": {"n": n_kv},
            "why": "LoraTorchTensor.reshape keeps A as [1,1,r,in] and reshapes B to [n,2,rows/n/2,r]; "
                   "swapaxes(1,2) only touches B (last dim unchanged), so permute(B@A) = permute(B)@A",
        },
        "tensor_order": "adapter file key order, lora_a then lora_b per base tensor (look tensors up by name)",
        "tensors": tensors,
    }
    report.append(f"gguf_lora.json: {len(tensors)} tensors, alpha={lcfg['lora_alpha']}")
    return out


def main() -> int:
    os.chdir(ROOT)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    infos = {}
    for case in CASES:
        infos[case["name"]] = run_case(case, report)
    desc = gguf_lora_description(infos["llama_all"], report)
    (OUT / "llama_all" / "gguf_lora.json").write_text(json.dumps(desc, indent=1) + "\n")
    for line in report:
        print(line)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"total {total} bytes")
    assert total < 1_500_000
    return 0


if __name__ == "__main__":
    sys.exit(main())
