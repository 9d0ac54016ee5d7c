#!/usr/bin/env python3
"""Generate the fixtures for the non-LoRA fine-tuning methods (and DoRA, sequence
classification) used by the peft.c tests.

    python3 tools/make_method_fixtures.py      # (re)writes tests/fixtures/methods/

Deterministic: running it twice yields byte-identical files. Like make_lora_fixtures.py it
re-executes itself with PYTHONHASHSEED=0, because peft writes `target_modules` (a Python
set) into adapter_config.json as `list(set)`.

Per case (see tests/fixtures/methods/README.md for the formulas, keys and shapes):
  <case>/adapter/               the adapter with non-trivial trainable values: peft
                                save_pretrained output for the HF-peft methods, or files
                                written here for BOTTLENECK / BITFIT (no adapter for full)
  <case>/reference.safetensors  input_ids, labels / cls_labels, [attention_mask], loss,
                                logits and one "<adapter key>.grad" per trainable tensor

Besides producing the references the script checks the README's formulas: every method
is re-implemented here from the documented formula alone (forward hooks on the plain HF
model, or a from-scratch llama / GPT-2 forward for the prompt / prefix cases) and must
reproduce peft's logits (and, for DoRA, its gradients).

Requires: torch, transformers (v5), peft, safetensors, numpy. Inputs are the tiny HF
models in tests/fixtures/models/ (made by tools/make_fixtures.py).
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from fixture_common import (INIT_SCALE, MASK, MODELS_REL, ROOT, clean_dir, f,  # noqa: E402,F401
                            make_labels, save_peft_adapter, shifted_ce)
from fixture_common import load_base as load_causal  # noqa: E402
from peft import (IA3Config, LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig,  # noqa: E402
                  PromptTuningConfig, get_peft_model, set_peft_model_state_dict)
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402
from transformers import DynamicCache  # noqa: E402

warnings.filterwarnings("ignore")

OUT = ROOT / "tests" / "fixtures" / "methods"

PAD_ID = 317
PAD_REPLACEMENT = 5
CLS_LABELS = [1, 2]
NUM_LABELS = 3
P_VIRT = 4  # virtual tokens for prompt / prefix tuning
BN_REDUCTION = 8

LLAMA_DORA = dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"])
GPT2_DORA = dict(r=4, lora_alpha=8, use_dora=True, target_modules=["c_attn"], fan_in_fan_out=True)

CASES = [
    dict(name="dora_llama", model="tiny-llama", kind="dora", seed=201, lora=LLAMA_DORA),
    dict(name="dora_gpt2", model="tiny-gpt2", kind="dora", seed=202, lora=GPT2_DORA),
    dict(name="ia3_llama", model="tiny-llama", kind="ia3", seed=203),
    dict(name="ia3_gpt2", model="tiny-gpt2", kind="ia3", seed=204),
    dict(name="ia3_qwen2", model="tiny-qwen2", kind="ia3", seed=205),
    dict(name="prompt_llama", model="tiny-llama", kind="prompt", seed=206),
    dict(name="prompt_gpt2", model="tiny-gpt2", kind="prompt", seed=207),
    dict(name="prefix_llama", model="tiny-llama", kind="prefix", seed=208),
    dict(name="prefix_gpt2", model="tiny-gpt2", kind="prefix", seed=209),
    dict(name="prefix_proj_llama", model="tiny-llama", kind="prefix_proj", seed=210),
    dict(name="bottleneck_pfeiffer_llama", model="tiny-llama", kind="bottleneck", seed=211, style="pfeiffer"),
    dict(name="bottleneck_houlsby_llama", model="tiny-llama", kind="bottleneck", seed=212, style="houlsby"),
    dict(name="bottleneck_pfeiffer_gpt2", model="tiny-gpt2", kind="bottleneck", seed=213, style="pfeiffer"),
    dict(name="bottleneck_houlsby_gpt2", model="tiny-gpt2", kind="bottleneck", seed=214, style="houlsby"),
    dict(name="bitfit_gpt2", model="tiny-gpt2", kind="bitfit", seed=215),
    dict(name="bitfit_qwen2", model="tiny-qwen2", kind="bitfit", seed=216),
    dict(name="full_llama", model="tiny-llama", kind="full", seed=217),
    dict(name="seqcls_lora_llama", model="tiny-llama", kind="seqcls_lora", seed=218),
    dict(name="seqcls_lora_gpt2", model="tiny-gpt2", kind="seqcls_lora", seed=219),
    dict(name="seqcls_prompt_llama", model="tiny-llama", kind="seqcls_prompt", seed=220),
]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------



def load_base(model: str, seqcls: bool = False) -> torch.nn.Module:
    if not seqcls:
        return load_causal(model)
    torch.manual_seed(0)  # the un-saved base `score` init; overridden by modules_to_save
    m = AutoModelForSequenceClassification.from_pretrained(
        f"{MODELS_REL}/{model}", num_labels=NUM_LABELS, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m






def write_json(path: Path, obj) -> None:
    # the layout peft uses for adapter_config.json (indent 2, sorted keys, no trailing newline)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def save_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    np_save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)






def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def randomize(params, seed: int) -> None:
    """One generator per case, named_parameters() order. LoRA A/B, prompt/prefix tables,
    prefix MLP, classifier head: 0.1*randn. IA3: 1 + 0.1*randn. DoRA m: m * (1 + 0.1*randn)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in params:
            z = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "lora_magnitude_vector" in n:
                p.copy_(p * (1.0 + INIT_SCALE * z))
            elif ".ia3_l." in n:
                p.copy_(1.0 + INIT_SCALE * z)
            else:
                p.copy_(INIT_SCALE * z)


