#!/usr/bin/env python3
"""Generate the AdaLoRA fixtures (tests/test_adalora.c): a few AdamW steps of HF peft's ADALORA.

    python3 tools/make_adalora_fixtures.py              # (re)writes tests/fixtures/adalora/
    python3 tools/make_adalora_fixtures.py adalora_gpt2 # only the named cases

Deterministic: two runs give byte-identical files (it re-executes itself with PYTHONHASHSEED=0
through fixture_common, like the other generators). Everything is float32, CPU, one thread,
eval() mode (dropout off), eager attention.

Each case takes peft's AdaLoraConfig (lora_dropout 0, task CAUSAL_LM), draws every trainable
tensor (lora_A, lora_B, lora_E, in named_parameters() order) as 0.1 N(0, 1) from
torch.Generator().manual_seed(seed) — E too, so the first step's A and B gradients are not zero
— saves the adapter, reloads it with PeftModel.from_pretrained(is_trainable=True) and trains it
for `steps` steps on the 2 x 16 batch of the model's reference.safetensors (labels masked as
fixture_common.MASK) the way peft's AdaLoRA examples do:

    loss = model(input_ids, labels).loss      # peft adds orth_reg_weight * R to the CE loss
    loss.backward()
    clip_grad_norm_(trainable, 1.0)
    optimizer.step()                          # torch AdamW, lr LR constant, weight decay 0
    model.base_model.update_and_allocate(s)   # s = 0, 1, ...: importance EMAs and masking
    optimizer.zero_grad()

with R = (1 / n) sum over every lora_A and lora_B tensor P (n of them) of ||P P^T - I||_F for A
(r x r) and ||P^T P - I||_F for B — the Frobenius norm, not squared — and the rank allocator of
peft/tuners/adalora/layer.py (RankAllocator): ipt = |p * grad| for every A, E, B value, EMAs
ipt_bar = b1 ipt_bar + (1 - b1) ipt, unc = b2 unc + (1 - b2) |ipt - ipt_bar|, score = ipt_bar * unc;
triplet i of a module scores E_i's + mean over row i of A's + mean over column i of B's; the budget
(total kept triplets) is init_r * n_modules up to step tinit, then
int((init - target) * (1 - (s - tinit) / (total - tfinal - tinit))^3 + target) on steps with
s % deltaT == 0, where the triplets at or below the (init - budget)-th smallest score get E_i = 0;
at s == total - tfinal a last mask at target_r * n_modules and the EMAs reset; after it, the same
mask every step. The script restates the schedule and R in float64 and asserts that they agree
with peft.

Per case (tests/fixtures/adalora/<case>/):
  adapter/                the starting adapter (save_pretrained, no rank_pattern yet: full init_r)
  trained/                the adapter after the steps (save_pretrained: rank_pattern in the config,
                          every tensor cut to the triplets it keeps, as peft saves AdaLoRA)
  reference.safetensors   input_ids, labels (I32 [2,16]); loss, ce, orth, grad_norm (F32 [steps]:
                          per step, loss = ce + orth_reg_weight * orth, grad_norm before clipping);
                          "<key>.grad" the first step's gradient of every tensor (before clipping,
                          regulariser included), <key> its adapter_model.safetensors key, and
                          "<key>.grad64" / loss64 the same step computed in float64 (peft on the
                          model and adapter cast to double; stored as F32) — the yardstick of
                          float32 rounding for both sides;
                          "mask<s>/<E key>" (U8 [init_r]) after step s's update_and_allocate,
                          1 where E is not 0; budget (I32 [steps]) the schedule's budget per step;
                          logits_start (adapter/) and logits_trained (trained/ reloaded), F32 [2,16,V]
  case.json               the configuration and the per-step record

Requires: torch, transformers (v5), peft 0.21.2, safetensors, numpy.
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from fixture_common import INIT_SCALE, MODELS_REL, ROOT, clean_dir, f, load_base, make_labels  # noqa: E402
from fixture_common import save_peft_adapter  # noqa: E402
from peft import AdaLoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402

warnings.filterwarnings("ignore")

OUT = ROOT / "tests" / "fixtures" / "adalora"
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
MAX_NORM = 1.0

CASES = [
    # masks at steps 2 and 3 (cubic budgets 15, 12), the final one at 4, the rank pattern at 5
    dict(name="adalora_llama", model="tiny-llama", seed=401, steps=6,
         cfg=dict(init_r=4, target_r=2, lora_alpha=8, tinit=1, tfinal=2, deltaT=1, beta1=0.85, beta2=0.85,
                  orth_reg_weight=0.5, target_modules=["q_proj", "v_proj", "down_proj"])),
    # GPT-2's Conv1D (fan_in_fan_out), deltaT 2: masks at steps 2 and 4 only, the final at 5
    dict(name="adalora_gpt2", model="tiny-gpt2", seed=402, steps=7,
         cfg=dict(init_r=3, target_r=1, lora_alpha=6, tinit=1, tfinal=2, deltaT=2, beta1=0.7, beta2=0.9,
                  orth_reg_weight=0.25, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
]


def peft_key(name: str) -> str:
    assert name.endswith(".default"), name
    return name[: -len(".default")]


def orth_reg(model) -> float:
    """R restated in float64."""
    tot, n = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            w = p.detach().double()
            c = w @ w.T if "lora_A" in name else w.T @ w
            tot += float(torch.linalg.norm(c - torch.eye(c.shape[0], dtype=torch.float64)))
            n += 1
    return tot / n


def budget_of(c: dict, total: int, n_mod: int, s: int) -> tuple[int, bool]:
    init, target = c["init_r"] * n_mod, c["target_r"] * n_mod
    if s <= c["tinit"]:
        return init, False
    if s > total - c["tfinal"]:
        return target, True
    mul = 1 - (s - c["tinit"]) / (total - c["tfinal"] - c["tinit"])
    return int((init - target) * mul ** 3 + target), s % c["deltaT"] == 0


def logits_of(model, ids_t):
    with torch.no_grad():
        return model(input_ids=ids_t, use_cache=False).logits.detach().numpy().astype(np.float32)


def run_case(case: dict) -> str:
    name, steps = case["name"], case["steps"]
    d = OUT / name
    clean_dir(d)
    torch.manual_seed(0)
    cfg = AdaLoraConfig(lora_dropout=0.0, total_step=steps, task_type="CAUSAL_LM", **case["cfg"])
    model = get_peft_model(load_base(case["model"]), cfg)
    # peft's fresh adapter: E = 0, A and B N(0, 0.02) (checked loosely: std within 20%)
    for n, p in model.named_parameters():
        if "lora_E" in n:
            assert torch.all(p == 0), n
        elif "lora_A" in n or "lora_B" in n:
            assert abs(float(p.std()) - 0.02) < 0.004, (n, float(p.std()))
    gen = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(INIT_SCALE * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    save_peft_adapter(model, d / "adapter")

    model = PeftModel.from_pretrained(load_base(case["model"]), str(d / "adapter"), is_trainable=True)
    model.eval()
    params = [(peft_key(n), p) for n, p in model.named_parameters() if p.requires_grad]
    tparams = [p for _, p in params]
    n_mod = sum(1 for k, _ in params if k.endswith(".lora_E"))
    opt = torch.optim.AdamW(tparams, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0, foreach=False, fused=False)

    ref_in = np_load_file(str(ROOT / MODELS_REL / case["model"] / "reference.safetensors"))
    ids = ref_in["input_ids"].astype(np.int32)
    labels = make_labels(ids)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    lab_t = torch.from_numpy(labels.astype(np.int64))
    ref = {"input_ids": ids, "labels": labels, "logits_start": logits_of(model, ids_t)}
    # the first step in float64: how far float32 rounding takes peft's own gradients
    m64 = PeftModel.from_pretrained(load_base(case["model"]).double(), str(d / "adapter"), is_trainable=True).double()
    m64.eval()
    out64 = m64(input_ids=ids_t, labels=lab_t, use_cache=False)
    out64.loss.backward()
    for n, p in m64.named_parameters():
        if p.requires_grad:
            ref[f"{peft_key(n)}.grad64"] = p.grad.detach().numpy().astype(np.float32)
    ref["loss64"] = np.array([float(out64.loss)], dtype=np.float32)
    del m64
    w = case["cfg"]["orth_reg_weight"]
    rec = {k: [] for k in ("loss", "ce", "orth", "grad_norm", "budget")}
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids_t, labels=lab_t, use_cache=False)
        R = orth_reg(model)
        ce = float(fixture_common.shifted_ce(out.logits.detach(), lab_t))
        assert abs(float(out.loss) - (ce + w * R)) < 1e-5, (float(out.loss), ce, R)
        out.loss.backward()
        if s == 0:
            for k, p in params:
                ref[f"{k}.grad"] = p.grad.detach().numpy().copy()
        gn = torch.nn.utils.clip_grad_norm_(tparams, max_norm=MAX_NORM)
        opt.step()
        model.base_model.update_and_allocate(s)
        budget, _ = budget_of(case["cfg"], steps, n_mod, s)
        rec["loss"].append(f(out.loss.detach()))
        rec["ce"].append(ce)
        rec["orth"].append(R)
        rec["grad_norm"].append(f(gn))
        rec["budget"].append(budget)
        for k, p in params:
            if k.endswith(".lora_E"):
                ref[f"mask{s}/{k}"] = (p.detach().numpy().reshape(-1) != 0).astype(np.uint8)
        opt.zero_grad(set_to_none=True)
    # every masking step kept exactly the budget (no ties at the threshold)
    for s in range(steps):
        b, masked = budget_of(case["cfg"], steps, n_mod, s)
        kept = sum(int(ref[f"mask{s}/{k}"].sum()) for k, _ in params if k.endswith(".lora_E"))
        if masked or s >= steps - case["cfg"]["tfinal"]:
            assert kept == b, (s, kept, b)
    save_peft_adapter(model, d / "trained")
    trained = PeftModel.from_pretrained(load_base(case["model"]), str(d / "trained"))
    trained.eval()
    ref["logits_trained"] = logits_of(trained, ids_t)
    # the in-memory model (masked E = 0) and the cut file agree
    assert float(np.abs(ref["logits_trained"] - logits_of(model, ids_t)).max()) < 1e-5
    ref["loss"] = np.array(rec["loss"], dtype=np.float32)
    ref["ce"] = np.array(rec["ce"], dtype=np.float32)
    ref["orth"] = np.array(rec["orth"], dtype=np.float32)
    ref["grad_norm"] = np.array(rec["grad_norm"], dtype=np.float32)
    ref["budget"] = np.array(rec["budget"], dtype=np.int32)
    np_save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(d / "reference.safetensors"),
                 metadata={"generator": f"tools/make_adalora_fixtures.py {name}"})
    (d / "case.json").write_text(json.dumps(
        {"generator": f"tools/make_adalora_fixtures.py {name}", "model": case["model"], "steps": steps,
         "config": case["cfg"], "lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": 0.0,
         "max_grad_norm": MAX_NORM, "schedule": "constant", **rec}, indent=1, sort_keys=True) + "\n")
    rp = json.loads((d / "trained" / "adapter_config.json").read_text())["rank_pattern"]
    ranks = {k.split(".lora_E")[0]: sum(v) for k, v in rp.items()}
    return f"{name}: {len(params)} tensors, losses {[round(x, 5) for x in rec['loss']]}, ranks {list(ranks.values())}"


def main() -> int:
    os.chdir(ROOT)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    for case in CASES:
        if not only or case["name"] in only:
            print(run_case(case))
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"total {total} bytes")
    assert total < 600_000, total
    return 0


if __name__ == "__main__":
    sys.exit(main())
