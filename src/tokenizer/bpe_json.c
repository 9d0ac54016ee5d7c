/* bpe_json.c — loading a Hugging Face tokenizer.json (BPE model with its
 * normalizer, pre-tokenizer, post-processor and decoder), the optional
 * tokenizer_config.json beside it, and GPT-2's vocab.json + merges.txt. */
#include "tokenizer/bpe_internal.h"
#include "tokenizer/wordpiece.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char META[] = "\xE2\x96\x81"; /* "▁" */

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jbool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static int parse_file(const char *path, cJSON **out, peft_err *err) {
    char *data;
    size_t len;
    int rc = peft_read_file_max(path, PEFT_MAX_JSON_BYTES, &data, &len, err);
    if (rc) return rc;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(data, len, &end, false);
    if (!j) {
        long at = end ? (long)(end - data) : -1;
        free(data);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: not valid JSON (parse error near byte %ld)", path, at);
    }
    free(data);
    *out = j;
    return 0;
}

/* ---- components ------------------------------------------------------------------- */

/* Does any component (recursively, through Sequences) have this type? */
static bool has_type(const cJSON *c, const char *type) {
    if (!cJSON_IsObject(c)) return false;
    const char *ty = jstr(c, "type");
    if (ty && !strcmp(ty, type)) return true;
    const char *lists[] = {"normalizers", "pretokenizers", "processors", "decoders"};
    for (int i = 0; i < 4; i++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(c, lists[i]);
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) if (has_type(e, type)) return true;
    }
    return false;
}

static int parse_normalizer(bpe_tokenizer *t, const cJSON *n, peft_err *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *ty = jstr(n, "type");
    if (!ty) return peft_fail(err, PEFT_ERR_FORMAT, "%s: normalizer without a \"type\"", t->source);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(n, "normalizers")) {
            int rc = parse_normalizer(t, e, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(ty, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (p && !strcmp(p, META)) { t->norm_prepend = true; return 0; }
    } else if (!strcmp(ty, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *from = jstr(pat, "String"), *to = jstr(n, "content");
        if (from && to && !strcmp(from, " ") && !strcmp(to, META)) { t->norm_replace_space = true; return 0; }
    } else if (!strcmp(ty, "NFC")) {
        /* Not applied: text is taken to be NFC already (a known gap). */
        return 0;
    }
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: normalizer \"%s\" with these settings is not supported",
                     t->source, ty);
}

static int parse_pretok(bpe_tokenizer *t, const cJSON *p, peft_err *err) {
    if (!p || cJSON_IsNull(p)) return 0;
    const char *ty = jstr(p, "type");
    if (!ty) return peft_fail(err, PEFT_ERR_FORMAT, "%s: pre_tokenizer without a \"type\"", t->source);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            int rc = parse_pretok(t, e, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(ty, "ByteLevel")) {
        bool prefix = jbool(p, "add_prefix_space", false), use_regex = jbool(p, "use_regex", true);
        if (!prefix && !use_regex) return 0;
        return bpe_pretok_add(t, use_regex ? bpe_re_gpt2 : NULL, BPE_SPLIT_ISOLATED, false, prefix, err);
    }
    if (!strcmp(ty, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        const char *beh = jstr(p, "behavior");
        bpe_split_behavior b = BPE_SPLIT_ISOLATED;
        if (!beh || !strcmp(beh, "Isolated")) b = BPE_SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed")) b = BPE_SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious")) b = BPE_SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) b = BPE_SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) b = BPE_SPLIT_CONTIGUOUS;
        else return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: Split behavior \"%s\" unknown", t->source, beh);
        if (!re && !lit) return peft_fail(err, PEFT_ERR_FORMAT, "%s: Split pre-tokenizer without a pattern", t->source);
        char *quoted = NULL;
        if (!re) {
            /* A literal string: quote it as \Q...\E (splitting \E itself). */
            peft_buf q = {0};
            peft_buf_append(&q, "\\Q", 2);
            for (const char *s = lit; *s; s++) {
                if (s[0] == '\\' && s[1] == 'E') { peft_buf_append(&q, "\\E\\\\E\\Q", 7); s++; }
                else peft_buf_append(&q, s, 1);
            }
            if (peft_buf_append(&q, "\\E", 2)) {
                peft_buf_free(&q);
                return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", t->source);
            }
            quoted = q.data;
        }
        int rc = bpe_pretok_add(t, re ? re : quoted, b, jbool(p, "invert", false), false, err);
        free(quoted);
        return rc;
    }
    if (!strcmp(ty, "Digits")) {
        return bpe_pretok_add(t, jbool(p, "individual_digits", false) ? "\\p{N}" : "\\p{N}+",
                              BPE_SPLIT_ISOLATED, false, false, err);
    }
    if (!strcmp(ty, "Metaspace")) {
        const char *rep = jstr(p, "replacement");
        if (rep && strcmp(rep, META))
            return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: Metaspace replacement other than U+2581", t->source);
        t->metaspace = true;
        const char *scheme = jstr(p, "prepend_scheme");
        if (scheme) {
            t->metaspace_prepend = !strcmp(scheme, "always") ? BPE_PREPEND_ALWAYS
                                   : !strcmp(scheme, "first") ? BPE_PREPEND_FIRST
                                                              : BPE_PREPEND_NEVER;
        } else {
            t->metaspace_prepend = jbool(p, "add_prefix_space", true) ? BPE_PREPEND_ALWAYS : BPE_PREPEND_NEVER;
        }
        t->metaspace_split = jbool(p, "split", true);
        return 0;
    }
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: pre_tokenizer \"%s\" is not supported", t->source, ty);
}

