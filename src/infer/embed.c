/* embed.c — sentence embeddings (embed.h). */
#include "infer/embed.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* sentence-transformers writes modules.json, the pooling config and
 * sentence_bert_config.json as a few hundred bytes; anything near this is
 * not one of them. */
#define EMBED_MAX_CONFIG_BYTES ((size_t)1 << 20)
#define EMBED_MAX_MODULES 64

static int read_json(const char *path, cJSON **out, peft_err *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = peft_read_file_max(path, EMBED_MAX_CONFIG_BYTES, &text, &len, err);
    if (rc) return rc;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) return peft_fail(err, PEFT_ERR_FORMAT, "%s: not valid JSON", path);
    *out = j;
    return 0;
}

/* The last dotted component of a module type: "sentence_transformers.models.Pooling" -> "Pooling".
 * Newer releases moved the classes (sentence_transformers.sentence_transformer.modules...), the
 * class names stayed. */
static const char *type_class(const char *type) {
    const char *dot = strrchr(type, '.');
    return dot ? dot + 1 : type;
}

static const struct { const char *legacy, *mode; unsigned bit; } pool_keys[] = {
    {"pooling_mode_cls_token", "cls", EMBED_POOL_CLS},
    {"pooling_mode_max_tokens", "max", EMBED_POOL_MAX},
    {"pooling_mode_mean_tokens", "mean", EMBED_POOL_MEAN},
    {"pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens", EMBED_POOL_MEAN_SQRT},
    {"pooling_mode_weightedmean_tokens", "weightedmean", 0},
    {"pooling_mode_lasttoken", "lasttoken", EMBED_POOL_LAST},
};
#define N_POOL_KEYS (sizeof pool_keys / sizeof pool_keys[0])

static int pool_mode_bit(const char *mode, const char *path, unsigned *bits, peft_err *err) {
    for (size_t i = 0; i < N_POOL_KEYS; i++) {
        if (strcmp(mode, pool_keys[i].mode)) continue;
        if (!pool_keys[i].bit)
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "%s: pooling mode \"%s\" is not supported (cls, max, mean, mean_sqrt_len_tokens, lasttoken)",
                             path, mode);
        *bits |= pool_keys[i].bit;
        return 0;
    }
    return peft_fail(err, PEFT_ERR_FORMAT,
                     "%s: unknown pooling_mode \"%.64s\" (sentence-transformers knows cls, max, mean, "
                     "mean_sqrt_len_tokens, weightedmean, lasttoken)", path, mode);
}

/* 1_Pooling/config.json: either the current "pooling_mode" (a name or a
 * list of names) or the legacy pooling_mode_* booleans; none set means mean,
 * as sentence-transformers reads it. */
static int load_pooling(const char *path, const embed_pipeline *p, unsigned *modes, peft_err *err) {
    cJSON *j = NULL;
    int rc = read_json(path, &j, err);
    if (rc) return rc;
    unsigned bits = 0;
    if (!cJSON_IsObject(j)) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", path); goto out; }
    const cJSON *dim = cJSON_GetObjectItemCaseSensitive(j, "word_embedding_dimension");
    if (!dim) dim = cJSON_GetObjectItemCaseSensitive(j, "embedding_dimension");
    if (dim && !cJSON_IsNull(dim)) {
        int64_t d;
        if ((rc = peft_json_to_int(dim, path, "word_embedding_dimension", 1, PEFT_MAX_HIDDEN, &d, err))) goto out;
        if (d != p->d_model) {
            rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: word_embedding_dimension %lld, but the model's hidden size is %d",
                           path, (long long)d, p->d_model);
            goto out;
        }
    }
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(j, "pooling_mode");
    if (mode && !cJSON_IsNull(mode)) {
        if (cJSON_IsString(mode)) {
            if ((rc = pool_mode_bit(mode->valuestring, path, &bits, err))) goto out;
        } else if (cJSON_IsArray(mode)) {
            int n = cJSON_GetArraySize(mode);
            if (n < 1 || n > (int)N_POOL_KEYS) {
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: pooling_mode lists %d modes (1 to %d)", path, n, (int)N_POOL_KEYS);
                goto out;
            }
            const cJSON *it;
            unsigned prev = 0;
            cJSON_ArrayForEach(it, mode) {
                if (!cJSON_IsString(it)) {
                    rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: pooling_mode must list strings", path);
                    goto out;
                }
                unsigned b = 0;
                if ((rc = pool_mode_bit(it->valuestring, path, &b, err))) goto out;
                /* the output concatenates in our fixed order, so another order would be another vector */
                if (b <= prev) {
                    rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                                   "%s: pooling_mode lists \"%s\" out of the order cls, max, mean, "
                                   "mean_sqrt_len_tokens, lasttoken (or twice)", path, it->valuestring);
                    goto out;
                }
                prev = b;
                bits |= b;
            }
        } else {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: pooling_mode must be a string or a list of strings", path);
            goto out;
        }
    } else {
        for (size_t i = 0; i < N_POOL_KEYS; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, pool_keys[i].legacy);
            if (!v || cJSON_IsNull(v)) continue;
            if (!cJSON_IsBool(v)) {
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: %s must be true or false", path, pool_keys[i].legacy);
                goto out;
            }
            if (!cJSON_IsTrue(v)) continue;
            if (!pool_keys[i].bit) {
                rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                               "%s: %s is not supported (cls, max, mean, mean_sqrt_len_tokens, lasttoken)", path,
                               pool_keys[i].legacy);
                goto out;
            }
            bits |= pool_keys[i].bit;
        }
        if (!bits) bits = EMBED_POOL_MEAN;
    }
    *modes = bits;
