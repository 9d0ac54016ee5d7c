#!/usr/bin/env python3
"""Generate the parameter-group fixtures of the peft.c optimizer (tests/test_param_groups.c).

    python3 tools/make_optim_fixtures.py       # (re)writes tests/fixtures/optim/

Deterministic: running it twice yields byte-identical files (it re-executes itself with
PYTHONHASHSEED=0 through fixture_common, like the other generators).

Each case trains a tiny model (tests/fixtures/models/) for 3 AdamW steps on the fixed
2 x 16 batch of that model's reference.safetensors (labels masked as fixture_common.MASK),
with torch.optim.AdamW built from Hugging Face's own parameter-group code:

  loraplus_*  peft.optimizers.create_loraplus_optimizer(model, AdamW, lr, loraplus_lr_ratio=16,
              loraplus_weight_decay=0.1): groupA (lr), groupB (lr x 16: lora_B and every
              1-D parameter, DoRA's magnitude), groupB_no_decay, embedding
  decay_*     what transformers' Trainer.create_optimizer builds: weight_decay 0.1 on
              Trainer.get_decay_parameter_names(model), 0 on the rest (biases,
              LayerNorm / RMSNorm weights)

then a linear schedule without warmup (lr, 2/3 lr, 1/3 lr: each group scaled by the
same LambdaLR), clip_grad_norm_(all trainable, 1.0), on the loss of the whole batch
(mean over its target tokens).

Per case (tests/fixtures/optim/<case>/):
  adapter/                  the starting adapter (peft save_pretrained for LoRA / DoRA with
                            A, B re-drawn as 0.1 N(0,1) and the magnitude as m (1 + 0.1 N);
                            the BITFIT folder format of tools/make_method_fixtures.py with
                            biases + 0.1 N); none for full fine-tuning (the base itself)
  reference.safetensors     input_ids, labels; per trainable tensor, under its peft.c
                            registry key K: "step<s>/K" (s = 1, 2, 3) the values after step
                            s, flattened and sampled every "stride/K" values (int32; 1 for
                            tensors of up to 1024 values, 17 above, to keep the files small);
                            GPT-2's Conv1D weights transposed to peft.c's (out, in) layout;
                            "noise/K" (uint8, same sampling) where some values' gradient is
                            zero but for rounding (GPT-2's key bias): 1 marks those values,
                            which Adam moves by up to lr per step as the noise decides
  groups.json               per K: the HF group's name, lr and weight_decay; per step the
                            lr of the schedule, the loss and the gradient norm

Requires: torch, transformers (v5), peft, safetensors, numpy.
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
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.optimizers import create_loraplus_optimizer  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from transformers import Trainer, get_linear_schedule_with_warmup  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

warnings.filterwarnings("ignore")

OUT = ROOT / "tests" / "fixtures" / "optim"

N_STEPS = 3
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.1
RATIO = 16.0
MAX_NORM = 1.0
SAMPLE_ABOVE = 1024
STRIDE = 17

CASES = [
    dict(name="loraplus_llama", model="tiny-llama", kind="loraplus", seed=301,
         lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    dict(name="loraplus_dora_gpt2", model="tiny-gpt2", kind="loraplus", seed=302,
         lora=dict(r=4, lora_alpha=8, use_dora=True, target_modules=["c_attn"], fan_in_fan_out=True)),
    dict(name="decay_bitfit_gpt2", model="tiny-gpt2", kind="bitfit", seed=303),
    dict(name="decay_full_llama", model="tiny-llama", kind="full", seed=304),
    dict(name="decay_full_gpt2", model="tiny-gpt2", kind="full", seed=305),
]


def peft_key(name: str) -> str:
    """peft parameter name -> its key in adapter_model.safetensors (peft.c's registry key)."""
    if name.endswith(".lora_magnitude_vector.default.weight"):
        return name[: -len(".default.weight")]
    assert ".default." in name, name
    return name.replace(".default.", ".")


def write_json(path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def lora_case(case, d):
    """The starting adapter, saved and reloaded; returns (model, [(key, param)], optimizer)."""
    torch.manual_seed(0)
    base = load_base(case["model"])
    model = get_peft_model(base, LoraConfig(lora_dropout=0.0, **case["lora"]))
    gen = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            z = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.copy_(p * (1.0 + INIT_SCALE * z) if "lora_magnitude_vector" in n else INIT_SCALE * z)
    save_peft_adapter(model, d / "adapter")
    model = PeftModel.from_pretrained(load_base(case["model"]), str(d / "adapter"), is_trainable=True)
    model.eval()
    params = [(peft_key(n), p) for n, p in model.named_parameters() if p.requires_grad]
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                    loraplus_weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS,
                                    foreach=False, fused=False)
    names = ["groupA", "embedding", "groupB", "groupB_no_decay"]  # create_loraplus_optimizer's order
    return model, params, opt, names, {}


def bitfit_case(case, d):
    base = load_base(case["model"])
    bias_names = [n for n, _ in base.named_parameters() if n.endswith(".bias")]
    gen = torch.Generator().manual_seed(case["seed"])
    pm = dict(base.named_parameters())
    with torch.no_grad():
        for n in bias_names:
            pm[n].add_(INIT_SCALE * torch.randn(pm[n].shape, generator=gen, dtype=torch.float32))
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "BITFIT", "base_model_name_or_path": f"{MODELS_REL}/{case['model']}",
         "task_type": "CAUSAL_LM", "bias_names": bias_names}, indent=2, sort_keys=True))
    np_save_file({f"base_model.model.{n}": pm[n].detach().numpy().copy() for n in bias_names},
                 str(d / "adapter" / "adapter_model.safetensors"), metadata={"format": "pt"})
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    model = load_base(case["model"])
    mp = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in bias_names:
        with torch.no_grad():
            mp[n].copy_(torch.from_numpy(saved[f"base_model.model.{n}"]))
        mp[n].requires_grad_(True)
    return trainer_groups(model, lambda n: f"base_model.model.{n}")