typedef struct { int32_t v[8]; int n; } idlist;

/* Post-processor: the special tokens placed before and after a single
 * sequence. */
static int parse_post(bpe_tokenizer *t, const cJSON *p, idlist *pre, idlist *suf, peft_err *err) {
    if (!p || cJSON_IsNull(p)) return 0;
    const char *ty = jstr(p, "type");
    if (!ty) return 0;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(p, "processors")) {
            int rc = parse_post(t, e, pre, suf, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(ty, "TemplateProcessing")) {
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
        bool seen_seq = false;
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(p, "single")) {
            if (cJSON_GetObjectItemCaseSensitive(item, "Sequence")) { seen_seq = true; continue; }
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
            const char *name = jstr(st, "id");
            if (!name) continue;
            const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, name);
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *e;
            idlist *l = seen_seq ? suf : pre;
            if (!cJSON_IsArray(ids)) {
                int id = bpe_lookup(t, name, strlen(name));
                if (id < 0)
                    return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor special token \"%s\" unknown",
                                     t->source, name);
                if (l->n < 8) l->v[l->n++] = id;
                continue;
            }
            cJSON_ArrayForEach(e, ids) {
                int64_t id;
                int rc = peft_json_to_int(e, t->source, "post_processor.special_tokens.ids", 0, t->n_vocab - 1, &id, err);
                if (rc) return rc;
                if (l->n < 8) l->v[l->n++] = (int32_t)id;
            }
        }
        return 0;
    }
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) {
        /* "cls": ["<s>", 0], "sep": ["</s>", 2]; the id becomes BOS/EOS and
         * indexes the token table, so it must be a token of this vocabulary. */
        static const char *const keys[2] = {"cls", "sep"};
        t->pair_kind = !strcmp(ty, "RobertaProcessing") ? BPE_PAIR_ROBERTA : BPE_PAIR_BERT;
        for (int k = 0; k < 2; k++) {
            const cJSON *pair = cJSON_GetObjectItemCaseSensitive(p, keys[k]);
            if (!pair || cJSON_IsNull(pair)) continue;
            if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 || !cJSON_IsString(cJSON_GetArrayItem(pair, 0)))
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" must be [token, id]", t->source,
                                 keys[k]);
            char key[32];
            snprintf(key, sizeof key, "post_processor.%s", keys[k]);
            int64_t id;
            int rc = peft_json_to_int(cJSON_GetArrayItem(pair, 1), t->source, key, 0, t->n_vocab - 1, &id, err);
            if (rc) return rc;
            idlist *l = k ? suf : pre;
            if (l->n < 8) l->v[l->n++] = (int32_t)id;
        }
        return 0;
    }
    return 0; /* ByteLevel and friends only adjust offsets */
}