out:
    cJSON_Delete(j);
    return rc;
}

/* sentence_bert_config.json's max_seq_length (absent or null: keep *max_len). */
static int load_st_config(const char *path, int n_ctx, int *max_len, peft_err *err) {
    cJSON *j = NULL;
    int rc = read_json(path, &j, err);
    if (rc) return rc;
    if (!cJSON_IsObject(j)) rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", path);
    else rc = peft_json_get_int(j, "max_seq_length", *max_len, false, 1, PEFT_MAX_CTX, max_len, path, err);
    cJSON_Delete(j);
    /* a longer sequence than the position table cannot run; transformers would fail on it too */
    if (!rc && *max_len > n_ctx) *max_len = n_ctx;
    return rc;
}

static int load_modules(const peft_model *m, embed_pipeline *p, const char *modules_path, peft_err *err) {
    cJSON *j = NULL;
    int rc = read_json(modules_path, &j, err);
    if (rc) return rc;
    char *sub = NULL;
    bool have_transformer = false, have_pooling = false;
    if (!cJSON_IsArray(j)) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON list of modules", modules_path); goto out; }
    int n = cJSON_GetArraySize(j);
    if (n < 1 || n > EMBED_MAX_MODULES) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: %d modules (1 to %d)", modules_path, n, EMBED_MAX_MODULES);
        goto out;
    }
    int i = 0;
    const cJSON *mod;
    cJSON_ArrayForEach(mod, j) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(mod, "type");
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(mod, "path");
        if (!cJSON_IsObject(mod) || !cJSON_IsString(type)) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: module %d has no \"type\" string", modules_path, i);
            goto out;
        }
        if (path && !cJSON_IsString(path)) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: module %d: \"path\" must be a string", modules_path, i);
            goto out;
        }
        const char *rel = path ? path->valuestring : "";
        if (strstr(rel, "..") || rel[0] == '/') {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: module %d: path \"%.64s\" leaves the model folder", modules_path,
                           i, rel);
            goto out;
        }
        const char *cls = type_class(type->valuestring);
        if (!strcmp(cls, "Transformer")) {
            if (i != 0 || rel[0]) {
                rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                               "%s: the Transformer module must be the first, at path \"\" (the model folder)",
                               modules_path);
                goto out;
            }
            have_transformer = true;
            char *cfg = peft_path_join(m->path, "sentence_bert_config.json", err);
            if (!cfg) { rc = PEFT_ERR_NOMEM; goto out; }
            if (peft_file_exists(cfg)) rc = load_st_config(cfg, m->cfg.n_ctx, &p->max_len, err);
            free(cfg);
            if (rc) goto out;
        } else if (!strcmp(cls, "Pooling")) {
            if (!have_transformer || have_pooling || p->normalize) {
                rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                               "%s: Pooling must follow the Transformer module, once, before Normalize", modules_path);
                goto out;
            }
            have_pooling = true;
            char *dir = peft_path_join(m->path, rel, err);
            sub = dir ? peft_path_join(dir, "config.json", err) : NULL;
            free(dir);
            if (!sub) { rc = PEFT_ERR_NOMEM; goto out; }
            if ((rc = load_pooling(sub, p, &p->modes, err))) goto out;
            free(sub);
            sub = NULL;
        } else if (!strcmp(cls, "Normalize")) {
            if (!have_pooling) {
                rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: Normalize before Pooling is not supported", modules_path);
                goto out;
            }
            p->normalize = true;
        } else {
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                           "%s: module %d is %.128s; peft embed runs Transformer, Pooling and Normalize only",
                           modules_path, i, type->valuestring);
            goto out;
        }
        i++;
    }
    if (!have_transformer || !have_pooling)
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: needs a Transformer and a Pooling module (found %s%s)",
                       modules_path, have_transformer ? "Transformer" : "", have_pooling ? "Pooling" : "");
