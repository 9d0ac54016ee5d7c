#!/usr/bin/env python3
"""Generate the fixtures for the non-LoRA fine-tuning methods (DoRA, IA3, prompt / prefix
tuning, bottleneck, BitFit, full, sequence classification, VeRA, LoHa, LoKr) used by the
peft.c tests.

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
reproduce peft's logits (and, for DoRA, VeRA, LoHa and LoKr, its gradients: for the last three
through hand-written backwards that are the README's gradient formulas, also gradchecked).

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
from peft import (IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, PeftModel,  # noqa: E402
                  PrefixTuningConfig, PromptTuningConfig, VeraConfig, get_peft_model,
                  set_peft_model_state_dict)
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
LLAMA_QVD = ["q_proj", "v_proj", "down_proj"]  # in 64/64/128, out 64/32/64: shapes differ

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
    dict(name="vera_llama", model="tiny-llama", kind="vera", seed=221,
         cfg=dict(r=8, target_modules=LLAMA_QVD, save_projection=True)),
    dict(name="vera_gpt2", model="tiny-gpt2", kind="vera", seed=222,
         cfg=dict(r=8, target_modules=["c_attn"], fan_in_fan_out=True, save_projection=True)),
    dict(name="vera_llama_noproj", model="tiny-llama", kind="vera", seed=223,
         cfg=dict(r=8, target_modules=LLAMA_QVD, save_projection=False)),
    dict(name="loha_llama", model="tiny-llama", kind="loha", seed=224,
         cfg=dict(r=4, alpha=8, target_modules=LLAMA_QVD)),
    dict(name="loha_qwen2", model="tiny-qwen2", kind="loha", seed=225,
         cfg=dict(r=4, alpha=8, target_modules=LLAMA_QVD)),
    dict(name="lokr_llama", model="tiny-llama", kind="lokr", seed=226,
         cfg=dict(r=4, alpha=8, target_modules=LLAMA_QVD)),
    dict(name="lokr_llama_decompose", model="tiny-llama", kind="lokr", seed=227,
         cfg=dict(r=4, alpha=8, decompose_both=True, decompose_factor=16, target_modules=LLAMA_QVD)),
    dict(name="lokr_llama_r2", model="tiny-llama", kind="lokr", seed=228,
         cfg=dict(r=2, alpha=4, decompose_both=True, target_modules=LLAMA_QVD)),
    dict(name="lokr_qwen2", model="tiny-qwen2", kind="lokr", seed=229,
         cfg=dict(r=4, alpha=8, target_modules=LLAMA_QVD)),
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
    prefix MLP, classifier head, VeRA lambdas, LoHa / LoKr factors: 0.1*randn.
    IA3: 1 + 0.1*randn. DoRA m: m * (1 + 0.1*randn)."""
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
    if name.endswith(".default") and any(f".{t}." in name for t in (
            "vera_lambda_b", "vera_lambda_d", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
            "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")):
        return name[: -len(".default")]  # VeRA / LoHa / LoKr parameters are bare ParameterDict entries
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
# the steps every case of this script and of make_encoder_method_fixtures.py takes
# ---------------------------------------------------------------------------------------

SHORT_NOTES_SKIP = ("saved_keys", "reference_keys", "param_names", "adapter_config", "bias_names")


def save_randomized(model, case: dict, d: Path, notes: dict, config_keys: tuple[str, ...]) -> tuple[dict, dict]:
    """Randomises a fresh peft model's trainable tensors (randomize), saves it to d/adapter and
    notes the config fields named in config_keys and the saved shapes. Returns the in-memory
    copy of the trainable tensors and the saved ones, for check_reloaded."""
    randomize(trainable(model), case["seed"])
    mem = {n: p.detach().clone() for n, p in trainable(model)}
    save_peft_adapter(model, d / "adapter")
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    acfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    notes["adapter_config"] = {k: acfg[k] for k in sorted(acfg) if k in config_keys}
    notes["saved_keys"] = {k: list(v.shape) for k, v in saved.items()}
    return mem, saved


def check_reloaded(params, mem: dict, saved: dict | None) -> None:
    """The reloaded model trains the same tensors, in the same order, with the values that were
    saved (saved None: the file holds something else, e.g. the projected prefix table)."""
    assert [n for n, _ in params] == list(mem), ([n for n, _ in params], list(mem))
    for n, p in params:
        assert torch.equal(p.detach(), mem[n]), n
        if saved is not None:
            k = peft_key(n)
            assert np.array_equal(p.detach().numpy(), saved[k]), k