static void parse_decoder(bpe_tokenizer *t, const cJSON *d) {
    if (!d || cJSON_IsNull(d)) return;
    const char *ty = jstr(d, "type");
    if (!ty) return;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d, "decoders")) parse_decoder(t, e);
    } else if (!strcmp(ty, "Strip")) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(d, "start");
        const char *c = jstr(d, "content");
        if (cJSON_IsNumber(s) && s->valuedouble >= 1 && (!c || !strcmp(c, " "))) t->strip_leading_space = true;
    } else if (!strcmp(ty, "Metaspace")) {
        const char *scheme = jstr(d, "prepend_scheme");
        t->meta_drop_first = scheme ? strcmp(scheme, "never") != 0 : jbool(d, "add_prefix_space", true);
    }
}

/* Special-token string from tokenizer_config.json: "x" or {"content": "x"}. */
static int config_token(const bpe_tokenizer *t, const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    return s ? bpe_lookup(t, s, strlen(s)) : -1;
}

static int first_present(const bpe_tokenizer *t, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        int id = bpe_lookup(t, names[i], strlen(names[i]));
        if (id >= 0) return id;
    }
    return -1;
}

/* BOS/EOS/PAD and the chat template: tokenizer_config.json next to the
 * tokenizer file when there is one, otherwise the usual token names. */
static int load_config(bpe_tokenizer *t, const char *path, peft_err *err) {
    char *dir = peft_strdup(path, err);
    if (!dir) return PEFT_ERR_NOMEM;
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else strcpy(dir, ".");
    char *cfg_path = peft_path_join(dir, "tokenizer_config.json", err);
    free(dir);
    if (!cfg_path) return PEFT_ERR_NOMEM;
    cJSON *cfg = NULL;
    /* it holds the special tokens and the chat template: one that cannot
     * be read (or parsed: also what cJSON says when out of memory) is an
     * error, as in transformers, not a tokenizer silently without them */
    int rc = peft_file_exists(cfg_path) ? parse_file(cfg_path, &cfg, err) : 0;
    free(cfg_path);
    if (rc) return rc;
    if (cfg) {
        t->bos_id = config_token(t, cfg, "bos_token");
        t->eos_id = config_token(t, cfg, "eos_token");
        t->pad_id = config_token(t, cfg, "pad_token");
        t->unk_id = t->unk_id >= 0 ? t->unk_id : config_token(t, cfg, "unk_token");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        const char *tpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
        if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": ...}, ...] */
            const cJSON *e;
            cJSON_ArrayForEach(e, ct) {
                const char *nm = jstr(e, "name");
                if (!tpl || (nm && !strcmp(nm, "default"))) tpl = jstr(e, "template");
            }
        }
        if (tpl && !(t->chat_template = peft_strdup(tpl, err))) rc = PEFT_ERR_NOMEM;
        cJSON_Delete(cfg);
    }
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>", NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<eos>", NULL};
    if (t->bos_id < 0) t->bos_id = t->n_prefix > 0 ? t->prefix_ids[0] : first_present(t, bos_names);
    if (t->eos_id < 0) t->eos_id = first_present(t, eos_names);
    return rc;
}

