#!/usr/bin/env python3
"""Generate the reference fixtures for the architectures of issue 11 (an independent oracle).

    python3 tools/make_arch_fixtures.py        # (re)writes the files listed below

Deterministic: two runs give byte-identical files (the script re-executes itself with
PYTHONHASHSEED=0 through fixture_common, one torch thread, deterministic algorithms).

tests/fixtures/models/ (documented in tests/fixtures/models/README.md, "Issue 11 architectures"):
  tiny-qwen3/, tiny-gemma2/, tiny-phi3/   HF folders (Qwen3ForCausalLM, Gemma2ForCausalLM,
                                          Phi3ForCausalLM) + reference.safetensors (input_ids [2,20],
                                          logits from transformers f32 eager)
  tiny-{qwen3,gemma2,phi3}.f32.gguf       laid out as llama.cpp's convert_hf_to_gguf.py writes them
  tiny-bert/, tiny-roberta/               BertForSequenceClassification / RobertaForSequenceClassification
                                          (3 labels) + a sentence-transformers pipeline (modules.json:
                                          mean pooling + Normalize) + reference.safetensors (a padded
                                          batch of 3, one a pair: last_hidden_state, pooler_output,
                                          logits, embeddings)
  tiny-bert.f32.gguf, tiny-roberta.f32.gguf   llama.cpp's `bert` layout (BertModel / RobertaModel classes)
tests/fixtures/lora/ (documented in tests/fixtures/lora/README.md, "Issue 11 architectures"):
  qwen3_qv/, gemma2_qv/, phi3_qkv/, bert_qv_cls/, roberta_qv_cls/
                                          peft LoRA r=2 alpha=4 adapters (A and B non-zero)
                                          + reference.safetensors (loss, logits, merged logits, every
                                          LoRA gradient; the encoders also the classifier's gradients)

Requires: torch, transformers (v5), peft, sentence-transformers, safetensors, gguf, tokenizers, numpy.
The decoders share the tiny BPE tokenizer of tools/make_fixtures.py (retrained here, same bytes).
"""
from __future__ import annotations

import fixture_common  # noqa: F401  (first: re-executes hermetically, keeps HF offline)

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fixture_common import INIT_SCALE, MODELS_REL, ROOT, clean_dir, f, save_peft_adapter  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    Gemma2Config,
    Gemma2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (the shared tiny BPE tokenizer and its constants)

MODELS = ROOT / MODELS_REL
LORA = ROOT / "tests" / "fixtures" / "lora"
GEN = "tools/make_arch_fixtures.py"

SEQ = 20  # longer than Gemma 2's sliding window (8), so the window matters
ENDOFTEXT, IM_START, IM_END, VOCAB = mf.ENDOFTEXT, mf.IM_START, mf.IM_END, mf.VOCAB
GEMMA2_WINDOW = 8
# Gemma 2's real caps (50 / 30) never bite at this size: attention scores are ~1 and logits ~2.
# These do: removing either moves the logits by >0.1 (checked below).
GEMMA2_ATTN_CAP = 4.0
GEMMA2_FINAL_CAP = 3.0
GEMMA2_QPAS = 24  # query_pre_attn_scalar != head_dim (16)
QWEN3_HEAD_DIM = 24  # != hidden/heads (16), as in real Qwen3 (0.6B: 1024 hidden, 16 heads, head_dim 128)
PHI3_PARTIAL_ROTARY = 0.5

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT)


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------

def qwen3_config() -> Qwen3Config:
    return Qwen3Config(**COMMON, head_dim=QWEN3_HEAD_DIM, rms_norm_eps=1e-6, rope_theta=mf.ROPE_THETA,
                       hidden_act="silu", attention_bias=False, use_sliding_window=False,
                       tie_word_embeddings=False)


def gemma2_config(**over) -> Gemma2Config:
    kw = dict(COMMON, head_dim=16, rms_norm_eps=1e-6,
              # llama.cpp's Gemma2 converter writes no rope.freq_base, so the GGUF means the
              # llama.cpp default 10000: the HF config uses the same
              rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
              query_pre_attn_scalar=GEMMA2_QPAS, sliding_window=GEMMA2_WINDOW,
              attn_logit_softcapping=GEMMA2_ATTN_CAP, final_logit_softcapping=GEMMA2_FINAL_CAP,
              attention_bias=False, tie_word_embeddings=True)
    kw.update(over)
    return Gemma2Config(**kw)


