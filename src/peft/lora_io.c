/* lora_io.c — Hugging Face PEFT adapter folders:
 *   adapter_config.json        LoraConfig fields (peft_type "LORA", r, lora_alpha, ...)
 *   adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, in) and
 *                              .lora_B.weight (out, r) per adapted linear.
 * Module paths are the HF ones (model_linear_hf_path) whatever the base was
 * loaded from, so an adapter trained on a GGUF base loads in transformers. */
#include "peft/lora.h"
#include "core/limits.h"
#include "kernels/quant.h"
#include "peft/method.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define KEY_PREFIX "base_model.model."



/* ---- save ------------------------------------------------------------------- */

int lora_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const lora_state *st = lora_of(a);
    const lora_config *c = &st->cfg;
    /* cJSON's builders return NULL when out of memory and leave the key
     * out: ok says whether the config is complete */
    /* Alphas that differ from lora_alpha (alpha_pattern), by full module name. */
    cJSON *ap = cJSON_AddObjectToObject(o, "alpha_pattern");
    bool ok = ap != NULL;
    for (int i = 0; i < st->n_modules && ap; i++)
        if (st->mods[i].alpha != c->alpha) {
            char path[256];
            model_linear_hf_path(m, st->mods[i].layer, st->mods[i].role, path, sizeof path);
            ok &= cJSON_AddNumberToObject(ap, path, st->mods[i].alpha) != NULL;
        }
    ok &= cJSON_AddStringToObject(o, "bias", "none") != NULL;
    /* HF PEFT sets fan_in_fan_out for GPT-2's Conv1D layers (stored (in, out)). */
    ok &= cJSON_AddBoolToObject(o, "fan_in_fan_out", m->cfg.desc->hf_conv1d) != NULL;
    if (c->init == LORA_INIT_GAUSSIAN) ok &= cJSON_AddStringToObject(o, "init_lora_weights", "gaussian") != NULL;
    else ok &= cJSON_AddBoolToObject(o, "init_lora_weights", c->init == LORA_INIT_KAIMING) != NULL;
    ok &= cJSON_AddNullToObject(o, "layer_replication") != NULL;
    ok &= cJSON_AddNullToObject(o, "layers_pattern") != NULL;
    ok &= cJSON_AddObjectToObject(o, "loftq_config") != NULL;
    ok &= cJSON_AddNumberToObject(o, "lora_alpha", c->alpha) != NULL;
    ok &= cJSON_AddBoolToObject(o, "lora_bias", false) != NULL;
    ok &= cJSON_AddNumberToObject(o, "lora_dropout", c->dropout) != NULL;
    ok &= cJSON_AddNumberToObject(o, "r", c->r) != NULL;
    /* Ranks that differ from r (only from a loaded adapter with a rank_pattern). */
    cJSON *rp = cJSON_AddObjectToObject(o, "rank_pattern");
    ok &= rp != NULL;
    for (int i = 0; i < st->n_modules && rp; i++)
        if (st->mods[i].r != c->r) {
            char path[256];
            model_linear_hf_path(m, st->mods[i].layer, st->mods[i].role, path, sizeof path);
            ok &= cJSON_AddNumberToObject(rp, path, st->mods[i].r) != NULL;
        }
    uint32_t targets = 0;
    for (int i = 0; i < st->n_modules; i++) targets |= 1u << st->mods[i].role;
    /* HF adapts every target_modules kind in every layers_to_transform
     * layer: a set of modules that is not such a product (peft probe's
     * proposals) is written as their full names, which HF matches exactly. */
    int n_product = 0;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            n_product += lora_layer_selected(a->mc.layers, l) && ((targets >> r) & 1u) && m->layers[l].lin[r].present;
    if (n_product == st->n_modules) {
        ok &= method_write_targets(m, targets, o) == 0;
    } else {
        cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
        ok &= tm != NULL;
        for (int i = 0; i < st->n_modules && tm; i++) {
            char path[256];
            model_linear_hf_path(m, st->mods[i].layer, st->mods[i].role, path, sizeof path);
            ok &= cJSON_AddItemToArray(tm, cJSON_CreateString(path)) != 0;
        }
    }
    ok &= cJSON_AddBoolToObject(o, "use_dora", c->dora) != NULL;
    ok &= cJSON_AddBoolToObject(o, "use_rslora", c->rslora) != NULL;
    return ok ? 0 : PEFT_ERR_NOMEM;
}

