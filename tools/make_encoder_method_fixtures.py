#!/usr/bin/env python3
"""Generate the encoder (BERT, RoBERTa) cases of tests/fixtures/methods/: every non-LoRA method
on tiny-bert / tiny-roberta as sequence classifiers (task_type SEQ_CLS), for
tests/test_methods_ref.c.

    python3 tools/make_encoder_method_fixtures.py              # every encoder case
    python3 tools/make_encoder_method_fixtures.py ia3_bert     # only the named cases

The decoder cases are tools/make_method_fixtures.py's; this script reuses its helpers (init,
key mapping, the bottleneck adapters, file layout, the steps every case takes and the case
loop) and writes only the `*_bert` / `*_roberta` folders. Deterministic (two runs give byte-identical files).

The batch is the models' own reference batch (tests/fixtures/models/tiny-*/reference.safetensors,
made by tools/make_arch_fixtures.py): 3 rows of 36 tokens, rows 1 and 2 padded on the right
(attention_mask 0), row 2 a sentence pair (token_type_ids 1 on its second text, BERT only),
labels [2, 0, 1].

References:
  HF peft 0.21.2  IA3, prompt tuning, DoRA, LoHa, LoKr, VeRA (peft's SEQ_CLS wrapper; the classifier
                  head in modules_to_save)
  this script     prefix tuning (peft 0.21.2 + transformers 5.24 refuse it on BERT / RoBERTa:
                  their encoders take no past_key_values), bottleneck adapters, BitFit, full
                  fine-tuning: PyTorch on the HF model (hooks, or the from-scratch encoder
                  forward below for prefix tuning), autograd for the gradients
See tests/fixtures/methods/README.md ("Encoders") for what each case computes.
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import math  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fixture_common import INIT_SCALE, MODELS_REL, ROOT, f  # noqa: E402
from make_method_fixtures import (attach_bottlenecks, bottleneck_config, check_reloaded,  # noqa: E402
                                  check_roundtrip, max_diff, nonzero_grads, peft_key, run_case_in, run_cases,
                                  save_randomized, start, store_result, trainable, write_adapter)
from peft import (IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, PeftModel,  # noqa: E402
                  PrefixTuningConfig, PromptTuningConfig, VeraConfig, get_peft_model, set_peft_model_state_dict)
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

warnings.filterwarnings("ignore")

ENC_LABELS = [2, 0, 1]
P_VIRT = 4
ENC_TARGETS = ["query", "value", "output.dense"]  # output.dense: attention.output.dense AND the FFN's output.dense

CASES = [
    dict(name="ia3_bert", model="tiny-bert", kind="ia3", seed=301),
    dict(name="ia3_roberta", model="tiny-roberta", kind="ia3", seed=302),
    dict(name="prompt_bert", model="tiny-bert", kind="prompt", seed=303),
    dict(name="prompt_roberta", model="tiny-roberta", kind="prompt", seed=304),
    dict(name="prefix_bert", model="tiny-bert", kind="prefix", seed=305),
    dict(name="prefix_roberta", model="tiny-roberta", kind="prefix", seed=306),
    dict(name="dora_bert", model="tiny-bert", kind="dora", seed=307),
    dict(name="loha_bert", model="tiny-bert", kind="loha", seed=308),
    dict(name="lokr_bert", model="tiny-bert", kind="lokr", seed=309),
    dict(name="bottleneck_houlsby_bert", model="tiny-bert", kind="bottleneck", seed=310, style="houlsby"),
    dict(name="bottleneck_pfeiffer_bert", model="tiny-bert", kind="bottleneck", seed=311, style="pfeiffer"),
    dict(name="bitfit_bert", model="tiny-bert", kind="bitfit", seed=312),
    dict(name="bitfit_roberta", model="tiny-roberta", kind="bitfit", seed=313),
    dict(name="full_bert", model="tiny-bert", kind="full", seed=314),
    dict(name="vera_bert", model="tiny-bert", kind="vera", seed=315),
]


def load_base(model: str) -> torch.nn.Module:
    m = AutoModelForSequenceClassification.from_pretrained(f"{MODELS_REL}/{model}", dtype=torch.float32,
                                                           attn_implementation="eager")
    m.eval()
    return m


def backbone(model):
    return getattr(model, model.base_model_prefix)


def batch(model: str) -> dict[str, np.ndarray]:
    ref = np_load_file(str(ROOT / MODELS_REL / model / "reference.safetensors"))
    out = {k: ref[k].astype(np.int32) for k in ("input_ids", "attention_mask")}
    if model == "tiny-bert":
        out["token_type_ids"] = ref["token_type_ids"].astype(np.int32)
        assert out["token_type_ids"].max() == 1
    assert (out["attention_mask"] == 0).any()
    return out


def torch_inputs(b: dict) -> dict:
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in b.items()}


# ---------------------------------------------------------------------------------------
# a from-scratch encoder forward (BERT / RoBERTa), for prompt tuning (checked against peft)
# and prefix tuning (the reference: HF refuses it)
# ---------------------------------------------------------------------------------------

def manual_encoder(base, rows: torch.Tensor, pos: torch.Tensor, types: torch.Tensor, keymask: torch.Tensor,
                   prefix=None, head=None) -> torch.Tensor:
    """rows (B, S, d): word-embedding rows (virtual tokens included); pos / types (B, S) position and
    token-type ids; keymask (B, S) bool, the keys a query may see (every query sees every unmasked key
    and every prefix row). prefix: per layer (K, V), each (B, H, P, hd). head: the classifier
    parameters by HF name (else the base's). Returns the pooled logits (B, n_labels): BERT's
    pooler + classifier, or RoBERTa's classification head, on row 0."""
    cfg = base.config
    H, d = cfg.num_attention_heads, cfg.hidden_size
    hd = d // H
    bb = backbone(base)
    emb = bb.embeddings
    eps = cfg.layer_norm_eps
    B, S, _ = rows.shape

    def ln(x, mod):
        return F.layer_norm(x, (d,), mod.weight, mod.bias, eps)

    x = rows + emb.position_embeddings.weight[pos] + emb.token_type_embeddings.weight[types]
    x = ln(x, emb.LayerNorm)
    for li, layer in enumerate(bb.encoder.layer):
        at = layer.attention
        q = at.self.query(x).view(B, S, H, hd).transpose(1, 2)
        k = at.self.key(x).view(B, S, H, hd).transpose(1, 2)
        v = at.self.value(x).view(B, S, H, hd).transpose(1, 2)
        km = keymask
        if prefix is not None:
            pk, pv = prefix[li]
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
            km = torch.cat([torch.ones(B, pk.shape[2], dtype=torch.bool), keymask], 1)
        sc = q @ k.transpose(-1, -2) / math.sqrt(hd)
        sc = sc.masked_fill(~km[:, None, None, :], float("-inf"))
        o = (sc.softmax(-1) @ v).transpose(1, 2).reshape(B, S, d)
        x = ln(at.output.dense(o) + x, at.output.LayerNorm)
        u = F.gelu(layer.intermediate.dense(x))  # erf GELU
        x = ln(layer.output.dense(u) + x, layer.output.LayerNorm)
    h0 = x[:, 0]
    hp = head if head is not None else {n: p for n, p in base.classifier.named_parameters()}
    if cfg.model_type == "bert":
        p = torch.tanh(bb.pooler.dense(h0))
        return p @ hp["weight"].T + hp["bias"]
    p = torch.tanh(h0 @ hp["dense.weight"].T + hp["dense.bias"])
    return p @ hp["out_proj.weight"].T + hp["out_proj.bias"]


def positions(base, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Absolute positions of real tokens that start at `start` (BERT), RoBERTa's padding_idx + 1 offset
    on top; for RoBERTa padding would get padding_idx, irrelevant (masked, never pooled)."""
    B, T = ids.shape
    p = torch.arange(start, start + T)[None].expand(B, T)
    if base.config.model_type == "roberta":
        p = p + base.config.pad_token_id + 1
    return p


def types_of(tin: dict) -> torch.Tensor:
    return tin.get("token_type_ids", torch.zeros_like(tin["input_ids"]))


def check_manual_encoder(model: str, tin: dict, notes: dict) -> None:
    """The from-scratch forward reproduces the plain HF classifier on the batch."""
    base = load_base(model)
    ids = tin["input_ids"]
    with torch.no_grad():
        want = base(**tin).logits
        got = manual_encoder(base, backbone(base).embeddings.word_embeddings(ids), positions(base, ids, 0),
                             types_of(tin), tin["attention_mask"].bool())
    notes["manual_encoder_vs_hf"] = max_diff(got, want)
    assert notes["manual_encoder_vs_hf"] < 1e-5, notes["manual_encoder_vs_hf"]


# ---------------------------------------------------------------------------------------
# HF-peft cases
# ---------------------------------------------------------------------------------------

def peft_config_for(case: dict):
    kind = case["kind"]
    if kind == "ia3":
        return IA3Config(task_type="SEQ_CLS")  # peft's defaults: key, value, output.dense (ff: output.dense)
    if kind == "prompt":
        return PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P_VIRT, prompt_tuning_init="RANDOM")
    if kind == "prefix":
        return PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P_VIRT, prefix_projection=False)
    if kind == "dora":
        return LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, bias="none", use_dora=True,
                          target_modules=ENC_TARGETS)
    if kind == "loha":
        return LoHaConfig(task_type="SEQ_CLS", r=4, alpha=8, rank_dropout=0.0, module_dropout=0.0,
                          target_modules=ENC_TARGETS)
    if kind == "lokr":
        return LoKrConfig(task_type="SEQ_CLS", r=4, alpha=8, rank_dropout=0.0, module_dropout=0.0,
                          target_modules=ENC_TARGETS)
    if kind == "vera":
        return VeraConfig(task_type="SEQ_CLS", r=8, vera_dropout=0.0, save_projection=True, target_modules=ENC_TARGETS)
    raise ValueError(kind)


def head_key(k: str) -> bool:
    return ".classifier." in k or k.startswith("base_model.classifier") or k.startswith("base_model.model.classifier")


def run_peft_case(case: dict, d: Path, b: dict, notes: dict) -> dict:
    kind, model = case["kind"], case["model"]
    tin = torch_inputs(b)
    lab_t = torch.tensor(ENC_LABELS, dtype=torch.int64)
    ref = dict(b)
    ref["cls_labels"] = np.array(ENC_LABELS, dtype=np.int32)

    torch.manual_seed(0)
    base0 = load_base(model)
    with torch.no_grad():
        base_logits = base0(**tin).logits.detach().clone()
    pm = get_peft_model(base0, peft_config_for(case))
    pm.eval()
    mem, saved = save_randomized(pm, case, d, notes, (
        "target_modules", "feedforward_modules", "num_virtual_tokens", "token_dim", "num_attention_heads",
        "num_layers", "num_transformer_submodules", "modules_to_save", "task_type", "use_dora"))
    assert any(head_key(k) for k in saved), "no classifier head saved"

    if kind == "prefix":
        return prefix_reference(case, b, tin, lab_t, saved, ref, base_logits, notes)

    if kind == "prompt":
        # peft refuses from_pretrained(is_trainable=True) for prompt learning: rebuild + load the state
        rcfg = PeftConfig.from_pretrained(str(d / "adapter"))
        rcfg.inference_mode = False
        pm = get_peft_model(load_base(model), rcfg)
        set_peft_model_state_dict(pm, {k: torch.from_numpy(v) for k, v in saved.items()})
    else:
        pm = PeftModel.from_pretrained(load_base(model), str(d / "adapter"), is_trainable=True)
    pm.eval()
    params = trainable(pm)
    check_reloaded(params, mem, saved)

    pm.zero_grad(set_to_none=True)
    out = pm(**tin, labels=lab_t)
    out.loss.backward()
    logits, loss = out.logits.detach(), out.loss.detach()
    assert abs(f(F.cross_entropy(logits.double(), lab_t)) - f(loss)) < 1e-6
    grads = nonzero_grads(params, peft_key)
    if kind == "prompt":
        check_prompt(case, tin, saved, logits, notes)
    check_roundtrip(load_base(model), d, logits, notes, **tin)
    return finish(ref, loss, logits, grads, base_logits, notes)


def finish(ref, loss, logits, grads, base_logits, notes) -> dict:
    """base_logits None: the case does not change the model (full fine-tuning from the base)."""
    store_result(ref, loss, logits, grads, notes)
    if base_logits is not None:
        notes["delta_vs_base"] = max_diff(logits, base_logits)
        assert notes["delta_vs_base"] > 1e-2, notes["delta_vs_base"]
    return ref


def head_params(saved: dict, requires_grad: bool) -> tuple[dict, dict]:
    """classifier tensors of a saved adapter: {HF name under classifier.: leaf}, {leaf name: saved key}"""
    hp, keys = {}, {}
    for k, v in saved.items():
        if head_key(k):
            sub = k.split("classifier.", 1)[1]
            hp[sub] = torch.tensor(v, requires_grad=requires_grad)
            keys[sub] = k
    return hp, keys


def check_prompt(case, tin, saved, logits, notes) -> None:
    """[prompt rows ; word rows] at positions 0..P+T-1 (RoBERTa: + padding_idx + 1), virtual tokens of
    type 0 and visible to every query, padding masked; pooled on row 0 = the first virtual token."""
    base = load_base(case["model"])
    ids = tin["input_ids"]
    B, T = ids.shape
    hp, _ = head_params(saved, False)
    with torch.no_grad():
        rows = torch.cat([torch.from_numpy(saved["prompt_embeddings"])[None].expand(B, -1, -1),
                          backbone(base).embeddings.word_embeddings(ids)], 1)
        pos = positions(base, torch.zeros(B, P_VIRT + T, dtype=torch.int64), 0)
        types = torch.cat([torch.zeros(B, P_VIRT, dtype=torch.int64), types_of(tin)], 1)
        km = torch.cat([torch.ones(B, P_VIRT, dtype=torch.bool), tin["attention_mask"].bool()], 1)
        lg = manual_encoder(base, rows, pos, types, km, head=hp)
    notes["formula_logits_diff"] = max_diff(lg, logits)
    assert notes["formula_logits_diff"] < 1e-5, notes["formula_logits_diff"]


def prefix_reference(case, b, tin, lab_t, saved, ref, base_logits, notes) -> dict:
    """The prefix table's README layout (P, L*2*H*hd) as keys / values every query sees, not masked; the
    text at positions P..P+T-1 (transformers 4's BertEmbeddings offset by the cache length, which
    peft's prefix tuning on BERT used); the pooled row is the text's first token ([CLS] / <s>)."""
    base = load_base(case["model"])
    for p in base.parameters():
        p.requires_grad_(False)
    try:
        pm = get_peft_model(load_base(case["model"]), peft_config_for(case))
        pm(**tin)
        notes["hf_prefix_forward"] = "worked"
    except ValueError as e:
        notes["hf_prefix_forward"] = f"ValueError: {e}"
    assert notes["hf_prefix_forward"] != "worked", "peft now runs prefix tuning on encoders: use it as the reference"
    cfg = base.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    hd = cfg.hidden_size // H
    table = torch.tensor(saved["prompt_embeddings"], requires_grad=True)
    assert tuple(table.shape) == (P_VIRT, L * 2 * H * hd)
    hp, hkeys = head_params(saved, True)
    ids = tin["input_ids"]
    B = ids.shape[0]
    t = table.view(P_VIRT, L, 2, H, hd)
    kv = [(t[:, li, 0].permute(1, 0, 2)[None].expand(B, H, P_VIRT, hd),
           t[:, li, 1].permute(1, 0, 2)[None].expand(B, H, P_VIRT, hd)) for li in range(L)]
    rows = backbone(base).embeddings.word_embeddings(ids)
    km = tin["attention_mask"].bool()
    logits = manual_encoder(base, rows, positions(base, ids, P_VIRT), types_of(tin), km, prefix=kv, head=hp)
    loss = F.cross_entropy(logits, lab_t)
    loss.backward()
    with torch.no_grad():
        lg0 = manual_encoder(base, rows, positions(base, ids, 0), types_of(tin), km, prefix=kv, head=hp)
    notes["positions_from_0_would_differ_by"] = max_diff(lg0, logits)
    assert notes["positions_from_0_would_differ_by"] > 1e-3
    grads = {"prompt_embeddings.grad": table.grad.numpy().copy()}
    for sub, leaf in hp.items():
        grads[hkeys[sub] + ".grad"] = leaf.grad.numpy().copy()
    for k, g in grads.items():
        assert np.abs(g).max() > 0, k
    return finish(ref, loss.detach(), logits.detach(), grads, base_logits, notes)


# ---------------------------------------------------------------------------------------
# the script's own methods: bottleneck, BitFit, full fine-tuning
# ---------------------------------------------------------------------------------------

def cls_config(model: str) -> dict:
    return {"base_model_name_or_path": f"{MODELS_REL}/{model}", "task_type": "SEQ_CLS",
            "modules_to_save": ["classifier", "score"], "num_labels": len(set(ENC_LABELS))}


def head_tensors(base) -> dict:
    """the classifier's parameters, keys as peft.c saves a head (base_model.model.classifier.*)"""
    return {f"base_model.model.classifier.{n}": p for n, p in base.classifier.named_parameters()}


def run_own(case: dict, d: Path, b: dict, notes: dict) -> dict:
    kind, model = case["kind"], case["model"]
    tin = torch_inputs(b)
    base = load_base(model)
    with torch.no_grad():
        base_logits = base(**tin).logits.detach().clone()
    for p in base.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(case["seed"])
    layers = backbone(base).encoder.layer
    pre = base.base_model_prefix
    params: dict[str, torch.nn.Parameter] = {}
    if kind == "bottleneck":
        style = case["style"]
        sites = [("attention_adapter", "attention.output.dense"), ("output_adapter", "output.dense")]
        if style == "pfeiffer":
            sites = sites[1:]
        # on the dense output (bias included), before the residual add and the LayerNorm
        params.update(attach_bottlenecks(
            base, [(f"base_model.model.{pre}.encoder.layer.{li}.{site}", layer.get_submodule(target))
                   for li, layer in enumerate(layers) for site, target in sites], style, None, gen))
        cfgd = bottleneck_config(style, base.config.hidden_size)
    elif kind == "bitfit":
        # every bias of the base model (BERT's pooler included; RoBERTa's classifier has none), the head apart
        names = [n for n, _ in base.named_parameters() if n.endswith(".bias") and n.startswith(pre + ".")]
        mp = dict(base.named_parameters())
        for n in names:
            with torch.no_grad():
                mp[n].add_(INIT_SCALE * torch.randn(mp[n].shape, generator=gen, dtype=torch.float32))
            mp[n].requires_grad_(True)
            params[f"base_model.model.{n}"] = mp[n]
        cfgd = {"peft_type": "BITFIT", "bias_names": names}
        notes["bias_names"] = names
    else:
        raise ValueError(kind)
    # the head (modules_to_save): 0.1*z, after the method's tensors
    for k, p in head_tensors(base).items():
        with torch.no_grad():
            p.copy_(INIT_SCALE * torch.randn(p.shape, generator=gen, dtype=torch.float32))
        p.requires_grad_(True)
        params[k] = p
    cfgd.update(cls_config(model))
    saved = write_adapter(d, cfgd, params)
    for k, p in params.items():
        assert np.array_equal(saved[k], p.detach().numpy()), k
    notes["saved_keys"] = {k: list(v.shape) for k, v in saved.items()}
    return forward_backward(base, params, b, tin, base_logits, notes)


def forward_backward(model, params: dict, b: dict, tin: dict, base_logits, notes) -> dict:
    lab_t = torch.tensor(ENC_LABELS, dtype=torch.int64)
    model.zero_grad(set_to_none=True)
    out = model(**tin, labels=lab_t)
    out.loss.backward()
    logits, loss = out.logits.detach(), out.loss.detach()
    assert abs(f(F.cross_entropy(logits.double(), lab_t)) - f(loss)) < 1e-6
    ref = dict(b)
    ref["cls_labels"] = np.array(ENC_LABELS, dtype=np.int32)
    grads = nonzero_grads(params.items(), may_be_zero=lambda k: k.endswith("token_type_embeddings.weight"))
    return finish(ref, loss, logits, grads, base_logits, notes)


def run_full(case: dict, d: Path, b: dict, notes: dict) -> dict:
    """Every parameter of BertForSequenceClassification (the pooler included), from the base as it is
    (the model is a classifier with 3 labels: its own head is the starting point, as peft.c's full
    fine-tuning starts from it). Gradient keys: the HF parameter names (bert.*), the head as
    base_model.model.classifier.*."""
    model = case["model"]
    tin = torch_inputs(b)
    base = load_base(model)
    params = {}
    for n, p in base.named_parameters():
        if n.startswith("classifier."):
            params["base_model.model." + n] = p
        else:
            params[n] = p
    notes["param_names"] = {n: list(p.shape) for n, p in params.items()}
    # no adapter/: peft.c builds a fresh full copy of the base; perturb nothing
    ref = forward_backward(base, params, b, tin, None, notes)
    # nn.Embedding(padding_idx=0): the [PAD] row gets no gradient
    pad = base.config.pad_token_id
    assert not ref[f"{base.base_model_prefix}.embeddings.word_embeddings.weight.grad"][pad].any()
    return ref


# ---------------------------------------------------------------------------------------

def run_encoder_case(case: dict, d: Path, b: dict, notes: dict) -> dict:
    if case["kind"] in ("prompt", "prefix"):
        check_manual_encoder(case["model"], torch_inputs(b), notes)
    if case["kind"] in ("bottleneck", "bitfit"):
        return run_own(case, d, b, notes)
    if case["kind"] == "full":
        return run_full(case, d, b, notes)
    return run_peft_case(case, d, b, notes)


def run_case(case: dict) -> dict:
    return run_case_in(case, "make_encoder_method_fixtures.py", lambda c: batch(c["model"]), run_encoder_case)


def main() -> int:
    only = start()
    unknown = only - {c["name"] for c in CASES}
    assert not unknown, f"unknown cases {sorted(unknown)}"
    run_cases(CASES, only, run_case, "encoder cases:", 900_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
