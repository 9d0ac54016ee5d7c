/* forward.c — the inference forward pass with a KV cache.
 *
 * Llama block:  h = rmsnorm(x); q,k,v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ (+b, Qwen2);
 *               rope(q, k); x += attn(q, K, V)·Woᵀ;
 *               h = rmsnorm(x); x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ
 * GPT-2 block:  h = ln_1(x); qkv = h·Wqkvᵀ + b; x += attn(q, K, V)·Woᵀ + b;
 *               h = ln_2(x); x += gelu(h·Wfcᵀ + b)·Wprojᵀ + b
 * x is (T, d). q, k, v share one (T, qd + 2·kvd) buffer. */
#include "model/model.h"
#include "peft/lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void model_reset(peft_model *m) { m->n_past = 0; }

/* Grows the cache to hold `need` positions, keeping what is there. */
static int ensure_kv(peft_model *m, int need, peft_err *err) {
    model_kv *kv = &m->kv;
    if (need <= kv->cap) return 0;
    const model_config *c = &m->cfg;
    int cap = kv->cap ? kv->cap * 2 : 256;
    if (cap < need) cap = need;
    if (cap > c->n_ctx) cap = c->n_ctx;
    const size_t hd = (size_t)c->head_dim, per_layer = (size_t)c->n_kv_head * cap * hd;
    float *k = peft_malloc(per_layer * c->n_layer * sizeof(float), err);
    float *v = peft_malloc(per_layer * c->n_layer * sizeof(float), err);
    if (!k || !v) { free(k); free(v); return PEFT_ERR_NOMEM; }
    if (kv->cap && m->n_past) {
        const size_t old_layer = (size_t)c->n_kv_head * kv->cap * hd;
        for (int l = 0; l < c->n_layer; l++)
            for (int g = 0; g < c->n_kv_head; g++) {
                size_t dst = l * per_layer + (size_t)g * cap * hd, src = l * old_layer + (size_t)g * kv->cap * hd;
                memcpy(k + dst, kv->k + src, (size_t)m->n_past * hd * sizeof(float));
                memcpy(v + dst, kv->v + src, (size_t)m->n_past * hd * sizeof(float));
            }
    }
    free(kv->k);
    free(kv->v);
    kv->k = k;
    kv->v = v;
    kv->cap = cap;
    return 0;
}

/* y = beta·y + x·Wᵀ + b for linear `r` of layer l, plus the attached LoRA
 * module if any (xa: (T, r) scratch). */
static int linear(peft_model *m, int l, model_linear_role r, float *y, int ldy, const float *x, int T,
                  float beta, float *scr, float *xa, int nt) {
    const model_linear *lin = &m->layers[l].lin[r];
    int rc = kern_matmul(y, ldy, x, T, &lin->w, lin->b, beta, scr, nt);
    if (rc || !m->lora) return rc;
    const lora_module *mod = m->lora->slot[l * ROLE_N_LINEAR + r];
    if (mod) lora_fwd(mod, x, mod->in, T, NULL, 0.0f, NULL, xa, y, ldy, nt);
    return 0;
}

static float *ws_get(peft_model *m, size_t n, peft_err *err) {
    if (n > m->ws_floats) {
        free(m->ws);
        m->ws = peft_malloc(n * sizeof(float), err);
        m->ws_floats = m->ws ? n : 0;
    }
    return m->ws;
}

