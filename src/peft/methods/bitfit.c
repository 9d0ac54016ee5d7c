/* bitfit.c — BitFit (Ben Zaken et al., 2022): every bias of the base is
 * trained, nothing else (linear biases and LayerNorm biases); an
 * architecture without biases (Llama, Mistral, SmolLM2) is refused.
 *
 *   y = x·Wᵀ + b'  (b' trained, starting at the base's b);  gb' += Σ_rows dy
 *   LayerNorm: y = (x - μ)/σ ⊙ w + β'  (β' trained)
 *   BERT's pooler bias when classifying (its classifier reads the pooler)
 * Files (peft.c format, peft_type BITFIT, docs/formats.md):
 * base_model.model.<HF parameter>.bias, listed in "bias_names". */
#include "peft/lora.h"
#include "peft/method.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n_layer, ns;
    int *idx;           /* per slot: registry index of the linear's bias, or -1 */
    int *nidx;          /* per norm slot (adapter_norm_slot): registry index of its bias, or -1 */
    float **b, **gb;    /* per slot */
    float **nb, **gnb;  /* per norm */
    int pidx;           /* registry index of BERT's pooler bias, or -1 */
} bitfit;

#define S(a) ((bitfit *)(a)->priv)

static void bitfit_free(adapter *a) {
    bitfit *v = S(a);
    if (!v) return;
    free(v->idx);
    free(v->nidx);
    free(v->b);
    free(v->gb);
    free(v->nb);
    free(v->gnb);
    free(v);
    a->priv = NULL;
}


static int bitfit_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    bitfit *v = peft_calloc(1, sizeof *v, err);
    if (!v) return PEFT_ERR_NOMEM;
    a->priv = v;
    const int L = m->cfg.n_layer;
    v->n_layer = L;
    v->ns = L * ROLE_N_LINEAR;
    const size_t nn = (size_t)adapter_norm_slots(m);
    v->idx = peft_malloc(((size_t)v->ns + 1) * sizeof *v->idx, err);
    v->nidx = peft_malloc(nn * sizeof *v->nidx, err);
    v->b = peft_calloc((size_t)v->ns + 1, sizeof *v->b, err);
    v->gb = peft_calloc((size_t)v->ns + 1, sizeof *v->gb, err);
    v->nb = peft_calloc(nn, sizeof *v->nb, err);
    v->gnb = peft_calloc(nn, sizeof *v->gnb, err);
    if (!v->idx || !v->nidx || !v->b || !v->gb || !v->nb || !v->gnb) return PEFT_ERR_NOMEM;
    int n = 0;
    for (int s = 0; s < v->ns; s++) {
        const model_linear *lin = &m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR];
        v->idx[s] = -1;
        if (!lin->present || !lin->b) continue;
        char path[200], key[256];
        model_linear_hf_path(m, s / ROLE_N_LINEAR, (model_linear_role)(s % ROLE_N_LINEAR), path, sizeof path);
        snprintf(key, sizeof key, "base_model.model.%s.bias", path);
        if ((v->idx[s] = adapter_add_tensor(a, key, 1, lin->w.rows, 1, true, err)) < 0) return PEFT_ERR_NOMEM;
        adapter_tensor_set_group(a, v->idx[s], PG_NO_DECAY);   /* biases: no weight decay, as HF's Trainer */
        n++;
    }
    for (int k = 0; k < (int)nn; k++) {
        v->nidx[k] = -1;
        if (!adapter_base_norm_b(m, k / MODEL_N_NORMS, k % MODEL_N_NORMS)) continue;
        char nm[200], key[256];
        adapter_norm_name(m, k / MODEL_N_NORMS, k % MODEL_N_NORMS, "bias", nm, sizeof nm);
        snprintf(key, sizeof key, "base_model.model.%s", nm);
        if ((v->nidx[k] = adapter_add_tensor(a, key, 1, model_norm_len(m, k % MODEL_N_NORMS), 1, true, err)) < 0)
            return PEFT_ERR_NOMEM;
        adapter_tensor_set_group(a, v->nidx[k], PG_NO_DECAY);
        n++;
    }
    /* BERT's pooler (a bias of the base) once the classifier reads it */
    v->pidx = -1;
    if (mc->n_labels > 0 && m->cfg.desc->cls == ARCH_CLS_POOLER && m->pooler_b) {
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s%s.bias", model_hf_prefix(m), m->cfg.desc->hf_pooler);
        if ((v->pidx = adapter_add_tensor(a, key, 1, m->cfg.d_model, 1, true, err)) < 0) return PEFT_ERR_NOMEM;
        adapter_tensor_set_group(a, v->pidx, PG_NO_DECAY);
        n++;
    }
    if (!n)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                         "bitfit: %s (%s) has no bias terms to train; BitFit needs an architecture with biases",
                         m->path, m->cfg.arch_name);
    return 0;
}