out:
    free(sub);
    cJSON_Delete(j);
    return rc;
}

static int count_modes(unsigned modes) {
    int n = 0;
    for (int b = 0; b < EMBED_POOL_N; b++) n += (modes >> b) & 1;
    return n;
}

int embed_pipeline_load(const peft_model *m, embed_pipeline *p, peft_err *err) {
    memset(p, 0, sizeof *p);
    const model_config *c = &m->cfg;
    if (!c->desc || !c->desc->encoder)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                         "%s: %s is a decoder (causal language model); sentence embeddings need an encoder "
                         "(a BERT-family model such as all-MiniLM-L6-v2)", m->path, c->arch_name);
    if (!m->tok) return peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    p->d_model = c->d_model;
    p->max_len = c->n_ctx;
    int rc = 0;
    if (!strcmp(m->source, "gguf")) {
        /* llama.cpp: LLAMA_POOLING_TYPE_MEAN = 1, CLS = 2, LAST = 3; NONE (0, one vector per token) and RANK
         * (4, a reranker's score) are no sentence embedding. An absent key is what llama.cpp's BERT loader
         * would leave unspecified; mean is the sentence-transformers default. */
        const char *arch = m->gguf ? gguf_get_str(m->gguf, "general.architecture") : NULL;
        char key[96];
        snprintf(key, sizeof key, "%.64s.pooling_type", arch ? arch : c->arch_name);
        int64_t pt = 1;
        if (m->gguf && gguf_find_key(m->gguf, key) >= 0 && (rc = gguf_get_int(m->gguf, key, &pt, err))) return rc;
        if (pt == 1) p->modes = EMBED_POOL_MEAN;
        else if (pt == 2) p->modes = EMBED_POOL_CLS;
        else if (pt == 3) p->modes = EMBED_POOL_LAST;
        else
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "%s: %s = %lld is not a sentence pooling (1 mean, 2 cls, 3 last are supported)", m->path,
                             key, (long long)pt);
        p->normalize = true;   /* llama.cpp's embedding example: --embd-normalize 2 (L2) by default */
        snprintf(p->source, sizeof p->source, "gguf %s", key);
    } else {
        char *modules = peft_path_join(m->path, "modules.json", err);
        if (!modules) return PEFT_ERR_NOMEM;
        if (peft_file_exists(modules)) {
            rc = load_modules(m, p, modules, err);
            snprintf(p->source, sizeof p->source, "modules.json");
        } else {
            /* sentence-transformers on a plain HF encoder: Transformer + mean Pooling, no Normalize */
            p->modes = EMBED_POOL_MEAN;
            snprintf(p->source, sizeof p->source, "default (no modules.json)");
        }
        free(modules);
        if (rc) return rc;
    }
    p->dim = p->d_model * count_modes(p->modes);
    return 0;
}

int embed_tokenize(const peft_model *m, const embed_pipeline *p, const char *text, size_t len, int32_t **ids,
                   int *n_ids, int *n_full, peft_err *err) {
    if (n_full) {
        int32_t *all = NULL;
        int rc = bpe_encode_input(m->tok, text, len, NULL, 0, 0, &all, NULL, n_full, NULL, err);
        free(all);
        if (rc) return rc;
    }
    /* HF truncation drops content tokens and keeps the post-processor's */
    int rc = bpe_encode_input(m->tok, text, len, NULL, 0, p->max_len, ids, NULL, n_ids, NULL, err);
    if (rc == PEFT_ERR_INVALID && err && strstr(err->msg, "special tokens"))
        return peft_fail(err, rc, "%s: max_seq_length %d is too short: %s", m->path, p->max_len, err->msg);
    return rc;
}