def nonzero_grads(params, key=lambda n: n, may_be_zero=lambda k: False) -> dict:
    """{key(name) + ".grad": gradient} of (name, tensor) pairs, each asserted non-zero: a zero
    gradient would let the C side pass without computing it."""
    grads = {}
    for n, p in params:
        k = key(n)
        g = p.grad.detach().numpy().copy()
        assert np.abs(g).max() > 0 or may_be_zero(k), f"zero gradient {k}"
        grads[k + ".grad"] = g
    return grads


def store_result(ref: dict, loss, logits, grads: dict, notes: dict) -> dict:
    ref["loss"] = np.array([f(loss)], dtype=np.float32)
    ref["logits"] = logits.detach().numpy().astype(np.float32)
    ref.update(grads)
    notes["loss"] = f(loss)
    return ref


def check_roundtrip(base, d: Path, logits, notes: dict, **inputs) -> None:
    """A plain (inference-mode) reload of d/adapter onto base gives the same logits."""
    rt = PeftModel.from_pretrained(base, str(d / "adapter"))
    rt.eval()
    with torch.no_grad():
        notes["roundtrip_max_diff"] = max_diff(rt(**inputs).logits, logits)
    assert notes["roundtrip_max_diff"] < 1e-5, notes["roundtrip_max_diff"]


def write_adapter(d: Path, config: dict, tensors: dict) -> dict:
    """d/adapter written by this script (no peft class for the method): the config, the tensors;
    returns the tensors as read back from the file."""
    (d / "adapter").mkdir()
    write_json(d / "adapter" / "adapter_config.json", config)
    save_tensors(d / "adapter" / "adapter_model.safetensors",
                 {k: p.detach().numpy().copy() for k, p in tensors.items()}, {"format": "pt"})
    return np_load_file(str(d / "adapter" / "adapter_model.safetensors"))


def run_case_in(case: dict, script: str, inputs, run) -> dict:
    """One case in OUT/<name>: inputs(case) read before the seed is fixed, run(case, d, inputs,
    notes) -> the reference tensors, written with the generator's command line."""
    name = case["name"]
    d = OUT / name
    clean_dir(d)
    x = inputs(case)
    torch.manual_seed(0)
    notes: dict = {"case": name, "model": case["model"], "kind": case["kind"]}
    ref = run(case, d, x, notes)
    save_tensors(d / "reference.safetensors", ref, {"generator": f"tools/{script} {name}"})
    notes["reference_keys"] = {k: [str(v.dtype), list(v.shape)] for k, v in ref.items()}
    return notes


def start() -> set[str]:
    """Deterministic single-threaded torch from the repository root; the case names asked for."""
    os.chdir(ROOT)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    return set(sys.argv[1:])


