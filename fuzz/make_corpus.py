#!/usr/bin/env python3
"""make_corpus.py — writes the seed corpora fuzz/corpus/<harness>/ from the
test fixtures (tests/fixtures). Deterministic; run from the repository root:

    python3 fuzz/make_corpus.py

Models are shrunk (hidden 16-32, one layer) so that each fuzz execution is
fast and the whole corpus stays small. Multi-file seeds use the part headers
of fuzz/fuzz.h ("%%peft-file NAME\\n"). Needs numpy, gguf, torch,
transformers (the Python reference stack)."""
import json
import os
import shutil
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")
MARK = b"%%peft-file "


def parts(files):
    """files: list of (name, bytes) -> one multi-file input."""
    return b"\n".join(MARK + n.encode() + b"\n" + d for n, d in files)


def read(*p):
    with open(os.path.join(*p), "rb") as f:
        return f.read()


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- GGUF: small models with the fixtures' metadata (tokenizer included) --

def small_gguf(src, path, seed):
    import gguf
    r = gguf.GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    halve = {"embedding_length", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv"}
    w = gguf.GGUFWriter(path, arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            et = f.types[1]
            if et == gguf.GGUFValueType.STRING:
                val = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                val = [f.parts[i][0].item() for i in f.data]
            w.add_key_value(k, val, vt, sub_type=et)
            continue
        if vt == gguf.GGUFValueType.STRING:
            val = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            val = f.parts[f.data[0]][0].item()
        short = k[len(arch) + 1:] if k.startswith(arch + ".") else None
        if short == "block_count":
            val = 1
        elif short in halve:
            val = val // 2
        w.add_key_value(k, val, vt)
    rng = np.random.default_rng(seed)
    for t in r.tensors:
        if t.name.startswith("blk.") and not t.name.startswith("blk.0."):
            continue
        ne = [int(x) for x in t.shape]
        # ne[0] innermost; keep the vocabulary (320) and context (128) rows
        new = [ne[0] // 2] + [d if d in (320,) or (t.name == "position_embd.weight") else d // 2
                              for d in ne[1:]]
        shape = list(reversed(new))
        if t.name.endswith("norm.weight"):
            a = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            a = (0.15 * rng.standard_normal(shape)).astype(np.float32)
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(t.name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return read(path)


def gguf_seeds(tmp):
    models = {}
    for i, n in enumerate(["tiny-llama.q8_0", "tiny-gpt2.f32", "tiny-qwen2.q8_0"]):
        models[n] = small_gguf(os.path.join(FIX, "models", n + ".gguf"), os.path.join(tmp, n + ".gguf"), 100 + i)
        put("model_gguf", n.replace("tiny-", "small-") + ".gguf", models[n])
        put("gguf", n.replace("tiny-", "small-") + ".gguf", models[n])
    put("gguf", "all_types.gguf", read(FIX, "formats", "all_types.gguf"))
    # header only: version 3, no tensors, no metadata
    put("gguf", "empty_v3.gguf", b"GGUF" + (3).to_bytes(4, "little") + bytes(16))


# ---- safetensors -----------------------------------------------------------

def st_seeds():
    f = os.path.join(FIX, "formats")
    put("safetensors", "st_basic.safetensors", read(f, "st_basic.safetensors"))
    put("safetensors", "st_meta.safetensors", read(f, "st_meta.safetensors"))
    sh = os.path.join(f, "st_sharded")
    put("safetensors", "st_sharded.parts",
        parts([(n, read(sh, n)) for n in sorted(os.listdir(sh))]))
    sd = os.path.join(f, "st_single_dir")
    put("safetensors", "st_single_dir.parts",
        parts([(n, read(sd, n)) for n in sorted(os.listdir(sd))]))


# ---- HF folders: small random models saved by transformers -----------------

def hf_folder(kind, tmp, seed):
    import torch
    import transformers as tf
    torch.manual_seed(seed)
    common = dict(vocab_size=320, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=64)
    if kind == "llama":
        cfg = tf.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True, bos_token_id=317,
                             eos_token_id=319, pad_token_id=317, rope_theta=50000.0, **common)
        m, src, dtype, shard = tf.LlamaForCausalLM(cfg), "tiny-llama", torch.bfloat16, None
    elif kind == "llama3":
        cfg = tf.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=False, bos_token_id=317,
                             eos_token_id=319, rope_theta=500000.0,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                             **common)
        m, src, dtype, shard = tf.LlamaForCausalLM(cfg), "tiny-llama", torch.float16, None
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=False, bos_token_id=317,
                             eos_token_id=317, **common)
        m, src, dtype, shard = tf.Qwen2ForCausalLM(cfg), "tiny-qwen2", torch.bfloat16, "12KB"
    else:
        cfg = tf.GPT2Config(vocab_size=320, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                            bos_token_id=317, eos_token_id=317)
        m, src, dtype, shard = tf.GPT2LMHeadModel(cfg), "tiny-gpt2", torch.float32, None
    m = m.to(dtype)
    d = os.path.join(tmp, "hf-" + kind)
    kw = {"max_shard_size": shard} if shard else {}
    m.save_pretrained(d, safe_serialization=True, **kw)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIX, "models", src, n), d)
    names = [n for n in sorted(os.listdir(d)) if n != "generation_config.json"]
    # config.json first: the one a plain (headerless) input stands for
    names.sort(key=lambda n: n != "config.json")
    return [(n, read(d, n)) for n in names]


