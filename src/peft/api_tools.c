/* api_tools.c — the public tooling API (peft.h, "training runs and
 * tooling"): files, limits, the method registry, adapters built option by
 * option, combinations and merges that report, the embedding pipeline.
 * Thin: each call is the internal function the CLI used to reach for. */
#include "core/ctx.h"
#include "core/limits.h"
#include "infer/embed.h"
#include "peft/lora.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* peft_adapter is adapter behind the public name (as in api.c). */
#define AS_AD(a) ((adapter *)(a))

_Static_assert(sizeof(((peft_adapter_config *)0)->options) == sizeof(((method_config *)0)->options),
               "peft_adapter_config.options must hold what method_config.options holds");
_Static_assert((int)PEFT_POOL_CLS == (int)EMBED_POOL_CLS && (int)PEFT_POOL_MAX == (int)EMBED_POOL_MAX &&
                   (int)PEFT_POOL_MEAN == (int)EMBED_POOL_MEAN && (int)PEFT_POOL_MEAN_SQRT == (int)EMBED_POOL_MEAN_SQRT &&
                   (int)PEFT_POOL_LAST == (int)EMBED_POOL_LAST,
               "public pooling bits are embed.h's");

/* ---- files and limits ---------------------------------------------------- */

int peft_file_read(const char *path, char **data, size_t *len, peft_error *err) {
    peft_err e = {0};
    return peft_read_file(path, data, len, &e) ? peft_error_set(err, &e) : 0;
}

int peft_file_write_atomic(const char *path, const void *data, size_t len, peft_error *err) {
    peft_err e = {0};
    return peft_write_file_atomic(path, data, len, &e) ? peft_error_set(err, &e) : 0;
}

size_t peft_max_line_bytes(void) { return PEFT_MAX_LINE_BYTES; }
int peft_max_labels(void) { return PEFT_MAX_LABELS; }
size_t peft_rss_peak_bytes(void) { return peft_rss_peak(); }
int peft_model_has_tokenizer(const peft_model *m) { return m && m->tok; }

/* ---- the method registry ------------------------------------------------- */

int peft_method_count(void) {
    int n = 0;
    for (const method_ops *const *p = method_registry(); *p; p++) n++;
    return n;
}

static const method_ops *method_at(int i) { return i >= 0 && i < peft_method_count() ? method_registry()[i] : NULL; }

int peft_method_get(int i, peft_method_info *out) {
    const method_ops *o = method_at(i);
    memset(out, 0, sizeof *out);
    if (!o) return PEFT_ERR_INVALID;
    out->name = o->name;
    out->summary = o->summary;
    for (const method_option *k = o->options; k && k->name; k++) out->n_options++;
    out->prompt_learning = (o->flags & METHOD_PROMPT_LEARNING) != 0;
    out->saves_model = (o->flags & METHOD_SAVES_MODEL) != 0;
    return 0;
}

int peft_method_get_option(int i, int k, peft_method_option *out) {
    peft_method_info in;
    memset(out, 0, sizeof *out);
    if (peft_method_get(i, &in) || k < 0 || k >= in.n_options) return PEFT_ERR_INVALID;
    const method_option *o = &method_at(i)->options[k];
    out->name = o->name;
    out->metavar = o->metavar;
    out->help = o->help;
    return 0;
}

int peft_method_find(const char *name) {
    const method_ops *o = name ? method_find(name) : NULL;
    for (int i = 0; o && method_registry()[i]; i++)
        if (method_registry()[i] == o) return i;
    return -1;
}

int peft_method_has_option(int i, const char *option) { return method_at(i) && method_has_option(method_at(i), option); }
int peft_method_option_is_field(const char *option) { return option && method_option_is_field(option); }

/* ---- adapters built option by option -------------------------------------- */

void peft_adapter_config_init(peft_adapter_config *c, int method) {
    memset(c, 0, sizeof *c);
    c->method = method;
    c->alpha = NAN;   /* the method's default */
}

/* The internal config of c; ops as given (the CLI's checks ran before the
 * method was set, and their messages say "method" then). */
