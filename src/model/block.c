/* block.c — a transformer block, forward and backward, as the architecture
 * descriptor describes it (block.h).
 *
 * Forward (pre-norm), N rows, d model width, ldq = qd + 2·kvd, ff MLP width:
 *   h1 (N,d)   = norm1(xin)
 *   qkv (N,ldq) = h1·[Wq|Wk|Wv]ᵀ (one fused linear, or three);
 *                [per-head RMSNorm of q and k (Qwen3)]; RoPE on q, k
 *   att (N,qd) = attention(q, K, V)                       (callback)
 *   xmid (N,d) = xin + o(att)                             (sub-layer site 0)
 *   h2 (N,d)   = norm2(xmid)
 *   gated:     g, u (N,ff) = h2·Wgᵀ, h2·Wuᵀ; a = silu(g) ⊙ u  (GeGLU: gelu_tanh(g) ⊙ u;
 *              Phi-3: [g | u] (N,2ff) from one fused linear)
 *   plain:     g (N,ff) = h2·Wupᵀ; a = gelu_tanh(g)
 *   xout (N,d) = xmid + down(a)                           (sub-layer site 1)
 * Gemma 2 normalizes each sub-layer's output before its residual add:
 *   xmid = xin + norm_attn_out(o(att)), xout = xmid + norm_mlp_out(down(a)).
 * The backward runs the same steps in reverse. */
#include "model/block.h"
#include "peft/adapter.h"

#include <math.h>
#include <string.h>

bool block_fused_qkv(const peft_model *m) { return m->cfg.desc->hf_lin[ROLE_QKV] != NULL; }

static void copy_rows(const block_env *e, float *dst, const float *src, size_t n) {
    if (dst == src) return;
    if (e->copy) e->copy(e->u, dst, src, n);
    else memcpy(dst, src, n * sizeof(float));
}

static void zero_rows(const block_env *e, float *p, size_t n) {
    if (e->zero) e->zero(e->u, p, n);
    else memset(p, 0, n * sizeof(float));
}

kern_attn_opts block_attn_opts(const peft_model *m, int l, int sink) {
    const model_config *c = &m->cfg;
    const bool sliding = c->sliding_window > 0 && (c->sliding[l / 64] >> (l % 64) & 1u);
    return (kern_attn_opts){.scale = c->attn_scale > 0 ? c->attn_scale : 1.0f / sqrtf((float)c->head_dim),
                            .softcap = c->attn_softcap, .window = sliding ? c->sliding_window : 0, .sink = sink,
                            .bidir = c->desc->encoder};
}

bool block_qk_norm(const peft_model *m) { return m->cfg.desc->hf_norm[NORM_Q] != NULL; }

static bool gated(const peft_model *m) {
    return m->cfg.desc->act == ARCH_ACT_SWIGLU || m->cfg.desc->act == ARCH_ACT_GEGLU_TANH;
}

/* the plain (ungated) MLP activation: a = act(g), and its backward */
static void plain_act_fwd(const block_env *e, float *a, const float *g, int64_t n) {
    if (e->m->cfg.desc->act == ARCH_ACT_GELU_ERF) kern_gelu_erf_fwd(a, g, n, e->nt);
    else kern_gelu_tanh_fwd(a, g, n, e->nt);
}

static void plain_act_bwd(const block_env *e, float *dg, const float *da, const float *g, int64_t n) {
    if (e->m->cfg.desc->act == ARCH_ACT_GELU_ERF) kern_gelu_erf_bwd(dg, da, g, n, e->nt);
    else kern_gelu_tanh_bwd(dg, da, g, n, e->nt);
}