def phi3_config() -> Phi3Config:
    return Phi3Config(**COMMON, original_max_position_embeddings=128, rms_norm_eps=1e-5,
                      rope_theta=mf.ROPE_THETA, partial_rotary_factor=PHI3_PARTIAL_ROTARY,
                      hidden_act="silu", resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                      sliding_window=None, tie_word_embeddings=False)


LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def bert_config() -> BertConfig:
    return BertConfig(vocab_size=BERT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, hidden_act="gelu", max_position_embeddings=128,
                      type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                      num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                      problem_type="single_label_classification")


def roberta_config() -> RobertaConfig:
    # RoBERTa's positions start at padding_idx + 1 = 2, so it needs max_positions + 2 rows
    return RobertaConfig(vocab_size=ROBERTA_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, hidden_act="gelu", max_position_embeddings=130,
                         type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                         num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                         problem_type="single_label_classification")


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int, *, one_plus_norm: bool = False) -> None:
    """make_fixtures.randomize's scales (norm w 1+0.1N, norm b 0.05N, biases 0.1N, embeddings
    0.2N, matrices 0.15N). With one_plus_norm (Gemma: y = norm(x)·(1 + w)) the stored norm
    weight is 0.1N, so the effective scale is again 1 + 0.1N."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        low = name.lower()
        is_norm = "norm" in low
        if is_norm and name.endswith(".weight"):
            v = (0.0 if one_plus_norm else 1.0) + 0.1 * torch.randn(p.shape, generator=g)
        elif is_norm and name.endswith(".bias"):
            v = 0.05 * torch.randn(p.shape, generator=g)
        elif name.endswith(".bias"):
            v = 0.1 * torch.randn(p.shape, generator=g)
        elif "embed" in low:
            v = 0.2 * torch.randn(p.shape, generator=g)
        else:
            v = 0.15 * torch.randn(p.shape, generator=g)
        p.copy_(v.to(p.dtype))


def build(cls, cfg, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    m = cls(cfg).to(torch.float32)
    randomize(m, seed, **kw)
    m.eval()
    return m


def dec_input_ids(tok: Tokenizer) -> np.ndarray:
    ids = np.zeros((2, SEQ), dtype=np.int32)
    enc = [ENDOFTEXT] + tok.encode(mf.PROMPT).ids
    assert len(enc) >= SEQ, len(enc)
    ids[0] = enc[:SEQ]
    rng = np.random.default_rng(2024)
    ids[1, 0] = ENDOFTEXT
    ids[1, 1:] = rng.integers(0, VOCAB, size=SEQ - 1)
    ids[1, 5] = IM_START
    ids[1, 9] = IM_END
    return ids


@torch.no_grad()
def dec_logits(model, input_ids: np.ndarray) -> np.ndarray:
    model.eval()
    out = model(input_ids=torch.from_numpy(input_ids.astype(np.int64)), use_cache=False)
    return out.logits.detach().float().numpy().copy()


def sd_np(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy().copy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------
# GGUF (what llama.cpp's convert_hf_to_gguf.py writes; see the models README)
# --------------------------------------------------------------------------------------

def vocab_base(d: Path):
    """TextModel.get_vocab_base: tokens by id, CONTROL for added special tokens, USER_DEFINED
    for other added tokens, NORMAL otherwise."""
    t = AutoTokenizer.from_pretrained(str(d))
    vocab = t.get_vocab()
    rev = {i: s for s, i in vocab.items()}
    added = t.get_added_vocab()
    dec = t.added_tokens_decoder
    tokens, types = [], []
    for i in range(len(rev)):
        s = rev[i]
        if s in added:
            types.append(int(gguf.TokenType.CONTROL if dec[i].special else gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(s)
    return tokens, types


def gguf_vocab_gpt2(w: gguf.GGUFWriter, d: Path) -> None:
    """TextModel._set_vocab_gpt2. The tokenizer.ggml.pre hash of this tiny tokenizer is not in
    the converter's table (it would stop there); "gpt-2" names its pre-tokenizer."""
    tokens, types = vocab_base(d)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(d, load_merges=True).add_to_gguf(w, quiet=True)


