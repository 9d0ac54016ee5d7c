/* bottleneck.c — bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al.,
 * 2021; the AdapterHub `seq_bn` / `double_seq_bn` configs): a small MLP on a
 * sub-layer's output, before the residual add.
 *
 *   h (N, d) the sub-layer's output (after its output projection)
 *   z = h·Wdᵀ + bd (N, b);  y += h + f(z)·Wuᵀ + bu        b = d / reduction_factor
 *   Wd (b, d), bd (b), Wu (d, b), bu (d)
 *
 * adapter-pfeiffer: one module after the MLP (site 1), f = relu;
 * adapter-houlsby: after attention (site 0) and the MLP, f = swish.
 * Init zero_up (default): Wd kaiming-uniform, Wu and the biases 0, so the
 * adapter is the identity; bert: Wd, Wu ~ N(0, 0.02).
 * Files (peft.c format, peft_type BOTTLENECK, docs/formats.md):
 * base_model.model.<layer>.{attention,output}_adapter.adapter_{down,up}.{weight,bias}. */
#include "core/limits.h"
#include "peft/lora.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { ACT_RELU = 0, ACT_SWISH, ACT_GELU_TANH, ACT_TANH } bn_act;

typedef struct {
    float *dw, *db, *uw, *ub;    /* down (b, d), (b); up (d, b), (d) */
    float *gdw, *gdb, *guw, *gub;
} bn_module;

typedef struct {
    bool houlsby, zero_up;
    int rf, b, d;
    bn_act act;
    int n_layer;
    int *idx;                    /* per layer × 2 sites: registry index of adapter_down.weight, or -1 */
    bn_module *mods;             /* per layer × 2 sites */
    int n, lowest;
} bottleneck;

#define S(a) ((bottleneck *)(a)->priv)

static const char *const act_names[] = {"relu", "swish", "gelu_new", "tanh"};

static int act_parse(const char *s, bn_act *out) {
    if (!strcmp(s, "relu")) *out = ACT_RELU;
    else if (!strcmp(s, "swish") || !strcmp(s, "silu")) *out = ACT_SWISH;
    else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu")) *out = ACT_GELU_TANH;
    else if (!strcmp(s, "tanh")) *out = ACT_TANH;
    else return PEFT_ERR_INVALID;
    return 0;
}

/* f(z) and f'(z) (gelu_new: the tanh form) */
static float act_apply(bn_act k, float z) {
    switch (k) {
    case ACT_RELU: return z > 0 ? z : 0;
    case ACT_SWISH: return z / (1.0f + expf(-z));
    case ACT_TANH: return tanhf(z);
    default: {
        const float c = 0.7978845608028654f;
        return 0.5f * z * (1.0f + tanhf(c * (z + 0.044715f * z * z * z)));
    }
    }
}

static float act_grad(bn_act k, float z) {
    switch (k) {
    case ACT_RELU: return z > 0 ? 1.0f : 0.0f;
    case ACT_SWISH: {
        const float sg = 1.0f / (1.0f + expf(-z));
        return sg * (1.0f + z * (1.0f - sg));
    }
    case ACT_TANH: {
        const float t = tanhf(z);
        return 1.0f - t * t;
    }
    default: {
        const float c = 0.7978845608028654f, u = c * (z + 0.044715f * z * z * z), t = tanhf(u);
        return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * z * z);
    }
    }
}

/* reduction_factor, non_linearity and adapter_init from mc's options */
static int bn_options_read(const method_config *mc, bool houlsby, int *rf_out, bn_act *act, bool *zero_up,
                           peft_err *err) {
    double rf = 16;
    int rc = method_option_float(mc, "reduction_factor", 1, 1 << 20, &rf, err);
    if (rc) return rc;
    if (rf != floor(rf)) return peft_fail(err, PEFT_ERR_INVALID, "bottleneck adapter: --reduction-factor must be an integer");
    *rf_out = (int)rf;
    char buf[64];
    const char *s = method_option_get(mc, "non_linearity", buf, sizeof buf);
    *act = houlsby ? ACT_SWISH : ACT_RELU;
    if (s && act_parse(s, act))
        return peft_fail(err, PEFT_ERR_INVALID, "--non-linearity must be relu, swish, gelu_new or tanh, got \"%s\"", s);
    s = method_option_get(mc, "adapter_init", buf, sizeof buf);
    *zero_up = true;
    if (s && !strcmp(s, "bert")) *zero_up = false;
    else if (s && strcmp(s, "zero_up"))
        return peft_fail(err, PEFT_ERR_INVALID, "--adapter-init must be zero_up or bert, got \"%s\"", s);
    return 0;
}

