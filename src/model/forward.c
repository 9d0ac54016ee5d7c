/* forward.c — the inference forward pass with a KV cache.
 *
 * Each layer is the block recipe of model/block.c (the one the training
 * graph runs) on one residual buffer x (T, d); this file supplies the
 * linears through the attached adapter's hooks and the attention over the
 * cache. q, k, v share one (T, qd + 2·kvd) buffer. */
#include "model/block.h"
#include "model/model.h"
#include "peft/adapter.h"
#include "peft/method.h"

#include <cblas.h>
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

/* y = beta·y + linear r of layer l on x (T rows), through the attached
 * adapter's hook on it when there is one (method.h; graph.c's lin_fwd does
 * the same in training). zs: the method's scratch and kept activations
 * (hook_ws floats). */
static int linear(peft_model *m, int l, model_linear_role r, float *y, int ldy, const float *x, int T,
                  float beta, float *scr, float *zs, int nt) {
    const adapter *a = m->lora;
    const hook_kind hk = method_lin_kind(a, l, r);
    lin_call c = method_lin_call(a, m, l, r, x, T, y, ldy, beta);
    c.mm_scr = scr;
    c.nt = nt;
    if (hk != HOOK_NONE) {
        c.scr = zs;
        c.act = zs + (a->ops->scratch_floats ? a->ops->scratch_floats(a, m, T) : 0);
    }
    int rc = hk != HOOK_REPLACE ? method_base_fwd(&c) : 0;
    return rc || hk == HOOK_NONE ? rc : a->ops->lin_fwd(a, &c);
}

/* Floats a plug-in method needs behind zs for T rows: its scratch, then the
 * largest kept-activation block of its hooked linears. */
static size_t hook_ws(const adapter *a, const peft_model *m, int T) {
    if (!a || !a->ops) return 0;
    size_t act = 0;
    for (int s = 0; s < m->cfg.n_layer * ROLE_N_LINEAR; s++) {
        const model_linear_role r = (model_linear_role)(s % ROLE_N_LINEAR);
        if (method_lin_kind(a, s / ROLE_N_LINEAR, r) != HOOK_NONE && a->ops->lin_act_bytes)
            act = PEFT_MAX(act, a->ops->lin_act_bytes(a, s / ROLE_N_LINEAR, r, T));
    }
    for (int k = 0; k < m->cfg.n_layer * 2; k++)
        if (method_sub_hooked(a, k / 2, k % 2) && a->ops->sub_act_bytes)
            act = PEFT_MAX(act, a->ops->sub_act_bytes(a, k / 2, k % 2, T));
    return (a->ops->scratch_floats ? a->ops->scratch_floats(a, m, T) : 0) + (act + sizeof(float) - 1) / sizeof(float);
}


/* x += the sublayer output of linear (l, r) on in, through a plug-in's
 * sub-layer hook at `site` when it has one (x += g(h)); hs (T, d) holds h. */
static int sublayer_out(peft_model *m, int l, model_linear_role r, int site, float *x, const float *in, int T,
                        float *scr, float *zs, float *hs, int nt) {
    const adapter *a = m->lora;
    const int d = m->cfg.d_model;
    if (!method_sub_hooked(a, l, site)) return linear(m, l, r, x, d, in, T, 1.0f, scr, zs, nt);
    /* the method's scratch and kept activations follow zs (hook_ws), h is hs */
    int rc = linear(m, l, r, hs, d, in, T, 0.0f, scr, zs, nt);
    if (rc) return rc;
    const sub_call c = {m, l, site, T, d, hs, x, zs + (a->ops->scratch_floats ? a->ops->scratch_floats(a, m, T) : 0), zs, nt};
    return a->ops->sub_fwd(a, &c);
}

static float *ws_get(peft_model *m, size_t n, peft_err *err) {
    if (n > m->ws_floats) {
        free(m->ws);
        m->ws = peft_malloc(n * sizeof(float), err);
        m->ws_floats = m->ws ? n : 0;
    }
    return m->ws;
}

/* The block recipe's callbacks (model/block.h) for inference. */
typedef struct {
    peft_model *m;
    float *scr, *zs, *hs;
    const int32_t *pos;
    int T, p0, PX, nt;
    int PXA;              /* prefix rows at the cache's start (always visible) */
} fwd_state;

static int fwd_lin(void *u, int l, model_linear_role r, const float *x, float *y, int ldy, float beta) {
    fwd_state *s = u;
    return linear(s->m, l, r, y, ldy, x, s->T, beta, s->scr, s->zs, s->nt);
}

static int fwd_sub_out(void *u, int l, model_linear_role r, int site, const float *x, float *y) {
    fwd_state *s = u;
    return sublayer_out(s->m, l, r, site, y, x, s->T, s->scr, s->zs, s->hs, s->nt);
}

/* The new keys and values into layer l's cache (after the prefix rows on a
 * sequence's first call), then attention of the T queries over it. */