def run_cases(cases: list[dict], only: set[str], run_case, label: str, max_bytes: int) -> None:
    """The named cases (all when none are): their notes printed (one JSON line each, the bulky
    keys left out) and, with $METHOD_FIXTURES_NOTES, written whole; then the size of `cases`'
    folders, asserted under max_bytes."""
    all_notes = []
    for case in cases:
        if only and case["name"] not in only:
            continue
        notes = run_case(case)
        all_notes.append(notes)
        short = {k: v for k, v in notes.items() if k not in SHORT_NOTES_SKIP}
        print(json.dumps(short))
    if os.environ.get("METHOD_FIXTURES_NOTES"):
        Path(os.environ["METHOD_FIXTURES_NOTES"]).write_text(json.dumps(all_notes, indent=1))
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
    total = sum(p.stat().st_size for c in cases for p in (OUT / c["name"]).rglob("*") if p.is_file())
    print(f"{label} {total} bytes")
    assert total < max_bytes, total


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
    if kind == "vera":
        return VeraConfig(task_type="CAUSAL_LM", vera_dropout=0.0, **case["cfg"])
    if kind == "loha":
        return LoHaConfig(task_type="CAUSAL_LM", rank_dropout=0.0, module_dropout=0.0, **case["cfg"])
    if kind == "lokr":
        return LoKrConfig(task_type="CAUSAL_LM", rank_dropout=0.0, module_dropout=0.0, **case["cfg"])
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
    if kind in ("vera", "loha", "lokr"):
        check_fresh_init(case, model, notes)
    mem_params, saved = save_randomized(model, case, d, notes, (
        "target_modules", "feedforward_modules", "fan_in_fan_out", "num_virtual_tokens", "token_dim",
        "num_attention_heads", "num_layers", "num_transformer_submodules", "encoder_hidden_size",
        "prefix_projection", "modules_to_save", "inference_mode", "task_type", "use_dora", "r", "lora_alpha",
        "alpha", "decompose_both", "decompose_factor", "save_projection", "projection_prng_key", "d_initial"))

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
    check_reloaded(params, mem_params, saved if kind != "prefix_proj" else None)

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

    grads = nonzero_grads(params, lambda n: peft_key(n, kind == "prefix_proj"))
    if kind == "prefix_proj":
        g = table_out["t"].grad.detach().sum(0).numpy().copy()  # summed over the batch copies
        grads["prompt_embeddings.grad"] = g
        for n, p in params:
            ref["init." + peft_key(n, True)] = p.detach().numpy().copy()

    store_result(ref, loss, logits, grads, notes)
    notes["logits_shape"] = list(logits.shape)
    if logits.shape == base_logits.shape:
        notes["delta_vs_base"] = max_diff(logits, base_logits)
    else:
        notes["delta_vs_base"] = max_diff(logits[:, -base_logits.shape[1]:], base_logits)
    assert notes["delta_vs_base"] > 1e-2, notes["delta_vs_base"]

    # ---- round trip ------------------------------------------------------------------------
    check_roundtrip(load_base(case["model"], seqcls), d, logits, notes,
                    input_ids=ids_t, attention_mask=mask_t, use_cache=False)

    # ---- README formulas restated --------------------------------------------------------
    checks = {"dora": check_dora, "ia3": check_ia3, "prompt": check_prompt, "prefix": check_prefix,
              "prefix_proj": check_prefix, "seqcls_lora": check_seqcls, "seqcls_prompt": check_seqcls,
              "vera": check_vera, "loha": check_loha, "lokr": check_lokr}
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
# VeRA, LoHa, LoKr: README formulas, forward and hand-written backward
# ---------------------------------------------------------------------------------------
# Each method's adapter path is a torch.autograd.Function whose backward is the README's
# gradient formula written out (no autograd inside), so the hooked plain model checks the
# documented forward (logits vs peft) and the documented backward (every trainable gradient vs
# peft, and dx through the layers above); gradcheck_methods() checks the same Functions against
# finite differences in float64.

def mt19937_u32(seed: int, n: int) -> np.ndarray:
    """The first n outputs of MT19937 seeded with init_genrand(seed & 0xffffffff), the stream
    torch.Generator().manual_seed(seed) draws from on the CPU (here via numpy's legacy
    RandomState, which seeds the same way)."""
    rs = np.random.RandomState(seed & 0xFFFFFFFF)
    return rs.randint(0, 2 ** 32, size=n, dtype=np.uint64)


def vera_projections(key: int, r: int, in_max: int, out_max: int) -> tuple[np.ndarray, np.ndarray]:
    """README algorithm for vera_A [r, in_max] and vera_B [out_max, r] from projection_prng_key,
    without torch: A's r*in_max draws then B's out_max*r, row-major, each
    f32( (u & 0xFFFFFF) * 2^-24 * (2*bound_f32) - bound_f32 ) evaluated in double,
    bound = sqrt(3) * (sqrt(2) / sqrt(fan_in)), fan_in = number of columns."""
    u = mt19937_u32(key, r * in_max + out_max * r)
    x = (u & 0xFFFFFF).astype(np.float64) * 2.0 ** -24

    def draw(xs, fan_in):
        b = np.float32(math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(fan_in)))
        lo, width = np.float64(-b), np.float64(np.float32(b) - np.float32(-b))
        return (xs * width + lo).astype(np.float32)
    a = draw(x[: r * in_max], in_max).reshape(r, in_max)
    b = draw(x[r * in_max:], r).reshape(out_max, r)
    return a, b