def gpt2_files_from_json(tok):
    """The tiny byte-level tokenizer as GPT-2's vocab.json + merges.txt."""
    t = json.loads(tok)
    vocab = json.dumps(t["model"]["vocab"], ensure_ascii=False).encode()
    merges = t["model"]["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    return vocab, ("#version: 0.2\n" + "\n".join(lines) + "\n").encode()


def hf_seeds(tmp):
    for i, kind in enumerate(["llama", "llama3", "qwen2", "gpt2"]):
        files = hf_folder(kind, tmp, 200 + i)
        put("hf", "small-%s.parts" % kind, parts(files))


# ---- tokenizers ------------------------------------------------------------

def small_sentencepiece():
    """Llama 2's tokenizer.json cut to its first 400 ids (specials, the 256
    byte tokens, the first merges), merges kept where all three tokens are
    left. None when ../shared/data is absent."""
    p = os.path.join(ROOT, "..", "shared", "data", "tokenizers", "llama2", "tokenizer.json")
    if not os.path.exists(p):
        p = "/work/shared/data/tokenizers/llama2/tokenizer.json"
    if not os.path.exists(p):
        return None
    t = json.load(open(p, encoding="utf-8"))
    vocab = {k: v for k, v in t["model"]["vocab"].items() if v < 400}
    merges = []
    for m in t["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = merges
    return json.dumps(t, ensure_ascii=False, separators=(",", ":")).encode()


TEXTS = [
    b"Hello world! How are you?",
    "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001F600  tabs\tand\nnewlines\r\n".encode(),
    b"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    b"   leading spaces and 12345 numbers 3.14159 don't won't we'll",
    b"\xff\xfe invalid utf-8 \xc3 \xe2\x82",
]


WORDPIECE_TEXTS = {
    "cased": "[MASK] H\u00e9llo, w\u00f6rld! \u4e2d\u6587 ##x e\u0301 \u0130 \x00\x7f\u200b".encode(),
    "strip": TEXTS[1],
    "seq": "Hello [NEW] hello [CLS]" .encode() + b" " + b"x" * 150,
}


def wordpiece_seeds():
    """The small WordPiece tokenizers of tests/fixtures/tokenizer/wordpiece
    (BertNormalizer cased / accent-stripping, a Sequence normalizer with
    WhitespaceSplit), each with a text."""
    for name, text in WORDPIECE_TEXTS.items():
        tj = read(FIX, "tokenizer", "wordpiece", name, "tokenizer.json")
        put("tokenizer", "wordpiece-%s.parts" % name, parts([("tokenizer.json", tj), ("text", text)]))


def tok_seeds():
    tj = read(FIX, "models", "tiny-llama", "tokenizer.json")
    tc = read(FIX, "models", "tiny-llama", "tokenizer_config.json")
    put("tokenizer", "bytelevel.json", tj)
    put("tokenizer", "bytelevel-chat.parts",
        parts([("tokenizer.json", tj), ("tokenizer_config.json", tc), ("text", TEXTS[2])]))
    vocab, merges = gpt2_files_from_json(tj)
    put("tokenizer", "gpt2-files.parts", parts([("vocab.json", vocab), ("merges.txt", merges), ("text", TEXTS[1])]))
    sp = small_sentencepiece()
    if sp:
        put("tokenizer", "sentencepiece.parts", parts([("tokenizer.json", sp), ("text", TEXTS[3])]))
    wordpiece_seeds()
    for i, t in enumerate(TEXTS):
        put("tokenizer", "text-%d.parts" % i, parts([("text", t)]))
    with open(os.path.join(FIX, "tokenizer", "corpus.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 6:
                break
            text = json.loads(line).get("text", "")
            put("tokenizer", "corpus-%d.parts" % i, parts([("text", text.encode())]))


# ---- adapters ----------------------------------------------------------------

def adapter_seeds():
    base = {"llama": 0, "gpt2": 1, "qwen2": 2}
    for group in ("methods", "lora"):
        g = os.path.join(FIX, group)
        for name in sorted(os.listdir(g)):
            d = os.path.join(g, name, "adapter")
            if not os.path.isdir(d):
                continue
            if os.path.getsize(os.path.join(d, "adapter_model.safetensors")) > 30000:
                continue   # the big all-linear LoRAs add size, not coverage
            # the base named in the case (vera_llama_noproj, lokr_llama_r2: llama)
            arch = next((t for t in name.split("_") if t in base), None) if group == "methods" else name.split("_", 1)[0]
            files = sorted(os.listdir(d), key=lambda n: n != "adapter_config.json")
            put("adapter", name + ".parts", bytes([base[arch]]) + parts([(n, read(d, n)) for n in files]))


# ---- JSONL -------------------------------------------------------------------

def jsonl_seeds():
    # option byte: bit 0 tokenizer (llama / gpt2), bit 1 pack, bit 2 skip_bad,
    # bit 3 no EOS, bits 4-5 seq_len (8, 16, 64, none)
    text = b'{"text": "To be, or not to be: that is the question."}\n{"text": "Hello"}\n\n{"text": "x"}\r\n'
    label = b'{"text": "good film", "label": 1}\n{"text": "bad", "label": 0}\n{"text": "ok", "label": 2}\n'
    bad = b'{"text": "fine"}\nnot json\n{"prompt": "p"}\n{"text": 3}\n{"text": "again"}\n'
    put("jsonl", "text-pad", bytes([0x20]) + text)
    put("jsonl", "text-pack", bytes([0x02]) + text)
    put("jsonl", "pc-gpt2", bytes([0x11]) + read(FIX, "data", "pc.jsonl"))
    put("jsonl", "pc-pack-noeos", bytes([0x2a]) + read(FIX, "data", "pc.jsonl"))
    put("jsonl", "chat", bytes([0x30]) + read(FIX, "data", "chat.jsonl"))
    put("jsonl", "chat-short", bytes([0x20]) + read(FIX, "data", "chat.jsonl")[:2000])
    put("jsonl", "label", bytes([0x10]) + label)
    put("jsonl", "skip-bad", bytes([0x24]) + bad)
    # the two row styles read as kinds; a BOM and a row of unknown fields (skipped)
    put("jsonl", "alpaca", bytes([0x30]) + read(FIX, "data", "alpaca.jsonl"))
    put("jsonl", "sharegpt", bytes([0x30]) + read(FIX, "data", "sharegpt.jsonl"))
    put("jsonl", "bom-unknown", bytes([0x34]) + b'\xef\xbb\xbf{"question": "a", "answer": "b"}\n{"text": "c"}\n')


# ---- sentence-transformers files (fuzz_embed: tiny-bert's encoder) -----------

def embed_seeds():
    d = os.path.join(FIX, "models", "tiny-bert")
    mod, st, pool = read(d, "modules.json"), read(d, "sentence_bert_config.json"), read(d, "1_Pooling", "config.json")
    put("embed", "minilm-like.parts", parts([("modules.json", mod), ("sentence_bert_config.json", st),
                                             ("pooling.json", pool), ("text", "ROMEO: But, soft! what light".encode())]))
    put("embed", "no-modules.parts", parts([("text", "Good night.".encode())]))
    trunc = b'{"max_seq_length": 4, "do_lower_case": false}'
    modes = b'{"word_embedding_dimension": 64, "pooling_mode": ["cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken"]}'
    two = (b'[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}, '
           b'{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]')
    put("embed", "modes-truncated.parts", parts([("modules.json", two), ("sentence_bert_config.json", trunc),
                                                 ("pooling.json", modes), ("text", "Who is there? Nay, answer me".encode())]))
    put("embed", "legacy-cls.parts", parts([("modules.json", mod), ("pooling.json", b'{"pooling_mode_cls_token": true}')]))


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        gguf_seeds(tmp)
        st_seeds()
        hf_seeds(tmp)
    tok_seeds()
    adapter_seeds()
    jsonl_seeds()
    embed_seeds()
    total = 0
    for d in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, d))
        size = sum(os.path.getsize(os.path.join(OUT, d, f)) for f in files)
        total += size
        print("%-12s %3d files %8d bytes" % (d, len(files), size))
    print("total %d bytes" % total)


if __name__ == "__main__":
    main()