/* ---- load ------------------------------------------------------------------- */

/* The (layer, role) whose HF module path is `path`; -1 when none. */
static int match_module(const peft_model *m, const char *path, size_t len) {
    char buf[256];
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            if (!m->layers[l].lin[r].present) continue;
            if (model_linear_hf_path(m, l, (model_linear_role)r, buf, sizeof buf)) continue;
            if (strlen(buf) == len && memcmp(buf, path, len) == 0) return l * ROLE_N_LINEAR + r;
        }
    return -1;
}

/* Layer index in "model.layers.N." / "transformer.h.N." / "h.N." paths, or -1. */
static long path_layer(const char *path) {
    static const char *const pats[] = {".layers.", ".h.", "layers.", "h."};
    for (int i = 0; i < 4; i++) {
        const char *p = strstr(path, pats[i]);
        if (!p || (i >= 2 && p != path)) continue;
        p += strlen(pats[i]);
        if (*p < '0' || *p > '9') continue;
        char *e;
        long v = strtol(p, &e, 10);
        if (*e == '.') return v;
    }
    return -1;
}

static int cfg_number(const cJSON *o, const char *key, double *out, bool required, const char *path,
                      peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing \"%s\"", path, key);
        return 1;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be a number", path, key);
    *out = v->valuedouble;
    return 0;
}

static bool cfg_true(const cJSON *o, const char *key) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static bool nonempty_object(const cJSON *v) { return v && cJSON_IsObject(v) && v->child; }

/* LoraConfig's fields of adapter_config.json o into cfg. */
static int parse_config(const cJSON *o, const char *path, lora_config *cfg, bool *has_rank_pattern, peft_err *err) {
    int rc = 0;
    *cfg = lora_default_config();
    double v = 0;
    if ((rc = cfg_number(o, "r", &v, true, path, err))) goto done;
    if (v != floor(v) || v < 1 || v > PEFT_MAX_RANK) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"r\" must be an integer in 1..%d", path, PEFT_MAX_RANK);
        goto done;
    }
    cfg->r = (int)v;
    rc = cfg_number(o, "lora_alpha", &v, false, path, err);
    if (rc < 0) goto done;
    /* The scale is alpha / r (or / sqrt r): a negative one flips the update,
     * a huge one is not a float. */
    if (rc == 0 && !(v >= 0 && v <= 1e6)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"lora_alpha\" is %g, must be in [0, 1e6]", path, v);
        goto done;
    }
    cfg->alpha = rc == 0 ? (float)v : 8.0f;   /* LoraConfig's default */
    rc = cfg_number(o, "lora_dropout", &v, false, path, err);
    if (rc < 0) goto done;
    if (rc == 0 && !(v >= 0 && v < 1)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"lora_dropout\" is %g, must be in [0, 1)", path, v);
        goto done;
    }
    cfg->dropout = rc == 0 ? (float)v : 0.0f;
    rc = 0;
    /* Which modules are adapted is read from the tensors, but a
     * target_modules of the wrong type means the file is not what it claims. */
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    bool tm_ok = !tm || cJSON_IsNull(tm) || cJSON_IsString(tm) || cJSON_IsArray(tm);
    const cJSON *it;
    if (cJSON_IsArray(tm)) cJSON_ArrayForEach(it, tm) tm_ok &= cJSON_IsString(it);
    if (!tm_ok) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"target_modules\" must be a string or a list of strings", path);
        goto done;
    }
    cfg->rslora = cfg_true(o, "use_rslora");
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(o, "init_lora_weights");
    if (cJSON_IsFalse(init)) cfg->init = LORA_INIT_ZERO_B_RANDOM_BOTH;
    else if (cJSON_IsString(init) && strcmp(init->valuestring, "gaussian") == 0) cfg->init = LORA_INIT_GAUSSIAN;
    else cfg->init = LORA_INIT_KAIMING;
    cfg->dora = cfg_true(o, "use_dora");
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(o, "bias");
    if (cJSON_IsString(bias) && strcmp(bias->valuestring, "none") != 0) {
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: bias \"%s\" is not supported (only \"none\")", path,
                       bias->valuestring);
        goto done;
    }
    if (cfg_true(o, "lora_bias")) {
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: lora_bias is not supported", path);
        goto done;
    }
    *has_rank_pattern = nonempty_object(cJSON_GetObjectItemCaseSensitive(o, "rank_pattern"));