class VeraDelta(torch.autograd.Function):
    """x [T, in] -> lambda_b * (B_s (lambda_d * (A_s x)))  [T, out]; A_s [r, in], B_s [out, r] frozen."""

    @staticmethod
    def forward(ctx, x, lam_b, lam_d, A_s, B_s):
        h = x @ A_s.T                   # [T, r]
        v = (h * lam_d) @ B_s.T         # [T, out]
        ctx.save_for_backward(x, lam_b, lam_d, A_s, B_s, h, v)
        return v * lam_b

    @staticmethod
    def backward(ctx, g):               # g = dL/dy [T, out]
        x, lam_b, lam_d, A_s, B_s, h, v = ctx.saved_tensors
        d_lam_b = (g * v).sum(0)        # [out]
        du = (g * lam_b) @ B_s          # [T, r]
        d_lam_d = (du * h).sum(0)       # [r]
        dx = (du * lam_d) @ A_s         # [T, in]
        return dx, d_lam_b, d_lam_d, None, None


class LohaDelta(torch.autograd.Function):
    """x [T, in] -> x dW^T, dW = s (w1a w1b) o (w2a w2b)  [out, in]."""

    @staticmethod
    def forward(ctx, x, w1a, w1b, w2a, w2b, s):
        p1, p2 = w1a @ w1b, w2a @ w2b
        dw = s * p1 * p2
        ctx.save_for_backward(x, w1a, w1b, w2a, w2b, p1, p2, dw)
        ctx.s = s
        return x @ dw.T

    @staticmethod
    def backward(ctx, g):
        x, w1a, w1b, w2a, w2b, p1, p2, dw = ctx.saved_tensors
        s = ctx.s
        gW = g.T @ x                    # dL/d(dW) [out, in], summed over tokens
        g1 = s * gW * p2                # dL/dP1
        g2 = s * gW * p1                # dL/dP2
        return g @ dw, g1 @ w1b.T, w1a.T @ g1, g2 @ w2b.T, w2a.T @ g2, None


class LokrDelta(torch.autograd.Function):
    """x [T, in=c*d] -> y [T, out=a*b], y_t = vec(s W1 X_t W2^T), X_t = x_t viewed [c, d] row-major,
    W1 [a, c], W2 [b, d]; equals x (s kron(W1, W2))^T without forming the Kronecker product."""

    @staticmethod
    def forward(ctx, x, W1, W2, s):
        (a, c), (b, d) = W1.shape, W2.shape
        X = x.reshape(-1, c, d)
        Y = s * (W1 @ X @ W2.T)         # [T, a, b]
        ctx.save_for_backward(X, W1, W2)
        ctx.s = s
        return Y.reshape(-1, a * b)

    @staticmethod
    def backward(ctx, g):
        X, W1, W2 = ctx.saved_tensors
        s = ctx.s
        (a, c), (b, d) = W1.shape, W2.shape
        G = g.reshape(-1, a, b)
        dX = s * (W1.T @ G @ W2)                          # [T, c, d]
        dW1 = s * (G @ W2 @ X.transpose(1, 2)).sum(0)     # [a, c]
        dW2 = s * (G.transpose(1, 2) @ W1 @ X).sum(0)     # [b, d]
        return dX.reshape(-1, c * d), dW1, dW2, None


