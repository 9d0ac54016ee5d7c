/* config.c — model configuration from HF config.json or GGUF metadata. */
#include "model/model.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An integer key in [lo, hi] (caps from core/limits.h), dflt when absent. */
static int json_int(const cJSON *o, const char *key, int def, bool required, int lo, int hi, int *out,
                    const char *path, peft_err *err) {
    return peft_json_get_int(o, key, def, required, lo, hi, out, path, err);
}

/* A double that must fit a float: converting one that does not is undefined. */
static bool fits_float(double d) { return isfinite(d) && fabs(d) <= FLT_MAX; }

static int json_float(const cJSON *o, const char *key, float def, bool required, float *out,
                      const char *path, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing key \"%s\"", path, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !fits_float(v->valuedouble))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be a finite number within float range", path, key);
    *out = (float)v->valuedouble;
    return 0;
}

static bool json_bool(const cJSON *o, const char *key, bool def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

/* rope_scaling (transformers v4) or rope_parameters (v5). */
static int parse_rope(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    int rc = json_float(root, "rope_theta", 10000.0f, false, &c->rope_theta, path, err);
    if (rc) return rc;
    if (cJSON_IsObject(rp) && cJSON_GetObjectItemCaseSensitive(rp, "rope_theta")) {
        rc = json_float(rp, "rope_theta", 10000.0f, false, &c->rope_theta, path, err);
        if (rc) return rc;
    }
    const cJSON *sc = cJSON_IsObject(rs) ? rs : (cJSON_IsObject(rp) ? rp : NULL);
    if (!sc) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(sc, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(sc, "type");
    const char *t = cJSON_IsString(type) ? type->valuestring : "default";
    if (strcmp(t, "default") == 0) return 0;
    if (strcmp(t, "llama3") == 0) {
        if ((rc = json_float(sc, "factor", 0, true, &c->rope_factor, path, err)) ||
            (rc = json_float(sc, "low_freq_factor", 0, true, &c->rope_low_freq, path, err)) ||
            (rc = json_float(sc, "high_freq_factor", 0, true, &c->rope_high_freq, path, err)) ||
            (rc = json_int(sc, "original_max_position_embeddings", 0, true, 1, PEFT_MAX_CTX, &c->rope_orig_ctx, path, err)))
            return rc;
        /* transformers' _validate_llama3_parameters: the blend divides by
         * high - low and by each factor. */
        if (!(c->rope_factor >= 1) || !(c->rope_low_freq > 0) || !(c->rope_high_freq > c->rope_low_freq))
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: llama3 rope scaling needs factor >= 1 and 0 < low_freq_factor < "
                             "high_freq_factor (got %g, %g, %g)", path, (double)c->rope_factor,
                             (double)c->rope_low_freq, (double)c->rope_high_freq);
        return 0;
    }
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: rope scaling type \"%s\" is not supported (default and llama3 are)",
                     path, t);
}