extern const method_ops method_adapter_houlsby;

static int bn_check(const method_config *mc, peft_err *err) {
    int rf;
    bn_act act;
    bool zu;
    return bn_options_read(mc, mc->ops == &method_adapter_houlsby, &rf, &act, &zu, err);
}

static void bn_free(adapter *a) {
    bottleneck *v = S(a);
    if (!v) return;
    free(v->idx);
    free(v->mods);
    free(v);
    a->priv = NULL;
}

static int bn_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    bottleneck *v = peft_calloc(1, sizeof *v, err);
    if (!v) return PEFT_ERR_NOMEM;
    a->priv = v;
    v->houlsby = mc->ops == &method_adapter_houlsby;
    v->d = m->cfg.d_model;
    v->n_layer = m->cfg.n_layer;
    int rc = bn_options_read(mc, v->houlsby, &v->rf, &v->act, &v->zero_up, err);
    if (rc) return rc;
    v->b = v->d / v->rf;
    if (v->b < 1)
        return peft_fail(err, PEFT_ERR_INVALID, "bottleneck adapter: reduction factor %d leaves no bottleneck for hidden size %d",
                         v->rf, v->d);
    const uint64_t layers = mc->layers;
    const size_t nn = (size_t)v->n_layer * 2 + 1;
    v->idx = peft_malloc(nn * sizeof *v->idx, err);
    v->mods = peft_calloc(nn, sizeof *v->mods, err);
    if (!v->idx || !v->mods) return PEFT_ERR_NOMEM;
    v->lowest = v->n_layer;
    for (int l = 0; l < v->n_layer; l++)
        for (int site = 0; site < 2; site++) {
            v->idx[l * 2 + site] = -1;
            if ((site == 0 && !v->houlsby) || !lora_layer_selected(layers, l)) continue;
            char pre[64], key[256];
            adapter_layer_prefix(m, l, pre, sizeof pre);
            const char *sn = site ? "output_adapter" : "attention_adapter";
            /* the module's four tensors are consecutive (bn_wire) */
            snprintf(key, sizeof key, "base_model.model.%s.%s.adapter_down.weight", pre, sn);
            const int i0 = adapter_add_tensor(a, key, 2, v->b, v->d, true, err);
            snprintf(key, sizeof key, "base_model.model.%s.%s.adapter_down.bias", pre, sn);
            if (i0 < 0 || adapter_add_tensor(a, key, 1, v->b, 1, true, err) < 0) return PEFT_ERR_NOMEM;
            snprintf(key, sizeof key, "base_model.model.%s.%s.adapter_up.weight", pre, sn);
            if (adapter_add_tensor(a, key, 2, v->d, v->b, true, err) < 0) return PEFT_ERR_NOMEM;
            snprintf(key, sizeof key, "base_model.model.%s.%s.adapter_up.bias", pre, sn);
            if (adapter_add_tensor(a, key, 1, v->d, 1, true, err) < 0) return PEFT_ERR_NOMEM;
            /* the HF Trainer's rule: no weight decay on biases */
            adapter_tensor_set_group(a, i0 + 1, PG_NO_DECAY);
            adapter_tensor_set_group(a, i0 + 3, PG_NO_DECAY);
            v->idx[l * 2 + site] = i0;
            v->lowest = PEFT_MIN(v->lowest, l);
            v->n++;
        }
    if (!v->n) return peft_fail(err, PEFT_ERR_INVALID, "bottleneck adapter: no layer of %s is selected", m->path);
    return 0;
}

static int bn_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    bottleneck *v = S(a);
    for (int k = 0; k < v->n_layer * 2; k++) {
        const int i = v->idx[k];
        if (i < 0) continue;
        bn_module *bm = &v->mods[k];
        bm->dw = a->tensors[i].p; bm->gdw = a->tensors[i].g;
        bm->db = a->tensors[i + 1].p; bm->gdb = a->tensors[i + 1].g;
        bm->uw = a->tensors[i + 2].p; bm->guw = a->tensors[i + 2].g;
        bm->ub = a->tensors[i + 3].p; bm->gub = a->tensors[i + 3].g;
    }
    return 0;
}