static int fwd_attn(void *u, int l, block_acts *A) {
    fwd_state *s = u;
    peft_model *m = s->m;
    const model_config *c = &m->cfg;
    const adapter *ad = m->lora;
    const int hd = c->head_dim, qd = c->n_head * hd, kvd = c->n_kv_head * hd, ld_qkv = qd + 2 * kvd;
    const size_t kv_layer = (size_t)c->n_kv_head * m->kv.cap * hd;
    float *kc = m->kv.k + l * kv_layer, *vc = m->kv.v + l * kv_layer;
    for (int p = 0; p < s->PX; p++) {
        /* the prefix rows as they are (keys not rotated, as in HF's cache) */
        const float *kr, *vr;
        ad->ops->kv_row(ad, l, p, &kr, &vr);
        for (int g = 0; g < c->n_kv_head; g++) {
            size_t dst = ((size_t)g * m->kv.cap + p) * hd;
            memcpy(kc + dst, kr + (size_t)g * hd, (size_t)hd * sizeof(float));
            memcpy(vc + dst, vr + (size_t)g * hd, (size_t)hd * sizeof(float));
        }
    }
    for (int t = 0; t < s->T; t++)
        for (int g = 0; g < c->n_kv_head; g++) {
            size_t dst = ((size_t)g * m->kv.cap + s->pos[t]) * hd;
            memcpy(kc + dst, A->qkv + (size_t)t * ld_qkv + qd + (size_t)g * hd, (size_t)hd * sizeof(float));
            memcpy(vc + dst, A->qkv + (size_t)t * ld_qkv + qd + kvd + (size_t)g * hd, (size_t)hd * sizeof(float));
        }
    const kern_attn_opts o = block_attn_opts(m, l, s->PXA);
    kern_attention(A->att, qd, A->qkv, ld_qkv, kc, vc, m->kv.cap, s->T, s->p0, c->n_head, c->n_kv_head, hd, &o,
                   s->nt);
    return 0;
}

int model_forward(peft_model *m, const int32_t *ids, int T_in, float *logits, bool all_logits, peft_err *err) {
    return model_forward_ex(m, ids, NULL, T_in, logits, all_logits, NULL, err);
}