static int check_config(model_config *c, const char *path, peft_err *err) {
    if (c->n_layer <= 0 || c->d_model <= 0 || c->n_head <= 0 || c->vocab <= 0 || c->d_ff <= 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: layer count, width, heads, vocabulary and MLP width must be positive", path);
    if (c->n_kv_head <= 0) c->n_kv_head = c->n_head;
    if (c->head_dim <= 0) {
        if (c->d_model % c->n_head) return peft_fail(err, PEFT_ERR_FORMAT, "%s: hidden size %d not divisible by %d heads", path, c->d_model, c->n_head);
        c->head_dim = c->d_model / c->n_head;
    }
    if (c->n_head % c->n_kv_head)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: %d attention heads not divisible by %d key/value heads", path, c->n_head, c->n_kv_head);
    if (c->rope_dim <= 0) c->rope_dim = c->head_dim;
    if (c->rope_dim % 2 || c->rope_dim > c->head_dim)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: rotary dimension %d invalid for head size %d", path, c->rope_dim, c->head_dim);
    if (c->n_ctx <= 0) c->n_ctx = 2048;
    /* The same caps for both sources (GGUF metadata is not range-checked by
     * key as config.json is). */
    static const struct { const char *what; int max; size_t off; } caps[] = {
        {"layer count", PEFT_MAX_LAYERS, offsetof(model_config, n_layer)},
        {"hidden size", PEFT_MAX_HIDDEN, offsetof(model_config, d_model)},
        {"MLP width", PEFT_MAX_FF, offsetof(model_config, d_ff)},
        {"attention heads", PEFT_MAX_HEADS, offsetof(model_config, n_head)},
        {"key/value heads", PEFT_MAX_HEADS, offsetof(model_config, n_kv_head)},
        {"head size", PEFT_MAX_HEAD_DIM, offsetof(model_config, head_dim)},
        {"rotary dimension", PEFT_MAX_HEAD_DIM, offsetof(model_config, rope_dim)},
        {"vocabulary size", PEFT_MAX_VOCAB, offsetof(model_config, vocab)},
        {"context length", PEFT_MAX_CTX, offsetof(model_config, n_ctx)},
    };
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        int v = *(const int *)((const char *)c + caps[i].off);
        if (v > caps[i].max)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s %d exceeds the limit of %d", path, caps[i].what, v,
                             caps[i].max);
    }
    if ((int64_t)c->n_head * c->head_dim > PEFT_MAX_HIDDEN)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: %d heads x head size %d exceed the limit of %d", path, c->n_head,
                         c->head_dim, PEFT_MAX_HIDDEN);
    if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: norm epsilon and rope theta must be positive", path);
    return 0;
}

int model_config_from_hf_json(const char *path, model_config *c, peft_err *err) {
    char *text = NULL;
    int rc = peft_read_file_max(path, PEFT_MAX_CONFIG_BYTES, &text, NULL, err);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", path);
    }
    memset(c, 0, sizeof *c);
    c->pad_token_id = -1;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        cJSON_Delete(root);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing key \"model_type\"", path);
    }
    const arch_desc *D = arch_find(mt->valuestring);
    if (!D) {
        char known[256];
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: unsupported architecture \"%.64s\" (supported: %s)", path,
                       mt->valuestring, arch_known_names(known, sizeof known));
        cJSON_Delete(root);
        return rc;
    }
    c->desc = D;
    c->arch = (peft_arch)D->kind;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", D->name);
    /* the sizes under the family's key names; a NULL key: not in this family's configs */
#define KEY_INT(key, def, req, lo, hi, field) \
    (!(key) ? 0 : json_int(root, (key), (def), (req), (lo), (hi), &c->field, path, err))
    if ((rc = KEY_INT(D->hf_d_model, 0, true, 1, PEFT_MAX_HIDDEN, d_model)) ||
        (rc = KEY_INT(D->hf_n_layer, 0, true, 1, PEFT_MAX_LAYERS, n_layer)) ||
        (rc = KEY_INT(D->hf_n_head, 0, true, 1, PEFT_MAX_HEADS, n_head)) ||
        (rc = KEY_INT(D->hf_n_kv_head, 0, false, 0, PEFT_MAX_HEADS, n_kv_head)) ||
        (rc = KEY_INT(D->hf_head_dim, 0, false, 0, PEFT_MAX_HEAD_DIM, head_dim)) ||
        (rc = KEY_INT(D->hf_d_ff, 0, !D->d_ff_mult, D->d_ff_mult ? 0 : 1, PEFT_MAX_FF, d_ff)) ||
        (rc = json_int(root, "vocab_size", 0, true, 1, PEFT_MAX_VOCAB, &c->vocab, path, err)) ||
        (rc = KEY_INT(D->hf_n_ctx, D->default_n_ctx, false, 1, PEFT_MAX_CTX, n_ctx)) ||
        (rc = json_float(root, D->hf_norm_eps, D->default_norm_eps, false, &c->norm_eps, path, err)) ||
        (rc = D->pos == ARCH_POS_ROPE ? parse_rope(root, c, path, err) : 0) ||
        (rc = D->hf_extra ? D->hf_extra(root, c, path, err) : 0)) {
        cJSON_Delete(root);
        return rc;
    }