def lokr_factor(p: dict, which: str):
    """W1 / W2 of a LoKr module from its tensors: the full matrix or the product a @ b."""
    if which in p:
        return p[which]
    return p[which + "_a"] @ p[which + "_b"]


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """README pseudocode for LoKr's (rows, cols) split of one dimension (re-stated, checked
    against peft's function and the saved shapes)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        nm = m + 1
        while dimension % nm != 0:
            nm += 1
        nn_ = dimension // nm
        if nm + nn_ > m + n or nm > factor:
            break
        m, n = nm, nn_
    return (n, m) if m > n else (m, n)


def lokr_layout(out_f: int, in_f: int, r: int, decompose_both: bool, factor: int):
    """README rule: W1 [a, c], W2 [b, d]; which of them are low-rank products."""
    c, d = factorization(in_f, factor)
    a, b = factorization(out_f, factor)
    w1_full = not (decompose_both and r < max(a, c) / 2)
    w2_full = not (r < max(b, d) / 2)
    return (a, c), (b, d), w1_full, w2_full


def adapter_modules(saved: dict, suffixes: tuple[str, ...]) -> dict:
    """module path -> {tensor name: saved tensor} for the per-module keys."""
    mods: dict = {}
    for k, v in saved.items():
        if not k.startswith("base_model.model."):
            continue
        path, leaf = k[len("base_model.model."):].rsplit(".", 1)
        if leaf in suffixes:
            mods.setdefault(path, {})[leaf] = (k, v)
    return mods


def module_io(mod) -> tuple[int, int, bool]:
    """(in, out, is Conv1D) of a base linear."""
    if isinstance(mod, torch.nn.Linear):
        return mod.in_features, mod.out_features, False
    w = mod.weight  # transformers Conv1D: [in, out]
    return w.shape[0], w.shape[1], True


def run_hooked(case, hooks_for, ids_t, lab_t, logits, grads, notes) -> None:
    """Plain base + the method's delta on each target (hooks_for(base) registers them and returns
    the leaves by saved key); logits and every gradient must match peft's."""
    base = load_base(case["model"])
    for p in base.parameters():
        p.requires_grad_(False)
    leaves = hooks_for(base)
    out = base(input_ids=ids_t, labels=lab_t, use_cache=False)
    out.loss.backward()
    notes["formula_logits_diff"] = max_diff(out.logits, logits)
    assert notes["formula_logits_diff"] < 1e-4, notes["formula_logits_diff"]
    assert sorted(leaves) == sorted(k[: -len(".grad")] for k in grads), (sorted(leaves), sorted(grads))
    worst = 0.0
    for k, t in leaves.items():
        g = grads[k + ".grad"]
        worst = max(worst, max_diff(t.grad, g) / max(1e-30, float(np.abs(g).max())))
    notes["formula_grad_rel_diff"] = worst
    assert worst < 1e-4, worst


def add_delta_hook(mod, fn):
    """y = base(x) + fn(x rows) — the adapter path sees the input without the bias."""
    def hook(_m, inp, out):
        x = inp[0]
        return out + fn(x.reshape(-1, x.shape[-1])).reshape(*out.shape)
    mod.register_forward_hook(hook)