int model_forward(peft_model *m, const int32_t *ids, int T, float *logits, bool all_logits,
                  peft_err *err) {
    const model_config *c = &m->cfg;
    const int d = c->d_model, hd = c->head_dim, qd = c->n_head * hd, kvd = c->n_kv_head * hd;
    const int ld_qkv = qd + 2 * kvd, ff = c->d_ff, p0 = m->n_past, L = p0 + T;
    const int nt = m->ctx ? m->ctx->n_threads : 1;
    const bool gpt2 = c->arch == PEFT_ARCH_GPT2;
    int rc;
    if (T <= 0) return peft_fail(err, PEFT_ERR_INVALID, "forward: no tokens");
    if (L > c->n_ctx)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: %d tokens exceed the context length %d", m->path, L, c->n_ctx);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return peft_fail(err, PEFT_ERR_INVALID, "token id %d out of range [0, %d)", ids[t], c->vocab);
    if ((rc = ensure_kv(m, L, err))) return rc;

    int64_t kmax = PEFT_MAX(PEFT_MAX(d, ff), qd);
    size_t mm_scratch = kern_matmul_scratch_floats(kmax, nt);
    size_t att_scratch = (size_t)nt * T * L;
    int r_max = 0;
    for (int i = 0; m->lora && i < m->lora->n_modules; i++) r_max = PEFT_MAX(r_max, m->lora->mods[i].r);
    size_t n_ws = (size_t)T * (2 * d + ld_qkv + qd + 2 * ff + r_max) + T + mm_scratch + att_scratch;
    float *ws = ws_get(m, n_ws, err);
    if (!ws) return PEFT_ERR_NOMEM;
    float *x = ws, *h = x + (size_t)T * d, *qkv = h + (size_t)T * d, *att = qkv + (size_t)T * ld_qkv;
    float *f1 = att + (size_t)T * qd, *f2 = f1 + (size_t)T * ff, *scr = f2 + (size_t)T * ff;
    float *ascr = scr + mm_scratch;
    float *xa = ascr + att_scratch;
    int32_t *pos = (int32_t *)(xa + (size_t)T * r_max);
    for (int t = 0; t < T; t++) pos[t] = p0 + t;

    /* embeddings */
    for (int t = 0; t < T; t++) {
        if ((rc = kern_weight_row(&m->tok_emb, ids[t], x + (size_t)t * d))) goto fail;
        if (gpt2) {
            if ((rc = kern_weight_row(&m->pos_emb, pos[t], h))) goto fail;
            for (int i = 0; i < d; i++) x[(size_t)t * d + i] += h[i];
        }
    }

    const size_t kv_layer = (size_t)c->n_kv_head * m->kv.cap * hd;
    for (int l = 0; l < c->n_layer; l++) {
        const model_layer *Ly = &m->layers[l];
        if (gpt2) kern_layernorm_fwd(h, NULL, NULL, x, Ly->attn_norm_w, Ly->attn_norm_b, T, d, c->norm_eps);
        else kern_rmsnorm_fwd(h, NULL, x, Ly->attn_norm_w, T, d, c->norm_eps);
        if (gpt2) {
            if ((rc = linear(m, l, ROLE_QKV, qkv, ld_qkv, h, T, 0, scr, xa, nt))) goto fail;
        } else {
            if ((rc = linear(m, l, ROLE_Q, qkv, ld_qkv, h, T, 0, scr, xa, nt)) ||
                (rc = linear(m, l, ROLE_K, qkv + qd, ld_qkv, h, T, 0, scr, xa, nt)) ||
                (rc = linear(m, l, ROLE_V, qkv + qd + kvd, ld_qkv, h, T, 0, scr, xa, nt)))
                goto fail;
            const int half = c->rope_dim / 2;
            kern_rope(qkv, ld_qkv, pos, T, c->n_head, hd, half, m->rope_cos, m->rope_sin, false);
            kern_rope(qkv + qd, ld_qkv, pos, T, c->n_kv_head, hd, half, m->rope_cos, m->rope_sin, false);
        }
        float *kc = m->kv.k + l * kv_layer, *vc = m->kv.v + l * kv_layer;
        for (int t = 0; t < T; t++)
            for (int g = 0; g < c->n_kv_head; g++) {
                size_t dst = ((size_t)g * m->kv.cap + pos[t]) * hd;
                memcpy(kc + dst, qkv + (size_t)t * ld_qkv + qd + (size_t)g * hd, (size_t)hd * sizeof(float));
                memcpy(vc + dst, qkv + (size_t)t * ld_qkv + qd + kvd + (size_t)g * hd, (size_t)hd * sizeof(float));
            }
        kern_attention(att, qd, qkv, ld_qkv, kc, vc, m->kv.cap, T, p0, c->n_head, c->n_kv_head, hd,
                       1.0f / sqrtf((float)hd), ascr, nt);
        if ((rc = linear(m, l, ROLE_O, x, d, att, T, 1.0f, scr, xa, nt))) goto fail;

        if (gpt2) {
            kern_layernorm_fwd(h, NULL, NULL, x, Ly->ffn_norm_w, Ly->ffn_norm_b, T, d, c->norm_eps);
            if ((rc = linear(m, l, ROLE_UP, f1, ff, h, T, 0, scr, xa, nt))) goto fail;
            kern_gelu_tanh_fwd(f1, f1, (int64_t)T * ff, nt);
        } else {
            kern_rmsnorm_fwd(h, NULL, x, Ly->ffn_norm_w, T, d, c->norm_eps);
            if ((rc = linear(m, l, ROLE_GATE, f1, ff, h, T, 0, scr, xa, nt)) ||
                (rc = linear(m, l, ROLE_UP, f2, ff, h, T, 0, scr, xa, nt)))
                goto fail;
            kern_swiglu_fwd(f1, f1, f2, (int64_t)T * ff, nt);
        }
        if ((rc = linear(m, l, ROLE_DOWN, x, d, f1, T, 1.0f, scr, xa, nt))) goto fail;
    }
    m->n_past = L;

    if (logits) {
        const int first = all_logits ? 0 : T - 1, n = T - first;
        const float *xs = x + (size_t)first * d;
        if (gpt2) kern_layernorm_fwd(h, NULL, NULL, xs, m->out_norm_w, m->out_norm_b, n, d, c->norm_eps);
        else kern_rmsnorm_fwd(h, NULL, xs, m->out_norm_w, n, d, c->norm_eps);
        if ((rc = kern_matmul(logits, c->vocab, h, n, &m->lm_head, NULL, 0, scr, nt))) goto fail;
    }
    return 0;
fail:
    return peft_fail(err, rc, "%s: forward pass failed (%s)", m->path, peft_status_name(rc));
}
