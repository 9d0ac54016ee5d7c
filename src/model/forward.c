/* forward.c — the inference forward pass with a KV cache, over one or
 * several sequences at once.
 *
 * Each layer is the block recipe of model/block.c (the one the training
 * graph runs) on one residual buffer x (rows, d) holding every sequence's
 * new rows, sequence after sequence; this file supplies the linears through
 * the sequences' adapters and the attention over each sequence's cache.
 * q, k, v share one (rows, qd + 2·kvd) buffer.
 *
 * Sequences with different adapters share the forward as Punica's SGMV /
 * S-LoRA do: a linear's base product runs once over all rows (one pass
 * over the frozen weight, which is what decoding's time is), then each
 * group of sequences with the same adapters adds its adapters' products on
 * its own rows. Norms, biases and embeddings stay the base's for all rows
 * then (model_adapter_mixable). The model is only read, so any number of
 * forwards run on it at once, each with its own sequences and workspace. */
#include "model/block.h"
#include "model/model.h"
#include "peft/adapter.h"
#include "peft/method.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void model_seq_free(model_seq *s) {
    free(s->kv.k);
    free(s->kv.v);
    memset(&s->kv, 0, sizeof s->kv);
    s->n_past = 0;
}

void model_ws_free(model_ws *w) {
    free(w->p);
    w->p = NULL;
    w->n = 0;
}

void model_state_init(model_state *st, const adapter *a) {
    memset(st, 0, sizeof *st);
    if (a) {
        st->seq.ad[0] = a;
        st->seq.scale[0] = 1.0f;
        st->seq.n_ad = 1;
    }
}

void model_state_free(model_state *st) {
    model_seq_free(&st->seq);
    model_ws_free(&st->ws);
}

void model_state_reset(model_state *st) { st->seq.n_past = 0; }

bool model_adapter_mixable(const adapter *a) {
    return !a || !a->ops || (!a->ops->norm_param && !a->ops->lin_bias && !a->ops->emb_weight);
}

bool model_adapter_additive(const adapter *a, const peft_model *m) {
    if (!model_adapter_mixable(a) || adapter_prompt_rows(a) || adapter_prefix_rows(a)) return false;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            if (method_lin_kind(a, l, (model_linear_role)r) == HOOK_REPLACE) return false;
        if (method_sub_hooked(a, l, 0) || method_sub_hooked(a, l, 1)) return false;
    }
    return true;
}

/* Grows s's cache to hold `need` positions, keeping what is there. */
static int ensure_kv(const peft_model *m, model_seq *s, int need, peft_err *err) {
    model_kv *kv = &s->kv;
    if (need <= kv->cap) return 0;
    const model_config *c = &m->cfg;
    int cap = kv->cap ? kv->cap * 2 : 256;
    if (cap < need) cap = need;
    if (cap > c->n_ctx) cap = c->n_ctx;
    const size_t hd = (size_t)c->head_dim, per_layer = (size_t)c->n_kv_head * cap * hd;
    float *k = peft_malloc(per_layer * c->n_layer * sizeof(float), err);
    float *v = peft_malloc(per_layer * c->n_layer * sizeof(float), err);
    if (!k || !v) { free(k); free(v); return PEFT_ERR_NOMEM; }
    if (kv->cap && s->n_past) {
        const size_t old_layer = (size_t)c->n_kv_head * kv->cap * hd;
        for (int l = 0; l < c->n_layer; l++)
            for (int g = 0; g < c->n_kv_head; g++) {
                size_t dst = l * per_layer + (size_t)g * cap * hd, src = l * old_layer + (size_t)g * kv->cap * hd;
                memcpy(k + dst, kv->k + src, (size_t)s->n_past * hd * sizeof(float));
                memcpy(v + dst, kv->v + src, (size_t)s->n_past * hd * sizeof(float));
            }
    }
    free(kv->k);
    free(kv->v);
    kv->k = k;
    kv->v = v;
    kv->cap = cap;
    return 0;
}

/* The sequences of a forward, grouped: consecutive sequences with the same
 * adapters (pointers and scales) form one group, whose rows are
 * contiguous. */
typedef struct {
    const model_seq *seq;   /* its first sequence: the group's adapters */
    int r0, r1;             /* rows */
} fwd_group;

