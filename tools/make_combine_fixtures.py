#!/usr/bin/env python3
"""Generate the adapter-arithmetic fixtures (HF peft's add_weighted_adapter) for tests/test_combine.c.

    python3 tools/make_combine_fixtures.py      # (re)writes tests/fixtures/combine/

Deterministic (fixture_common re-executes with PYTHONHASHSEED=0, so the union of
target_modules, a Python set, is written in a fixed order). Not run in CI: the files
it writes are committed.

It writes
  inputs/<name>/            LoRA adapters made with get_peft_model, every lora_A and lora_B
                            re-drawn as 0.1*N(0,1) (so B != 0 and every delta is non-trivial)
  cases/<case>/             save_pretrained of the adapter add_weighted_adapter made for that
                            case (adapter_config.json + adapter_model.safetensors)
  cases.json                each case: inputs and weights, combination_type, the keyword
                            arguments, and what the C test compares (tensors or delta)
  logits.safetensors        input_ids (1, 8) and, per case named in LOGIT_CASES,
                            "<case>" = logits (1, 8, 320) of the base with that combined
                            adapter active
See tests/fixtures/combine/README.md for the cases and what each checks.
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fixture_common import INIT_SCALE, MODELS_REL, ROOT, clean_dir, load_base, save_peft_adapter  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "combine"

INPUTS = [
    # name, model, seed, LoraConfig fields
    ("a_qv_r4", "tiny-llama", 201, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    ("b_qvo_r4", "tiny-llama", 202, dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"])),
    ("c_qv_r8_rslora", "tiny-llama", 203, dict(r=8, lora_alpha=8, use_rslora=True,
                                                target_modules=["q_proj", "v_proj"])),
    ("g1_attn_fc_r4", "tiny-gpt2", 204, dict(r=4, lora_alpha=8, fan_in_fan_out=True,
                                              target_modules=["c_attn", "c_fc"])),
    ("g2_attn_r2", "tiny-gpt2", 205, dict(r=2, lora_alpha=2, fan_in_fan_out=True, target_modules=["c_attn"])),
]

# compare: "tensors" (A and B element by element) or "delta" (B·A·scale per module: SVD
# factors are unique only up to the sign of each singular pair)
CASES = [
    dict(name="linear", model="tiny-llama", adapters=[("a_qv_r4", 0.7), ("b_qvo_r4", -0.4)], type="linear",
         kw={}, compare="tensors"),
    dict(name="single_svd_is_linear", model="tiny-llama", adapters=[("c_qv_r8_rslora", 1.5)], type="svd",
         kw={}, compare="tensors"),
    dict(name="cat", model="tiny-llama", adapters=[("a_qv_r4", 0.6), ("c_qv_r8_rslora", 0.5)], type="cat",
         kw={}, compare="tensors"),
    dict(name="cat_union", model="tiny-llama", adapters=[("a_qv_r4", 1.0), ("b_qvo_r4", 0.5)], type="cat",
         kw={}, compare="tensors"),
    dict(name="svd", model="tiny-llama",
         adapters=[("a_qv_r4", 1.0), ("b_qvo_r4", 0.5), ("c_qv_r8_rslora", -0.8)], type="svd",
         kw=dict(svd_rank=6), compare="delta"),
    dict(name="svd_default_rank", model="tiny-llama", adapters=[("a_qv_r4", 0.9), ("c_qv_r8_rslora", 0.3)],
         type="svd", kw={}, compare="delta"),
    dict(name="svd_clamp", model="tiny-llama", adapters=[("a_qv_r4", 0.9), ("b_qvo_r4", 0.3)],
         type="svd", kw=dict(svd_rank=3, svd_clamp=0.9), compare="delta"),
    # the same factors before the clamp: svd_clamp's signs follow the SVD's (see README.md)
    dict(name="svd_clamp_unclamped", model="tiny-llama", adapters=[("a_qv_r4", 0.9), ("b_qvo_r4", 0.3)],
         type="svd", kw=dict(svd_rank=3), compare="delta"),
    dict(name="svd_rslora_first", model="tiny-llama", adapters=[("c_qv_r8_rslora", 1.0), ("a_qv_r4", 1.0)],
         type="svd", kw=dict(svd_rank=4), compare="delta"),
    dict(name="ties", model="tiny-llama", adapters=[("a_qv_r4", 0.7), ("b_qvo_r4", 0.3)], type="ties",
         kw=dict(density=0.5), compare="tensors"),
    dict(name="ties_frequency", model="tiny-llama", adapters=[("a_qv_r4", 1.0), ("b_qvo_r4", -0.6)],
         type="ties", kw=dict(density=0.3, majority_sign_method="frequency"), compare="tensors"),
    dict(name="magnitude_prune", model="tiny-llama", adapters=[("a_qv_r4", 0.5), ("b_qvo_r4", 0.5)],
         type="magnitude_prune", kw=dict(density=0.6), compare="tensors"),
    dict(name="dare_linear_d1", model="tiny-llama", adapters=[("a_qv_r4", 0.7), ("b_qvo_r4", 0.3)],
         type="dare_linear", kw=dict(density=1.0), compare="tensors"),
    dict(name="dare_ties_d1", model="tiny-llama", adapters=[("a_qv_r4", 0.7), ("b_qvo_r4", -0.3)],
         type="dare_ties", kw=dict(density=1.0, majority_sign_method="frequency"), compare="tensors"),
    dict(name="ties_svd", model="tiny-llama",
         adapters=[("a_qv_r4", 1.0), ("b_qvo_r4", 0.5), ("c_qv_r8_rslora", 0.8)], type="ties_svd",
         kw=dict(density=0.5, svd_rank=5), compare="delta"),
    dict(name="magnitude_prune_svd", model="tiny-llama", adapters=[("a_qv_r4", 1.0), ("c_qv_r8_rslora", 0.8)],
         type="magnitude_prune_svd", kw=dict(density=0.4, svd_rank=4), compare="delta"),
    dict(name="dare_ties_svd_d1", model="tiny-llama", adapters=[("a_qv_r4", 1.0), ("c_qv_r8_rslora", -0.8)],
         type="dare_ties_svd", kw=dict(density=1.0, svd_rank=6), compare="delta"),
    dict(name="gpt2_svd", model="tiny-gpt2", adapters=[("g1_attn_fc_r4", 1.0), ("g2_attn_r2", 0.7)], type="svd",
         kw=dict(svd_rank=3), compare="delta"),
    dict(name="gpt2_cat", model="tiny-gpt2", adapters=[("g1_attn_fc_r4", 0.5), ("g2_attn_r2", 2.0)], type="cat",
         kw={}, compare="tensors"),
]
LOGIT_CASES = ["svd", "cat_union", "gpt2_svd"]


def lora_params(model):
    return [(n, p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def make_input(name: str, model: str, seed: int, lcfg: dict) -> None:
    torch.manual_seed(0)
    base = load_base(model)
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **lcfg)
    pm = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in lora_params(pm):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * INIT_SCALE)
    save_peft_adapter(pm, OUT / "inputs" / name)


def save_combined(pm, name: str, dest: Path) -> None:
    """save_pretrained of one non-default adapter writes <dir>/<name>/: move it to dest."""
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp, selected_adapters=[name])
        src = Path(tmp) / name
        card = src / "README.md"
        if card.exists():
            card.unlink()
        assert sorted(p.name for p in src.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)


def main() -> None:
    import os
    os.chdir(ROOT)  # base_model_name_or_path stays the relative tests/fixtures/models/<model>
    readme = (OUT / "README.md").read_text() if (OUT / "README.md").exists() else None
    clean_dir(OUT)
    if readme is not None:
        (OUT / "README.md").write_text(readme)
    (OUT / "inputs").mkdir()
    (OUT / "cases").mkdir()
    for name, model, seed, lcfg in INPUTS:
        make_input(name, model, seed, lcfg)
    ids = np_load_file(str(ROOT / MODELS_REL / "tiny-llama" / "reference.safetensors"))["input_ids"][:1, :8]
    ids = ids.astype(np.int32)
    logits = {"input_ids": ids}
    meta = []
    for case in CASES:
        torch.manual_seed(0)
        base = load_base(case["model"])
        names = [a for a, _ in case["adapters"]]
        pm = None
        for i, n in enumerate(dict.fromkeys(names)):
            path = str(OUT / "inputs" / n)
            if pm is None:
                pm = PeftModel.from_pretrained(base, path, adapter_name=n)
            else:
                pm.load_adapter(path, adapter_name=n)
        pm.eval()
        pm.add_weighted_adapter(adapters=names, weights=[w for _, w in case["adapters"]], adapter_name="combined",
                                combination_type=case["type"], **case["kw"])
        save_combined(pm, "combined", OUT / "cases" / case["name"])
        # the saved folder reloads to the same tensors
        saved = np_load_file(str(OUT / "cases" / case["name"] / "adapter_model.safetensors"))
        mem = {n.replace(".combined.", "."): p.detach().numpy() for n, p in pm.named_parameters()
               if ".combined." in n}
        assert sorted(saved) == sorted(mem), (sorted(saved), sorted(mem))
        for k in saved:
            assert np.array_equal(saved[k], mem[k]), k
        if case["name"] in LOGIT_CASES:
            pm.set_adapter("combined")
            with torch.no_grad():
                lg = pm(input_ids=torch.from_numpy(ids.astype(np.int64)), use_cache=False).logits
            logits[case["name"]] = lg.numpy().astype(np.float32)
        scal = {mod.scaling["combined"] for _, mod in pm.named_modules()
                if isinstance(getattr(mod, "scaling", None), dict) and "combined" in mod.scaling}
        assert len(scal) == 1, scal
        meta.append(dict(name=case["name"], model=f"{MODELS_REL}/{case['model']}",
                         adapters=[[f"inputs/{n}", w] for n, w in case["adapters"]], type=case["type"],
                         kw=case["kw"], compare=case["compare"], scaling=float(next(iter(scal)))))
    np_save_file({k: np.ascontiguousarray(v) for k, v in logits.items()}, str(OUT / "logits.safetensors"),
                 metadata={"generator": "tools/make_combine_fixtures.py"})
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