static void add_rows(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* Encoders (post-norm): xmid = LN1(xin + o(attn(xin))), xout = LN2(xmid +
 * down(act(up(xmid)))); o1, o2 keep the sums before the norms. */
static int qkv_fwd(const block_env *e, int l, const float *h, float *qkv, block_acts *A);
static int qkv_bwd(const block_env *e, int l, const block_acts *A, block_grads *G, const float *h, float *dh);

static int block_fwd_post(const block_env *e, int l, block_acts *A) {
    const model_config *c = &e->m->cfg;
    const size_t N = (size_t)e->N, d = (size_t)c->d_model, nff = N * (size_t)c->d_ff;
    int rc;
    if ((rc = qkv_fwd(e, l, A->xin, A->qkv, A)) || (rc = e->attn(e->u, l, A))) return rc;
    zero_rows(e, A->o1, N * d);
    if ((rc = e->sub_out(e->u, l, ROLE_O, 0, A->att, A->o1))) return rc;
    add_rows(A->o1, A->xin, N * d);
    block_norm_fwd(e, l, NORM_ATTN, A->xmid, A->mean1, A->rstd1, A->o1, e->N);
    if ((rc = e->lin(e->u, l, ROLE_UP, A->xmid, A->g, c->d_ff, 0.0f))) return rc;
    plain_act_fwd(e, A->a, A->g, (int64_t)nff);
    zero_rows(e, A->o2, N * d);
    if ((rc = e->sub_out(e->u, l, ROLE_DOWN, 1, A->a, A->o2))) return rc;
    add_rows(A->o2, A->xmid, N * d);
    block_norm_fwd(e, l, NORM_MLP, A->xout, A->mean2, A->rstd2, A->o2, e->N);
    return 0;
}

static int block_bwd_post(const block_env *e, int l, const block_acts *A, block_grads *G, bool need_dx) {
    const model_config *c = &e->m->cfg;
    const size_t N = (size_t)e->N, d = (size_t)c->d_model, nff = N * (size_t)c->d_ff;
    const int qd = c->n_head * c->head_dim, kvd = c->n_kv_head * c->head_dim, ldq = qd + 2 * kvd;
    int rc;
    /* xout = LN2(o2), o2 = xmid + down(a) */
    zero_rows(e, G->dxmid, N * d);
    block_norm_bwd(e, l, NORM_MLP, G->dxmid, G->dx, A->o2, A->mean2, A->rstd2);
    zero_rows(e, G->da, nff);
    if ((rc = e->sub_out_bwd(e->u, l, ROLE_DOWN, 1, A->a, G->dxmid, G->da))) return rc;
    zero_rows(e, G->dg, nff);
    plain_act_bwd(e, G->dg, G->da, A->g, (int64_t)nff);
    if ((rc = e->lin_bwd(e->u, l, ROLE_UP, A->xmid, G->dg, c->d_ff, G->dxmid))) return rc;
    /* xmid = LN1(o1), o1 = xin + o(att) */
    zero_rows(e, G->dx, N * d);
    block_norm_bwd(e, l, NORM_ATTN, G->dx, G->dxmid, A->o1, A->mean1, A->rstd1);
    zero_rows(e, G->datt, N * (size_t)qd);
    if ((rc = e->sub_out_bwd(e->u, l, ROLE_O, 0, A->att, G->dx, G->datt))) return rc;
    zero_rows(e, G->dqkv, N * (size_t)ldq);
    e->attn_bwd(e->u, l, A, G);
    return qkv_bwd(e, l, A, G, A->xin, need_dx ? G->dx : NULL);
}

static bool post_norm(const peft_model *m, int site) {
    return m->cfg.desc->hf_norm[site ? NORM_MLP_OUT : NORM_ATTN_OUT] != NULL;
}

/* the gated activation a (N, ff) of g, u (N, ff), or of the fused [g | u]
 * (N, 2ff) rows when u is NULL */
static void gate_fwd(const block_env *e, float *a, const float *g, const float *u) {
    const int64_t ff = e->m->cfg.d_ff, n = (int64_t)e->N * ff;
    const bool gelu = e->m->cfg.desc->act == ARCH_ACT_GEGLU_TANH;
    if (u) {
        if (gelu) kern_geglu_tanh_fwd(a, g, u, n, e->nt);
        else kern_swiglu_fwd(a, g, u, n, e->nt);
        return;
    }
#pragma omp parallel for num_threads(e->nt) schedule(static) if (n > 65536)
    for (int t = 0; t < e->N; t++) {
        const float *gt = g + (size_t)t * 2 * ff;
        if (gelu) kern_geglu_tanh_fwd(a + (size_t)t * ff, gt, gt + ff, ff, 1);
        else kern_swiglu_fwd(a + (size_t)t * ff, gt, gt + ff, ff, 1);
    }
}

static void gate_bwd(const block_env *e, float *dg, float *du, const float *da, const float *g, const float *u) {
    const int64_t ff = e->m->cfg.d_ff, n = (int64_t)e->N * ff;
    const bool gelu = e->m->cfg.desc->act == ARCH_ACT_GEGLU_TANH;
    if (u) {
        if (gelu) kern_geglu_tanh_bwd(dg, du, da, g, u, n, e->nt);
        else kern_swiglu_bwd(dg, du, da, g, u, n, e->nt);
        return;
    }
#pragma omp parallel for num_threads(e->nt) schedule(static) if (n > 65536)
    for (int t = 0; t < e->N; t++) {
        const float *gt = g + (size_t)t * 2 * ff, *dat = da + (size_t)t * ff;
        float *dgt = dg + (size_t)t * 2 * ff;
        if (gelu) kern_geglu_tanh_bwd(dgt, dgt + ff, dat, gt, gt + ff, ff, 1);
        else kern_swiglu_bwd(dgt, dgt + ff, dat, gt, gt + ff, ff, 1);
    }
}

/* x (N, d) += the output of the sub-layer ending in linear r at `site`
 * (its norm first, where the family has one: Gemma 2) */
static int sub_out_fwd(const block_env *e, int l, model_linear_role r, int site, const float *in, float *x,
                       block_acts *A) {
    if (!post_norm(e->m, site)) return e->sub_out(e->u, l, r, site, in, x);
    const size_t N = (size_t)e->N, d = (size_t)e->m->cfg.d_model;
    float *o = site ? A->o2 : A->o1;
    zero_rows(e, o, N * d);
    int rc = e->sub_out(e->u, l, r, site, in, o);
    if (rc) return rc;
    block_norm_fwd(e, l, site ? NORM_MLP_OUT : NORM_ATTN_OUT, A->ptmp, site ? A->o2_mean : A->o1_mean,
                   site ? A->o2_rstd : A->o1_rstd, o, e->N);
    add_rows(x, A->ptmp, N * d);
    return 0;
}

/* its backward from dy = ∂L/∂x (the residual's gradient); dtmp (N, d) scratch */
static int sub_out_bwd(const block_env *e, int l, model_linear_role r, int site, const float *in, const float *dy,
                       float *din, const block_acts *A, float *dtmp) {
    if (!post_norm(e->m, site)) return e->sub_out_bwd(e->u, l, r, site, in, dy, din);
    const size_t N = (size_t)e->N, d = (size_t)e->m->cfg.d_model;
    zero_rows(e, dtmp, N * d);
    block_norm_bwd(e, l, site ? NORM_MLP_OUT : NORM_ATTN_OUT, dtmp, dy, site ? A->o2 : A->o1,
                   site ? A->o2_mean : A->o1_mean, site ? A->o2_rstd : A->o1_rstd);
    return e->sub_out_bwd(e->u, l, r, site, in, dtmp, din);
}

void block_norm_fwd(const block_env *e, int l, int which, float *y, float *mean, float *rstd, const float *x, int rows) {
    const model_config *c = &e->m->cfg;
    const float *w = adapter_norm_w(e->ad, e->m, l, which), *b = adapter_norm_b(e->ad, e->m, l, which);
    if (c->desc->norm == ARCH_NORM_LAYER) kern_layernorm_fwd(y, mean, rstd, x, w, b, rows, c->d_model, c->norm_eps, e->nt);
    else kern_rmsnorm_fwd(y, rstd, x, w, rows, c->d_model, c->norm_eps, e->nt);
}

void block_norm_bwd(const block_env *e, int l, int which, float *dx, const float *dy, const float *x,
                    const float *mean, const float *rstd) {
    const model_config *c = &e->m->cfg;
    const float *w = adapter_norm_w(e->ad, e->m, l, which);
    float *gw = e->norm_grad ? e->norm_grad(e->u, l, which, false) : NULL;
    if (c->desc->norm == ARCH_NORM_LAYER) {
        float *gb = e->norm_grad ? e->norm_grad(e->u, l, which, true) : NULL;
        kern_layernorm_bwd(dx, gw, gb, dy, x, w, mean, rstd, e->N, c->d_model, e->nt);
    } else
        kern_rmsnorm_bwd(dx, gw, dy, x, w, rstd, e->N, c->d_model, e->nt);
}

/* Qwen3's norms over each head of q and of k, in place in qkv (N, ldq); the
 * inputs and statistics kept when qk_in is given. */
static void qk_norm_fwd(const block_env *e, int l, float *qkv, float *qk_in, float *rstd) {
    const model_config *c = &e->m->cfg;
    const int hd = c->head_dim, nh = c->n_head, nkv = c->n_kv_head, qd = nh * hd, kvd = nkv * hd, ldq = qd + 2 * kvd;
    const float *wq = adapter_norm_w(e->ad, e->m, l, NORM_Q), *wk = adapter_norm_w(e->ad, e->m, l, NORM_K);
    const float eps = c->norm_eps;
#pragma omp parallel for num_threads(e->nt) schedule(static) if ((int64_t)e->N * ldq > 32768)
    for (int t = 0; t < e->N; t++) {
        float *q = qkv + (size_t)t * ldq;
        if (qk_in) memcpy(qk_in + (size_t)t * (qd + kvd), q, (size_t)(qd + kvd) * sizeof(float));
        kern_rmsnorm_fwd(q, rstd ? rstd + (size_t)t * (nh + nkv) : NULL, q, wq, nh, hd, eps, 1);
        kern_rmsnorm_fwd(q + qd, rstd ? rstd + (size_t)t * (nh + nkv) + nh : NULL, q + qd, wk, nkv, hd, eps, 1);
    }
}

/* Its backward: the q and k parts of G->dqkv (the gradient of the norms'
 * outputs) become the gradient of their inputs; trained norm weights
 * accumulate theirs (one thread then: the rows sum into one vector). */
static void qk_norm_bwd(const block_env *e, int l, const block_acts *A, block_grads *G) {
    const model_config *c = &e->m->cfg;
    const int hd = c->head_dim, nh = c->n_head, nkv = c->n_kv_head, qd = nh * hd, kvd = nkv * hd, ldq = qd + 2 * kvd;
    const float *wq = adapter_norm_w(e->ad, e->m, l, NORM_Q), *wk = adapter_norm_w(e->ad, e->m, l, NORM_K);
    float *gq = e->norm_grad ? e->norm_grad(e->u, l, NORM_Q, false) : NULL;
    float *gk = e->norm_grad ? e->norm_grad(e->u, l, NORM_K, false) : NULL;
    const size_t w = (size_t)(qd + kvd);
    memset(G->dqk, 0, (size_t)e->N * w * sizeof(float));
#pragma omp parallel for num_threads(e->nt) schedule(static) if (!gq && !gk && (int64_t)e->N * ldq > 32768)
    for (int t = 0; t < e->N; t++) {
        const float *x = A->qk_in + (size_t)t * w, *r = A->qk_rstd + (size_t)t * (nh + nkv);
        float *dy = G->dqkv + (size_t)t * ldq, *dx = G->dqk + (size_t)t * w;
        kern_rmsnorm_bwd(dx, gq, dy, x, wq, r, nh, hd, 1);
        kern_rmsnorm_bwd(dx + qd, gk, dy + qd, x + qd, wk, r + nh, nkv, hd, 1);
        memcpy(dy, dx, w * sizeof(float));
    }
}

/* q, k, v of the layer: one fused linear or three, then RoPE */
static int qkv_fwd(const block_env *e, int l, const float *h, float *qkv, block_acts *A) {
    const model_config *c = &e->m->cfg;
    const int qd = c->n_head * c->head_dim, kvd = c->n_kv_head * c->head_dim, ldq = qd + 2 * kvd;
    int rc;
    if (block_fused_qkv(e->m)) rc = e->lin(e->u, l, ROLE_QKV, h, qkv, ldq, 0.0f);
    else if (e->qkv) rc = e->qkv(e->u, l, h, qkv);
    else if (!(rc = e->lin(e->u, l, ROLE_Q, h, qkv, ldq, 0.0f)) && !(rc = e->lin(e->u, l, ROLE_K, h, qkv + qd, ldq, 0.0f)))
        rc = e->lin(e->u, l, ROLE_V, h, qkv + qd + kvd, ldq, 0.0f);
    if (rc) return rc;
    if (block_qk_norm(e->m)) qk_norm_fwd(e, l, qkv, A->qk_in, A->qk_rstd);
    if (c->desc->pos == ARCH_POS_ROPE) {
        const int half = c->rope_dim / 2;
        kern_rope(qkv, ldq, e->pos, e->N, c->n_head, c->head_dim, half, e->m->rope_cos, e->m->rope_sin, false, e->nt);
        kern_rope(qkv + qd, ldq, e->pos, e->N, c->n_kv_head, c->head_dim, half, e->m->rope_cos, e->m->rope_sin, false,
                  e->nt);
    }
    return 0;
}

int block_fwd(const block_env *e, int l, block_acts *A) {
    const model_config *c = &e->m->cfg;
    if (c->desc->encoder) return block_fwd_post(e, l, A);
    const size_t N = (size_t)e->N, d = (size_t)c->d_model, nff = N * (size_t)c->d_ff;
    const int ff = c->d_ff;
    int rc;
    block_norm_fwd(e, l, NORM_ATTN, A->h1, A->mean1, A->rstd1, A->xin, e->N);
    if ((rc = qkv_fwd(e, l, A->h1, A->qkv, A)) || (rc = e->attn(e->u, l, A))) return rc;
    copy_rows(e, A->xmid, A->xin, N * d);
    if ((rc = sub_out_fwd(e, l, ROLE_O, 0, A->att, A->xmid, A))) return rc;
    block_norm_fwd(e, l, NORM_MLP, A->h2, A->mean2, A->rstd2, A->xmid, e->N);
    if (e->m->cfg.desc->fused_gate_up) {
        if ((rc = e->lin(e->u, l, ROLE_UP, A->h2, A->g, 2 * ff, 0.0f))) return rc;
        gate_fwd(e, A->a, A->g, NULL);
    } else if (gated(e->m)) {
        if ((rc = e->lin(e->u, l, ROLE_GATE, A->h2, A->g, ff, 0.0f)) || (rc = e->lin(e->u, l, ROLE_UP, A->h2, A->u, ff, 0.0f)))
            return rc;
        gate_fwd(e, A->a, A->g, A->u);
    } else {
        if ((rc = e->lin(e->u, l, ROLE_UP, A->h2, A->g, ff, 0.0f))) return rc;
        plain_act_fwd(e, A->a, A->g, (int64_t)nff);
    }
    copy_rows(e, A->xout, A->xmid, N * d);
    return sub_out_fwd(e, l, ROLE_DOWN, 1, A->a, A->xout, A);
}

int block_bwd(const block_env *e, int l, const block_acts *A, block_grads *G, bool need_dx) {
    const model_config *c = &e->m->cfg;
    if (c->desc->encoder) return block_bwd_post(e, l, A, G, need_dx);
    const size_t N = (size_t)e->N, d = (size_t)c->d_model, nff = N * (size_t)c->d_ff;
    const int ff = c->d_ff, qd = c->n_head * c->head_dim, kvd = c->n_kv_head * c->head_dim, ldq = qd + 2 * kvd;
    int rc;
    /* MLP: xout = xmid + down(a) */
    copy_rows(e, G->dxmid, G->dx, N * d);
    zero_rows(e, G->da, nff);
    if ((rc = sub_out_bwd(e, l, ROLE_DOWN, 1, A->a, G->dx, G->da, A, G->dh))) return rc;
    zero_rows(e, G->dh, N * d);
    if (e->m->cfg.desc->fused_gate_up) {
        zero_rows(e, G->dg, 2 * nff);
        gate_bwd(e, G->dg, NULL, G->da, A->g, NULL);
        if ((rc = e->lin_bwd(e->u, l, ROLE_UP, A->h2, G->dg, 2 * ff, G->dh))) return rc;
    } else if (gated(e->m)) {
        zero_rows(e, G->dg, nff);
        zero_rows(e, G->du, nff);
        gate_bwd(e, G->dg, G->du, G->da, A->g, A->u);
        if ((rc = e->lin_bwd(e->u, l, ROLE_GATE, A->h2, G->dg, ff, G->dh)) ||
            (rc = e->lin_bwd(e->u, l, ROLE_UP, A->h2, G->du, ff, G->dh)))
            return rc;
    } else {
        zero_rows(e, G->dg, nff);
        plain_act_bwd(e, G->dg, G->da, A->g, (int64_t)nff);
        if ((rc = e->lin_bwd(e->u, l, ROLE_UP, A->h2, G->dg, ff, G->dh))) return rc;
    }
    block_norm_bwd(e, l, NORM_MLP, G->dxmid, G->dh, A->xmid, A->mean2, A->rstd2);
    /* attention: xmid = xin + o(att) */
    copy_rows(e, G->dx, G->dxmid, N * d);
    zero_rows(e, G->datt, N * (size_t)qd);
    if ((rc = sub_out_bwd(e, l, ROLE_O, 0, A->att, G->dxmid, G->datt, A, G->dh))) return rc;
    zero_rows(e, G->dqkv, N * (size_t)ldq);
    e->attn_bwd(e->u, l, A, G);
    float *dh = need_dx ? G->dh : NULL;
    if (dh) zero_rows(e, dh, N * d);
    if ((rc = qkv_bwd(e, l, A, G, A->h1, dh))) return rc;
    if (dh) block_norm_bwd(e, l, NORM_ATTN, G->dx, dh, A->xin, A->mean1, A->rstd1);
    return 0;
}

/* The backward of qkv_fwd from G->dqkv (the gradient of q, k after RoPE
 * and their norms, and of v): RoPE undone, the q/k norms' backward, then
 * the linears' on their input h; dh (N, d) += ∂/∂h when non-NULL. */
static int qkv_bwd(const block_env *e, int l, const block_acts *A, block_grads *G, const float *h, float *dh) {
    const model_config *c = &e->m->cfg;
    const int qd = c->n_head * c->head_dim, kvd = c->n_kv_head * c->head_dim, ldq = qd + 2 * kvd;
    int rc;
    if (c->desc->pos == ARCH_POS_ROPE) {
        const int half = c->rope_dim / 2;
        kern_rope(G->dqkv, ldq, e->pos, e->N, c->n_head, c->head_dim, half, e->m->rope_cos, e->m->rope_sin, true, e->nt);
        kern_rope(G->dqkv + qd, ldq, e->pos, e->N, c->n_kv_head, c->head_dim, half, e->m->rope_cos, e->m->rope_sin, true,
                  e->nt);
    }
    if (block_qk_norm(e->m)) qk_norm_bwd(e, l, A, G);
    if (block_fused_qkv(e->m)) return e->lin_bwd(e->u, l, ROLE_QKV, h, G->dqkv, ldq, dh);
    if (e->qkv_bwd) return e->qkv_bwd(e->u, l, h, G->dqkv, dh);
    if (!(rc = e->lin_bwd(e->u, l, ROLE_Q, h, G->dqkv, ldq, dh)) && !(rc = e->lin_bwd(e->u, l, ROLE_K, h, G->dqkv + qd, ldq, dh)))
        rc = e->lin_bwd(e->u, l, ROLE_V, h, G->dqkv + qd + kvd, ldq, dh);
    return rc;
}