typedef struct {
    const peft_model *m;
    model_seq *const *seqs;
    int n_seq;
    const int *row0;        /* (n_seq + 1) first row of each sequence */
    const int *V0, *PX;     /* virtual input rows and prefix rows each adds now */
    const fwd_group *g;
    int n_g;
    float *scr, *zs, *hs, *dt;
    const int32_t *pos;
    int T, nt;
} fwd_state;

static const adapter *single(const model_seq *s) {
    return s->n_ad == 1 && s->scale[0] == 1.0f ? s->ad[0] : NULL;
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

/* A method's hook on linear (l, r) over rows x (N) into y, the base product
 * already in y for HOOK_ADD; HOOK_REPLACE computes y = beta·y + f(x). */
static int hook_fwd(const fwd_state *s, const adapter *a, int l, model_linear_role r, float *y, int ldy,
                    const float *x, int N, float beta) {
    lin_call c = method_lin_call(a, s->m, l, r, x, N, y, ldy, beta);
    c.mm_scr = s->scr;
    c.nt = s->nt;
    c.scr = s->zs;
    c.act = s->zs + (a->ops->scratch_floats ? a->ops->scratch_floats(a, s->m, N) : 0);
    return a->ops->lin_fwd(a, &c);
}

/* y (N rows) += the group's adapters' deltas on linear (l, r), each times
 * its scale (adapters that model_adapter_additive allows), or, for a single
 * adapter at scale 1, its hook as it is. base_done: y already holds the
 * base product (else a HOOK_ADD group computes it here). */
static int group_linear(const fwd_state *s, const model_seq *q, int l, model_linear_role r, float *y, int ldy,
                        const float *x, int N, float beta, bool base_done) {
    const adapter *one = single(q);
    const hook_kind hk = one ? method_lin_kind(one, l, r) : HOOK_NONE;
    int rc = 0;
    if (!base_done && hk != HOOK_REPLACE) {
        lin_call c = method_lin_call(one, s->m, l, r, x, N, y, ldy, beta);
        c.mm_scr = s->scr;
        c.nt = s->nt;
        rc = method_base_fwd(&c);
    }
    if (rc) return rc;
    if (one) return hk == HOOK_NONE ? 0 : hook_fwd(s, one, l, r, y, ldy, x, N, beta);
    const int out = (int)s->m->layers[l].lin[r].w.rows;
    for (int i = 0; i < q->n_ad && !rc; i++) {
        const adapter *a = q->ad[i];
        if (method_lin_kind(a, l, r) != HOOK_ADD) continue;
        memset(s->dt, 0, (size_t)N * out * sizeof(float));
        if ((rc = hook_fwd(s, a, l, r, s->dt, out, x, N, 0.0f))) break;
        const float w = q->scale[i];
        for (int t = 0; t < N; t++)
            for (int j = 0; j < out; j++) y[(size_t)t * ldy + j] += w * s->dt[(size_t)t * out + j];
    }
    return rc;
}

static bool group_replaces(const fwd_group *g, int l, model_linear_role r) {
    const adapter *one = single(g->seq);
    return one && method_lin_kind(one, l, r) == HOOK_REPLACE;
}

/* y = beta·y + linear r of layer l on x (all rows), through each group's
 * adapters: the base product in one call over every run of rows whose
 * adapter does not replace it, then each group's hooks on its rows. */
static int linear(const fwd_state *s, int l, model_linear_role r, float *y, int ldy, const float *x, float beta) {
    const int in = (int)s->m->layers[l].lin[r].w.cols;
    if (s->n_g == 1) return group_linear(s, s->g[0].seq, l, r, y, ldy, x, s->T, beta, false);
    int rc = 0;
    for (int i = 0; i < s->n_g && !rc;) {
        if (group_replaces(&s->g[i], l, r)) { i++; continue; }
        int j = i;
        while (j < s->n_g && !group_replaces(&s->g[j], l, r)) j++;
        const int r0 = s->g[i].r0, r1 = s->g[j - 1].r1;
        lin_call c = method_lin_call(NULL, s->m, l, r, x + (size_t)r0 * in, r1 - r0, y + (size_t)r0 * ldy, ldy, beta);
        c.mm_scr = s->scr;
        c.nt = s->nt;
        rc = method_base_fwd(&c);
        i = j;
    }
    for (int i = 0; i < s->n_g && !rc; i++) {
        const fwd_group *g = &s->g[i];
        rc = group_linear(s, g->seq, l, r, y + (size_t)g->r0 * ldy, ldy, x + (size_t)g->r0 * in, g->r1 - g->r0, beta,
                          true);
    }
    return rc;
}

static bool group_sub_hooked(const fwd_group *g, int l, int site) {
    return method_sub_hooked(single(g->seq), l, site);
}

/* x += the sublayer output of linear (l, r) on in, through a plug-in's
 * sub-layer hook at `site` where a group has one (x += g(h)); hs holds h. */
static int sublayer_out(const fwd_state *s, int l, model_linear_role r, int site, float *x, const float *in) {
    const int d = s->m->cfg.d_model;
    bool any = false;
    for (int i = 0; i < s->n_g; i++) any |= group_sub_hooked(&s->g[i], l, site);
    if (!any) return linear(s, l, r, x, d, in, 1.0f);
    int rc = linear(s, l, r, s->hs, d, in, 0.0f);
    for (int i = 0; i < s->n_g && !rc; i++) {
        const fwd_group *g = &s->g[i];
        const int N = g->r1 - g->r0;
        float *xg = x + (size_t)g->r0 * d;
        const float *hg = s->hs + (size_t)g->r0 * d;
        if (!group_sub_hooked(g, l, site)) {
            for (size_t k = 0; k < (size_t)N * d; k++) xg[k] += hg[k];
            continue;
        }
        const adapter *a = single(g->seq);
        /* the method's scratch and kept activations follow zs (hook_ws) */
        const sub_call c = {s->m, l, site, N, d, hg, xg, s->zs + (a->ops->scratch_floats ? a->ops->scratch_floats(a, s->m, N) : 0),
                            s->zs, s->nt};
        rc = a->ops->sub_fwd(a, &c);
    }
    return rc;
}

/* The block recipe's callbacks (model/block.h) for inference. */
static int fwd_lin(void *u, int l, model_linear_role r, const float *x, float *y, int ldy, float beta) {
    return linear(u, l, r, y, ldy, x, beta);
}

static int fwd_sub_out(void *u, int l, model_linear_role r, int site, const float *x, float *y) {
    return sublayer_out(u, l, r, site, y, x);
}

/* Each sequence's new keys and values into its cache of layer l (after the
 * prefix rows on a sequence's first call), then attention of its queries
 * over it. */
static int fwd_attn(void *u, int l, block_acts *A) {
    const fwd_state *s = u;
    const peft_model *m = s->m;
    const model_config *c = &m->cfg;
    const int hd = c->head_dim, qd = c->n_head * hd, kvd = c->n_kv_head * hd, ld_qkv = qd + 2 * kvd;
    for (int i = 0; i < s->n_seq; i++) {
        const model_seq *q = s->seqs[i];
        const adapter *ad = single(q);
        const int r0 = s->row0[i], Ti = s->row0[i + 1] - r0;
        const size_t kv_layer = (size_t)c->n_kv_head * q->kv.cap * hd;
        float *kc = q->kv.k + l * kv_layer, *vc = q->kv.v + l * kv_layer;
        for (int p = 0; p < s->PX[i]; p++) {
            /* the prefix rows as they are (keys not rotated, as in HF's cache) */
            const float *kr, *vr;
            ad->ops->kv_row(ad, l, p, &kr, &vr);
            for (int g = 0; g < c->n_kv_head; g++) {
                size_t dst = ((size_t)g * q->kv.cap + p) * hd;
                memcpy(kc + dst, kr + (size_t)g * hd, (size_t)hd * sizeof(float));
                memcpy(vc + dst, vr + (size_t)g * hd, (size_t)hd * sizeof(float));
            }
        }
        const float *qkv = A->qkv + (size_t)r0 * ld_qkv;
        for (int t = 0; t < Ti; t++)
            for (int g = 0; g < c->n_kv_head; g++) {
                size_t dst = ((size_t)g * q->kv.cap + s->pos[r0 + t]) * hd;
                memcpy(kc + dst, qkv + (size_t)t * ld_qkv + qd + (size_t)g * hd, (size_t)hd * sizeof(float));
                memcpy(vc + dst, qkv + (size_t)t * ld_qkv + qd + kvd + (size_t)g * hd, (size_t)hd * sizeof(float));
            }
        const kern_attn_opts o = block_attn_opts(m, l, adapter_prefix_rows(ad));
        kern_attention(A->att + (size_t)r0 * qd, qd, qkv, ld_qkv, kc, vc, q->kv.cap, Ti, s->pos[r0], c->n_head,
                       c->n_kv_head, hd, &o, s->nt);
    }
    return 0;
}

static float *ws_get(model_ws *w, size_t n, peft_err *err) {
    if (n > w->n) {
        free(w->p);
        w->p = peft_malloc(n * sizeof(float), err);
        w->n = w->p ? n : 0;
    }
    return w->p;
}

static bool same_adapters(const model_seq *a, const model_seq *b) {
    if (a->n_ad != b->n_ad) return false;
    for (int i = 0; i < a->n_ad; i++)
        if (a->ad[i] != b->ad[i] || a->scale[i] != b->scale[i]) return false;
    return true;
}

/* The checks every sequence passes before anything changes. */
static int check_seqs(const peft_model *m, model_seq *const *seqs, int n, const int *n_ids, bool mixed,
                      peft_err *err) {
    const model_config *c = &m->cfg;
    for (int i = 0; i < n; i++) {
        const model_seq *q = seqs[i];
        if (n_ids[i] <= 0) return peft_fail(err, PEFT_ERR_INVALID, "forward: sequence %d has no tokens", i);
        for (int k = 0; k < q->n_ad; k++) {
            const adapter *a = q->ad[k];
            if (!a) return peft_fail(err, PEFT_ERR_INVALID, "forward: sequence %d: adapter %d is NULL", i, k);
            if (mixed && !model_adapter_mixable(a))
                return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                                 "a %s adapter changes the model's norms, biases or embeddings, so its sequence can "
                                 "share a batch only with sequences of the same adapter", adapter_method_name(a));
            if (!single(q) && !model_adapter_additive(a, m))
                return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                                 "a %s adapter is not a delta added to linear outputs: it cannot be scaled or "
                                 "combined with other adapters", adapter_method_name(a));
        }
        const adapter *one = single(q);
        const int V0 = q->n_past == 0 ? adapter_prompt_rows(one) : 0, PX = q->n_past == 0 ? adapter_prefix_rows(one) : 0;
        const int L = q->n_past + PX + V0 + n_ids[i];
        if (L > c->n_ctx)
            return peft_fail(err, PEFT_ERR_INVALID, "%s: %d tokens%s exceed the context length %d", m->path, L,
                             (adapter_prompt_rows(one) || adapter_prefix_rows(one)) ? " (with the virtual tokens)" : "",
                             c->n_ctx);
    }
    return 0;
}