def peft_key(name: str, proj: bool = False) -> str:
    """peft parameter name -> key in adapter_model.safetensors (or, with proj, the
    reference.safetensors name of a prefix-projection parameter, which is not saved)."""
    if name == "prompt_encoder.default.embedding.weight" and not proj:
        return "prompt_embeddings"
    if name.startswith("prompt_encoder.default."):
        return "prefix_encoder." + name[len("prompt_encoder.default."):]
    if ".modules_to_save.default." in name:
        return name.replace(".modules_to_save.default.", ".")
    if name.endswith(".lora_magnitude_vector.default.weight"):
        return name[: -len(".default.weight")]
    if name.endswith(".ia3_l.default"):
        return name[: -len(".default")]
    assert ".default." in name, name
    return name.replace(".default.", ".")


def max_diff(a, b) -> float:
    a = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    b = b.detach() if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b))
    return f((a.double() - b.double()).abs().max())


def layer_prefix(model_name: str, layer: int) -> str:
    return f"transformer.h.{layer}" if "gpt2" in model_name else f"model.layers.{layer}"


def n_layers(base) -> int:
    return base.config.num_hidden_layers


# ---------------------------------------------------------------------------------------
# independent forward passes (README formulas), for the prompt / prefix checks
# ---------------------------------------------------------------------------------------

def manual_llama(base, emb: torch.Tensor, pos0: int, prefix=None) -> torch.Tensor:
    """From-scratch llama/qwen2 forward. emb: (B,S,d) input embeddings; the S rows get
    RoPE positions pos0..pos0+S-1. prefix: per layer (K, V), each (B, Hkv, P, hd), used
    as-is (no RoPE), visible to every query. Returns logits (B,S,V)."""
    cfg = base.config
    H, Hkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    theta = cfg.rope_parameters["rope_theta"]
    B, S, d = emb.shape
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    pos = torch.arange(pos0, pos0 + S, dtype=torch.float32)
    ang = pos[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):  # x (B, h, S, hd)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    m = base.model
    h = emb
    for li, layer in enumerate(m.layers):
        at = layer.self_attn
        x = rms(h, layer.input_layernorm.weight)
        q = at.q_proj(x).view(B, S, H, hd).transpose(1, 2)
        k = at.k_proj(x).view(B, S, Hkv, hd).transpose(1, 2)
        v = at.v_proj(x).view(B, S, Hkv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        P = 0
        if prefix is not None:
            pk, pv = prefix[li]
            P = pk.shape[2]
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        rep = H // Hkv  # query head j uses kv head j // rep
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        sc = q @ k.transpose(-1, -2) / math.sqrt(hd)
        allowed = torch.ones(S, P + S, dtype=torch.bool)
        allowed[:, P:] = torch.tril(torch.ones(S, S, dtype=torch.bool))
        sc = sc.masked_fill(~allowed, float("-inf"))
        o = (sc.softmax(-1) @ v).transpose(1, 2).reshape(B, S, H * hd)
        h = h + at.o_proj(o)
        x = rms(h, layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    h = rms(h, m.norm.weight)
    return base.lm_head(h)


def manual_gpt2(base, emb: torch.Tensor, pos0: int, prefix=None) -> torch.Tensor:
    """From-scratch GPT-2 forward; emb are token embeddings (wte rows, no positions); row s
    gets wpe[pos0 + s]. prefix: per layer (K, V), each (B, H, P, hd)."""
    cfg = base.config
    H, d = cfg.n_head, cfg.n_embd
    hd = d // H
    tr = base.transformer
    B, S, _ = emb.shape
    h = emb + tr.wpe.weight[pos0:pos0 + S][None]

    def ln(x, mod):
        return F.layer_norm(x, (d,), mod.weight, mod.bias, cfg.layer_norm_epsilon)

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    for li, blk in enumerate(tr.h):
        x = ln(h, blk.ln_1)
        qkv = x @ blk.attn.c_attn.weight + blk.attn.c_attn.bias  # Conv1D: weight is [in, out]
        q, k, v = (t.view(B, S, H, hd).transpose(1, 2) for t in qkv.split(d, -1))
        P = 0
        if prefix is not None:
            pk, pv = prefix[li]
            P = pk.shape[2]
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        sc = q @ k.transpose(-1, -2) / math.sqrt(hd)
        allowed = torch.ones(S, P + S, dtype=torch.bool)
        allowed[:, P:] = torch.tril(torch.ones(S, S, dtype=torch.bool))
        sc = sc.masked_fill(~allowed, float("-inf"))
        o = (sc.softmax(-1) @ v).transpose(1, 2).reshape(B, S, d)
        h = h + (o @ blk.attn.c_proj.weight + blk.attn.c_proj.bias)
        x = ln(h, blk.ln_2)
        u = gelu_new(x @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias)
        h = h + (u @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias)
    h = ln(h, tr.ln_f)
    return base.lm_head(h)


def manual_forward(base, emb, pos0, prefix=None):
    if base.config.model_type == "gpt2":
        return manual_gpt2(base, emb, pos0, prefix)
    return manual_llama(base, emb, pos0, prefix)


def word_embeddings(base):
    return base.get_input_embeddings()


def prefix_table_to_kv(table: torch.Tensor, L: int, Hkv: int, hd: int, B: int):
    """README layout: row p of the (P, L*2*Hkv*hd) table; layer l's key for kv head h, dim j
    is column ((2*l + 0)*Hkv + h)*hd + j, its value column ((2*l + 1)*Hkv + h)*hd + j."""
    P = table.shape[0]
    t = table.view(P, L, 2, Hkv, hd)
    out = []
    for l in range(L):
        k = t[:, l, 0].permute(1, 0, 2)[None].expand(B, Hkv, P, hd)  # (B, Hkv, P, hd)
        v = t[:, l, 1].permute(1, 0, 2)[None].expand(B, Hkv, P, hd)
        out.append((k, v))
    return out


# ---------------------------------------------------------------------------------------
# HF-peft cases
# ---------------------------------------------------------------------------------------

def peft_config_for(case: dict):
    kind = case["kind"]
    if kind == "dora":
        return LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **case["lora"])
    if kind == "ia3":
        return IA3Config(task_type="CAUSAL_LM")  # target / feedforward modules: peft's defaults
    if kind == "prompt":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P_VIRT, prompt_tuning_init="RANDOM")
    if kind == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P_VIRT, prefix_projection=False)
    if kind == "prefix_proj":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P_VIRT, prefix_projection=True,
                                  encoder_hidden_size=32)
    if kind == "seqcls_lora":
        return LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                          target_modules=["q_proj", "v_proj"] if "llama" in case["model"] else ["c_attn"],
                          fan_in_fan_out="gpt2" in case["model"])
    if kind == "seqcls_prompt":
        return PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P_VIRT, prompt_tuning_init="RANDOM")
    raise ValueError(kind)