static int set_post(bpe_tokenizer *t, const idlist *pre, const idlist *suf, peft_err *err) {
    if (pre->n) {
        if (!(t->prefix_ids = peft_malloc((size_t)pre->n * sizeof(int32_t), err))) return PEFT_ERR_NOMEM;
        memcpy(t->prefix_ids, pre->v, (size_t)pre->n * sizeof(int32_t));
        t->n_prefix = pre->n;
    }
    if (suf->n) {
        if (!(t->suffix_ids = peft_malloc((size_t)suf->n * sizeof(int32_t), err))) return PEFT_ERR_NOMEM;
        memcpy(t->suffix_ids, suf->v, (size_t)suf->n * sizeof(int32_t));
        t->n_suffix = suf->n;
    }
    return 0;
}

/* The largest token id a file defining n_defined tokens may use: ids need
 * not be dense, but the token table is sized by the largest id, so it is
 * bounded by what the file holds (core/limits.h). */
static int64_t max_token_id(int64_t n_defined) {
    int64_t m = n_defined * PEFT_VOCAB_SPARSENESS + PEFT_VOCAB_SLACK;
    return PEFT_MIN(m, (int64_t)PEFT_MAX_VOCAB) - 1;
}

/* A token id of the file at path: an integer in [0, max_id]. */
static int token_id(const cJSON *v, const char *path, const char *key, int64_t max_id, int *out, peft_err *err) {
    int64_t id;
    int rc = peft_json_to_int(v, path, key, 0, max_id, &id, err);
    if (rc) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return peft_fail(err, rc, "%s (the limit is %d tokens, and at most %d + %d times the tokens the file "
                                  "defines)", msg, PEFT_MAX_VOCAB, PEFT_VOCAB_SLACK, PEFT_VOCAB_SPARSENESS);
    }
    *out = (int)id;
    return 0;
}

/* Loads vocab {"token": id} into t; n_extra tokens (added_tokens) follow. */
static int load_vocab_obj(bpe_tokenizer *t, const cJSON *vocab, int n_extra, const char *path, peft_err *err) {
    int n = 0, max_id = -1, id;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) n++;
    if (n == 0) return peft_fail(err, PEFT_ERR_FORMAT, "%s: vocab is empty", path);
    const int64_t lim = max_token_id((int64_t)n + n_extra);
    cJSON_ArrayForEach(e, vocab) {
        char key[96];
        snprintf(key, sizeof key, "vocab.%.60s", e->string ? e->string : "?");
        int rc = token_id(e, path, key, lim, &id, err);
        if (rc) return rc;
        max_id = PEFT_MAX(max_id, id);
    }
    int rc = bpe_set_vocab_size(t, max_id + 1, err);
    if (rc) return rc;
    cJSON_ArrayForEach(e, vocab) {
        if ((rc = bpe_set_token(t, (int)e->valuedouble, e->string, strlen(e->string), err))) return rc;
    }
    return 0;
}

/* HF refuses merges whose parts or result are not tokens (bpe_add_merge
 * returns 1 for those). */
static int merge_result(bpe_tokenizer *t, int rc, int rank, const char *a, const char *b, peft_err *err) {
    if (rc == 1)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: merge %d (\"%.40s\" \"%.40s\") names a token that is not in "
                         "the vocabulary", t->source, rank, a, b);
    return rc;
}

/* Splits "a b" at its single space. */
static int add_merge_str(bpe_tokenizer *t, const char *m, int rank, peft_err *err) {
    const char *sp = strchr(m, ' ');
    if (!sp || sp == m || !sp[1])
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: merge %d \"%.60s\" is not \"left right\"", t->source, rank, m);
    int rc = bpe_add_merge(t, m, (size_t)(sp - m), sp + 1, strlen(sp + 1), rank, err);
    if (rc == 1)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: merge %d \"%.60s\" names a token that is not in the vocabulary",
                         t->source, rank, m);
    return rc;
}

