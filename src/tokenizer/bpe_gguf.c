/* bpe_gguf.c — a tokenizer from GGUF metadata (tokenizer.ggml.*):
 *   model "gpt2":  byte-level BPE, tokens + merges, pre-tokenizer by
 *                  tokenizer.ggml.pre;
 *   model "llama": SentencePiece BPE, tokens + scores; no merge list: the
 *                  adjacent pair whose concatenation is the highest-scoring
 *                  token merges first (as SentencePiece and llama.cpp do);
 *   model "bert":  WordPiece (wordpiece.c).
 * token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
 * 6 byte. Control (and unknown) tokens are special added tokens; user-defined
 * ones are added tokens matched even when special tokens are not parsed. */
#include "tokenizer/bpe_internal.h"
#include "tokenizer/wordpiece.h"
#include "core/limits.h"

#include <stdlib.h>
#include <string.h>

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* Optional integer key: dflt when absent. */
static int get_opt_int(const gguf_file *g, const char *key, int64_t dflt, int64_t *out, peft_err *err) {
    *out = dflt;
    if (gguf_find_key(g, key) < 0) return 0;
    return gguf_get_int(g, key, out, err);
}

/* Every character of s is one of the 256 byte-level characters. */
static bool in_byte_alphabet(const bpe_tokenizer *t, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        int l = bpe_utf8_len(p + i, n - i);
        if (!l) return false;
        uint32_t cp = l == 1 ? p[i] : l == 2 ? (uint32_t)((p[i] & 0x1F) << 6 | (p[i + 1] & 0x3F)) : 0xFFFF;
        if (cp >= 324 || t->cp2byte[cp] < 0) return false;
        i += (size_t)l;
    }
    return true;
}

