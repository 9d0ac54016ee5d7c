#!/usr/bin/env python3
"""Generate the tiny-model fixtures used by the peft.c tests as an independent
oracle for the forward pass.

    python3 tools/make_fixtures.py            # (re)writes tests/fixtures/models/

Everything is deterministic: running it twice yields byte-identical files.

What it produces (see tests/fixtures/models/README.md for the full list):
  * a tiny byte-level BPE tokenizer (GPT-2 ByteLevel pre-tokenizer) trained on a
    slice of tinyshakespeare, vocab 320 = 256 bytes + 61 merges + 3 specials;
  * tiny random HF models (safetensors): tiny-llama, tiny-qwen2 (sharded),
    tiny-gpt2, tiny-llama-bf16;
  * the same models as GGUF (F32 and Q8_0), laid out the way llama.cpp's
    convert_hf_to_gguf.py lays them out (incl. the Q/K row permutation for llama);
  * reference.safetensors per model with input_ids and logits computed by
    transformers (f32, eval, full causal), plus logits_q8_0 for the Q8_0 GGUFs.

Requires: torch, transformers (v5), safetensors, gguf (gguf-py), tokenizers, numpy.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "models"
CORPUS = ROOT / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"
CORPUS_CHARS = 200_000  # training slice: the first 200k characters

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
N_MERGE_VOCAB = 317  # 256 byte tokens + 61 merges; the 3 specials go on top
VOCAB = N_MERGE_VOCAB + len(SPECIALS)  # 320
ENDOFTEXT, IM_START, IM_END = N_MERGE_VOCAB, N_MERGE_VOCAB + 1, N_MERGE_VOCAB + 2

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SEQ = 16
BATCH = 2
PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?"


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------

def train_tokenizer() -> Tokenizer:
    text = CORPUS.read_text(encoding="utf-8")[:CORPUS_CHARS]
    # feed fixed-size line chunks; the BPE trainer is deterministic for fixed input
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i:i + 64]) for i in range(0, len(lines), 64)]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=N_MERGE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    assert tok.get_vocab_size() == N_MERGE_VOCAB, tok.get_vocab_size()
    tok.add_special_tokens(SPECIALS)
    assert tok.get_vocab_size() == VOCAB
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == N_MERGE_VOCAB + i
    return tok


def write_tokenizer(tok: Tokenizer, d: Path, *, bos: str, eos: str, chat_template: str | None) -> None:
    tok.save(str(d / "tokenizer.json"), pretty=True)
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 128,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, hidden_act="silu")
ROPE_THETA = 50000.0


def llama_config() -> LlamaConfig:
    return LlamaConfig(**COMMON, rope_theta=ROPE_THETA, tie_word_embeddings=True,
                       attention_bias=False, mlp_bias=False,
                       bos_token_id=ENDOFTEXT, eos_token_id=IM_END, pad_token_id=ENDOFTEXT)


def qwen2_config() -> Qwen2Config:
    return Qwen2Config(**COMMON, rope_theta=ROPE_THETA, tie_word_embeddings=False,
                       use_sliding_window=False,
                       bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT)


def gpt2_config() -> GPT2Config:
    return GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                      n_inner=None, layer_norm_epsilon=1e-5, activation_function="gelu_new",
                      tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT)


def rope_theta_of(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(cfg.rope_theta)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with larger-than-default random values so the
    logits are far from zero and every weight visibly matters."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        is_norm = ("norm" in name) or (".ln_" in name) or name.startswith("transformer.ln_f")
        if is_norm and name.endswith(".weight"):
            v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        elif is_norm and name.endswith(".bias"):
            v = 0.05 * torch.randn(p.shape, generator=g)
        elif name.endswith(".bias"):
            v = 0.1 * torch.randn(p.shape, generator=g)
        elif "embed" in name or ".wte." in name or ".wpe." in name:
            v = 0.2 * torch.randn(p.shape, generator=g)
        else:
            v = 0.15 * torch.randn(p.shape, generator=g)
        p.copy_(v.to(p.dtype))


def build(kind: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "llama":
        m = LlamaForCausalLM(llama_config())
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(qwen2_config())
    elif kind == "gpt2":
        m = GPT2LMHeadModel(gpt2_config())
    else:
        raise ValueError(kind)
    m = m.to(torch.float32)
    randomize(m, seed)
    m.eval()
    return m


def make_input_ids(tok: Tokenizer) -> np.ndarray:
    ids = np.zeros((BATCH, SEQ), dtype=np.int32)
    enc = [ENDOFTEXT] + tok.encode(PROMPT).ids
    assert len(enc) >= SEQ, len(enc)
    ids[0] = enc[:SEQ]
    rng = np.random.default_rng(1234)
    ids[1, 0] = ENDOFTEXT
    ids[1, 1:] = rng.integers(0, VOCAB, size=SEQ - 1)
    ids[1, 5] = IM_START  # make sure special ids are exercised
    ids[1, 9] = IM_END
    return ids


@torch.no_grad()
def logits_of(model: torch.nn.Module, input_ids: np.ndarray) -> np.ndarray:
    model.eval()
    x = torch.from_numpy(input_ids.astype(np.int64))
    out = model(input_ids=x, use_cache=False)
    return out.logits.detach().to(torch.float32).numpy().copy()


def state_dict_np(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().to(torch.float32).cpu().numpy().copy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------
# GGUF (mirrors llama.cpp convert_hf_to_gguf.py conventions)
# --------------------------------------------------------------------------------------

def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp LlamaModel.permute: HF rotate-half row order -> GGML interleaved
    (adjacent-pair) RoPE row order. Q: permute(w, n_head, n_head);
    K: permute(w, n_head, n_kv_head) (i.e. uses the kv head count)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """Inverse of permute_qk."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gpt2": gguf.MODEL_ARCH.GPT2}