int bpe_load_json(const char *path, bpe_tokenizer **out, peft_err *err) {
    *out = NULL;
    cJSON *j = NULL;
    int rc = parse_file(path, &j, err);
    if (rc) return rc;
    const char *mtype = jstr(cJSON_GetObjectItemCaseSensitive(j, "model"), "type");
    if (mtype && !strcmp(mtype, "WordPiece")) {
        rc = wp_load_json(path, j, out, err);
        cJSON_Delete(j);
        return rc;
    }
    bpe_tokenizer *t = bpe_alloc(path, err);
    if (!t) { cJSON_Delete(j); return PEFT_ERR_NOMEM; }

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(j, "normalizer");
    const cJSON *pretok = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer");
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(j, "post_processor");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(j, "decoder");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const char *type = jstr(model, "type");
    idlist pre = {{0}, 0}, suf = {{0}, 0};
    const cJSON *e;
    int rank = 0;

    if (!cJSON_IsObject(j) || !cJSON_IsObject(model)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: no \"model\" object (is this a tokenizer.json?)", path);
        goto fail;
    }
    if (type && strcmp(type, "BPE")) {
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tokenizer model type \"%s\" is not supported (only BPE and WordPiece)",
                       path, type);
        goto fail;
    }
    if (!cJSON_IsObject(vocab)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: model has no \"vocab\" object", path);
        goto fail;
    }
    if (merges && !cJSON_IsArray(merges)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: model \"merges\" is not an array", path);
        goto fail;
    }

    /* Byte-level when any component says ByteLevel; SentencePiece-style
     * when it uses "▁" (Metaspace / Prepend) or byte fallback. */
    bool bytelevel = has_type(pretok, "ByteLevel") || has_type(dec, "ByteLevel") || has_type(post, "ByteLevel");
    bool sp = has_type(pretok, "Metaspace") || has_type(norm, "Prepend") || has_type(dec, "Metaspace") ||
              has_type(dec, "ByteFallback") || jbool(model, "byte_fallback", false);
    t->kind = (sp && !bytelevel) ? BPE_SENTENCEPIECE : BPE_BYTE_LEVEL;
    t->byte_fallback = jbool(model, "byte_fallback", false);
    t->fuse_unk = jbool(model, "fuse_unk", false);
    t->ignore_merges = jbool(model, "ignore_merges", false);
    if (!(t->pre_name = peft_strdup(t->kind == BPE_SENTENCEPIECE ? "sentencepiece" : "tokenizer.json", err))) {
        rc = PEFT_ERR_NOMEM;
        goto fail;
    }
    const char *cont = jstr(model, "continuing_subword_prefix"), *eow = jstr(model, "end_of_word_suffix");
    if ((cont && *cont) || (eow && *eow)) {
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: BPE with subword prefix/suffix is not supported", path);
        goto fail;
    }

    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"added_tokens\" is not an array", path);
        goto fail;
    }
    const int n_added = cJSON_GetArraySize(added);
    if ((rc = load_vocab_obj(t, vocab, n_added, path, err))) goto fail;
    const int64_t id_lim = max_token_id((int64_t)cJSON_GetArraySize(vocab) + n_added);
    /* Ids checked and the table sized once: growing it by one per added
     * token past the vocabulary copies it each time (quadratic). */
    int max_added = -1;
    cJSON_ArrayForEach(e, added) {
        int id;
        if (!jstr(e, "content")) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: added_tokens entry without a \"content\" string", path);
            goto fail;
        }
        if ((rc = token_id(cJSON_GetObjectItemCaseSensitive(e, "id"), path, "added_tokens.id", id_lim, &id, err)))
            goto fail;
        max_added = PEFT_MAX(max_added, id);
    }
    if ((rc = bpe_set_vocab_size(t, max_added + 1, err))) goto fail;
    cJSON_ArrayForEach(e, added) {
        const char *content = jstr(e, "content");
        int id = (int)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;   /* checked above */
        if ((rc = bpe_set_token(t, id, content, strlen(content), err))) goto fail;
    }
    if ((rc = bpe_build_index(t, err))) goto fail;
    cJSON_ArrayForEach(e, added) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;   /* checked above */
        if ((rc = bpe_add_added(t, id, jbool(e, "special", false), jbool(e, "lstrip", false),
                                jbool(e, "rstrip", false), jbool(e, "single_word", false), err)))
            goto fail;
    }

    if ((rc = bpe_merges_reserve(t, (size_t)cJSON_GetArraySize(merges), err))) goto fail;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            rc = add_merge_str(t, e->valuestring, rank, err);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring, *b = cJSON_GetArrayItem(e, 1)->valuestring;
            rc = merge_result(t, bpe_add_merge(t, a, strlen(a), b, strlen(b), rank, err), rank, a, b, err);
        } else {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: merge %d is neither \"a b\" nor [a, b]", path, rank);
        }
        if (rc) goto fail;
        rank++;
    }
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk_id = bpe_lookup(t, unk, strlen(unk));

    if ((rc = parse_normalizer(t, norm, err))) goto fail;
    if ((rc = parse_pretok(t, pretok, err))) goto fail;
    if ((rc = parse_post(t, post, &pre, &suf, err))) goto fail;
    if ((rc = set_post(t, &pre, &suf, err))) goto fail;
    parse_decoder(t, dec);
    if ((rc = load_config(t, path, err))) goto fail;
    if ((rc = bpe_finish(t, err))) goto fail;
    cJSON_Delete(j);
    *out = t;
    return 0;