def full_case(case, d):
    model = load_base(case["model"])
    return trainer_groups(model, lambda n: n, lr=case.get("lr", LR))


def trainer_groups(model, key_of, lr=LR):
    """Trainer.create_optimizer's two groups (its code, on its own decay rule)."""
    decay = Trainer.get_decay_parameter_names(None, model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS, foreach=False, fused=False)
    conv = {n for n, p in named if n.endswith(".weight") and
            isinstance(model.get_submodule(n[: -len(".weight")]), Conv1D)}
    params = [(key_of(n), p) for n, p in named]
    return model, params, opt, ["decay", "no_decay"], {key_of(n) for n in conv}


def run_case(case):
    name = case["name"]
    d = OUT / name
    clean_dir(d)
    torch.manual_seed(0)
    if case["kind"] == "loraplus":
        model, params, opt, gnames, conv = lora_case(case, d)
    elif case["kind"] == "bitfit":
        model, params, opt, gnames, conv = bitfit_case(case, d)
    else:
        model, params, opt, gnames, conv = full_case(case, d)
    ref_in = np_load_file(str(ROOT / MODELS_REL / case["model"] / "reference.safetensors"))
    ids = ref_in["input_ids"].astype(np.int32)
    labels = make_labels(ids)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    lab_t = torch.from_numpy(labels.astype(np.int64))

    by_param = {}
    for gi, g in enumerate(opt.param_groups):
        for p in g["params"]:
            by_param[id(p)] = (gnames[gi], g["lr"], g["weight_decay"])
    assert len(by_param) == len(params), (len(by_param), len(params))
    groups = {k: dict(zip(("group", "lr", "weight_decay"), by_param[id(p)])) for k, p in params}
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=N_STEPS)
    tparams = [p for _, p in params]

    def layout(k, p):  # peft.c's (out, in) layout of a GPT-2 Conv1D weight
        w = p.detach().numpy() if isinstance(p, torch.Tensor) else p
        return w.T if k in conv else w

    ref = {"input_ids": ids, "labels": labels}
    for k, p in params:
        ref[f"stride/{k}"] = np.array([1 if p.numel() <= SAMPLE_ABOVE else STRIDE], dtype=np.int32)
    steps = []
    # values whose gradient is zero in exact arithmetic (GPT-2's key bias: softmax does not
    # see a shift of every key score by q.b) get rounding noise of ~1e-8 as their gradient,
    # the size of eps, and Adam moves them by an amount of up to lr that only that noise
    # decides; they are marked, to be compared against the bound of Adam's step instead
    noise = {k: np.ones(p.numel(), dtype=bool) for k, p in params}
    nonzero = {k: np.zeros(p.numel(), dtype=bool) for k, p in params}
    for step in range(N_STEPS):
        lr = sched.get_last_lr()[0]
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids_t, labels=lab_t, use_cache=False)
        out.loss.backward()
        for k, p in params:
            g = layout(k, p.grad).reshape(-1)
            noise[k] &= np.abs(g) <= 1e-6 * np.abs(g).max()
            nonzero[k] |= g != 0  # an exact 0 (an unused position's embedding) is no noise
        gnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm=MAX_NORM)
        opt.step()
        sched.step()
        steps.append({"step": step + 1, "lr": lr, "loss": f(out.loss.detach()), "grad_norm": f(gnorm)})
        for k, p in params:
            s = int(ref[f"stride/{k}"][0])
            ref[f"step{step + 1}/{k}"] = np.ascontiguousarray(layout(k, p).reshape(-1)[::s]).astype(np.float32)
    for k, _ in params:
        noise[k] &= nonzero[k]
        if noise[k].any():
            ref[f"noise/{k}"] = noise[k][::int(ref[f"stride/{k}"][0])].astype(np.uint8)
    np_save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(d / "reference.safetensors"),
                 metadata={"generator": f"tools/make_optim_fixtures.py {name}"})
    write_json(d / "groups.json", {"generator": f"tools/make_optim_fixtures.py {name}", "model": case["model"],
                                   "kind": case["kind"], "lr": opt.defaults["lr"], "betas": list(BETAS), "eps": EPS,
                                   "weight_decay": WEIGHT_DECAY, "loraplus_lr_ratio": RATIO if case["kind"] == "loraplus" else 0,
                                   "max_grad_norm": MAX_NORM, "schedule": "linear, no warmup", "n_steps": N_STEPS,
                                   "tensors": groups, "steps": steps})
    counts = {}
    for g in groups.values():
        counts[g["group"]] = counts.get(g["group"], 0) + 1
    return f"{name}: {len(params)} tensors {counts} losses {[round(s['loss'], 5) for s in steps]}"


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