GPT2_TRANSPOSED = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
# tensors llama.cpp's converter keeps in F32 regardless of the requested type
F32_FORCED = ("position_embd.weight",)


def hf_to_gguf_tensors(kind: str, sd: dict[str, np.ndarray], cfg) -> list[tuple[str, str, np.ndarray]]:
    """Returns [(gguf_name, hf_name, array)] in a fixed logical order."""
    n_layer = cfg.num_hidden_layers if kind != "gpt2" else cfg.n_layer
    tmap = gguf.get_tensor_name_map(ARCH[kind], n_layer)
    out = []
    for hf_name, arr in sd.items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue
        if kind in ("llama", "gpt2") and cfg.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # tied: llama.cpp falls back to token_embd
        data = arr
        if kind == "llama":
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute_qk(data, cfg.num_attention_heads, cfg.num_attention_heads)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute_qk(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        if kind == "gpt2" and hf_name.endswith(GPT2_TRANSPOSED):
            data = data.T  # HF Conv1D stores [in, out]; GGUF wants [out, in] (ne0 = in)
        name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"cannot map {hf_name}")
        out.append((name, hf_name, np.ascontiguousarray(data, dtype=np.float32)))

    def order(item):
        n = item[0]
        if n.startswith("token_embd"):
            return (0, 0, n)
        if n.startswith("position_embd"):
            return (1, 0, n)
        if n.startswith("blk."):
            return (2, int(n.split(".")[1]), n)
        if n.startswith("output_norm"):
            return (3, 0, n)
        return (4, 0, n)

    out.sort(key=order)
    return out


def qtype_for(name: str, arr: np.ndarray, ftype: QT) -> QT:
    if ftype == QT.F32:
        return QT.F32
    if arr.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or name in F32_FORCED:
        return QT.F32
    if arr.shape[-1] % 32 != 0:
        return QT.F32
    return ftype


def vocab_for_gguf(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    vocab = tok.get_vocab()
    rev = {i: t for t, i in vocab.items()}
    special = set(SPECIALS)
    tokens, types = [], []
    for i in range(VOCAB):
        t = rev[i]
        tokens.append(t)
        types.append(int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL))
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    return tokens, types, merges