#undef KEY_INT
    if (c->d_ff == 0 && D->d_ff_mult) c->d_ff = D->d_ff_mult * c->d_model;
    if (D->pos != ARCH_POS_ROPE) c->rope_theta = 1;   /* unused */
    c->tied = json_bool(root, "tie_word_embeddings", D->default_tied);
    cJSON_Delete(root);
    return check_config(c, path, err);
}

int model_config_from_gguf(const gguf_file *g, model_config *c, peft_err *err) {
    const char *path = gguf_path(g);
    memset(c, 0, sizeof *c);
    c->pad_token_id = -1;
    const char *arch = gguf_get_str(g, "general.architecture");
    if (!arch) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing key general.architecture", path);
    const arch_desc *D = arch_find(arch);
    if (!D) {
        char known[256];
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: unsupported architecture \"%.64s\" (supported: %s)", path, arch,
                         arch_known_names(known, sizeof known));
    }
    c->desc = D;
    c->arch = (peft_arch)D->kind;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", D->name);

    char key[128];
    int64_t iv;
    double fv;
#define GET_INT(suffix, field, required, max)                                       \
    do {                                                                            \
        snprintf(key, sizeof key, "%s.%s", arch, suffix);                           \
        if (gguf_find_key(g, key) >= 0) {                                           \
            int rc_ = gguf_get_int(g, key, &iv, err);                               \
            if (rc_) return rc_;                                                    \
            if (iv < 0 || iv > (max))                                               \
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s = %lld is outside [0, %d]", path, key, \
                                 (long long)iv, (int)(max));                        \
            c->field = (int)iv;                                                     \
        } else if (required)                                                        \
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing key %s", path, key); \
    } while (0)
    GET_INT("block_count", n_layer, true, PEFT_MAX_LAYERS);
    GET_INT("embedding_length", d_model, true, PEFT_MAX_HIDDEN);
    GET_INT("feed_forward_length", d_ff, true, PEFT_MAX_FF);
    GET_INT("attention.head_count", n_head, true, PEFT_MAX_HEADS);
    GET_INT("attention.head_count_kv", n_kv_head, false, PEFT_MAX_HEADS);
    GET_INT("context_length", n_ctx, false, PEFT_MAX_CTX);
    GET_INT("rope.dimension_count", rope_dim, false, PEFT_MAX_HEAD_DIM);
    GET_INT("attention.key_length", head_dim, false, PEFT_MAX_HEAD_DIM);
    GET_INT("vocab_size", vocab, false, PEFT_MAX_VOCAB);
#undef GET_INT
    if (c->vocab == 0) {
        gguf_vtype et;
        uint64_t n = 0;
        const void *d;
        if (gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &d, err) != 0) {
            const gguf_tensor *t = gguf_find_tensor(g, "token_embd.weight");
            if (!t) return peft_fail(err, PEFT_ERR_FORMAT, "%s: cannot tell the vocabulary size", path);
            n = (uint64_t)t->ne[1];
        }
        if (n > PEFT_MAX_VOCAB)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: vocabulary of %llu tokens exceeds the limit of %d", path,
                             (unsigned long long)n, PEFT_MAX_VOCAB);
        c->vocab = (int)n;
    }
    snprintf(key, sizeof key, "%s.attention.%s", arch, D->norm == ARCH_NORM_LAYER ? "layer_norm_epsilon" : "layer_norm_rms_epsilon");
    if (gguf_get_float(g, key, &fv, err)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing key %s", path, key);
    if (!fits_float(fv)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s is not a finite float", path, key);
    c->norm_eps = (float)fv;
    c->rope_theta = 10000.0f;
    if (D->pos != ARCH_POS_ROPE) c->rope_theta = 1;   /* unused */
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    if (gguf_find_key(g, key) >= 0) {
        if (gguf_get_float(g, key, &fv, err)) return err->code;
        if (!fits_float(fv)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s is not a finite float", path, key);
        c->rope_theta = (float)fv;
    }
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    const char *st = gguf_get_str(g, key);
    if (st && strcmp(st, "none"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: rope scaling type \"%s\" is not supported", path, st);
    c->tied = gguf_find_tensor(g, "output.weight") == NULL;
    return check_config(c, path, err);
}