int model_forward_ex(peft_model *m, const int32_t *ids, const int32_t *types, int T_in, float *logits, bool all_logits,
                     float *hidden, peft_err *err) {
    const model_config *c = &m->cfg;
    const bool enc = c->desc->encoder;
    if (enc && logits)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s is an encoder (%s): it has no language-model head to generate or "
                         "score text with (use peft embed, or train a classifier)", m->path, c->arch_name);
    if (enc) m->n_past = 0;   /* no incremental decoding: each call is a whole sequence */
    const adapter *ad = m->lora;
    const int d = c->d_model, hd = c->head_dim, qd = c->n_head * hd, kvd = c->n_kv_head * hd;
    const int ld_qkv = qd + 2 * kvd, ff = c->d_ff;
    const int nt = m->ctx ? m->ctx->n_threads : 1;
    int rc;
    if (T_in <= 0) return peft_fail(err, PEFT_ERR_INVALID, "forward: no tokens");
    for (int t = 0; t < T_in; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return peft_fail(err, PEFT_ERR_INVALID, "token id %d out of range [0, %d)", ids[t], c->vocab);
        if (types && (types[t] < 0 || types[t] >= PEFT_MAX(c->n_types, 1)))
            return peft_fail(err, PEFT_ERR_INVALID, "token type %d out of range [0, %d)", types[t], PEFT_MAX(c->n_types, 1));
    }
    /* a sequence's first call: prompt tuning's virtual rows go first, prefix
     * tuning's key/value rows fill the cache's first positions */
    const int V0 = m->n_past == 0 ? adapter_prompt_rows(ad) : 0, PX = m->n_past == 0 ? adapter_prefix_rows(ad) : 0;
    const int T = V0 + T_in, p0 = m->n_past + PX, L = p0 + T;
    if (L > c->n_ctx)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: %d tokens%s exceed the context length %d", m->path, L,
                         (V0 || PX || adapter_prompt_rows(ad) || adapter_prefix_rows(ad)) ? " (with the virtual tokens)" : "",
                         c->n_ctx);
    if ((rc = ensure_kv(m, L, err))) return rc;

    int64_t kmax = PEFT_MAX(PEFT_MAX(d, ff), qd);
    size_t mm_scratch = kern_matmul_scratch_floats(kmax, nt);
    if (m->bf16_packs) mm_scratch = PEFT_MAX(mm_scratch, kern_bf16_scratch_floats(nt));   /* the bf16 GEMM's */
    /* scratch only the attached method uses: its hooks' (zs, hook_ws), a sub-layer hook's h (hs) */
    bool sub_hooks = false;   /* a plug-in's sub-layer hook needs h (T, d): hs */
    for (int k = 0; k < c->n_layer * 2; k++) sub_hooks |= method_sub_hooked(ad, k / 2, k % 2);
    const int hsd = sub_hooks ? d : 0;
    const size_t hw = hook_ws(ad, m, T);
    /* Gemma 2's normed sub-layer outputs: o1, o2, ptmp (T, d) */
    const bool post = c->desc->hf_norm[NORM_ATTN_OUT] || c->desc->hf_norm[NORM_MLP_OUT] || enc;
    const size_t ff1 = (size_t)(c->desc->fused_gate_up ? 2 : 1) * ff, npost = post ? 3 * (size_t)T * d : 0;
    size_t n_ws = (size_t)T * (2 * d + ld_qkv + qd + ff1 + ff) + T + mm_scratch + hw +
                  (size_t)T * (size_t)hsd + npost;
    float *ws = ws_get(m, n_ws, err);
    if (!ws) return PEFT_ERR_NOMEM;
    float *x = ws, *h = x + (size_t)T * d, *qkv = h + (size_t)T * d, *att = qkv + (size_t)T * ld_qkv;
    float *f1 = att + (size_t)T * qd, *f2 = f1 + (size_t)T * ff1, *scr = f2 + (size_t)T * ff;
    float *zs = scr + mm_scratch;
    float *hs = zs + hw;
    float *po = hs + (size_t)T * hsd;
    int32_t *pos = (int32_t *)(po + npost);
    for (int t = 0; t < T; t++) pos[t] = p0 + t;

    /* embeddings */
    const bool learned_pos = c->desc->pos == ARCH_POS_LEARNED;
    kern_weight te, pe;
    const kern_weight *tok = adapter_tok_emb(ad, m, &te), *pemb = learned_pos ? adapter_pos_emb(ad, m, &pe) : NULL;
    for (int t = 0; t < T; t++) {
        if (t < V0) memcpy(x + (size_t)t * d, ad->ops->input_row(ad, t), (size_t)d * sizeof(float));
        else if ((rc = kern_weight_row(tok, ids[t - V0], x + (size_t)t * d))) goto fail;
        if (c->embed_scale > 0)
            for (int i = 0; i < d; i++) x[(size_t)t * d + i] *= c->embed_scale;
        if (learned_pos) {
            if ((rc = kern_weight_row(pemb, pos[t] + c->pos_offset, h))) goto fail;
            for (int i = 0; i < d; i++) x[(size_t)t * d + i] += h[i];
        }
        if (m->type_emb.data) {
            if ((rc = kern_weight_row(&m->type_emb, types && t >= V0 ? types[t - V0] : 0, h))) goto fail;
            for (int i = 0; i < d; i++) x[(size_t)t * d + i] += h[i];
        }
    }

    fwd_state st = {m, scr, zs, hs, pos, T, p0, PX, nt, adapter_prefix_rows(ad)};
    const block_env env = {.m = m, .ad = ad, .N = T, .pos = pos, .nt = nt, .u = &st,
                           .lin = fwd_lin, .sub_out = fwd_sub_out, .attn = fwd_attn};
    const bool fused = c->desc->fused_gate_up, split = c->desc->act != ARCH_ACT_GELU_TANH && !fused;
    block_acts A = {.xin = x, .h1 = h, .qkv = qkv, .att = att, .xmid = x, .h2 = h, .g = f1,
                    .u = split ? f2 : NULL, .a = fused ? f2 : f1, .xout = x,
                    .o1 = post ? po : NULL, .o2 = post ? po + (size_t)T * d : NULL,
                    .ptmp = post ? po + 2 * (size_t)T * d : NULL};
    /* encoders: the embeddings' LayerNorm (the out norm slot) */
    if (enc) block_norm_fwd(&env, c->n_layer, NORM_ATTN, x, NULL, NULL, x, T);
    for (int l = 0; l < c->n_layer; l++)
        if ((rc = block_fwd(&env, l, &A))) goto fail;
    if (hidden) memcpy(hidden, x + (size_t)V0 * d, (size_t)T_in * d * sizeof(float));
    m->n_past = L;

    if (logits) {
        /* only the real tokens' rows (not the virtual ones) */
        const int first = all_logits ? V0 : T - 1, n = T - first;
        const float *xs = x + (size_t)first * d;
        block_norm_fwd(&env, c->n_layer, 0, h, NULL, NULL, xs, n);
        kern_weight lh;
        if ((rc = kern_matmul(logits, c->vocab, h, n, adapter_lm_head(ad, m, &lh), NULL, 0, scr, nt))) goto fail;
        if (c->final_softcap > 0) {
            const float cap = c->final_softcap;
            for (size_t i = 0; i < (size_t)n * c->vocab; i++) logits[i] = cap * tanhf(logits[i] / cap);
        }
    }
    return 0;
fail:
    return peft_fail(err, rc, "%s: forward pass failed (%s)", m->path, peft_status_name(rc));
}