def gguf_vocab_bert(w: gguf.GGUFWriter, d: Path, type_vocab_size: int) -> None:
    """BertModel.set_vocab: WordPiece -> 'phantom space' vocab (##x -> x, other non-control
    tokens get a leading U+2581)."""
    tokens, types = vocab_base(d)
    w.add_token_type_count(type_vocab_size)

    def phantom(tok, tt):
        if tt == gguf.TokenType.CONTROL:
            return tok
        return tok[2:] if tok.startswith("##") else "\u2581" + tok
    tokens = [phantom(a, b) for a, b in zip(tokens, types)]
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(d, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def gguf_tensors(arch: gguf.MODEL_ARCH, n_layer: int, sd: dict[str, np.ndarray], rename=None, transform=None,
                 skip=()) -> list[tuple[str, str, np.ndarray]]:
    """[(gguf name, hf name, array)], names through gguf-py's TensorNameMap, in the HF file's
    (alphabetical) key order, as the converter walks them."""
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    out = []
    for hf in sorted(sd):
        if hf in skip or hf.endswith(("rotary_emb.inv_freq", "position_ids")):
            continue
        src = rename(hf) if rename else hf
        if src is None:
            continue
        name = tmap.get_name(src, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf} ({src})")
        data = sd[hf] if transform is None else transform(hf, sd[hf])
        out.append((name, hf, f32(data)))
    return out


def write_gguf(path: Path, arch: gguf.MODEL_ARCH, name: str, params, vocab, tensors) -> None:
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    params(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab(w)
    for n, _hf, a in tensors:
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    kv = {}
    for k, fld in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = fld.types[0] if fld.types else None
        if t == gguf.GGUFValueType.ARRAY:
            kv[k] = f"<array of {len(fld.data)}>"
        elif t == gguf.GGUFValueType.STRING:
            kv[k] = bytes(fld.parts[fld.data[0]]).decode("utf-8")
        else:
            kv[k] = fld.parts[fld.data[0]].tolist()[0]
    tens = {t.name: np.array(t.data).reshape(list(reversed([int(x) for x in t.shape]))) for t in r.tensors}
    return kv, tens


def text_params(cfg, ftype=gguf.LlamaFileType.ALL_F32, head_dim=None):
    """TextModel.set_gguf_parameters for these configs."""
    def p(w):
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(mf.rope_theta_of(cfg))
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        if head_dim is not None:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_file_type(ftype)
    return p


def gemma2_params(cfg):
    """Gemma2Model.set_gguf_parameters (no call to the base: no rope.freq_base, no
    query_pre_attn_scalar)."""
    def p(w):
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    return p


def phi3_params(cfg):
    """Phi3MiniModel.set_gguf_parameters."""
    def p(w):
        n_embd, n_head = cfg.hidden_size, cfg.num_attention_heads
        rot = cfg.rope_parameters.get("partial_rotary_factor", 1.0)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_head_count(n_head)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_dimension_count(int(rot * n_embd) // n_head)
        w.add_rope_freq_base(mf.rope_theta_of(cfg))
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_sliding_window(cfg.sliding_window or 0)
    return p


def bert_params(cfg, pooling):
    """BertModel.set_gguf_parameters: TextModel's keys that a BERT config has, then
    causal_attention=false, pooling_type (from modules.json) and the classifier labels."""
    def p(w):
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_causal_attention(False)
        w.add_pooling_type(pooling)
        w.add_classifier_output_labels([v for _k, v in sorted(cfg.id2label.items())])
    return p


# --------------------------------------------------------------------------------------
# decoders
# --------------------------------------------------------------------------------------

def write_dec_tokenizer(tok: Tokenizer, d: Path) -> None:
    mf.write_tokenizer(tok, d, bos="<|endoftext|>", eos="<|endoftext|>", chat_template=None)


def hf_gguf_check(d: Path, fname: str, cfg, input_ids, want: np.ndarray, report: list, label: str) -> None:
    """transformers' own GGUF loader (its tensor maps and inverse transforms) must give `want`.
    The folder's config is passed: the loader's GGUF->config maps drop keys (e.g. Gemma 2's
    query_pre_attn_scalar and soft-caps, Qwen3's head_dim), so only its tensor mapping is tested."""
    shutil.copy(MODELS / fname, d / fname)
    try:
        m = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=fname, config=cfg, dtype=torch.float32,
                                                 attn_implementation="eager")
        got = dec_logits(m, input_ids)
        diff = float(np.abs(got - want).max())
        report.append(f"{label}: transformers(gguf_file) vs reference max|diff| = {diff:.2e}")
        assert diff < 1e-4, diff
    finally:
        (d / fname).unlink()


def make_decoders(tok: Tokenizer, report: list) -> None:
    input_ids = dec_input_ids(tok)
    specs = [
        ("tiny-qwen3", Qwen3ForCausalLM, qwen3_config(), 1101, gguf.MODEL_ARCH.QWEN3),
        ("tiny-gemma2", Gemma2ForCausalLM, gemma2_config(), 1102, gguf.MODEL_ARCH.GEMMA2),
        ("tiny-phi3", Phi3ForCausalLM, phi3_config(), 1103, gguf.MODEL_ARCH.PHI3),
    ]
    for folder, cls, cfg, seed, arch in specs:
        d = MODELS / folder
        clean_dir(d)
        gemma = arch == gguf.MODEL_ARCH.GEMMA2
        model = build(cls, cfg, seed, one_plus_norm=gemma)
        model.save_pretrained(d)
        write_dec_tokenizer(tok, d)
        ref = dec_logits(model, input_ids)
        re = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
        rediff = float(np.abs(dec_logits(re, input_ids) - ref).max())
        assert rediff == 0.0, (folder, rediff)
        report.append(f"{folder}: logits std {ref.std():.3f} absmax {np.abs(ref).max():.3f}; reload exact")
        refs = {"input_ids": input_ids, "logits": ref}
        sd = sd_np(model)

        if gemma:
            # the knobs must matter: each one removed moves the logits
            for what, over in (("attn softcap", dict(attn_logit_softcapping=None)),
                               ("final softcap", dict(final_logit_softcapping=None)),
                               ("sliding window", dict(sliding_window=4096)),
                               ("query_pre_attn_scalar=head_dim", dict(query_pre_attn_scalar=16))):
                alt = build(cls, gemma2_config(**over), seed, one_plus_norm=True)
                alt.load_state_dict(model.state_dict())
                lg = dec_logits(alt, input_ids)
                dd = float(np.abs(lg - ref).max())
                report.append(f"  gemma2 without {what}: logits move by {dd:.3f}")
                assert dd > 0.05, (what, dd)
                if what.startswith("query_pre_attn_scalar"):
                    # llama.cpp scales gemma2 queries by 1/sqrt(key_length) (1/sqrt(n_embd/n_head)
                    # only for the 46-layer 27B); the GGUF has no query_pre_attn_scalar key
                    refs["logits_gguf"] = lg
            tensors = gguf_tensors(arch, cfg.num_hidden_layers, sd, skip=("lm_head.weight",),
                                   transform=lambda hf, a: a + 1.0 if hf.endswith("norm.weight") else a)
            params = gemma2_params(cfg)
        elif arch == gguf.MODEL_ARCH.PHI3:
            tensors = gguf_tensors(arch, cfg.num_hidden_layers, sd)
            params = phi3_params(cfg)
        else:
            tensors = gguf_tensors(arch, cfg.num_hidden_layers, sd)
            params = text_params(cfg, head_dim=cfg.head_dim)
        fname = f"{folder}.f32.gguf"
        write_gguf(MODELS / fname, arch, folder, params, lambda w, d=d: gguf_vocab_gpt2(w, d), tensors)
        # own round trip: the file holds exactly the converter-transformed HF tensors
        kv, back = read_gguf(MODELS / fname)
        for n, hf, a in tensors:
            assert back[n].shape == a.shape and np.array_equal(back[n], a), n
        report.append(f"{fname}: {len(tensors)} tensors: {', '.join(sorted(n for n, _h, _a in tensors if not n.startswith('blk.1.')))}")
        report.append(f"  kv: {json.dumps({k: v for k, v in kv.items() if not k.startswith('tokenizer.ggml.token')})}")
        hf_gguf_check(d, fname, cfg, input_ids, ref, report, fname)
        np_save_file({k: np.ascontiguousarray(v) for k, v in refs.items()}, str(d / "reference.safetensors"),
                     metadata={"generator": f"{GEN} {folder}"})


# --------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------

BERT_VOCAB = 320
ROBERTA_VOCAB = 320
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ENC_TEXTS = [
    ("ROMEO: But, soft! what light through yonder window breaks? It is the east.", None),
    ("Good night.", None),
    ("Who's there?", "Nay, answer me: stand, and unfold yourself."),
]
ENC_LABELS = [2, 0, 1]


def corpus_chunks() -> list[str]:
    text = mf.CORPUS.read_text(encoding="utf-8")[:mf.CORPUS_CHARS]
    lines = text.splitlines(keepends=True)
    return ["".join(lines[i:i + 64]) for i in range(0, len(lines), 64)]


def train_wordpiece() -> Tokenizer:
    """WordPiece with BERT's normalizer / pre-tokenizer / template. The trainer's vocabulary set is
    stable, but it numbers pieces of equal count in hash-map order, which changes run to run; so
    the ids are reassigned: the 5 specials, the single characters, "##" + a character, then the
    other learned pieces, each group sorted. (WordPiece encoding is greedy longest-match, so ids
    do not change how a text splits.)"""
    def train() -> dict[str, int]:
        t = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        t.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                  strip_accents=None, lowercase=True)
        t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=BERT_VOCAB, min_frequency=2, show_progress=False,
                                            special_tokens=BERT_SPECIALS, continuing_subword_prefix="##")
        chunks = corpus_chunks()
        t.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
        assert t.get_vocab_size() == BERT_VOCAB, t.get_vocab_size()
        return json.loads(t.to_str())["model"]["vocab"]

    trained = train()
    for _ in range(2):  # each training draws new hash seeds: the set must not depend on them
        assert set(train()) == set(trained), "WordPiece vocabulary set is not stable"
    singles = sorted(t for t in trained if t not in BERT_SPECIALS and len(t) == 1)
    cont = sorted(t for t in trained if t.startswith("##") and len(t) == 3)
    rest = sorted(t for t in trained if t not in BERT_SPECIALS and t not in singles and t not in cont)
    order = BERT_SPECIALS + singles + cont + rest
    assert len(order) == len(set(order)) == BERT_VOCAB
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(order)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(BERT_SPECIALS)
    ids = {s: tok.token_to_id(s) for s in BERT_SPECIALS}
    assert list(ids.values()) == [0, 1, 2, 3, 4], ids
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def train_roberta_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=ROBERTA_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=ROBERTA_SPECIALS)
    chunks = corpus_chunks()
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    assert tok.get_vocab_size() == ROBERTA_VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in ROBERTA_SPECIALS] == [0, 1, 2, 3, 4]
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return tok