done:
    return rc;
}

typedef struct {
    const st_tensor *A, *B;
} ab_pair;

int lora_load_st(const peft_model *m, const cJSON *o, const char *cfg_path, const st_archive *st, const char *st_path,
                 int n_labels, adapter **out, peft_err *err) {
    *out = NULL;
    const int nl = m->cfg.n_layer, ns = nl * ROLE_N_LINEAR;
    ab_pair *pairs = peft_calloc((size_t)(ns ? ns : 1), sizeof *pairs, err);
    int *slot_r = peft_calloc((size_t)(ns ? ns : 1), sizeof *slot_r, err);
    int rc = 0;
    if (!pairs || !slot_r) { rc = PEFT_ERR_NOMEM; goto done; }
    lora_config cfg;
    bool rank_pattern = false;
    if ((rc = parse_config(o, cfg_path, &cfg, &rank_pattern, err))) goto done;
    int n_mag = 0;

    /* Pass 1: every tensor names a lora_A or lora_B of one of m's linears. */
    const size_t pl = strlen(KEY_PREFIX);
    for (int i = 0; i < st_count(st); i++) {
        const st_tensor *t = st_at(st, i);
        const char *nm = t->name;
        size_t n = strlen(nm);
        const char *sfx = NULL;
        bool is_b = false;
        if (mts_is_head_key(nm)) continue;   /* the head: adapter_load checked it */
        if (cfg.dora && n > 22 && strcmp(nm + n - 22, ".lora_magnitude_vector") == 0) { n_mag++; continue; }
        if (n > pl + 14 && strcmp(nm + n - 14, ".lora_A.weight") == 0) sfx = nm + n - 14;
        else if (n > pl + 14 && strcmp(nm + n - 14, ".lora_B.weight") == 0) { sfx = nm + n - 14; is_b = true; }
        if (!sfx || strncmp(nm, KEY_PREFIX, pl) != 0) {
            rc = peft_fail(err, PEFT_ERR_FORMAT,
                           "%s: %s is not a LoRA tensor (expected " KEY_PREFIX "<module>.lora_A.weight / "
                           ".lora_B.weight)", st_path, nm);
            goto done;
        }
        const char *mp = nm + pl;
        size_t ml = (size_t)(sfx - mp);
        int s = match_module(m, mp, ml);
        if (s < 0) {
            char tmp[256];
            snprintf(tmp, sizeof tmp, "%.*s", (int)PEFT_MIN(ml, sizeof tmp - 1), mp);
            long L = path_layer(tmp);
            if (L >= nl)
                rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s targets layer %ld but %s has %d layers", st_path, nm, L,
                               m->path, nl);
            else
                rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s matches no linear layer of %s (%s)", st_path, nm,
                               m->path, m->cfg.arch_name);
            goto done;
        }
        const model_linear *lin = &m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR];
        const char *short_name = model_linear_name(m, (model_linear_role)(s % ROLE_N_LINEAR));
        if (t->ndim != 2) {
            rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has %d dimensions, expected 2", st_path, nm, t->ndim);
            goto done;
        }
        if (!is_b && t->shape[1] != lin->w.cols) {
            rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has shape [%lld, %lld], the model's %s takes %lld inputs",
                           st_path, nm, (long long)t->shape[0], (long long)t->shape[1], short_name,
                           (long long)lin->w.cols);
            goto done;
        }
        if (is_b && t->shape[0] != lin->w.rows) {
            rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has shape [%lld, %lld], the model's %s has %lld outputs",
                           st_path, nm, (long long)t->shape[0], (long long)t->shape[1], short_name,
                           (long long)lin->w.rows);
            goto done;
        }
        const st_tensor **slot = is_b ? &pairs[s].B : &pairs[s].A;
        if (*slot) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: %s appears twice", st_path, nm);
            goto done;
        }
        *slot = t;
    }
    /* Pass 2: complete pairs with agreeing ranks. */
    uint32_t targets = 0;
    uint64_t layers = 0;
    bool all_layers = true, layers_fit = true;
    int n_mod = 0;
    for (int l = 0; l < nl; l++) {
        bool any = false;
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            const ab_pair *p = &pairs[l * ROLE_N_LINEAR + r];
            if (!p->A && !p->B) continue;
            if (!p->A || !p->B) {
                const st_tensor *have = p->A ? p->A : p->B;
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: %s has no matching lora_%c tensor", st_path, have->name,
                               p->A ? 'B' : 'A');
                goto done;
            }
            const int64_t ra = p->A->shape[0], rb = p->B->shape[1];
            if (ra != rb || ra < 1) {
                rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has rank %lld but %s has rank %lld", st_path,
                               p->A->name, (long long)ra, p->B->name, (long long)rb);
                goto done;
            }
            if (ra != cfg.r && !rank_pattern) {
                rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has rank %lld but %s says r = %d", st_path, p->A->name,
                               (long long)ra, cfg_path, cfg.r);
                goto done;
            }
            if (ra > PEFT_MAX_RANK) {
                rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s: rank %lld is too large", st_path, p->A->name,
                               (long long)ra);
                goto done;
            }
            slot_r[l * ROLE_N_LINEAR + r] = (int)ra;
            targets |= 1u << r;
            any = true;
            n_mod++;
        }
        if (any) {
            if (l < 64) layers |= (uint64_t)1 << l;
            else layers_fit = false;
        }
        all_layers &= any;
    }
    if (n_mod == 0) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: no LoRA tensors", st_path); goto done; }
    cfg.targets = targets;
    cfg.layers = all_layers ? 0 : layers;
    if (!all_layers && !layers_fit) {
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: adapters on a subset of more than 64 layers are not supported",
                       st_path);
        goto done;
    }
    if (cfg.dora && n_mag != n_mod) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: use_dora is set but %d of %d modules have a lora_magnitude_vector",
                       st_path, n_mag, n_mod);
        goto done;
    }
    rc = lora_alloc(m, &cfg, slot_r, n_labels, out, err);
    if (!rc) {
        /* alpha_pattern: the first key that matches a module's full name, as
         * HF's get_pattern_key; keys that match nothing are HF's to ignore */
        char what[600];
        snprintf(what, sizeof what, "%s: \"alpha_pattern\"", cfg_path);
        lora_pattern ap;
        rc = lora_pattern_from_json(cJSON_GetObjectItemCaseSensitive(o, "alpha_pattern"), false, what, &ap, err);
        lora_state *ls = rc ? NULL : lora_of(*out);
        for (int i = 0; ls && ap.n && i < ls->n_modules && !rc; i++) {
            char mp[256];
            lora_module *md = &ls->mods[i];
            if (model_linear_hf_path(m, md->layer, md->role, mp, sizeof mp)) continue;
            const int k = lora_pattern_find(&ap, mp);
            if (k < 0) continue;
            if (!(ap.it[k].v >= 0 && ap.it[k].v <= 1e6))
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"alpha_pattern\" gives %s alpha %g, must be in [0, 1e6]",
                               cfg_path, mp, ap.it[k].v);
            else
                lora_module_set_alpha(md, &cfg, (float)ap.it[k].v);
        }
        lora_pattern_free(&ap);
        if (rc) { adapter_free(*out); *out = NULL; }
    }
done:
    free(pairs);
    free(slot_r);
    return rc;
}

int lora_load(const peft_model *m, const char *dir, adapter **out, peft_err *err) {
    *out = NULL;
    /* another method's folder fails on its peft_type, before its tensors are read */
    char *cfg_path = peft_path_join(dir, "adapter_config.json", err), *text = NULL;
    size_t len = 0;
    if (!cfg_path) return PEFT_ERR_NOMEM;
    int rc = 0;
    if (peft_file_exists(cfg_path) && !peft_read_file_max(cfg_path, PEFT_MAX_CONFIG_BYTES, &text, &len, err)) {
        cJSON *o = cJSON_ParseWithLength(text, len);
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
        if (cJSON_IsString(pt) && strcmp(pt->valuestring, "LORA") != 0)
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: peft_type %s is not supported (only LORA adapters load)",
                           cfg_path, pt->valuestring);
        cJSON_Delete(o);
    }
    free(text);
    free(cfg_path);
    if (!rc) rc = adapter_load(m, dir, out, err);
    if (rc || lora_of(*out)) return rc;
    rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: a %s adapter, not LoRA (only LORA adapters load here)", dir,
                   adapter_method_name(*out));
    adapter_free(*out);
    *out = NULL;
    return rc;
}