static void l2_normalize(float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    double nrm = sqrt(s);
    /* torch.nn.functional.normalize: x / max(||x||, 1e-12) */
    float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void embed_pool(const embed_pipeline *p, const float *hidden, int T, float *out) {
    const int d = p->d_model;
    float *o = out;
    if (p->modes & EMBED_POOL_CLS) {
        memcpy(o, hidden, (size_t)d * sizeof *o);
        o += d;
    }
    if (p->modes & EMBED_POOL_MAX) {
        for (int i = 0; i < d; i++) {
            float mx = -INFINITY;
            for (int t = 0; t < T; t++) mx = hidden[(size_t)t * d + i] > mx ? hidden[(size_t)t * d + i] : mx;
            o[i] = mx;
        }
        o += d;
    }
    if (p->modes & (EMBED_POOL_MEAN | EMBED_POOL_MEAN_SQRT)) {
        for (int i = 0; i < d; i++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += hidden[(size_t)t * d + i];
            /* the mask sum is clamped at 1e-9 in sentence-transformers; T >= 1 here */
            if (p->modes & EMBED_POOL_MEAN) o[i] = (float)(s / T);
            if (p->modes & EMBED_POOL_MEAN_SQRT) o[(p->modes & EMBED_POOL_MEAN ? d : 0) + i] = (float)(s / sqrt((double)T));
        }
        o += d * ((p->modes & EMBED_POOL_MEAN ? 1 : 0) + (p->modes & EMBED_POOL_MEAN_SQRT ? 1 : 0));
    }
    if (p->modes & EMBED_POOL_LAST) {
        memcpy(o, hidden + (size_t)(T - 1) * d, (size_t)d * sizeof *o);
        o += d;
    }
    if (p->normalize) l2_normalize(out, p->dim);
}

int embed_ids_on(const peft_model *m, model_state *st, const embed_pipeline *p, const int32_t *ids,
                 const int32_t *types, int T, float *out, peft_err *err) {
    if (T < 1) return peft_fail(err, PEFT_ERR_INVALID, "%s: nothing to embed (0 tokens)", m->path);
    float *hidden = peft_malloc((size_t)T * p->d_model * sizeof *hidden, err);
    if (!hidden) return PEFT_ERR_NOMEM;
    int rc = model_forward_ex(m, st, ids, types, T, NULL, false, hidden, err);
    if (!rc) {
        for (size_t i = 0; i < (size_t)T * p->d_model; i++)
            if (!isfinite(hidden[i])) {
                rc = peft_fail(err, PEFT_ERR_NUMERIC, "%s: the encoder's hidden states are not finite", m->path);
                break;
            }
    }
    if (!rc) embed_pool(p, hidden, T, out);
    free(hidden);
    return rc;
}

int embed_text_on(const peft_model *m, model_state *st, const embed_pipeline *p, const char *text, size_t len,
                  float *out, peft_err *err) {
    int32_t *ids = NULL;
    int n = 0;
    int rc = embed_tokenize((peft_model *)m, p, text, len, &ids, &n, NULL, err);
    if (rc) return rc;
    rc = embed_ids_on(m, st, p, ids, NULL, n, out, err);
    free(ids);
    return rc;
}

int embed_ids(peft_model *m, const embed_pipeline *p, const int32_t *ids, const int32_t *types, int T, float *out,
              peft_err *err) {
    model_state st;
    model_state_init(&st, m->attached);
    int rc = embed_ids_on(m, &st, p, ids, types, T, out, err);
    model_state_free(&st);
    return rc;
}

int embed_text(peft_model *m, const embed_pipeline *p, const char *text, size_t len, float *out, peft_err *err) {
    model_state st;
    model_state_init(&st, m->attached);
    int rc = embed_text_on(m, &st, p, text, len, out, err);
    model_state_free(&st);
    return rc;
}

int embed_texts_on(const peft_model *m, model_state *st, const char *const *texts, int n, float *out, peft_err *err) {
    if (n < 0 || (n > 0 && (!texts || !out))) return peft_fail(err, PEFT_ERR_INVALID, "peft_model_embed: bad arguments");
    embed_pipeline p;
    int rc = embed_pipeline_load((peft_model *)m, &p, err);
    for (int i = 0; !rc && i < n; i++) {
        if (!texts[i]) return peft_fail(err, PEFT_ERR_INVALID, "peft_model_embed: text %d is NULL", i);
        rc = embed_text_on(m, st, &p, texts[i], strlen(texts[i]), out + (size_t)i * p.dim, err);
    }
    return rc;
}

/* ---- public API ------------------------------------------------------------ */

int peft_model_embed_dim(peft_model *m) {
    peft_err *err = &m->ctx->err;
    peft_err_clear(err);
    embed_pipeline p;
    int rc = embed_pipeline_load(m, &p, err);
    return rc ? rc : p.dim;
}

int peft_model_embed(peft_model *m, const char *const *texts, int n, float *out) {
    peft_err *err = &m->ctx->err;
    peft_err_clear(err);
    model_state st;
    model_state_init(&st, m->attached);
    int rc = embed_texts_on(m, &st, texts, n, out, err);
    model_state_free(&st);
    return rc;
}