def write_gguf(path: Path, kind: str, model_name: str, cfg, tensors, ftype: QT, tok: Tokenizer,
               special: dict[str, int], chat_template: str | None) -> dict[str, np.ndarray]:
    """Writes one GGUF. Returns {gguf_name: the float32 values as stored (dequantized)}."""
    arch_name = gguf.MODEL_ARCH_NAMES[ARCH[kind]]
    w = gguf.GGUFWriter(str(path), arch_name)
    file_type = gguf.LlamaFileType.ALL_F32 if ftype == QT.F32 else gguf.LlamaFileType.MOSTLY_Q8_0

    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(model_name)
    if kind == "gpt2":
        # GPT2Model.set_gguf_parameters
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
        w.add_file_type(file_type)
    else:
        # TextModel.set_gguf_parameters (+ LlamaModel extras)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(rope_theta_of(cfg))
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_file_type(file_type)
        if kind == "llama":
            w.add_vocab_size(cfg.vocab_size)
            w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # tokenizer (TextModel._set_vocab_gpt2 + SpecialVocab)
    tokens, types, merges = vocab_for_gguf(tok)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(special["bos"])
    w.add_eos_token_id(special["eos"])
    w.add_pad_token_id(special["pad"])
    if chat_template is not None:
        w.add_chat_template(chat_template)

    stored: dict[str, np.ndarray] = {}
    for name, _hf, arr in tensors:
        qt = qtype_for(name, arr, ftype)
        if qt == QT.F32:
            w.add_tensor(name, arr)
            stored[name] = arr
        else:
            q = gguf.quants.quantize(arr, qt)
            w.add_tensor(name, q, raw_dtype=qt)
            stored[name] = gguf.quants.dequantize(q, qt).reshape(arr.shape).astype(np.float32)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def gguf_to_hf_state(kind: str, cfg, tensors, stored: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Undo the converter's layout changes on the (dequantized) GGUF tensors."""
    sd = {}
    for name, hf_name, _arr in tensors:
        data = stored[name]
        if kind == "llama":
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = unpermute_qk(data, cfg.num_attention_heads, cfg.num_attention_heads)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = unpermute_qk(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        if kind == "gpt2" and hf_name.endswith(GPT2_TRANSPOSED):
            data = data.T
        sd[hf_name] = torch.from_numpy(np.ascontiguousarray(data))
    return sd


@torch.no_grad()
def logits_with_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], input_ids) -> np.ndarray:
    import copy
    m = copy.deepcopy(model)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias", "inv_freq"))
               and k != "lm_head.weight"]
    assert not missing and not unexpected, (missing, unexpected)
    if getattr(m.config, "tie_word_embeddings", False):
        m.tie_weights()
    return logits_of(m, input_ids)