static int bn_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)m;
    (void)err;
    const bottleneck *v = S(a);
    const int64_t n = (int64_t)v->b * v->d;
    for (int k = 0; k < v->n_layer * 2; k++) {
        if (v->idx[k] < 0) continue;
        const bn_module *bm = &v->mods[k];
        if (v->zero_up) adapter_kaiming_uniform(bm->dw, n, v->d, rng);   /* up (and biases) stay 0 */
        else {
            for (int64_t i = 0; i < n; i++) bm->dw[i] = 0.02f * peft_rng_normal(rng);
            for (int64_t i = 0; i < n; i++) bm->uw[i] = 0.02f * peft_rng_normal(rng);
        }
    }
    return 0;
}

static int bn_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    (void)m;
    const bottleneck *v = S(a);
    bool ok = cJSON_AddStringToObject(o, "config_name", v->houlsby ? "double_seq_bn" : "seq_bn") &&
              cJSON_AddBoolToObject(o, "mh_adapter", v->houlsby) && cJSON_AddBoolToObject(o, "output_adapter", true) &&
              cJSON_AddNumberToObject(o, "reduction_factor", v->rf) && cJSON_AddNumberToObject(o, "bottleneck_size", v->b) &&
              cJSON_AddStringToObject(o, "non_linearity", act_names[v->act]) &&
              cJSON_AddStringToObject(o, "init_weights", v->zero_up ? "zero_up" : "bert");
    return ok ? 0 : PEFT_ERR_NOMEM;
}

static int bn_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(o, "config_name");
    const bool houlsby = cJSON_IsString(cn) && !strcmp(cn->valuestring, "double_seq_bn");
    mc->ops = houlsby ? &method_adapter_houlsby : mc->ops;
    int rf, b;
    int rc = peft_json_get_int(o, "reduction_factor", 16, false, 1, m->cfg.d_model, &rf, path, err);
    if (rc) return rc;
    const cJSON *nl = cJSON_GetObjectItemCaseSensitive(o, "non_linearity");
    bn_act act = houlsby ? ACT_SWISH : ACT_RELU;
    if (cJSON_IsString(nl) && act_parse(nl->valuestring, &act))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: non_linearity \"%s\" (expected relu, swish, gelu_new, tanh)", path,
                         nl->valuestring);
    if ((rc = peft_json_get_int(o, "bottleneck_size", 0, false, 0, m->cfg.d_model, &b, path, err))) return rc;
    if (b > 0 && m->cfg.d_model / rf != b)
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: bottleneck_size %d does not match hidden %d / reduction_factor %d", path, b,
                         m->cfg.d_model, rf);
    snprintf(mc->options, sizeof mc->options, "reduction_factor=%d;non_linearity=%s", rf, act_names[act]);
    return 0;
}

/* ---- the hook ------------------------------------------------------------------------ */

static bool bn_hooked(const adapter *a, int l, int site) { return S(a)->idx[l * 2 + site] >= 0; }

/* kept: z before and after f (N, b) each */
static size_t bn_act_bytes(const adapter *a, int l, int site, int N) {
    (void)l;
    (void)site;
    return 2 * (size_t)N * (size_t)S(a)->b * sizeof(float);
}

/* scratch: dz (N, b) */
static size_t bn_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    return (size_t)N * (size_t)S(a)->b;
}

static void colsum_acc(float *col, const float *x, int R, int C) {
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) col[j] += x[(size_t)i * C + j];
}

/* y (N, d) += h + f(h·Wdᵀ + bd)·Wuᵀ + bu, keeping zpre and f(zpre) */
static int bn_fwd(const adapter *a, const sub_call *c) {
    const bottleneck *v = S(a);
    const bn_module *bm = &v->mods[c->l * 2 + c->site];
    const int N = c->N, d = c->d, b = v->b;
    float *zpre = (float *)c->act, *za = zpre + (size_t)N * b;
    for (int i = 0; i < N; i++) memcpy(zpre + (size_t)i * b, bm->db, (size_t)b * sizeof(float));
    kern_gemm_rows(false, true, N, b, d, 1.0f, c->h, d, bm->dw, d, 1.0f, zpre, b, c->nt);
    for (size_t i = 0; i < (size_t)N * b; i++) za[i] = act_apply(v->act, zpre[i]);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < d; j++) c->y[(size_t)i * d + j] += c->h[(size_t)i * d + j] + bm->ub[j];
    kern_gemm_rows(false, true, N, d, b, 1.0f, za, b, bm->uw, b, 1.0f, c->y, d, c->nt);
    return 0;
}

