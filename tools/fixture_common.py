"""What the fixture generators (make_lora_fixtures.py, make_method_fixtures.py) share.

Import it before anything else: at import it makes the run hermetic — it re-executes the
calling script with PYTHONHASHSEED=0 (peft writes `target_modules`, a Python set, into
adapter_config.json as `list(set)`, whose order depends on the string hash seed) and
keeps Hugging Face offline — then provides the tiny models' path, the causal label mask
and small helpers.
"""
from __future__ import annotations

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
MODELS_REL = "tests/fixtures/models"  # relative, so base_model_name_or_path is machine independent
INIT_SCALE = 0.1  # adapter weights are re-drawn as INIT_SCALE * N(0, 1)
# causal label masking: row 0 positions 0..3, row 1 positions 10..15 are -100
MASK = {0: range(0, 4), 1: range(10, 16)}


def f(x) -> float:
    return float(x)


def load_base(model: str) -> torch.nn.Module:
    """A tiny causal LM from tests/fixtures/models, float32, eager attention, eval mode."""
    m = AutoModelForCausalLM.from_pretrained(f"{MODELS_REL}/{model}", dtype=torch.float32,
                                             attn_implementation="eager")
    m.eval()
    return m


def make_labels(input_ids: np.ndarray) -> np.ndarray:
    labels = input_ids.astype(np.int32).copy()
    for row, cols in MASK.items():
        labels[row, list(cols)] = -100
    return labels


def shifted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF causal loss: mean CE of logits[:, :-1] against labels[:, 1:], -100 ignored (float64)."""
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1]).double()
    lb = labels[:, 1:].reshape(-1).long()
    return F.cross_entropy(lg, lb, ignore_index=-100, reduction="mean")


def clean_dir(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


def save_peft_adapter(model, d: Path) -> None:
    """save_pretrained, keeping only adapter_config.json + adapter_model.safetensors (peft also
    writes a boilerplate model card README.md that carries nothing the C side needs)."""
    model.save_pretrained(str(d))
    card = d / "README.md"
    if card.exists():
        card.unlink()
    assert sorted(p.name for p in d.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