def write_enc_tokenizer(tok: Tokenizer, d: Path, specials: dict) -> None:
    tok.save(str(d / "tokenizer.json"), pretty=True)
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "model_max_length": 128,
           "clean_up_tokenization_spaces": False}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def write_st_pipeline(d: Path, dim: int) -> None:
    """The sentence-transformers files an all-MiniLM-L6-v2-style folder has: Transformer ->
    mean Pooling -> Normalize (2_Normalize has no files; sentence-transformers needs none)."""
    mods = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (d / "modules.json").write_text(json.dumps(mods, indent=2) + "\n")
    (d / "1_Pooling").mkdir()
    pool = {"word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    (d / "1_Pooling" / "config.json").write_text(json.dumps(pool, indent=2) + "\n")
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False},
                                                            indent=2) + "\n")


def enc_batch(d: Path) -> dict[str, np.ndarray]:
    t = AutoTokenizer.from_pretrained(str(d))
    # a batch mixing singles and a pair: tokenize one by one, then pad on the right
    encs = [t(a, b, return_token_type_ids=True) if b is not None else t(a, return_token_type_ids=True)
            for a, b in ENC_TEXTS]
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    for (a, b), e in zip(ENC_TEXTS, encs):
        r = raw.encode(a, b) if b is not None else raw.encode(a)
        assert e["input_ids"] == r.ids and e["token_type_ids"] == r.type_ids
    n = max(len(e["input_ids"]) for e in encs)
    out = {k: np.zeros((len(encs), n), dtype=np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    out["input_ids"][:] = t.pad_token_id
    for i, e in enumerate(encs):
        L = len(e["input_ids"])
        out["input_ids"][i, :L] = e["input_ids"]
        out["attention_mask"][i, :L] = 1
        out["token_type_ids"][i, :L] = e["token_type_ids"]
    assert out["token_type_ids"].max() < (2 if "bert" in d.name and "roberta" not in d.name else 1)
    return out


def st_embeddings(d: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(d), device="cpu")
    st.eval()
    names = [m.__class__.__name__ for m in st]
    assert names == ["Transformer", "Pooling", "Normalize"], names
    feats = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
    with torch.no_grad():
        emb = st(feats)["sentence_embedding"].numpy().copy()
    # encode() tokenizes the single sentences itself: it must agree with the batch rows
    singles = [i for i, (_a, b) in enumerate(ENC_TEXTS) if b is None]
    enc = st.encode([ENC_TEXTS[i][0] for i in singles], convert_to_numpy=True, batch_size=8)
    dd = float(np.abs(enc - emb[singles]).max())
    assert dd < 1e-5, dd
    return emb


@torch.no_grad()
def make_encoders(report: list) -> None:
    specs = [
        ("tiny-bert", BertForSequenceClassification, bert_config(), 1104, train_wordpiece(),
         {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
          "mask_token": "[MASK]", "do_lower_case": True,
          "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}),
        ("tiny-roberta", RobertaForSequenceClassification, roberta_config(), 1105, train_roberta_bpe(),
         {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>",
          "unk_token": "<unk>", "mask_token": "<mask>", "model_input_names": ["input_ids", "attention_mask"]}),
    ]
    for folder, cls, cfg, seed, tok, specials in specs:
        d = MODELS / folder
        clean_dir(d)
        model = build(cls, cfg, seed)
        model.save_pretrained(d)
        write_enc_tokenizer(tok, d, specials)
        write_st_pipeline(d, cfg.hidden_size)
        batch = enc_batch(d)
        tt = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
        out = model(**tt, output_hidden_states=True)
        base = getattr(model, model.base_model_prefix)
        bo = base(**tt)
        last = bo.last_hidden_state.numpy().copy()
        assert np.array_equal(out.hidden_states[-1].numpy(), last)
        refs = dict(batch)
        refs["last_hidden_state"] = last
        if bo.pooler_output is not None:
            refs["pooler_output"] = bo.pooler_output.numpy().copy()
        refs["logits"] = out.logits.numpy().copy()
        # masked mean + L2 by hand must agree with sentence-transformers
        m = batch["attention_mask"][..., None].astype(np.float64)
        mean = (last.astype(np.float64) * m).sum(1) / m.sum(1)
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        emb = st_embeddings(d, batch)
        assert float(np.abs(mean - emb).max()) < 1e-6
        refs["embeddings"] = emb
        re = AutoModelForSequenceClassification.from_pretrained(str(d), dtype=torch.float32,
                                                                attn_implementation="eager")
        re.eval()
        assert np.array_equal(re(**tt).logits.numpy(), refs["logits"]), folder
        report.append(f"{folder}: batch {batch['input_ids'].shape}, logits {np.round(refs['logits'], 3).tolist()}, "
                      f"hidden std {last.std():.3f}")
        report.append(f"  input_ids {batch['input_ids'].tolist()}")
        if folder == "tiny-roberta":
            # position ids come from input_ids != pad (not from attention_mask)
            pos = base.embeddings.create_position_ids_from_input_ids(tt["input_ids"], cfg.pad_token_id)
            refs["position_ids"] = pos.numpy().astype(np.int32)
        np_save_file({k: np.ascontiguousarray(v) for k, v in refs.items()}, str(d / "reference.safetensors"),
                     metadata={"generator": f"{GEN} {folder}"})
        write_encoder_gguf(folder, d, cfg, model)
        report.append(f"  {folder}.f32.gguf written")


def write_encoder_gguf(folder: str, d: Path, cfg, model) -> None:
    """BertModel / RobertaModel in llama.cpp's converter (model_arch BERT for both)."""
    sd = sd_np(model)
    roberta = folder == "tiny-roberta"
    prefix = "roberta." if roberta else "bert."
    offset = cfg.pad_token_id + 1 if roberta else 0

    def rename(hf):
        n = hf[len(prefix):] if hf.startswith(prefix) else hf
        if n in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            return None  # "we are only using BERT for embeddings so we don't need the pooling layer"
        if n in ("classifier.weight", "classifier.bias"):  # BertForSequenceClassification (labels present)
            n = "classifier.out_proj." + n.split(".")[-1]
        return n

    def transform(hf, a):
        if roberta and hf.endswith("embeddings.position_embeddings.weight"):
            return a[offset:]  # "position embeddings start at pad_token_id + 1, so just chop down"
        return a

    tensors = gguf_tensors(gguf.MODEL_ARCH.BERT, cfg.num_hidden_layers, sd, rename=rename, transform=transform)
    c = copy.deepcopy(cfg)
    c.max_position_embeddings = cfg.max_position_embeddings - offset
    vocab = (lambda w: (gguf_vocab_gpt2(w, d), w.add_token_type_count(cfg.type_vocab_size))) if roberta \
        else (lambda w: gguf_vocab_bert(w, d, cfg.type_vocab_size))
    fname = f"{folder}.f32.gguf"
    write_gguf(MODELS / fname, gguf.MODEL_ARCH.BERT, folder, bert_params(c, gguf.PoolingType.MEAN), vocab, tensors)
    _kv, back = read_gguf(MODELS / fname)
    for n, _hf, a in tensors:
        assert np.array_equal(back[n], a), n
    ENC_GGUF[folder] = (_kv, sorted(n for n, _h, _a in tensors))


ENC_GGUF: dict = {}


# --------------------------------------------------------------------------------------
# LoRA references
# --------------------------------------------------------------------------------------

LORA_R, LORA_ALPHA = 2, 4
DEC_MASK = {0: range(0, 4), 1: range(12, 20)}  # labels set to -100
LORA_CASES = [
    dict(name="qwen3_qv", model="tiny-qwen3", seed=111, targets=["q_proj", "v_proj"]),
    dict(name="gemma2_qv", model="tiny-gemma2", seed=112, targets=["q_proj", "v_proj"]),
    dict(name="phi3_qkv", model="tiny-phi3", seed=113, targets=["qkv_proj"]),
    dict(name="bert_qv_cls", model="tiny-bert", seed=114, targets=["query", "value"], seq_cls=True),
    dict(name="roberta_qv_cls", model="tiny-roberta", seed=115, targets=["query", "value"], seq_cls=True),
]


def adapter_key(pname: str) -> str:
    return pname.replace(".default.", ".").replace(".modules_to_save.", ".")


def run_lora_case(case: dict, report: list) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    name, mdir = case["name"], f"{MODELS_REL}/{case['model']}"
    d = LORA / name
    clean_dir(d)
    ref_in = np_load_file(str(ROOT / mdir / "reference.safetensors"))
    seq_cls = case.get("seq_cls", False)

    def load():
        if seq_cls:
            m = AutoModelForSequenceClassification.from_pretrained(mdir, dtype=torch.float32,
                                                                   attn_implementation="eager")
        else:
            m = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager")
        m.eval()
        return m

    if seq_cls:
        inputs = {k: ref_in[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
        labels = np.array(ENC_LABELS, dtype=np.int32)
        cfg = LoraConfig(task_type="SEQ_CLS", r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                         target_modules=case["targets"], modules_to_save=["classifier"])
    else:
        inputs = {"input_ids": ref_in["input_ids"].astype(np.int32)}
        labels = inputs["input_ids"].copy()
        for row, cols in DEC_MASK.items():
            labels[row, list(cols)] = -100
        cfg = LoraConfig(task_type="CAUSAL_LM", r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                         target_modules=case["targets"])
    tin = {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}
    tlab = torch.from_numpy(labels.astype(np.int64))
    kw = {} if seq_cls else {"use_cache": False}

    torch.manual_seed(0)
    base = load()
    base_logits = base(**tin, **kw).logits.detach()
    model = get_peft_model(base, cfg)
    model.eval()
    gen = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and (".lora_A." in n or ".lora_B." in n):
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_SCALE)
    save_peft_adapter(model, d / "adapter")

    model = PeftModel.from_pretrained(load(), str(d / "adapter"), is_trainable=True)
    model.eval()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    saved = np_load_file(str(d / "adapter" / "adapter_model.safetensors"))
    keys = [adapter_key(n) for n, _p in params]
    assert sorted(keys) == sorted(saved), (sorted(keys), sorted(saved))
    for (n, p), k in zip(params, keys):
        assert np.array_equal(p.detach().numpy(), saved[k]), k
    scal = {m.scaling["default"] for _n, m in model.named_modules()
            if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}
    assert scal == {LORA_ALPHA / LORA_R}, scal

    model.zero_grad(set_to_none=True)
    out = model(**tin, labels=tlab, **kw)
    out.loss.backward()
    logits, loss = out.logits.detach(), out.loss.detach()
    if seq_cls:
        manual = F.cross_entropy(logits.double(), tlab)
    else:
        manual = fixture_common.shifted_ce(logits, tlab)
    assert abs(f(manual) - f(loss)) < 1e-5, (f(manual), f(loss))
    grads = {k + ".grad": p.grad.detach().numpy().copy() for (n, p), k in zip(params, keys)}
    for k, g in grads.items():
        assert np.abs(g).max() > 0, f"{name}: zero gradient {k}"
    delta = f((logits - base_logits).abs().max())
    assert delta > 1e-2, delta
    with torch.no_grad():
        merged = copy.deepcopy(model).merge_and_unload()
        merged.eval()
        mlog = merged(**tin, **kw).logits.detach()
    mdiff = f((mlog - logits).abs().max())
    assert mdiff < 1e-4, mdiff
    ref = {**inputs, "labels": labels, "loss": np.array([f(loss)], dtype=np.float32),
           "logits": logits.numpy().astype(np.float32), "merged_logits": mlog.numpy().astype(np.float32), **grads}
    np_save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(d / "reference.safetensors"),
                 metadata={"generator": f"{GEN} {name}"})
    report.append(f"{name}: loss {f(loss):.6f}, |logits-base| {delta:.3f}, |merged-unmerged| {mdiff:.1e}, "
                  f"{len(keys)} trainable tensors: {keys[:3]}...")
    report.append("  " + ", ".join(f"{k}{list(saved[k].shape)}" for k in sorted(saved) if ".0." in k or "classifier" in k))


# --------------------------------------------------------------------------------------

def main() -> int:
    os.chdir(ROOT)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    report: list[str] = []
    tok = mf.train_tokenizer()
    shared = MODELS / "tiny-llama" / "tokenizer.json"
    if shared.exists():
        assert json.loads(tok.to_str()) == json.loads(shared.read_text()), "tokenizer differs from tiny-llama's"
    make_decoders(tok, report)
    make_encoders(report)
    for folder, (kv, names) in ENC_GGUF.items():
        report.append(f"{folder}.f32.gguf: {', '.join(n for n in names if not n.startswith('blk.1.'))}")
        report.append(f"  kv: {json.dumps({k: v for k, v in kv.items() if not k.startswith('tokenizer.ggml.token')})}")
    for case in LORA_CASES:
        run_lora_case(case, report)
    print("\n".join(report))
    new = [MODELS / n for n in ("tiny-qwen3", "tiny-gemma2", "tiny-phi3", "tiny-bert", "tiny-roberta")]
    new += [MODELS / f"{n}.f32.gguf" for n in ("tiny-qwen3", "tiny-gemma2", "tiny-phi3", "tiny-bert", "tiny-roberta")]
    new += [LORA / c["name"] for c in LORA_CASES]
    total = sum(p.stat().st_size for q in new for p in ([q] if q.is_file() else q.rglob("*")) if p.is_file())
    print(f"total {total} bytes")
    assert total < 6_000_000, total  # 5 models x (HF folder + f32 GGUF) of ~0.45 MB each
    return 0


if __name__ == "__main__":
    sys.exit(main())