fail:
    cJSON_Delete(j);
    bpe_free(t);
    return rc;
}

int bpe_load_gpt2_files(const char *vocab_json, const char *merges_txt, bpe_tokenizer **out,
                        peft_err *err) {
    *out = NULL;
    cJSON *vocab = NULL;
    int rc = parse_file(vocab_json, &vocab, err);
    if (rc) return rc;
    char *mtxt = NULL;
    size_t mlen = 0;
    bpe_tokenizer *t = bpe_alloc(vocab_json, err);
    if (!t) { cJSON_Delete(vocab); return PEFT_ERR_NOMEM; }
    t->kind = BPE_BYTE_LEVEL;
    if (!cJSON_IsObject(vocab)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a {\"token\": id} object", vocab_json);
        goto fail;
    }
    if (!(t->pre_name = peft_strdup("gpt-2", err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    if ((rc = load_vocab_obj(t, vocab, 0, vocab_json, err))) goto fail;
    if ((rc = bpe_build_index(t, err))) goto fail;
    if ((rc = peft_read_file_max(merges_txt, PEFT_MAX_JSON_BYTES, &mtxt, &mlen, err))) goto fail;
    size_t lines = 1;
    for (size_t i = 0; i < mlen; i++) lines += mtxt[i] == '\n';
    if ((rc = bpe_merges_reserve(t, lines, err))) goto fail;
    int rank = 0;
    for (char *line = mtxt; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r') line[--ll] = 0;
        if (ll && strncmp(line, "#version", 8)) {
            char *sp = strchr(line, ' ');
            if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) {
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: line \"%.60s\" is not \"left right\"", merges_txt, line);
                goto fail;
            }
            rc = bpe_add_merge(t, line, (size_t)(sp - line), sp + 1, strlen(sp + 1), rank++, err);
            if (rc == 1)
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: merge \"%.60s\" names a token that is not in %s",
                               merges_txt, line, vocab_json);
            if (rc) goto fail;
        }
        line = nl ? nl + 1 : NULL;
    }
    /* As GPT-2's tokenizer.json: <|endoftext|> is BOS, EOS and special. */
    int eot = bpe_lookup(t, "<|endoftext|>", 13);
    if (eot >= 0 && (rc = bpe_add_added(t, eot, true, false, false, false, err))) goto fail;
    t->bos_id = t->eos_id = eot;
    if ((rc = bpe_pretok_add(t, bpe_re_gpt2, BPE_SPLIT_ISOLATED, false, false, err))) goto fail;
    if ((rc = bpe_finish(t, err))) goto fail;
    free(mtxt);
    cJSON_Delete(vocab);
    *out = t;
    return 0;
fail:
    free(mtxt);
    cJSON_Delete(vocab);
    bpe_free(t);
    return rc;
}