/* The forward of model_forward_seqs, with what only single-sequence calls
 * ask for: token types, all rows' logits, the hidden states. */
static int forward(const peft_model *m, model_seq *const *seqs, int n, const int32_t *ids, const int *n_ids,
                   const int32_t *types, float *logits, bool all_logits, float *hidden, model_ws *w, int nt,
                   peft_err *err) {
    const model_config *c = &m->cfg;
    const bool enc = c->desc->encoder;
    if (enc && logits)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s is an encoder (%s): it has no language-model head to generate or "
                         "score text with (use peft embed, or train a classifier)", m->path, c->arch_name);
    if (n <= 0) return peft_fail(err, PEFT_ERR_INVALID, "forward: no sequences");
    if (nt <= 0) nt = m->ctx ? m->ctx->n_threads : 1;
    const int d = c->d_model, hd = c->head_dim, qd = c->n_head * hd, kvd = c->n_kv_head * hd;
    const int ld_qkv = qd + 2 * kvd, ff = c->d_ff;
    int rc;
    int n_tok = 0;
    for (int i = 0; i < n; i++) {
        if (n_ids[i] > c->n_ctx) return peft_fail(err, PEFT_ERR_INVALID, "%s: %d tokens exceed the context length %d",
                                                  m->path, n_ids[i], c->n_ctx);
        n_tok += PEFT_MAX(n_ids[i], 0);
    }
    for (int t = 0; t < n_tok; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab)
            return peft_fail(err, PEFT_ERR_INVALID, "token id %d out of range [0, %d)", ids[t], c->vocab);
        if (types && (types[t] < 0 || types[t] >= PEFT_MAX(c->n_types, 1)))
            return peft_fail(err, PEFT_ERR_INVALID, "token type %d out of range [0, %d)", types[t], PEFT_MAX(c->n_types, 1));
    }
    /* groups of consecutive sequences with the same adapters */
    int n_g = 1;
    for (int i = 1; i < n; i++) n_g += !same_adapters(seqs[i - 1], seqs[i]);
    if ((rc = check_seqs(m, seqs, n, n_ids, n_g > 1, err))) return rc;
    if (enc)
        for (int i = 0; i < n; i++) seqs[i]->n_past = 0;   /* no incremental decoding: each call is a whole sequence */

    /* a sequence's first call: prompt tuning's virtual rows go first, prefix
     * tuning's key/value rows fill the cache's first positions */
    int *ib = peft_malloc(sizeof(int) * (size_t)(4 * n + 1), err);
    fwd_group *grp = peft_malloc(sizeof *grp * (size_t)n_g, err);
    if (!ib || !grp) { free(ib); free(grp); return PEFT_ERR_NOMEM; }
    int *row0 = ib, *V0 = ib + n + 1, *PX = V0 + n, *p0 = PX + n;
    int T = 0;
    for (int i = 0; i < n; i++) {
        const adapter *one = single(seqs[i]);
        V0[i] = seqs[i]->n_past == 0 ? adapter_prompt_rows(one) : 0;
        PX[i] = seqs[i]->n_past == 0 ? adapter_prefix_rows(one) : 0;
        p0[i] = seqs[i]->n_past + PX[i];
        row0[i] = T;
        T += V0[i] + n_ids[i];
    }
    row0[n] = T;
    for (int i = 0, k = 0; i < n; i++) {
        if (i == 0 || !same_adapters(seqs[i - 1], seqs[i])) grp[k++] = (fwd_group){seqs[i], row0[i], row0[i]};
        grp[k - 1].r1 = row0[i + 1];
    }
    for (int i = 0; i < n && !rc; i++) rc = ensure_kv(m, seqs[i], p0[i] + V0[i] + n_ids[i], err);
    if (rc) goto out;

    /* norms, embeddings and the LM head: a single group's adapter's, else the
     * base's (mixed groups hold mixable adapters only) */
    const adapter *ad = n_g == 1 ? single(seqs[0]) : NULL;
    int64_t kmax = PEFT_MAX(PEFT_MAX(d, ff), qd);
    size_t mm_scratch = kern_matmul_scratch_floats(kmax, nt);
    if (m->bf16_packs) mm_scratch = PEFT_MAX(mm_scratch, kern_bf16_scratch_floats(nt));   /* the bf16 GEMM's */
    /* scratch only the adapters use: their hooks' (zs, hook_ws), a sub-layer
     * hook's h (hs), a scaled delta (dt) */
    bool sub_hooks = false, scaled = false;
    size_t hw = 0;
    for (int i = 0; i < n_g; i++) {
        const model_seq *q = grp[i].seq;
        scaled |= q->n_ad > 0 && !single(q);
        for (int k = 0; k < q->n_ad; k++) hw = PEFT_MAX(hw, hook_ws(q->ad[k], m, T));
        for (int k = 0; k < c->n_layer * 2; k++) sub_hooks |= method_sub_hooked(single(q), k / 2, k % 2);
    }
    const int hsd = sub_hooks ? d : 0;
    const size_t ff1 = (size_t)(c->desc->fused_gate_up ? 2 : 1) * ff;
    const size_t ndt = scaled ? (size_t)T * PEFT_MAX(PEFT_MAX((size_t)ld_qkv, ff1), (size_t)d) : 0;
    /* Gemma 2's normed sub-layer outputs: o1, o2, ptmp (T, d) */
    const bool post = c->desc->hf_norm[NORM_ATTN_OUT] || c->desc->hf_norm[NORM_MLP_OUT] || enc;
    const size_t npost = post ? 3 * (size_t)T * d : 0;
    size_t n_ws = (size_t)T * (2 * d + ld_qkv + qd + ff1 + ff) + T + mm_scratch + hw + (size_t)T * (size_t)hsd + npost +
                  ndt;
    float *ws = ws_get(w, n_ws, err);
    if (!ws) { rc = PEFT_ERR_NOMEM; goto out; }
    float *x = ws, *h = x + (size_t)T * d, *qkv = h + (size_t)T * d, *att = qkv + (size_t)T * ld_qkv;
    float *f1 = att + (size_t)T * qd, *f2 = f1 + (size_t)T * ff1, *scr = f2 + (size_t)T * ff;
    float *zs = scr + mm_scratch;
    float *hs = zs + hw;
    float *po = hs + (size_t)T * hsd;
    float *dt = po + npost;
    int32_t *pos = (int32_t *)(dt + ndt);
    for (int i = 0; i < n; i++)
        for (int t = row0[i]; t < row0[i + 1]; t++) pos[t] = p0[i] + (t - row0[i]);

    /* embeddings */
    const bool learned_pos = c->desc->pos == ARCH_POS_LEARNED;
    for (int i = 0, tok_i = 0; i < n; i++) {
        const adapter *one = single(seqs[i]);
        kern_weight te, pe;
        const kern_weight *tok = adapter_tok_emb(one, m, &te), *pemb = learned_pos ? adapter_pos_emb(one, m, &pe) : NULL;
        for (int t = row0[i]; t < row0[i + 1]; t++) {
            const int v = t - row0[i];
            float *xt = x + (size_t)t * d;
            if (v < V0[i]) memcpy(xt, one->ops->input_row(one, v), (size_t)d * sizeof(float));
            else if ((rc = kern_weight_row(tok, ids[tok_i++], xt))) goto fail;
            if (c->embed_scale > 0)
                for (int k = 0; k < d; k++) xt[k] *= c->embed_scale;
            if (learned_pos) {
                if ((rc = kern_weight_row(pemb, pos[t] + c->pos_offset, h))) goto fail;
                for (int k = 0; k < d; k++) xt[k] += h[k];
            }
            if (m->type_emb.data) {
                if ((rc = kern_weight_row(&m->type_emb, types && v >= V0[i] ? types[tok_i - 1] : 0, h))) goto fail;
                for (int k = 0; k < d; k++) xt[k] += h[k];
            }
        }
    }

    fwd_state st = {m, seqs, n, row0, V0, PX, grp, n_g, scr, zs, hs, dt, pos, T, nt};
    const block_env env = {.m = (peft_model *)m, .ad = ad, .N = T, .pos = pos, .nt = nt, .u = &st,
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
    if (hidden) memcpy(hidden, x + (size_t)V0[0] * d, (size_t)n_ids[0] * d * sizeof(float));

    if (logits) {
        /* the real tokens' rows (not the virtual ones): all of one sequence's,
         * or each sequence's last */
        int nr = 0;
        if (all_logits) {
            nr = n_ids[0];
            block_norm_fwd(&env, c->n_layer, 0, h, NULL, NULL, x + (size_t)V0[0] * d, nr);
        } else
            for (int i = 0; i < n; i++, nr++)
                block_norm_fwd(&env, c->n_layer, 0, h + (size_t)nr * d, NULL, NULL, x + (size_t)(row0[i + 1] - 1) * d, 1);
        kern_weight lh;
        if ((rc = kern_matmul(logits, c->vocab, h, nr, adapter_lm_head(ad, m, &lh), NULL, 0, scr, nt))) goto fail;
        if (c->final_softcap > 0) {
            const float cap = c->final_softcap;
            for (size_t i = 0; i < (size_t)nr * c->vocab; i++) logits[i] = cap * tanhf(logits[i] / cap);
        }
    }
    for (int i = 0; i < n; i++) seqs[i]->n_past = p0[i] + V0[i] + n_ids[i];
    goto out;
fail:
    rc = peft_fail(err, rc, "%s: forward pass failed (%s)", m->path, peft_status_name(rc));
out:
    free(ib);
    free(grp);
    return rc;
}

int model_forward_seqs(const peft_model *m, model_seq *const *seqs, int n, const int32_t *ids, const int *n_ids,
                       float *logits, model_ws *ws, int nt, peft_err *err) {
    return forward(m, seqs, n, ids, n_ids, NULL, logits, false, NULL, ws, nt, err);
}

int model_forward_ex(const peft_model *m, model_state *st, const int32_t *ids, const int32_t *types, int T,
                     float *logits, bool all_logits, float *hidden, peft_err *err) {
    if (T <= 0) return peft_fail(err, PEFT_ERR_INVALID, "forward: no tokens");
    model_seq *s = &st->seq;
    return forward(m, &s, 1, ids, &T, types, logits, all_logits, hidden, &st->ws, st->nt, err);
}

int model_forward(const peft_model *m, model_state *st, const int32_t *ids, int T, float *logits, bool all_logits,
                  peft_err *err) {
    return model_forward_ex(m, st, ids, NULL, T, logits, all_logits, NULL, err);
}