static void to_mc(const peft_adapter_config *c, const method_ops *ops, method_config *mc) {
    memset(mc, 0, sizeof *mc);
    mc->ops = ops;
    mc->r = c->r;
    mc->alpha = c->alpha;
    mc->dropout = c->dropout;
    mc->layers = c->layers;
    mc->n_labels = c->num_labels;
    mc->seed = c->seed;
    memcpy(mc->options, c->options, sizeof mc->options);
    mc->options[sizeof mc->options - 1] = '\0';
}

int peft_adapter_config_add(peft_adapter_config *c, const char *key, const char *value, peft_error *err) {
    method_config mc;
    to_mc(c, NULL, &mc);
    peft_err e = {0};
    if (method_option_add(&mc, key, value, &e)) return peft_error_set(err, &e);
    memcpy(c->options, mc.options, sizeof c->options);
    return 0;
}

int peft_adapter_config_resolve(const peft_adapter_config *c) {
    const method_ops *o = method_at(c->method);
    if (!o || !o->resolve) return c->method;
    method_config mc;
    to_mc(c, NULL, &mc);
    const method_ops *r = o->resolve(&mc);
    for (int i = 0; r && method_registry()[i]; i++)
        if (method_registry()[i] == r) return i;
    return c->method;
}

int peft_adapter_config_check(const peft_adapter_config *c, peft_error *err) {
    const method_ops *o = method_at(c->method);
    peft_err e = {0};
    if (!o) {
        peft_fail(&e, PEFT_ERR_INVALID, "unknown method index %d", c->method);
        return peft_error_set(err, &e);
    }
    if (!o->check) return 0;
    method_config mc;
    to_mc(c, o, &mc);
    return o->check(&mc, &e) ? peft_error_set(err, &e) : 0;
}

int peft_model_check_targets(peft_model *m, const char *targets) {
    uint32_t bits = 0;
    return method_parse_targets(m, targets, &bits, &m->ctx->err);
}

peft_adapter *peft_adapter_new_config(peft_model *m, const peft_adapter_config *c, const char *base_model) {
    peft_err *err = &m->ctx->err;
    const method_ops *o = method_at(c->method);
    if (!o) {
        peft_fail(err, PEFT_ERR_INVALID, "unknown method index %d", c->method);
        return NULL;
    }
    method_config mc;
    to_mc(c, o, &mc);
    if (c->targets && method_parse_targets(m, c->targets, &mc.targets, err)) return NULL;
    adapter *a = NULL;
    if (adapter_new(m, &mc, &a, err)) return NULL;
    if (base_model) {
        char *b = strdup(base_model);
        if (!b) {
            adapter_free(a);
            peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
            return NULL;
        }
        free(a->base_model);
        a->base_model = b;
    }
    return (peft_adapter *)a;
}

void peft_adapter_describe(const peft_adapter *pa, char *buf, size_t cap) {
    const adapter *a = AS_AD(pa);
    if (!cap) return;
    buf[0] = '\0';
    if (!a) return;
    if (a->ops && a->ops->describe) a->ops->describe(a, buf, cap);
    else snprintf(buf, cap, "%d tensors", a->n_tensors);
}

int peft_adapter_virtual_tokens(const peft_adapter *a) {
    return a ? adapter_prompt_rows(AS_AD(a)) + adapter_prefix_rows(AS_AD(a)) : 0;
}

int peft_adapter_num_labels(const peft_adapter *a, const peft_model *m) {
    const int n = a ? adapter_n_labels(AS_AD(a), m) : 0;
    return n > 0 ? n : 0;
}

int peft_adapter_lora_info(const peft_adapter *a, peft_lora_info *out) {
    memset(out, 0, sizeof *out);
    const lora_state *s = a ? lora_of(AS_AD(a)) : NULL;
    if (!s) return PEFT_ERR_INVALID;
    out->n_modules = s->n_modules;
    out->r = s->cfg.r;
    out->alpha = s->cfg.alpha;
    out->scale = lora_scale(&s->cfg);
    return 0;
}

/* ---- combinations and merges --------------------------------------------- */

int peft_combine_type_check(const char *type, peft_error *err) {
    combine_type t;
    peft_err e = {0};
    return combine_type_parse(type, &t, &e) ? peft_error_set(err, &e) : 0;
}