def try_transformers_gguf(d: Path, fname: str, input_ids, ref: np.ndarray, label: str,
                          config=None) -> tuple[str, float | None]:
    try:
        kw = {} if config is None else {"config": config}
        m = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=fname, dtype=torch.float32, **kw)
        m.eval()
        got = logits_of(m, input_ids)
        if got.shape != ref.shape:
            return f"{label}: shape mismatch {got.shape} vs {ref.shape}", None
        diff = float(np.abs(got - ref).max())
        return f"{label}: max|diff| = {diff:.3e}", diff
    except Exception as e:  # noqa: BLE001
        return f"{label}: transformers could not load it ({type(e).__name__}: {str(e)[:200]})", None


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def clean_dir(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


# NB: safetensors stores __metadata__ in a hash map, so more than one metadata key gives a
# run-to-run varying key order; every reference file therefore carries a single key.

def main() -> int:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    report: list[str] = []

    tok = train_tokenizer()
    input_ids = make_input_ids(tok)
    print("input_ids:\n", input_ids)

    specs = [
        # folder, kind, seed, bos, eos, chat_template
        ("tiny-llama", "llama", 1001, "<|endoftext|>", "<|im_end|>", CHATML_TEMPLATE),
        ("tiny-qwen2", "qwen2", 1002, "<|endoftext|>", "<|endoftext|>", None),
        ("tiny-gpt2", "gpt2", 1003, "<|endoftext|>", "<|endoftext|>", None),
    ]
    models_by_name = {}
    for folder, kind, seed, bos, eos, tmpl in specs:
        d = OUT / folder
        clean_dir(d)
        model = build(kind, seed)
        models_by_name[folder] = model
        if kind == "qwen2":
            model.save_pretrained(d, max_shard_size="200KB")
            assert (d / "model.safetensors.index.json").exists(), "qwen2 was not sharded"
        else:
            model.save_pretrained(d)
        write_tokenizer(tok, d, bos=bos, eos=eos, chat_template=tmpl)

        ref = logits_of(model, input_ids)
        # reload from disk to make sure the saved folder reproduces the logits
        re = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        rediff = float(np.abs(logits_of(re, input_ids) - ref).max())
        report.append(f"{folder}: HF reload max|diff| = {rediff:.3e}; logits std = {ref.std():.3f}, "
                      f"absmax = {np.abs(ref).max():.3f}")
        assert rediff == 0.0, rediff

        cfg = model.config
        sd = state_dict_np(model)
        tensors = hf_to_gguf_tensors(kind, sd, cfg)
        special = {"bos": tok.token_to_id(bos), "eos": tok.token_to_id(eos), "pad": ENDOFTEXT}
        refs = {"input_ids": input_ids, "logits": ref}
        for ftype, tag in ((QT.F32, "f32"), (QT.Q8_0, "q8_0")):
            fname = f"{folder}.{tag}.gguf"
            stored = write_gguf(OUT / fname, kind, folder, cfg, tensors, ftype, tok, special, tmpl)
            lg = logits_with_state(model, gguf_to_hf_state(kind, cfg, tensors, stored), input_ids)
            if ftype == QT.F32:
                dd = float(np.abs(lg - ref).max())
                report.append(f"{fname}: own un-permute round trip vs HF max|diff| = {dd:.3e}")
                assert dd == 0.0
            else:
                refs["logits_q8_0"] = lg
                report.append(f"{fname}: logits_q8_0 vs f32 logits max|diff| = {np.abs(lg - ref).max():.3e}")
            # independent check: transformers' own GGUF loader (reverse-permutes llama Q/K itself)
            # (GPT-2: transformers maps gpt2.context_length to n_ctx, not n_positions, so its
            #  GGUF-derived config gets a 1024-row wpe; pass the folder's config instead.)
            shutil.copy(OUT / fname, d / fname)
            try:
                msg, diff = try_transformers_gguf(
                    d, fname, input_ids, refs["logits"] if ftype == QT.F32 else refs["logits_q8_0"],
                    f"{fname}: transformers(gguf_file) vs {'logits' if ftype == QT.F32 else 'logits_q8_0'}",
                    config=cfg if kind == "gpt2" else None)
                report.append(msg)
                assert diff is not None and diff < 1e-4, msg
            finally:
                (d / fname).unlink()
        if kind == "llama":
            # negative control: a GGUF written WITHOUT the Q/K permutation must disagree when
            # transformers (which un-permutes llama Q/K itself) loads it
            unperm = [(n, h, sd[h].astype(np.float32)) for n, h, _a in tensors]
            tmp = d / "_unpermuted.gguf"
            write_gguf(tmp, kind, folder, cfg, unperm, QT.F32, tok, special, tmpl)
            try:
                msg, diff = try_transformers_gguf(d, tmp.name, input_ids, ref,
                                                  "negative control (no Q/K permutation)")
                report.append(msg)
                assert diff is not None and diff > 1e-2, msg
            finally:
                tmp.unlink()
        np_save_file({k: np.ascontiguousarray(v) for k, v in refs.items()}, str(d / "reference.safetensors"),
                     metadata={"generator": f"tools/make_fixtures.py {folder}"})

    # bf16 copy of tiny-llama: weights rounded to bf16, reference computed in f32 on the upcast weights
    d = OUT / "tiny-llama-bf16"
    clean_dir(d)
    import copy
    m16 = copy.deepcopy(models_by_name["tiny-llama"]).to(torch.bfloat16)
    m16.config.dtype = torch.bfloat16
    m16.save_pretrained(d)
    write_tokenizer(tok, d, bos="<|endoftext|>", eos="<|im_end|>", chat_template=CHATML_TEMPLATE)
    # NB: do not simply m16.to(float32): .to(bfloat16) also rounds the RoPE inv_freq buffer.
    m32 = copy.deepcopy(models_by_name["tiny-llama"])
    with torch.no_grad():
        for (n32, p32), (n16, p16) in zip(m32.named_parameters(), m16.named_parameters()):
            assert n32 == n16
            p32.copy_(p16.to(torch.float32))
    ref16 = logits_of(m32, input_ids)
    re = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    rediff = float(np.abs(logits_of(re, input_ids) - ref16).max())
    assert rediff == 0.0, rediff
    report.append(f"tiny-llama-bf16: reload(dtype=f32) max|diff| = {rediff:.3e}; vs f32 tiny-llama logits "
                  f"max|diff| = {np.abs(ref16 - logits_of(models_by_name['tiny-llama'], input_ids)).max():.3e}")
    np_save_file({"input_ids": input_ids, "logits": ref16}, str(d / "reference.safetensors"),
                 metadata={"generator": "tools/make_fixtures.py tiny-llama-bf16"})

    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