int bpe_load_gguf(const gguf_file *g, bpe_tokenizer **out, peft_err *err) {
    *out = NULL;
    const char *path = gguf_path(g);
    const char *model = gguf_get_str(g, "tokenizer.ggml.model");
    if (!model)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: no tokenizer.ggml.model string (no tokenizer in this GGUF)", path);
    if (!strcmp(model, "bert")) return wp_load_gguf(g, out, err);
    bool spm = !strcmp(model, "llama");
    if (!spm && strcmp(model, "gpt2"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                         "%s: tokenizer.ggml.model \"%s\" is not supported (only \"gpt2\", \"llama\" and \"bert\")", path,
                         model);

    gguf_vtype et;
    uint64_t n_tok = 0;
    const void *raw;
    int rc = gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok, &raw, err);
    if (rc) return rc;
    if (et != GGUF_TYPE_STRING || n_tok == 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens is not a non-empty string array", path);
    if (n_tok > PEFT_MAX_VOCAB)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu tokens, the limit is %d", path,
                         (unsigned long long)n_tok, PEFT_MAX_VOCAB);

    bpe_tokenizer *t = bpe_alloc(path, err);
    if (!t) return PEFT_ERR_NOMEM;
    t->kind = spm ? BPE_SENTENCEPIECE : BPE_BYTE_LEVEL;
    const char *pre = gguf_get_str(g, "tokenizer.ggml.pre");
    if (!(t->pre_name = peft_strdup(spm ? "llama" : (pre ? pre : "default"), err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    if ((rc = bpe_set_vocab_size(t, (int)n_tok, err))) goto fail;
    for (uint64_t i = 0; i < n_tok; i++) {
        const char *s = gguf_get_arr_str(g, "tokenizer.ggml.tokens", i);
        if (!s) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] unreadable", path,
                                 (unsigned long long)i); goto fail; }
        if ((rc = bpe_set_token(t, (int)i, s, strlen(s), err))) goto fail;
    }
    if ((rc = bpe_build_index(t, err))) goto fail;

    /* Token types (optional). */
    int32_t *types = NULL;
    if (gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        uint64_t nt;
        if ((rc = gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &nt, &raw, err))) goto fail;
        if ((et != GGUF_TYPE_INT32 && et != GGUF_TYPE_UINT32) || nt != n_tok) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.token_type is not an int32 array of %llu",
                           path, (unsigned long long)n_tok);
            goto fail;
        }
        types = malloc(n_tok * sizeof *types);
        if (!types) { rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path); goto fail; }
        memcpy(types, raw, n_tok * sizeof *types);
    }

    if (spm) {
        uint64_t ns;
        if ((rc = gguf_get_arr(g, "tokenizer.ggml.scores", &et, &ns, &raw, err))) { free(types); goto fail; }
        if (et != GGUF_TYPE_FLOAT32 || ns != n_tok) {
            free(types);
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.scores is not a float32 array of %llu", path,
                           (unsigned long long)n_tok);
            goto fail;
        }
        t->scores = malloc(n_tok * sizeof(float));
        if (!t->scores) { free(types); rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path); goto fail; }
        memcpy(t->scores, raw, n_tok * sizeof(float));
        t->merge_mode = BPE_MERGE_SCORES;
        t->byte_fallback = true;
        t->norm_replace_space = true;
        int64_t v;
        if ((rc = get_opt_int(g, "tokenizer.ggml.add_space_prefix", 1, &v, err))) { free(types); goto fail; }
        t->norm_prepend = t->add_space_prefix = v != 0;
        t->strip_leading_space = t->add_space_prefix;
    } else {
        uint64_t nm = 0;
        if (gguf_find_key(g, "tokenizer.ggml.merges") < 0) {
            free(types);
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: byte-level tokenizer without tokenizer.ggml.merges", path);
            goto fail;
        }
        if ((rc = gguf_get_arr(g, "tokenizer.ggml.merges", &et, &nm, &raw, err))) { free(types); goto fail; }
        if (et != GGUF_TYPE_STRING) {
            free(types);
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.merges is not a string array", path);
            goto fail;
        }
        if ((rc = bpe_merges_reserve(t, nm, err))) { free(types); goto fail; }
        for (uint64_t i = 0; i < nm; i++) {
            const char *m = gguf_get_arr_str(g, "tokenizer.ggml.merges", i);
            const char *sp = m ? strchr(m, ' ') : NULL;
            if (!sp || sp == m || !sp[1]) {
                free(types);
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] is not \"left right\"", path,
                               (unsigned long long)i);
                goto fail;
            }
            rc = bpe_add_merge(t, m, (size_t)(sp - m), sp + 1, strlen(sp + 1), (int)i, err);
            if (rc < 0) { free(types); goto fail; }
            rc = 0;
        }
        if ((rc = bpe_pretok_preset(t, pre, err))) { free(types); goto fail; }
    }

    if (types) {
        for (uint64_t i = 0; i < n_tok && !rc; i++) {
            int ty = types[i];
            if (ty == TT_CONTROL || ty == TT_UNKNOWN) {
                /* A control token outside the byte alphabet in a byte-level
                 * vocabulary is a converter mislabel (transformers skips it). */
                if (!spm && !in_byte_alphabet(t, t->tok[i])) continue;
                rc = bpe_add_added(t, (int)i, true, false, false, false, err);
            } else if (ty == TT_USER) {
                rc = bpe_add_added(t, (int)i, false, false, false, false, err);
            }
        }
        free(types);
        if (rc) goto fail;
    }

    int64_t v;
    struct { const char *key; int *dst; } ids[] = {
        {"tokenizer.ggml.bos_token_id", &t->bos_id}, {"tokenizer.ggml.eos_token_id", &t->eos_id},
        {"tokenizer.ggml.unknown_token_id", &t->unk_id}, {"tokenizer.ggml.padding_token_id", &t->pad_id}};
    for (int i = 0; i < 4; i++) {
        if ((rc = get_opt_int(g, ids[i].key, -1, &v, err))) goto fail;
        if (v >= (int64_t)n_tok) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: %s = %lld is outside the vocabulary (%llu)", path, ids[i].key,
                           (long long)v, (unsigned long long)n_tok);
            goto fail;
        }
        *ids[i].dst = v < 0 ? -1 : (int)v;
    }
    if (spm && t->unk_id < 0) t->unk_id = bpe_lookup(t, "<unk>", 5);
    /* BOS: the file's flag; without one, SentencePiece vocabularies add it
     * (llama.cpp's and transformers' default) and byte-level ones do not. */
    if ((rc = get_opt_int(g, "tokenizer.ggml.add_bos_token", spm ? 1 : 0, &v, err))) goto fail;
    if (v && t->bos_id >= 0) {
        if (!(t->prefix_ids = peft_malloc(sizeof(int32_t), err))) { rc = PEFT_ERR_NOMEM; goto fail; }
        t->prefix_ids[0] = t->bos_id;
        t->n_prefix = 1;
    }
    if ((rc = get_opt_int(g, "tokenizer.ggml.add_eos_token", 0, &v, err))) goto fail;
    if (v && t->eos_id >= 0) {
        if (!(t->suffix_ids = peft_malloc(sizeof(int32_t), err))) { rc = PEFT_ERR_NOMEM; goto fail; }
        t->suffix_ids[0] = t->eos_id;
        t->n_suffix = 1;
    }
    const char *tpl = gguf_get_str(g, "tokenizer.chat_template");
    if (tpl && !(t->chat_template = peft_strdup(tpl, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    if ((rc = bpe_finish(t, err))) goto fail;
    *out = t;
    return 0;
fail:
    bpe_free(t);
    return rc;
}