peft_adapter *peft_adapter_combine_named(peft_model *m, const peft_adapter *const *adapters, const double *weights,
                                         const char *const *names, int n, const peft_combine_params *p) {
    peft_err *err = &m->ctx->err;
    peft_combine_params d = peft_combine_default_params();
    if (!p) p = &d;
    if (!adapters || !weights || n < 1) {
        peft_fail(err, PEFT_ERR_INVALID, "combine: no adapters given");
        return NULL;
    }
    combine_opts o = combine_default_opts();
    if (p->type && combine_type_parse(p->type, &o.type, err)) return NULL;
    if (p->majority_sign && strcmp(p->majority_sign, "total") != 0) {
        if (strcmp(p->majority_sign, "frequency") != 0) {
            peft_fail(err, PEFT_ERR_INVALID, "combine: majority sign method \"%s\" (expected total or frequency)",
                      p->majority_sign);
            return NULL;
        }
        o.sign_frequency = true;
    }
    o.density = p->density;
    o.svd_rank = p->svd_rank;
    o.svd_clamp = p->svd_clamp;
    o.seed = p->seed;
    adapter *out = NULL;
    if (lora_combine(m, (const adapter *const *)adapters, weights, n, names, &o, &out, err)) return NULL;
    return (peft_adapter *)out;
}

int peft_merge_outtype_check(const char *outtype, peft_error *err) {
    int t;
    peft_err e = {0};
    return lora_merge_outtype_parse(outtype, &t, &e) ? peft_error_set(err, &e) : 0;
}

int peft_adapter_merge_report(peft_model *m, const peft_adapter *pa, const char *out_path, const char *outtype,
                              peft_merge_summary *out) {
    peft_err *err = &m->ctx->err;
    const adapter *a = AS_AD(pa);
    int t = MERGE_OUT_DEFAULT;
    if (outtype && lora_merge_outtype_parse(outtype, &t, err)) return err->code;
    merge_summary s;
    if (lora_merge_save_as(a, m, out_path, t, &s, err)) return err->code;
    if (out) {
        memset(out, 0, sizeof *out);
        out->n_changed = s.n_changed;
        memcpy(out->n_by_dtype, s.n_by_dtype, sizeof out->n_by_dtype);
        for (int q = 0; q < m->cfg.n_layer * ROLE_N_LINEAR; q++)
            out->n_modules += a->ops->merge_touches &&
                              a->ops->merge_touches(a, q / ROLE_N_LINEAR, (model_linear_role)(q % ROLE_N_LINEAR));
    }
    return 0;
}

/* ---- the embedding pipeline ----------------------------------------------- */

static void to_info(const embed_pipeline *p, peft_embed_info *out) {
    memset(out, 0, sizeof *out);
    out->dim = p->dim;
    out->max_seq_length = p->max_len;
    out->d_model = p->d_model;
    out->pooling = p->modes;
    out->normalize = p->normalize;
    snprintf(out->source, sizeof out->source, "%s", p->source);
}

int peft_model_embed_info(peft_model *m, peft_embed_info *out) {
    peft_err *err = &m->ctx->err;
    memset(out, 0, sizeof *out);
    embed_pipeline p;
    if (embed_pipeline_load(m, &p, err)) return err->code;
    to_info(&p, out);
    return 0;
}

struct peft_embedder {
    peft_model *m;
    embed_pipeline p;
};

peft_embedder *peft_embedder_new(peft_model *m) {
    peft_embedder *e = calloc(1, sizeof *e);
    if (!e) {
        peft_fail(&m->ctx->err, PEFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    e->m = m;
    if (embed_pipeline_load(m, &e->p, &m->ctx->err)) {
        free(e);
        return NULL;
    }
    return e;
}

void peft_embedder_free(peft_embedder *e) { free(e); }

void peft_embedder_info(const peft_embedder *e, peft_embed_info *out) { to_info(&e->p, out); }

int peft_embedder_text(peft_embedder *e, const char *text, size_t len, float *out) {
    peft_err *err = &e->m->ctx->err;
    if (!text || !out) return peft_fail(err, PEFT_ERR_INVALID, "peft_embedder_text: bad arguments");
    return embed_text(e->m, &e->p, text, len, out, err) ? err->code : 0;
}