def seqcls_batch(input_ids: np.ndarray, pad: bool):
    ids = input_ids.astype(np.int32).copy()
    replaced = [(int(b), int(t)) for b, t in zip(*np.nonzero(ids == PAD_ID))]
    ids[ids == PAD_ID] = PAD_REPLACEMENT
    mask = np.ones_like(ids, dtype=np.int32)
    if pad:
        ids[1, 12:] = PAD_ID
        mask[1, 12:] = 0
    return ids, mask, replaced


def run_peft_case(case: dict, d: Path, input_ids: np.ndarray, notes: dict) -> dict:
    kind = case["kind"]
    seqcls = kind.startswith("seqcls")
    cfg = peft_config_for(case)
    ref: dict[str, np.ndarray] = {}

    if seqcls:
        ids, mask, replaced = seqcls_batch(input_ids, pad=(kind == "seqcls_lora"))
        notes["replaced_pad_ids"] = replaced
        ref["input_ids"] = ids
        if kind == "seqcls_lora":
            ref["attention_mask"] = mask
        ref["cls_labels"] = np.array(CLS_LABELS, dtype=np.int32)
    else:
        ids = input_ids.astype(np.int32)
        ref["input_ids"] = ids
        ref["labels"] = make_labels(ids)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    mask_t = torch.from_numpy(ref["attention_mask"].astype(np.int64)) if "attention_mask" in ref else None
    lab_t = (torch.tensor(CLS_LABELS, dtype=torch.int64) if seqcls
             else torch.from_numpy(ref["labels"].astype(np.int64)))

    # ---- build, randomise, save --------------------------------------------------------
    base0 = load_base(case["model"], seqcls)
    with torch.no_grad():
        base_logits = base0(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits.detach().clone()
    model = get_peft_model(base0, cfg)
    model.eval()
    if kind == "dora":
        # magnitude at creation, before randomisation: ||W||_row (B = 0 then)
        m0 = {n: p.detach().clone() for n, p in trainable(model) if "lora_magnitude_vector" in n}
    randomize(trainable(model), case["seed"])
    mem_params = {n: p.detach().clone() for n, p in trainable(model)}
    save_peft_adapter(model, d / "adapter")
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    acfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    notes["adapter_config"] = {k: acfg[k] for k in sorted(acfg) if k in (
        "target_modules", "feedforward_modules", "fan_in_fan_out", "num_virtual_tokens", "token_dim",
        "num_attention_heads", "num_layers", "num_transformer_submodules", "encoder_hidden_size",
        "prefix_projection", "modules_to_save", "inference_mode", "task_type", "use_dora", "r", "lora_alpha")}
    notes["saved_keys"] = {k: list(v.shape) for k, v in saved.items()}

    # ---- reload as a trainable model ----------------------------------------------------
    # peft refuses PeftModel.from_pretrained(..., is_trainable=True) for every prompt-learning
    # method, so those are rebuilt from the saved config (inference_mode off) + the saved
    # state dict; prefix_projection=True cannot be rebuilt at all (the file holds the
    # projected table, not the MLP), so that case stays on the in-memory model.
    is_prompt = kind in ("prompt", "prefix", "prefix_proj", "seqcls_prompt")
    if is_prompt:
        try:
            PeftModel.from_pretrained(load_base(case["model"], seqcls), str(d / "adapter"), is_trainable=True)
            notes["from_pretrained_is_trainable"] = "worked"
        except Exception as e:  # noqa: BLE001
            notes["from_pretrained_is_trainable"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rcfg = PeftConfig.from_pretrained(str(d / "adapter"))
        rcfg.inference_mode = False
        fresh = get_peft_model(load_base(case["model"], seqcls), rcfg)
        try:
            set_peft_model_state_dict(fresh, {k: torch.from_numpy(v) for k, v in saved.items()})
            notes["trainable_rebuild"] = "worked"
        except Exception as e:  # noqa: BLE001
            notes["trainable_rebuild"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if kind == "prefix_proj":
            assert notes["trainable_rebuild"] != "worked"
            table = saved["prompt_embeddings"]
            with torch.no_grad():
                pe = model.prompt_encoder["default"]
                proj = pe.transform(pe.embedding.weight).numpy()
            assert np.array_equal(table, proj), "saved prompt_embeddings != MLP(embedding)"
        else:
            assert notes["trainable_rebuild"] == "worked", notes["trainable_rebuild"]
            model = fresh
            model.eval()
    else:
        model = PeftModel.from_pretrained(load_base(case["model"], seqcls), str(d / "adapter"), is_trainable=True)
        model.eval()
    params = trainable(model)
    assert [n for n, _ in params] == list(mem_params), ([n for n, _ in params], list(mem_params))
    for n, p in params:
        assert torch.equal(p.detach(), mem_params[n]), n
        k = peft_key(n)
        if kind != "prefix_proj":
            assert np.array_equal(p.detach().numpy(), saved[k]), k

    # ---- forward / backward --------------------------------------------------------------
    table_out = {}
    hook = None
    if kind == "prefix_proj":
        def keep(_mod, _inp, out):
            out.retain_grad()
            table_out["t"] = out
        hook = model.prompt_encoder["default"].register_forward_hook(keep)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids_t, attention_mask=mask_t, labels=lab_t, use_cache=False)
    out.loss.backward()
    if hook is not None:
        hook.remove()
    loss = out.loss.detach()
    with torch.no_grad():
        logits = model(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits.detach()
    assert torch.equal(logits, out.logits.detach()), "logits with / without labels differ"

    # loss restated
    if seqcls:
        ml = F.cross_entropy(logits.double(), lab_t)
    elif kind == "prompt":
        ext = torch.cat([torch.full((ids_t.shape[0], P_VIRT), -100, dtype=torch.int64), lab_t], 1)
        ml = shifted_ce(logits, ext)
        notes["counted_predictions"] = int((ext[:, 1:] != -100).sum())
    else:
        ml = shifted_ce(logits, lab_t)
        notes["counted_predictions"] = int((lab_t[:, 1:] != -100).sum())
    assert abs(f(ml) - f(loss)) < 1e-5, (f(ml), f(loss))

    grads = {}
    for n, p in params:
        k = peft_key(n, kind == "prefix_proj")
        g = p.grad.detach().numpy().copy()
        assert np.abs(g).max() > 0, f"zero gradient {k}"
        grads[k + ".grad"] = g
    if kind == "prefix_proj":
        g = table_out["t"].grad.detach().sum(0).numpy().copy()  # summed over the batch copies
        grads["prompt_embeddings.grad"] = g
        for n, p in params:
            ref["init." + peft_key(n, True)] = p.detach().numpy().copy()

    ref["loss"] = np.array([f(loss)], dtype=np.float32)
    ref["logits"] = logits.numpy().astype(np.float32)
    ref.update(grads)
    notes["loss"] = f(loss)
    notes["logits_shape"] = list(logits.shape)
    if logits.shape == base_logits.shape:
        notes["delta_vs_base"] = max_diff(logits, base_logits)
    else:
        notes["delta_vs_base"] = max_diff(logits[:, -base_logits.shape[1]:], base_logits)
    assert notes["delta_vs_base"] > 1e-2, notes["delta_vs_base"]

    # ---- round trip: plain (inference-mode) reload gives the same logits ----------------
    rt = PeftModel.from_pretrained(load_base(case["model"], seqcls), str(d / "adapter"))
    rt.eval()
    with torch.no_grad():
        rt_logits = rt(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits
    notes["roundtrip_max_diff"] = max_diff(rt_logits, logits)
    assert notes["roundtrip_max_diff"] < 1e-5, notes["roundtrip_max_diff"]

    # ---- README formulas restated --------------------------------------------------------
    checks = {"dora": check_dora, "ia3": check_ia3, "prompt": check_prompt, "prefix": check_prefix,
              "prefix_proj": check_prefix, "seqcls_lora": check_seqcls, "seqcls_prompt": check_seqcls}
    checks[kind](case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes)
    if kind == "dora":
        # the saved magnitude: m = ||W||_row (at creation) * (1 + 0.1 z)
        for n, v in m0.items():
            base_w = dict(load_base(case["model"]).named_parameters())[
                n.replace("base_model.model.", "").replace(".lora_magnitude_vector.default.weight", ".weight")]
            w = base_w.detach() if not case["lora"].get("fan_in_fan_out") else base_w.detach().T
            assert max_diff(v, torch.linalg.norm(w, dim=1)) < 1e-5
    return ref


def get_mod(root, path: str):
    return root.get_submodule(path)


def check_dora(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """y = b + (m / n) * (W x + s B A x), n = ||W + s B A||_row detached; recomputed with hooks
    on the plain base model, logits and gradients."""
    base = load_base(case["model"])
    lc = case["lora"]
    s = lc["lora_alpha"] / lc["r"]
    fifo = lc.get("fan_in_fan_out", False)
    leaves = {}
    hooks = []
    for k in saved:
        if not k.endswith(".lora_A.weight"):
            continue
        mpath = k[len("base_model.model."): -len(".lora_A.weight")]
        A = torch.tensor(saved[k], requires_grad=True)
        Bm = torch.tensor(saved[k.replace("lora_A.weight", "lora_B.weight")], requires_grad=True)
        mag = torch.tensor(saved[k.replace("lora_A.weight", "lora_magnitude_vector")], requires_grad=True)
        leaves[k] = A
        leaves[k.replace("lora_A.weight", "lora_B.weight")] = Bm
        leaves[k.replace("lora_A.weight", "lora_magnitude_vector")] = mag
        mod = get_mod(base, mpath)
        W = mod.weight.detach().T if fifo else mod.weight.detach()  # [out, in]
        bias = mod.bias.detach() if getattr(mod, "bias", None) is not None else None

        def hook(_m, inp, _out, W=W, bias=bias, A=A, Bm=Bm, mag=mag):
            x = inp[0]
            n = torch.linalg.norm(W + s * (Bm @ A), dim=1).detach()
            y = (mag / n) * (x @ W.T + s * ((x @ A.T) @ Bm.T))
            return y + bias if bias is not None else y
        hooks.append(mod.register_forward_hook(hook))
    out = base(input_ids=ids_t, labels=lab_t, use_cache=False)
    out.loss.backward()
    notes["formula_logits_diff"] = max_diff(out.logits, logits)
    assert notes["formula_logits_diff"] < 1e-4, notes["formula_logits_diff"]
    worst = 0.0
    for k, t in leaves.items():
        g = grads[k + ".grad"]
        worst = max(worst, max_diff(t.grad, g) / max(1e-30, float(np.abs(g).max())))
    notes["formula_grad_rel_diff"] = worst
    assert worst < 1e-4, worst
    # the same, but with the norm NOT detached (the DoRA paper's un-simplified gradient)
    for h in hooks:
        h.remove()
    base2 = load_base(case["model"])
    leaves2 = {k: t.detach().clone().requires_grad_(True) for k, t in leaves.items()}
    for k in saved:
        if not k.endswith(".lora_A.weight"):
            continue
        mpath = k[len("base_model.model."): -len(".lora_A.weight")]
        A, Bm = leaves2[k], leaves2[k.replace("lora_A.weight", "lora_B.weight")]
        mag = leaves2[k.replace("lora_A.weight", "lora_magnitude_vector")]
        mod = get_mod(base2, mpath)
        W = mod.weight.detach().T if fifo else mod.weight.detach()
        bias = mod.bias.detach() if getattr(mod, "bias", None) is not None else None

        def hook2(_m, inp, _out, W=W, bias=bias, A=A, Bm=Bm, mag=mag):
            x = inp[0]
            n = torch.linalg.norm(W + s * (Bm @ A), dim=1)
            y = (mag / n) * (x @ W.T + s * ((x @ A.T) @ Bm.T))
            return y + bias if bias is not None else y
        mod.register_forward_hook(hook2)
    base2(input_ids=ids_t, labels=lab_t, use_cache=False).loss.backward()
    rel = 0.0
    for k, t in leaves2.items():
        if ".lora_A." in k or ".lora_B." in k:
            g = grads[k + ".grad"]
            rel = max(rel, max_diff(t.grad, g) / float(np.abs(g).max()))
    notes["undetached_grad_rel_diff"] = rel


def check_ia3(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """non-feedforward: y = (W x + b) * l ; feedforward: y = W (x * l) + b."""
    base = load_base(case["model"])
    for k, v in saved.items():
        mpath = k[len("base_model.model."): -len(".ia3_l")]
        mod = get_mod(base, mpath)
        lvec = torch.from_numpy(v).flatten()
        if v.shape[0] == 1:  # (1, in): feedforward, scales the input
            mod.register_forward_pre_hook(lambda _m, inp, lvec=lvec: (inp[0] * lvec,))
        else:  # (out, 1): scales the output, bias included
            mod.register_forward_hook(lambda _m, _i, out, lvec=lvec: out * lvec)
    with torch.no_grad():
        lg = base(input_ids=ids_t, use_cache=False).logits
    notes["formula_logits_diff"] = max_diff(lg, logits)
    assert notes["formula_logits_diff"] < 1e-4, notes["formula_logits_diff"]


def check_prompt(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """[prompt_embeddings ; embed(ids)] through the plain model, positions 0..P+T-1."""
    base = load_base(case["model"])
    B = ids_t.shape[0]
    with torch.no_grad():
        emb = torch.cat([torch.from_numpy(saved["prompt_embeddings"])[None].expand(B, -1, -1),
                         word_embeddings(base)(ids_t)], 1)
        lg = manual_forward(base, emb, 0)
    notes["formula_logits_diff"] = max_diff(lg, logits)
    assert notes["formula_logits_diff"] < 1e-4, notes["formula_logits_diff"]


def check_prefix(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """Prefix K/V from the README layout, not rotated; real tokens at positions P..P+T-1."""
    base = load_base(case["model"])
    cfg = base.config
    L = cfg.num_hidden_layers
    if cfg.model_type == "gpt2":
        Hkv, hd = cfg.n_head, cfg.n_embd // cfg.n_head
    else:
        Hkv, hd = cfg.num_key_value_heads, cfg.head_dim
    B = ids_t.shape[0]
    table = torch.from_numpy(saved["prompt_embeddings"])
    assert tuple(table.shape) == (P_VIRT, L * 2 * Hkv * hd)
    kv = prefix_table_to_kv(table, L, Hkv, hd, B)
    with torch.no_grad():
        emb = word_embeddings(base)(ids_t)
        lg = manual_forward(base, emb, P_VIRT, kv)
        lg0 = manual_forward(base, emb, 0, kv)  # what positions 0..T-1 would give instead
        # and through HF with an explicit cache and explicit positions
        cache = DynamicCache()
        for li, (k, v) in enumerate(kv):
            cache.update(k.contiguous(), v.contiguous(), li)
        lg_hf = base(input_ids=ids_t, past_key_values=cache, use_cache=True,
                     position_ids=torch.arange(P_VIRT, P_VIRT + ids_t.shape[1])[None]).logits
    notes["formula_logits_diff"] = max_diff(lg, logits)
    notes["hf_explicit_positions_diff"] = max_diff(lg_hf, logits)
    notes["positions_from_0_would_differ_by"] = max_diff(lg0, logits)
    assert notes["formula_logits_diff"] < 1e-4, notes["formula_logits_diff"]
    assert notes["hf_explicit_positions_diff"] < 1e-5
    assert notes["positions_from_0_would_differ_by"] > 1e-3
    if case["kind"] == "prefix_proj":
        pe = {k[len("init.prefix_encoder."):]: torch.from_numpy(v) for k, v in ref.items()
              if k.startswith("init.prefix_encoder.")}
        e = pe["embedding.weight"]
        t = torch.tanh(e @ pe["transform.0.weight"].T + pe["transform.0.bias"])
        t = t @ pe["transform.2.weight"].T + pe["transform.2.bias"]
        notes["mlp_formula_diff"] = max_diff(t, table)
        assert notes["mlp_formula_diff"] < 1e-6


def check_seqcls(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """pooled = per-position logits at the rightmost non-pad token (or the last position)."""
    inner = model.get_base_model()
    with torch.no_grad():
        if case["kind"] == "seqcls_prompt":
            B = ids_t.shape[0]
            tbl = torch.from_numpy(saved["prompt_embeddings"])[None].expand(B, -1, -1)
            emb = torch.cat([tbl, word_embeddings(inner)(ids_t)], 1)
            hs = inner.base_model(inputs_embeds=emb, use_cache=False).last_hidden_state
            idx = torch.full((B,), hs.shape[1] - 1)
        else:
            hs = inner.base_model(input_ids=ids_t, attention_mask=mask_t, use_cache=False).last_hidden_state
            nonpad = (ids_t != PAD_ID).int()
            idx = (torch.arange(ids_t.shape[1]) * nonpad).argmax(-1)
        w = torch.from_numpy([v for k, v in saved.items() if k.endswith("score.weight")][0])
        pooled = hs[torch.arange(hs.shape[0]), idx] @ w.T
    notes["pooled_index"] = idx.tolist()
    notes["formula_logits_diff"] = max_diff(pooled, logits)
    assert notes["formula_logits_diff"] < 1e-5, notes["formula_logits_diff"]


# ---------------------------------------------------------------------------------------
# methods peft does not have: bottleneck adapters, BitFit, full fine-tuning
# ---------------------------------------------------------------------------------------

class Bottleneck(torch.nn.Module):
    """h -> h + up(f(down(h)))."""

    def __init__(self, d: int, b: int, act: str):
        super().__init__()
        self.adapter_down = torch.nn.Linear(d, b, bias=True)
        self.adapter_up = torch.nn.Linear(b, d, bias=True)
        self.act = torch.nn.ReLU() if act == "relu" else torch.nn.SiLU()

    def forward(self, h):
        return h + self.adapter_up(self.act(self.adapter_down(h)))


def bottleneck_sites(model_name: str, style: str) -> list[tuple[str, str]]:
    """(adapter site name, module whose output it transforms) per layer suffix."""
    gpt2 = "gpt2" in model_name
    attn = ("attention_adapter", "attn.c_proj" if gpt2 else "self_attn.o_proj")
    ffn = ("output_adapter", "mlp.c_proj" if gpt2 else "mlp.down_proj")
    return [attn, ffn] if style == "houlsby" else [ffn]


def attach_bottlenecks(base, model_name: str, style: str, weights: dict | None, seed: int | None):
    d = base.config.hidden_size
    b = d // BN_REDUCTION
    act = "relu" if style == "pfeiffer" else "swish"
    mods = {}
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for layer in range(n_layers(base)):
        for site, target in bottleneck_sites(model_name, style):
            ad = Bottleneck(d, b, act)
            prefix = f"base_model.model.{layer_prefix(model_name, layer)}.{site}"
            for pn, p in ad.named_parameters():  # down.weight, down.bias, up.weight, up.bias
                with torch.no_grad():
                    if weights is None:
                        p.copy_(INIT_SCALE * torch.randn(p.shape, generator=gen, dtype=torch.float32))
                    else:
                        p.copy_(torch.from_numpy(weights[f"{prefix}.{pn}"]))
                mods[f"{prefix}.{pn}"] = p
            mod = base.get_submodule(f"{layer_prefix(model_name, layer)}.{target}")
            mod.register_forward_hook(lambda _m, _i, out, ad=ad: ad(out))
    return mods


def run_bottleneck(case: dict, d: Path, input_ids: np.ndarray, notes: dict) -> dict:
    name, style = case["model"], case["style"]
    base = load_base(name)
    for p in base.parameters():
        p.requires_grad_(False)
    mods = attach_bottlenecks(base, name, style, None, case["seed"])
    (d / "adapter").mkdir()
    cfgd = {
        "peft_type": "BOTTLENECK",
        "config_name": "seq_bn" if style == "pfeiffer" else "double_seq_bn",
        "mh_adapter": style == "houlsby",
        "output_adapter": True,
        "reduction_factor": BN_REDUCTION,
        "bottleneck_size": base.config.hidden_size // BN_REDUCTION,
        "non_linearity": "relu" if style == "pfeiffer" else "swish",
        "init_weights": "zero_up",
        "base_model_name_or_path": f"{MODELS_REL}/{name}",
        "task_type": "CAUSAL_LM",
        "layers_to_transform": None,
    }
    write_json(d / "adapter" / "adapter_config.json", cfgd)
    save_tensors(d / "adapter" / "adapter_model.safetensors",
                 {k: p.detach().numpy().copy() for k, p in mods.items()}, {"format": "pt"})
    # reload from the file into a fresh model; references come from that
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    base = load_base(name)
    for p in base.parameters():
        p.requires_grad_(False)
    mods = attach_bottlenecks(base, name, style, saved, None)
    assert sorted(mods) == sorted(saved)
    notes["saved_keys"] = {k: list(v.shape) for k, v in saved.items()}
    return forward_backward_causal(case, base, mods, input_ids, notes)


def forward_backward_causal(case, model, params: dict, input_ids: np.ndarray, notes: dict) -> dict:
    ids = input_ids.astype(np.int32)
    labels = make_labels(ids)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    lab_t = torch.from_numpy(labels.astype(np.int64))
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids_t, labels=lab_t, use_cache=False)
    out.loss.backward()
    loss = out.loss.detach()
    logits = out.logits.detach()
    assert abs(f(shifted_ce(logits, lab_t)) - f(loss)) < 1e-5
    ref = {"input_ids": ids, "labels": labels, "loss": np.array([f(loss)], dtype=np.float32),
           "logits": logits.numpy().astype(np.float32)}
    for k, p in params.items():
        g = p.grad.detach().numpy().copy()
        assert np.abs(g).max() > 0, f"zero gradient {k}"
        ref[k + ".grad"] = g
    notes["loss"] = f(loss)
    notes["logits_shape"] = list(logits.shape)
    notes["counted_predictions"] = int((lab_t[:, 1:] != -100).sum())
    base_ref = np_load_file(str(ROOT / MODELS_REL / case["model"] / "reference.safetensors"))["logits"]
    notes["delta_vs_base"] = max_diff(logits, base_ref)
    return ref


def run_bitfit(case: dict, d: Path, input_ids: np.ndarray, notes: dict) -> dict:
    name = case["model"]
    base = load_base(name)
    bias_names = [n for n, _ in base.named_parameters() if n.endswith(".bias")]
    gen = torch.Generator().manual_seed(case["seed"])
    params = dict(base.named_parameters())
    with torch.no_grad():
        for n in bias_names:
            p = params[n]
            p.add_(INIT_SCALE * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    (d / "adapter").mkdir()
    write_json(d / "adapter" / "adapter_config.json",
               {"peft_type": "BITFIT", "base_model_name_or_path": f"{MODELS_REL}/{name}",
                "task_type": "CAUSAL_LM", "bias_names": bias_names})
    save_tensors(d / "adapter" / "adapter_model.safetensors",
                 {f"base_model.model.{n}": params[n].detach().numpy().copy() for n in bias_names}, {"format": "pt"})
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    # reload: fresh base, biases replaced by the file's vectors
    model = load_base(name)
    for p in model.parameters():
        p.requires_grad_(False)
    mp = dict(model.named_parameters())
    train = {}
    for n in bias_names:
        with torch.no_grad():
            mp[n].copy_(torch.from_numpy(saved[f"base_model.model.{n}"]))
        mp[n].requires_grad_(True)
        train[f"base_model.model.{n}"] = mp[n]
    notes["bias_names"] = bias_names
    notes["saved_keys"] = {k: list(v.shape) for k, v in saved.items()}
    return forward_backward_causal(case, model, train, input_ids, notes)


def run_full(case: dict, d: Path, input_ids: np.ndarray, notes: dict) -> dict:
    model = load_base(case["model"])
    params = dict(model.named_parameters())
    notes["param_names"] = {n: list(p.shape) for n, p in params.items()}
    assert "lm_head.weight" not in params and model.lm_head.weight is model.model.embed_tokens.weight
    ref = forward_backward_causal(case, model, params, input_ids, notes)
    # tied embedding: the grad is the sum of the input-embedding and the lm_head uses
    base2 = load_base(case["model"])
    base2.lm_head.weight = torch.nn.Parameter(base2.model.embed_tokens.weight.detach().clone())
    lab_t = torch.from_numpy(ref["labels"].astype(np.int64))
    base2(input_ids=torch.from_numpy(input_ids.astype(np.int64)), labels=lab_t, use_cache=False).loss.backward()
    g_sum = base2.lm_head.weight.grad + base2.model.embed_tokens.weight.grad
    notes["tied_grad_sum_diff"] = max_diff(g_sum, ref["model.embed_tokens.weight.grad"])
    assert notes["tied_grad_sum_diff"] < 1e-6
    return ref


# ---------------------------------------------------------------------------------------

def run_case(case: dict) -> dict:
    name = case["name"]
    d = OUT / name
    clean_dir(d)
    ref_in = np_load_file(str(ROOT / MODELS_REL / case["model"] / "reference.safetensors"))
    input_ids = ref_in["input_ids"].astype(np.int32)
    assert input_ids.shape == (2, 16)
    torch.manual_seed(0)
    notes: dict = {"case": name, "model": case["model"], "kind": case["kind"]}
    kind = case["kind"]
    if kind == "bottleneck":
        ref = run_bottleneck(case, d, input_ids, notes)
    elif kind == "bitfit":
        ref = run_bitfit(case, d, input_ids, notes)
    elif kind == "full":
        ref = run_full(case, d, input_ids, notes)
    else:
        ref = run_peft_case(case, d, input_ids, notes)
    save_tensors(d / "reference.safetensors", ref, {"generator": f"tools/make_method_fixtures.py {name}"})
    notes["reference_keys"] = {k: [str(v.dtype), list(v.shape)] for k, v in ref.items()}
    return notes


def main() -> int:
    os.chdir(ROOT)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    all_notes = []
    for case in CASES:
        if only and case["name"] not in only:
            continue
        notes = run_case(case)
        all_notes.append(notes)
        short = {k: v for k, v in notes.items()
                 if k not in ("saved_keys", "reference_keys", "param_names", "adapter_config", "bias_names")}
        print(json.dumps(short))
    if os.environ.get("METHOD_FIXTURES_NOTES"):
        Path(os.environ["METHOD_FIXTURES_NOTES"]).write_text(json.dumps(all_notes, indent=1))
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"total {total} bytes")
    assert total < 1_500_000, total
    return 0


if __name__ == "__main__":
    sys.exit(main())