def check_vera(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """y = W x + b + lambda_b o (B[:out] (lambda_d o (A[:, :in] x))); A, B shared by all targets."""
    c = case["cfg"]
    r = c["r"]
    base0 = load_base(case["model"])
    dims = [module_io(base0.get_submodule(p)) for p in adapter_modules(saved, ("vera_lambda_b",))]
    in_max, out_max = max(d[0] for d in dims), max(d[1] for d in dims)
    a_np, b_np = vera_projections(0, r, in_max, out_max)
    buf_a = model.base_model.vera_A["default"].detach().numpy()
    buf_b = model.base_model.vera_B["default"].detach().numpy()
    notes["projection_shapes"] = [list(buf_a.shape), list(buf_b.shape)]
    assert np.array_equal(a_np, buf_a) and np.array_equal(b_np, buf_b), "PRNG re-derivation of vera_A/B"
    if c["save_projection"]:
        assert np.array_equal(saved["base_model.vera_A"], a_np) and np.array_equal(saved["base_model.vera_B"], b_np)
    else:
        assert "base_model.vera_A" not in saved and "base_model.vera_B" not in saved
    notes["projection_from_prng_bit_exact"] = True
    A, B = torch.from_numpy(a_np), torch.from_numpy(b_np)

    def hooks_for(base):
        leaves = {}
        for path, t in adapter_modules(saved, ("vera_lambda_b", "vera_lambda_d")).items():
            mod = base.get_submodule(path)
            n_in, n_out, _ = module_io(mod)
            (kb, vb), (kd, vd) = t["vera_lambda_b"], t["vera_lambda_d"]
            lb = torch.tensor(vb, requires_grad=True)
            ld = torch.tensor(vd, requires_grad=True)
            leaves[kb], leaves[kd] = lb, ld
            A_s, B_s = A[:, :n_in], B[:n_out, :]
            add_delta_hook(mod, lambda x, lb=lb, ld=ld, A_s=A_s, B_s=B_s: VeraDelta.apply(x, lb, ld, A_s, B_s))
        return leaves
    run_hooked(case, hooks_for, ids_t, lab_t, logits, grads, notes)
    check_merge(case, model, ids_t, logits, notes)


def check_loha(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """y = W x + b + (s (w1a w1b) o (w2a w2b)) x, s = alpha / r."""
    c = case["cfg"]
    s = c["alpha"] / c["r"]

    def hooks_for(base):
        leaves = {}
        for path, t in adapter_modules(saved, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")).items():
            mod = base.get_submodule(path)
            ts = {}
            for nm in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
                k, v = t[nm]
                ts[nm] = leaves[k] = torch.tensor(v, requires_grad=True)
            add_delta_hook(mod, lambda x, ts=ts: LohaDelta.apply(
                x, ts["hada_w1_a"], ts["hada_w1_b"], ts["hada_w2_a"], ts["hada_w2_b"], s))
        return leaves
    run_hooked(case, hooks_for, ids_t, lab_t, logits, grads, notes)
    check_merge(case, model, ids_t, logits, notes)
    check_lycoris_refuses_conv1d(LoHaConfig, notes)


def check_lokr(case, model, ids_t, mask_t, lab_t, logits, loss, grads, saved, ref, notes) -> None:
    """y = W x + b + s kron(W1, W2) x, s = alpha / r (also when W1 and W2 are full matrices)."""
    c = case["cfg"]
    s = c["alpha"] / c["r"]
    names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    from peft.tuners.lokr.layer import factorization as peft_factorization
    for dim in range(1, 300):
        for fac in (-1, 1, 2, 3, 4, 5, 8, 16, 64):
            assert factorization(dim, fac) == peft_factorization(dim, fac), (dim, fac)
    layouts = {}

    def hooks_for(base):
        leaves = {}
        for path, t in adapter_modules(saved, names).items():
            mod = base.get_submodule(path)
            n_in, n_out, _ = module_io(mod)
            (a, cc), (b, d), w1_full, w2_full = lokr_layout(n_out, n_in, c["r"], c.get("decompose_both", False),
                                                            c.get("decompose_factor", -1))
            assert ("lokr_w1" in t) == w1_full and ("lokr_w2" in t) == w2_full, path
            ts = {}
            for nm, (k, v) in t.items():
                ts[nm] = leaves[k] = torch.tensor(v, requires_grad=True)
            W1, W2 = lokr_factor(ts, "lokr_w1"), lokr_factor(ts, "lokr_w2")
            assert tuple(W1.shape) == (a, cc) and tuple(W2.shape) == (b, d), path
            layouts[path.split(".", 3)[-1]] = {"W1": [a, cc], "W2": [b, d], "w1": "full" if w1_full else "a@b",
                                              "w2": "full" if w2_full else "a@b"}

            def fn(x, ts=ts):  # W1 / W2 rebuilt per call so autograd reaches the a / b factors
                return LokrDelta.apply(x, lokr_factor(ts, "lokr_w1"), lokr_factor(ts, "lokr_w2"), s)
            add_delta_hook(mod, fn)
        return leaves
    run_hooked(case, hooks_for, ids_t, lab_t, logits, grads, notes)
    notes["lokr_layout"] = layouts
    check_merge(case, model, ids_t, logits, notes)
    check_lycoris_refuses_conv1d(LoKrConfig, notes)


def check_merge(case, model, ids_t, logits, notes) -> None:
    """merge_and_unload == W + delta (README merge formula) and gives the adapter's logits."""
    import copy
    merged = copy.deepcopy(model).merge_and_unload()
    with torch.no_grad():
        lg = merged(input_ids=ids_t, use_cache=False).logits
    notes["merged_logits_diff"] = max_diff(lg, logits)
    assert notes["merged_logits_diff"] < 1e-4, notes["merged_logits_diff"]
    base = load_base(case["model"])
    worst = 0.0
    for name, mod in model.named_modules():
        if not hasattr(mod, "get_delta_weight") or not hasattr(mod, "base_layer"):
            continue
        path = name[len("base_model.model."):]
        w0 = base.get_submodule(path).weight.detach()
        wm = merged.get_submodule(path).weight.detach()
        delta = readme_delta_weight(case, model, mod)
        if module_io(base.get_submodule(path))[2]:
            delta = delta.T  # Conv1D stores [in, out]
        worst = max(worst, max_diff(wm, w0 + delta))
    notes["merge_formula_diff"] = worst
    assert worst < 1e-6, worst


def readme_delta_weight(case, model, mod) -> torch.Tensor:
    """Delta W [out, in] from the layer's tensors by the README merge formulas."""
    kind, c = case["kind"], case["cfg"]
    g = {n: p.detach() for n, p in mod.named_parameters() if n.endswith(".default")}
    g = {n.split(".")[0]: v for n, v in g.items() if not n.startswith("base_layer")}
    n_in, n_out, _ = module_io(mod.get_base_layer())
    if kind == "vera":
        A = model.base_model.vera_A["default"][:, :n_in]
        B = model.base_model.vera_B["default"][:n_out, :]
        return (g["vera_lambda_b"][:, None] * B) @ (g["vera_lambda_d"][:, None] * A)
    s = c["alpha"] / c["r"]
    if kind == "loha":
        return s * (g["hada_w1_a"] @ g["hada_w1_b"]) * (g["hada_w2_a"] @ g["hada_w2_b"])
    return s * torch.kron(lokr_factor(g, "lokr_w1"), lokr_factor(g, "lokr_w2"))


def check_lycoris_refuses_conv1d(cfg_cls, notes) -> None:
    """peft 0.21.2 LoHa / LoKr accept nn.Linear / Conv1d / Conv2d only: GPT-2's Conv1D is refused,
    so there is no GPT-2 fixture for them (this fails if a later peft accepts it)."""
    try:
        get_peft_model(load_base("tiny-gpt2"), cfg_cls(task_type="CAUSAL_LM", target_modules=["c_attn"]))
        notes["gpt2_conv1d"] = "accepted"
    except TypeError as e:
        notes["gpt2_conv1d"] = f"TypeError: {str(e)[:80]}"
    assert notes["gpt2_conv1d"] != "accepted"


def check_fresh_init(case, model, notes) -> None:
    """The README's init for a new adapter (before the fixtures' random values)."""
    kind, c = case["kind"], case["cfg"]
    got = {peft_key(n).rsplit(".", 1)[-1]: [] for n, _ in trainable(model)}
    for n, p in trainable(model):
        got[peft_key(n).rsplit(".", 1)[-1]].append(p.detach())
    zero = sorted(k for k, v in got.items() if all(bool((t == 0).all()) for t in v))
    if kind == "vera":
        assert zero == ["vera_lambda_b"], zero
        assert all(bool((t == np.float32(0.1)).all()) for t in got["vera_lambda_d"])
    elif kind == "loha":
        assert zero == ["hada_w2_b"], zero
        for nm in ("hada_w1_a", "hada_w1_b", "hada_w2_a"):  # kaiming_uniform(a=sqrt(5)): |x| <= 1/sqrt(cols)
            assert all(float(t.abs().max()) <= 1 / math.sqrt(t.shape[1]) for t in got[nm]), nm
    else:
        assert zero == sorted(k for k in ("lokr_w1", "lokr_w1_a") if k in got), zero
    notes["fresh_zero"] = zero


def gradcheck_methods() -> None:
    """The hand-written backwards against finite differences (float64, small random shapes)."""
    gen = torch.Generator().manual_seed(230)

    def rnd(*shape, grad=True):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(grad)
    T, n_in, n_out, r = 3, 6, 5, 2
    assert torch.autograd.gradcheck(
        VeraDelta.apply, (rnd(T, n_in), rnd(n_out), rnd(r), rnd(r, n_in, grad=False), rnd(n_out, r, grad=False)))
    assert torch.autograd.gradcheck(
        lambda x, a1, b1, a2, b2: LohaDelta.apply(x, a1, b1, a2, b2, 1.5),
        (rnd(T, n_in), rnd(n_out, r), rnd(r, n_in), rnd(n_out, r), rnd(r, n_in)))
    (a, c), (b, d) = (2, 3), (4, 2)  # out 8 = 2*4, in 6 = 3*2
    assert torch.autograd.gradcheck(lambda x, w1, w2: LokrDelta.apply(x, w1, w2, 0.75),
                                    (rnd(T, c * d), rnd(a, c), rnd(b, d)))
    w1, w2, x = rnd(a, c, grad=False), rnd(b, d, grad=False), rnd(T, c * d, grad=False)
    assert max_diff(LokrDelta.apply(x, w1, w2, 0.75), x @ (0.75 * torch.kron(w1, w2)).T) < 1e-12


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


def attach_bottlenecks(base, sites, style: str, weights: dict | None, gen: torch.Generator | None) -> dict:
    """One adapter per (key prefix, module) of sites, on the module's output (bias included):
    weights from `weights` by key, else 0.1*randn from gen in site and named_parameters() order.
    Returns {key: parameter}."""
    d = base.config.hidden_size
    b = d // BN_REDUCTION
    act = "relu" if style == "pfeiffer" else "swish"
    mods = {}
    for prefix, mod in sites:
        ad = Bottleneck(d, b, act)
        for pn, p in ad.named_parameters():  # down.weight, down.bias, up.weight, up.bias
            with torch.no_grad():
                if weights is None:
                    p.copy_(INIT_SCALE * torch.randn(p.shape, generator=gen, dtype=torch.float32))
                else:
                    p.copy_(torch.from_numpy(weights[f"{prefix}.{pn}"]))
            mods[f"{prefix}.{pn}"] = p
        mod.register_forward_hook(lambda _m, _i, out, ad=ad: ad(out))
    return mods


def bottleneck_config(style: str, hidden: int) -> dict:
    return {
        "peft_type": "BOTTLENECK",
        "config_name": "seq_bn" if style == "pfeiffer" else "double_seq_bn",
        "mh_adapter": style == "houlsby",
        "output_adapter": True,
        "reduction_factor": BN_REDUCTION,
        "bottleneck_size": hidden // BN_REDUCTION,
        "non_linearity": "relu" if style == "pfeiffer" else "swish",
        "init_weights": "zero_up",
        "layers_to_transform": None,
    }


def causal_bottleneck_sites(base, model_name: str, style: str) -> list:
    return [(f"base_model.model.{layer_prefix(model_name, layer)}.{site}",
             base.get_submodule(f"{layer_prefix(model_name, layer)}.{target}"))
            for layer in range(n_layers(base)) for site, target in bottleneck_sites(model_name, style)]


def run_bottleneck(case: dict, d: Path, input_ids: np.ndarray, notes: dict) -> dict:
    name, style = case["model"], case["style"]
    base = load_base(name)
    for p in base.parameters():
        p.requires_grad_(False)
    mods = attach_bottlenecks(base, causal_bottleneck_sites(base, name, style), style, None,
                              torch.Generator().manual_seed(case["seed"]))
    cfgd = bottleneck_config(style, base.config.hidden_size)
    cfgd.update({"base_model_name_or_path": f"{MODELS_REL}/{name}", "task_type": "CAUSAL_LM"})
    saved = write_adapter(d, cfgd, mods)
    # reload from the file into a fresh model; references come from that
    base = load_base(name)
    for p in base.parameters():
        p.requires_grad_(False)
    mods = attach_bottlenecks(base, causal_bottleneck_sites(base, name, style), style, saved, None)
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
    ref = store_result({"input_ids": ids, "labels": labels}, loss, logits, nonzero_grads(params.items()), notes)
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
    saved = write_adapter(d, {"peft_type": "BITFIT", "base_model_name_or_path": f"{MODELS_REL}/{name}",
                              "task_type": "CAUSAL_LM", "bias_names": bias_names},
                          {f"base_model.model.{n}": params[n] for n in bias_names})
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

def input_ids_of(case: dict) -> np.ndarray:
    ref_in = np_load_file(str(ROOT / MODELS_REL / case["model"] / "reference.safetensors"))
    input_ids = ref_in["input_ids"].astype(np.int32)
    assert input_ids.shape == (2, 16)
    return input_ids


RUNNERS = {"bottleneck": run_bottleneck, "bitfit": run_bitfit, "full": run_full}


def run_case(case: dict) -> dict:
    return run_case_in(case, "make_method_fixtures.py", input_ids_of,
                       RUNNERS.get(case["kind"], run_peft_case))


def main() -> int:
    only = start()
    OUT.mkdir(parents=True, exist_ok=True)
    if not only or any(c["kind"] in ("vera", "loha", "lokr") for c in CASES if c["name"] in only):
        gradcheck_methods()
    # this script's cases only (the encoder cases are make_encoder_method_fixtures.py's)
    run_cases(CASES, only, run_case, "total", 2_100_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
