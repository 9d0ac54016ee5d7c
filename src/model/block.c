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
 *   gated:     g, u (N,ff) = h2·Wgᵀ, h2·Wuᵀ; a = silu(g) ⊙ u
 *   plain:     g (N,ff) = h2·Wupᵀ; a = gelu_tanh(g)
 *   xout (N,d) = xmid + down(a)                           (sub-layer site 1)
 * The backward runs the same steps in reverse. */
#include "model/block.h"
#include "peft/adapter.h"

#include <string.h>

bool block_fused_qkv(const peft_model *m) { return m->cfg.desc->hf_lin[ROLE_QKV] != NULL; }

bool block_qk_norm(const peft_model *m) { return m->cfg.desc->hf_norm[NORM_Q] != NULL; }

static bool gated(const peft_model *m) { return m->cfg.desc->act == ARCH_ACT_SWIGLU; }

static void copy_rows(const block_env *e, float *dst, const float *src, size_t n) {
    if (dst == src) return;
    if (e->copy) e->copy(e->u, dst, src, n);
    else memcpy(dst, src, n * sizeof(float));
}

static void zero_rows(const block_env *e, float *p, size_t n) {
    if (e->zero) e->zero(e->u, p, n);
    else memset(p, 0, n * sizeof(float));
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
    const size_t N = (size_t)e->N, d = (size_t)c->d_model, nff = N * (size_t)c->d_ff;
    const int ff = c->d_ff;
    int rc;
    block_norm_fwd(e, l, 0, A->h1, A->mean1, A->rstd1, A->xin, e->N);
    if ((rc = qkv_fwd(e, l, A->h1, A->qkv, A)) || (rc = e->attn(e->u, l, A))) return rc;
    copy_rows(e, A->xmid, A->xin, N * d);
    if ((rc = e->sub_out(e->u, l, ROLE_O, 0, A->att, A->xmid))) return rc;
    block_norm_fwd(e, l, 1, A->h2, A->mean2, A->rstd2, A->xmid, e->N);
    if (gated(e->m)) {
        if ((rc = e->lin(e->u, l, ROLE_GATE, A->h2, A->g, ff, 0.0f)) || (rc = e->lin(e->u, l, ROLE_UP, A->h2, A->u, ff, 0.0f)))
            return rc;
        kern_swiglu_fwd(A->a, A->g, A->u, (int64_t)nff, e->nt);
    } else {
        if ((rc = e->lin(e->u, l, ROLE_UP, A->h2, A->g, ff, 0.0f))) return rc;
        kern_gelu_tanh_fwd(A->a, A->g, (int64_t)nff, e->nt);
    }
    copy_rows(e, A->xout, A->xmid, N * d);
    return e->sub_out(e->u, l, ROLE_DOWN, 1, A->a, A->xout);
}

int block_bwd(const block_env *e, int l, const block_acts *A, block_grads *G, bool need_dx) {
    const model_config *c = &e->m->cfg;
    const size_t N = (size_t)e->N, d = (size_t)c->d_model, nff = N * (size_t)c->d_ff;
    const int ff = c->d_ff, qd = c->n_head * c->head_dim, kvd = c->n_kv_head * c->head_dim, ldq = qd + 2 * kvd;
    int rc;
    /* MLP: xout = xmid + down(a) */
    copy_rows(e, G->dxmid, G->dx, N * d);
    zero_rows(e, G->da, nff);
    if ((rc = e->sub_out_bwd(e->u, l, ROLE_DOWN, 1, A->a, G->dx, G->da))) return rc;
    zero_rows(e, G->dh, N * d);
    zero_rows(e, G->dg, nff);
    if (gated(e->m)) {
        zero_rows(e, G->du, nff);
        kern_swiglu_bwd(G->dg, G->du, G->da, A->g, A->u, (int64_t)nff, e->nt);
        if ((rc = e->lin_bwd(e->u, l, ROLE_GATE, A->h2, G->dg, ff, G->dh)) ||
            (rc = e->lin_bwd(e->u, l, ROLE_UP, A->h2, G->du, ff, G->dh)))
            return rc;
    } else {
        kern_gelu_tanh_bwd(G->dg, G->da, A->g, (int64_t)nff, e->nt);
        if ((rc = e->lin_bwd(e->u, l, ROLE_UP, A->h2, G->dg, ff, G->dh))) return rc;
    }
    block_norm_bwd(e, l, 1, G->dxmid, G->dh, A->xmid, A->mean2, A->rstd2);
    /* attention: xmid = xin + o(att) */
    copy_rows(e, G->dx, G->dxmid, N * d);
    zero_rows(e, G->datt, N * (size_t)qd);
    if ((rc = e->sub_out_bwd(e->u, l, ROLE_O, 0, A->att, G->dxmid, G->datt))) return rc;
    zero_rows(e, G->dqkv, N * (size_t)ldq);
    e->attn_bwd(e->u, l, A, G);
    float *dh = need_dx ? G->dh : NULL;
    if (dh) zero_rows(e, dh, N * d);
    if (c->desc->pos == ARCH_POS_ROPE) {
        const int half = c->rope_dim / 2;
        kern_rope(G->dqkv, ldq, e->pos, e->N, c->n_head, c->head_dim, half, e->m->rope_cos, e->m->rope_sin, true, e->nt);
        kern_rope(G->dqkv + qd, ldq, e->pos, e->N, c->n_kv_head, c->head_dim, half, e->m->rope_cos, e->m->rope_sin, true,
                  e->nt);
    }
    if (block_qk_norm(e->m)) qk_norm_bwd(e, l, A, G);
    if (block_fused_qkv(e->m)) rc = e->lin_bwd(e->u, l, ROLE_QKV, A->h1, G->dqkv, ldq, dh);
    else if (e->qkv_bwd) rc = e->qkv_bwd(e->u, l, A->h1, G->dqkv, dh);
    else if (!(rc = e->lin_bwd(e->u, l, ROLE_Q, A->h1, G->dqkv, ldq, dh)) &&
             !(rc = e->lin_bwd(e->u, l, ROLE_K, A->h1, G->dqkv + qd, ldq, dh)))
        rc = e->lin_bwd(e->u, l, ROLE_V, A->h1, G->dqkv + qd + kvd, ldq, dh);
    if (rc) return rc;
    if (dh) block_norm_bwd(e, l, 0, G->dx, dh, A->xin, A->mean1, A->rstd1);
    return 0;
}