static int bitfit_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    bitfit *v = S(a);
    for (int s = 0; s < v->ns; s++)
        if (v->idx[s] >= 0) {
            v->b[s] = a->tensors[v->idx[s]].p;
            v->gb[s] = a->tensors[v->idx[s]].g;
        }
    for (int k = 0; k < adapter_norm_slots(m); k++)
        if (v->nidx[k] >= 0) {
            v->nb[k] = a->tensors[v->nidx[k]].p;
            v->gnb[k] = a->tensors[v->nidx[k]].g;
        }
    if (v->pidx >= 0) {
        a->head.pb = a->tensors[v->pidx].p;
        a->head.gpb = a->tensors[v->pidx].g;
    }
    return 0;
}

/* the base's biases */
static int bitfit_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)rng;
    (void)err;
    bitfit *v = S(a);
    for (int s = 0; s < v->ns; s++)
        if (v->b[s])
            memcpy(v->b[s], m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR].b,
                   (size_t)a->tensors[v->idx[s]].n * sizeof(float));
    for (int k = 0; k < adapter_norm_slots(m); k++)
        if (v->nb[k])
            memcpy(v->nb[k], adapter_base_norm_b(m, k / MODEL_N_NORMS, k % MODEL_N_NORMS),
                   (size_t)model_norm_len(m, k % MODEL_N_NORMS) * sizeof(float));
    if (v->pidx >= 0) memcpy(a->head.pb, m->pooler_b, (size_t)m->cfg.d_model * sizeof(float));
    return 0;
}

static int bitfit_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    (void)m;
    cJSON *bn = cJSON_AddArrayToObject(o, "bias_names");
    if (!bn) return PEFT_ERR_NOMEM;
    const size_t pl = strlen("base_model.model.");
    for (int i = 0; i < a->n_tensors; i++)
        if (!mts_is_head(a, a->tensors[i].p) && !cJSON_AddItemToArray(bn, cJSON_CreateString(a->tensors[i].key + pl)))
            return PEFT_ERR_NOMEM;
    return 0;
}

/* ---- hooks: the linear keeps its base product, with the trained bias ------------------- */

static hook_kind bitfit_kind(const adapter *a, int l, model_linear_role r) {
    return S(a)->idx[l * ROLE_N_LINEAR + r] >= 0 ? HOOK_ADD : HOOK_NONE;
}

static const float *bitfit_lin_bias(const adapter *a, int l, model_linear_role r) {
    return S(a)->b[l * ROLE_N_LINEAR + r];
}

static int bitfit_fwd(const adapter *a, const lin_call *c) {
    (void)a;
    (void)c;
    return 0;   /* the base product used the trained bias */
}

/* gb += Σ_rows dy */
static int bitfit_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    (void)dx;
    float *gb = S(a)->gb[c->l * ROLE_N_LINEAR + c->r];
    for (int i = 0; i < c->N; i++)
        for (int j = 0; j < c->out; j++) gb[j] += dy[(size_t)i * lddy + j];
    return 0;
}

static const float *bitfit_norm_param(const adapter *a, int l, int which, bool bias) {
    return bias ? S(a)->nb[adapter_norm_slot(l, which)] : NULL;
}

static float *bitfit_norm_grad(adapter *a, int l, int which, bool bias) {
    return bias ? S(a)->gnb[adapter_norm_slot(l, which)] : NULL;
}

static int bitfit_lowest(const adapter *a, const peft_model *m) {
    (void)a;
    (void)m;
    return 0;
}

static void bitfit_describe(const adapter *a, char *buf, size_t cap) {
    int n = 0;   /* the head (1 to 4 tensors) apart */
    for (int i = 0; i < a->n_tensors; i++) n += !mts_is_head(a, a->tensors[i].p);
    snprintf(buf, cap, "%d bias vectors", n);
}

const method_ops method_bitfit = {
    .name = "bitfit",
    .peft_type = "BITFIT",
    .summary = "BitFit: every bias of the base (linears, LayerNorms), nothing else",
    .create = bitfit_create,
    .wire = bitfit_wire,
    .init = bitfit_init,
    .free_priv = bitfit_free,
    .config_write = bitfit_config_write,
    .lin_kind = bitfit_kind,
    .lin_bias = bitfit_lin_bias,
    .lin_fwd = bitfit_fwd,
    .lin_bwd = bitfit_bwd,
    .norm_param = bitfit_norm_param,
    .norm_grad = bitfit_norm_grad,
    .lowest_layer = bitfit_lowest,
    .describe = bitfit_describe,
};