/* From dy (N, d): parameter gradients, and dh (N, d) = dy + dz·Wd with
 * dz = (dy·Wu) ⊙ f'(zpre) */
static int bn_bwd(adapter *a, const sub_call *c, const float *dy, float *dh) {
    const bottleneck *v = S(a);
    const bn_module *bm = &v->mods[c->l * 2 + c->site];
    const int N = c->N, d = c->d, b = v->b;
    const float *zpre = (const float *)c->act, *za = zpre + (size_t)N * b;
    /* gWu (d, b) += dyᵀ·za, gbu += colsum dy */
    kern_gemm_rows(true, false, d, b, N, 1.0f, dy, d, za, b, 1.0f, bm->guw, b, c->nt);
    colsum_acc(bm->gub, dy, N, d);
    float *dz = c->scr;
    kern_gemm_rows(false, false, N, b, d, 1.0f, dy, d, bm->uw, b, 0.0f, dz, b, c->nt);
    for (size_t i = 0; i < (size_t)N * b; i++) dz[i] *= act_grad(v->act, zpre[i]);
    kern_gemm_rows(true, false, b, d, N, 1.0f, dz, b, c->h, d, 1.0f, bm->gdw, d, c->nt);
    colsum_acc(bm->gdb, dz, N, b);
    memcpy(dh, dy, (size_t)N * d * sizeof(float));
    kern_gemm_rows(false, false, N, d, b, 1.0f, dz, b, bm->dw, d, 1.0f, dh, d, c->nt);
    return 0;
}

static int bn_lowest(const adapter *a, const peft_model *m) {
    (void)m;
    return S(a)->lowest;
}

/* "30 adapters (after the MLP in 30 layers), each 576 -> 36 -> 576
 * (reduction factor 16), relu": the count first and the width as a
 * shape, so that the two numbers cannot read as "30 of 36". */
static void bn_describe(const adapter *a, char *buf, size_t cap) {
    const bottleneck *v = S(a);
    int layers = 0;
    for (int l = 0; l < v->n_layer; l++) layers += v->idx[2 * l] >= 0 || v->idx[2 * l + 1] >= 0;
    snprintf(buf, cap, "%d adapter%s (after %s in %d layer%s), each %d -> %d -> %d (reduction factor %d), %s", v->n,
             v->n == 1 ? "" : "s", v->houlsby ? "attention and the MLP" : "the MLP", layers, layers == 1 ? "" : "s", v->d,
             v->b, v->d, v->rf, act_names[v->act]);
}

static const method_option bn_options[] = {
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"reduction-factor", "N", "bottleneck = hidden / N (default 16)"},
    {"non-linearity", "F", "relu (pfeiffer default) | swish (houlsby default) | gelu_new | tanh"},
    {"adapter-init", "I", "zero_up (default: up-projection 0, the identity) | bert (N(0, 0.02))"},
    {NULL, NULL, NULL},
};

static const char *const pfeiffer_aliases[] = {"pfeiffer", "seq_bn", NULL};
static const char *const houlsby_aliases[] = {"houlsby", "double_seq_bn", NULL};

#define BN_OPS                                                                                                          \
    .peft_type = "BOTTLENECK", .options = bn_options, .check = bn_check, .create = bn_create,                 \
    .wire = bn_wire, .init = bn_init, .free_priv = bn_free, .config_write = bn_config_write,                           \
    .config_read = bn_config_read, .scratch_floats = bn_scratch, .sub_hooked = bn_hooked,                              \
    .sub_act_bytes = bn_act_bytes, .sub_fwd = bn_fwd, .sub_bwd = bn_bwd, .lowest_layer = bn_lowest,                    \
    .describe = bn_describe

const method_ops method_adapter_pfeiffer = {
    .name = "adapter-pfeiffer",
    .aliases = pfeiffer_aliases,
    .summary = "bottleneck adapter after each MLP (Pfeiffer, relu)",
    BN_OPS,
};

const method_ops method_adapter_houlsby = {
    .name = "adapter-houlsby",
    .aliases = houlsby_aliases,
    .summary = "bottleneck adapters after attention and after the MLP (Houlsby, swish)",
    BN_OPS,
};
