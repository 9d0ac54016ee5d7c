/* graph.c — training forward and backward of a frozen model with an
 * adapter of any method (adapter.h). Each layer is the block recipe of
 * model/block.c (the one the inference forward runs); this file supplies
 * the linears through the adapter's hooks with their kept activations, the
 * attention over the batch's segments (and a prefix), the losses, and the
 * arena that keeps every layer's activations for the backward.
 *
 * Per layer the forward keeps (N = B·T rows, T including prompt tuning's
 * virtual rows):
 *   xin (N,d)  norm1 stats  h1 (N,d)  qkv (N,qd+2kvd, q and k after RoPE)
 *   lse (B·n_head·T: the attention rows' log-sum-exp)  att (N,qd)  xmid (N,d)
 *   norm2 stats  h2 (N,d)  g, u, a (N,ff)  [GPT-2: g = pre-GELU, a = post-GELU]
 *   per LoRA module: xa (N,r), with dropout its mask (N,in); per DoRA
 *   module: z (N,out), the linear's output before the per-column scale; per
 *   bottleneck module: its input h (N,d), zpre and f(zpre) (N,b); per linear
 *   hooked by a plug-in method (method.h) what its lin_act_bytes asks for.
 * The backward walks the layers in reverse with shared gradient buffers.
 * With checkpointing (tg_options: every K-th layer) the layers share K
 * slots of these buffers (layer l uses slot l mod K; the first layer of each
 * segment of K keeps its own input), and the backward runs each segment
 * forward again from that input before going through it
 * (recompute_segment).
 * The causal-LM loss is computed in chunks of rows (logits for a chunk
 * only), fused with its backward; the classification loss pools the last
 * non-padding row of each sequence through the score head. */
#include "train/graph.h"
#include "model/block.h"
#include "peft/method.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOSS_CHUNK 256

typedef struct {
    float *xin, *mean1, *rstd1, *h1, *qkv, *lse, *att, *xmid, *mean2, *rstd2, *h2, *g, *u, *a;
    float *qk_in, *qk_rstd;   /* per-head q/k norms (block_qk_norm) */
    float *o1, *o1_mean, *o1_rstd, *o2, *o2_mean, *o2_rstd;   /* sub-layer output norms (Gemma 2) */
} layer_acts;

struct train_graph {
    peft_model *m;
    adapter *ad;
    int B, T, N, nt;
    int T_cap;          /* T, N above are the current batch's (with virtual rows); buffers fit T_cap */
    int P;              /* prompt tuning's virtual rows per sequence */
    int PX;             /* prefix tuning's key/value rows */
    int n_labels;       /* > 0: classification through the score head */
    int lowest;         /* lowest layer with trainable parameters: the backward stops there */
    bool need_dx0;      /* the gradient of layer 0's input is needed (embeddings, virtual tokens) */
    int d, qd, kvd, ldq, ff, V, max_in, max_out;
    layer_acts *L;
    float *xfin, *meanf, *rstdf, *hf;
    float *xemb, *meane, *rstde;   /* encoders: the embeddings before their LayerNorm, its statistics */
    /* backward buffers */
    float *dx, *dxmid, *dh, *dqkv, *datt, *dg, *du, *da, *dtmp, *dxa, *xd, *dhf, *dbn, *dqk;
    float *logits;      /* (LOSS_CHUNK, V) */
    float *capped;      /* (LOSS_CHUNK, V) tanh of the soft-capped logits (final_softcap), else NULL */
    float *ptmp;        /* (N, d) a normed sub-layer output (Gemma 2) */
    float *cls;         /* (B, n_labels) logits of the last classification pass */
    float *cls_scr;     /* (B, 2·d) the head's scratch (its pooled activation) per row */
    float *dlab;        /* (n_labels) the gradient of one row's logits */
    float *kvbuf;       /* prefix: k, v, dk, dv of one sequence, 4 × (PX + T) × kvd */
    float *mm_scratch, *attn_scratch;
    int32_t *pos, *ids, *tgt, *seg, *last;   /* (N) (N) (N) (N) (B) */
    float *arena;
    size_t arena_floats;
    size_t layer_floats, layers_floats;   /* layout(): one layer's activations, every layer's as kept */
    double phase[TG_N_PHASES], t_run;   /* tg_phase_seconds */
    /* plug-in methods: per slot the hook's kept activations, and the
     * method's scratch */
    void **HA;
    float **SH;         /* per layer × 2 sites: a hooked sub-layer's output h (N, d) */
    void **SA;          /* and the method's kept activations */
    unsigned char *hook_arena;
    float *hook_scr;
    size_t hook_bytes, hook_scr_floats;   /* their sizes (hook_plan) */
    int ck;             /* checkpointing: keep the input of every ck-th layer (tg_options); 0: keep everything */
    int skip_down;      /* the layer whose MLP output projection a recompute skips (recompute_segment), or -1 */
    uint64_t drop_seed;
    bool training;
    const int32_t *types;   /* tg_set_types: the next run's token types, or NULL */
    /* contrastive batches (n_cols > 1): tg_set_pairs, and per row the pooled
     * embedding, its norm and gradient; the (anchors, candidates) scores */
    float pair_scale;
    int pair_pool;          /* TG_POOL_* */
    int n_anchor, n_cand;   /* the last contrastive run's score shape */
    float *emb, *demb, *embn, *scores;
};

void tg_set_types(train_graph *g, const int32_t *types) { g->types = types; }

void tg_phase_seconds(const train_graph *g, double out[TG_N_PHASES]) {
    double known = 0;
    for (int i = 0; i < TG_N_PHASES; i++) {
        out[i] = g->phase[i];
        if (i != TG_PH_OTHER) known += g->phase[i];
    }
    out[TG_PH_OTHER] = g->t_run - known;
}

size_t tg_arena_bytes(const train_graph *g) {
    return (g->arena_floats + g->hook_scr_floats) * sizeof(float) + g->hook_bytes;
}

void tg_free(train_graph *g) {
    if (!g) return;
    free(g->arena);
    free(g->L);
    free(g->HA);
    free(g->SH);
    free(g->SA);
    free(g->hook_arena);
    free(g->hook_scr);
    free(g);
}

/* Plug-in methods: every hooked linear's kept activations in one byte
 * arena (64-byte aligned pieces), and the method's scratch. Layers that
 * share a checkpointing slot (l mod ck) share their piece of the arena,
 * sized for the largest of them (the hooked modules may differ by layer). */
#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

/* The bytes layer l's hooks keep; with base, their pointers placed from it. */
static size_t hook_layer(train_graph *g, int l, unsigned char *base) {
    const adapter *a = g->ad;
    size_t off = 0;
    for (int r = 0; r < ROLE_N_LINEAR; r++) {
        if (method_lin_kind(a, l, (model_linear_role)r) == HOOK_NONE || !a->ops->lin_act_bytes) continue;
        if (base) g->HA[l * ROLE_N_LINEAR + r] = base + off;
        off += ALIGN64(a->ops->lin_act_bytes(a, l, (model_linear_role)r, g->N));
    }
    for (int site = 0; site < 2; site++) {
        const int k = l * 2 + site;
        if (!method_sub_hooked(a, l, site)) continue;
        if (base) g->SH[k] = (float *)(base + off);
        off += ALIGN64((size_t)g->N * g->d * sizeof(float));
        if (base) g->SA[k] = base + off;
        off += ALIGN64(a->ops->sub_act_bytes ? a->ops->sub_act_bytes(a, l, site, g->N) : 0);
    }
    return off;
}

/* Sizes (and with place, lays out) the hooks' arena: slot j holds the
 * layers l ≡ j (mod the slot count), every layer its own slot without
 * checkpointing. */
static size_t hook_slots(train_graph *g, bool place) {
    const int n = g->m->cfg.n_layer, ns = g->ck ? g->ck : n;
    size_t total = 0;
    for (int j = 0; j < ns; j++) {
        size_t sz = 0;
        for (int l = j; l < n; l += ns) sz = PEFT_MAX(sz, hook_layer(g, l, place ? g->hook_arena + total : NULL));
        total += sz;
    }
    return total;
}

static void hook_plan(train_graph *g) {
    const adapter *a = g->ad;
    if (!a || !a->ops) return;
    g->hook_bytes = hook_slots(g, false);
    const size_t sf = a->ops->scratch_floats ? a->ops->scratch_floats(a, g->m, g->N) : 0;
    g->hook_scr_floats = sf ? sf : 1;
}

static int hook_alloc(train_graph *g, peft_err *err) {
    const adapter *a = g->ad;
    if (!a || !a->ops) return 0;
    const int ns = g->m->cfg.n_layer * ROLE_N_LINEAR, nsub = g->m->cfg.n_layer * 2;
    g->HA = peft_calloc((size_t)ns + 1, sizeof *g->HA, err);
    g->SH = peft_calloc((size_t)nsub + 1, sizeof *g->SH, err);
    g->SA = peft_calloc((size_t)nsub + 1, sizeof *g->SA, err);
    if (!g->HA || !g->SH || !g->SA) return PEFT_ERR_NOMEM;
    if (g->hook_bytes) {
        g->hook_arena = aligned_alloc(64, g->hook_bytes);
        if (!g->hook_arena)
            return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for %s activations (%.1f MiB)", a->ops->name,
                             g->hook_bytes / 1048576.0);
        hook_slots(g, true);
    }
    g->hook_scr = peft_malloc(g->hook_scr_floats * sizeof(float), err);
    return g->hook_scr ? 0 : PEFT_ERR_NOMEM;
}
#undef ALIGN64

/* The call of plug-in hook (l, r) on x (N rows) into y. */
static lin_call hook_call(const train_graph *g, int l, model_linear_role r, const float *x, float *y, int ldy,
                          float beta) {
    lin_call c = method_lin_call(g->ad, g->m, l, r, x, g->N, y, ldy, beta);
    c.act = g->HA ? g->HA[l * ROLE_N_LINEAR + r] : NULL;
    c.scr = g->hook_scr;
    c.mm_scr = g->mm_scratch;
    c.train = g->training;
    c.seed = g->drop_seed;
    c.nt = g->nt;
    return c;
}

/* Places every buffer at base (when non-NULL) and returns the floats used. */
static size_t layout(train_graph *g, float *base) {
    const model_config *c = &g->m->cfg;
    const size_t N = (size_t)g->N, d = (size_t)g->d, ff = (size_t)g->ff, B = (size_t)g->B, T = (size_t)g->T;
    const bool gated = c->desc->act != ARCH_ACT_GELU_TANH && !c->desc->fused_gate_up, qkn = block_qk_norm(g->m);
    const bool enc = c->desc->encoder;
    const bool post1 = c->desc->hf_norm[NORM_ATTN_OUT] != NULL || enc, post2 = c->desc->hf_norm[NORM_MLP_OUT] != NULL || enc;
    const size_t ffg = (c->desc->fused_gate_up ? 2 : 1) * ff;   /* the gate buffer: [g | u] when fused */
    const size_t qkw = (size_t)g->qd + g->kvd, nqk = (size_t)c->n_head + c->n_kv_head;
    size_t used = 0;
#define TAKE(n) (used += (n), base ? base + used - (n) : NULL)
    for (int l = 0; l < c->n_layer; l++) {
        if (l == 1) g->layer_floats = used;
        layer_acts *L = &g->L[l];
        if (g->ck && l >= g->ck) {
            /* checkpointing: layer l shares slot l mod ck's buffers (the
             * backward recomputes them); a segment's first layer keeps its
             * own input */
            *L = g->L[l % g->ck];
            if (l % g->ck == 0) L->xin = TAKE(N * d);
            continue;
        }
        L->xin = TAKE(N * d);
        L->mean1 = TAKE(N);
        L->rstd1 = TAKE(N);
        L->h1 = TAKE(N * d);
        L->qkv = TAKE(N * g->ldq);
        L->lse = TAKE(N * c->n_head);
        L->att = TAKE(N * g->qd);
        L->xmid = TAKE(N * d);
        L->mean2 = TAKE(N);
        L->rstd2 = TAKE(N);
        L->h2 = TAKE(N * d);
        L->g = TAKE(N * ffg);
        L->a = TAKE(N * ff);
        L->u = gated ? TAKE(N * ff) : NULL;
        L->qk_in = qkn ? TAKE(N * qkw) : NULL;
        L->qk_rstd = qkn ? TAKE(N * nqk) : NULL;
        L->o1 = post1 ? TAKE(N * d) : NULL;
        L->o1_mean = post1 ? TAKE(N) : NULL;
        L->o1_rstd = post1 ? TAKE(N) : NULL;
        L->o2 = post2 ? TAKE(N * d) : NULL;
        L->o2_mean = post2 ? TAKE(N) : NULL;
        L->o2_rstd = post2 ? TAKE(N) : NULL;
    }
    if (c->n_layer == 1) g->layer_floats = used;
    g->layers_floats = used;
    g->xfin = TAKE(N * d);
    g->xemb = enc ? TAKE(N * d) : NULL;
    g->meane = enc ? TAKE(N) : NULL;
    g->rstde = enc ? TAKE(N) : NULL;
    g->hf = TAKE(N * d);
    g->meanf = TAKE(N);
    g->rstdf = TAKE(N);
    g->dx = TAKE(N * d);
    g->dxmid = TAKE(N * d);
    g->dh = TAKE(N * d);
    g->dhf = TAKE(N * d);
    g->dbn = g->ad && g->ad->ops && g->ad->ops->sub_bwd ? TAKE(N * d) : NULL;   /* sub-layer hooks only */
    g->dqkv = TAKE(N * g->ldq);
    g->datt = TAKE(N * g->qd);
    g->dg = TAKE(N * ffg);
    g->du = TAKE(N * ff);
    g->da = TAKE(N * ff);
    g->dqk = qkn ? TAKE(N * qkw) : NULL;
    /* the language-model loss's logits: not for classifiers and encoders */
    const bool lm = g->n_labels == 0 && !enc;
    g->logits = lm ? TAKE((size_t)LOSS_CHUNK * g->V) : NULL;
    g->capped = lm && c->final_softcap > 0 ? TAKE((size_t)LOSS_CHUNK * g->V) : NULL;
    g->ptmp = post1 || post2 ? TAKE(N * d) : NULL;
    g->cls = TAKE(B * (size_t)(g->n_labels ? g->n_labels : 1));
    g->cls_scr = TAKE(B * 2 * d);
    g->dlab = TAKE((size_t)(g->n_labels ? g->n_labels : 1));
    g->emb = TAKE(B * d);
    g->demb = TAKE(B * d);
    g->embn = TAKE(B);
    g->scores = TAKE(B * B);
    g->kvbuf = g->PX ? TAKE(4 * (T + (size_t)g->PX) * g->kvd) : NULL;
    g->mm_scratch = TAKE(PEFT_MAX(kern_matmul_scratch_floats(g->max_in, g->nt), kern_matmul_dx_scratch_floats(g->max_in, g->nt, g->m->bf16_packs != NULL)));
    g->attn_scratch = TAKE(kern_flash_attn_scratch_floats((int)T, g->PX, g->m->cfg.n_head, g->m->cfg.head_dim, g->nt));
    g->pos = (int32_t *)TAKE(N);
    g->ids = (int32_t *)TAKE(N);
    g->tgt = (int32_t *)TAKE(N);
    g->seg = (int32_t *)TAKE(N);
    g->last = (int32_t *)TAKE(B);
#undef TAKE
    return used;
}

/* A graph with every size known and nothing of its activations allocated
 * (tg_new_opts allocates them, tg_plan_bytes reports them). */
static int tg_setup(peft_model *m, adapter *a, int B, int T, const tg_options *o, train_graph **out, peft_err *err) {
    const model_config *c = &m->cfg;
    if (B <= 0 || T <= 1) return peft_fail(err, PEFT_ERR_INVALID, "batch %d x %d: need B >= 1 and T >= 2", B, T);
    const int ck = o ? o->checkpoint_every : 0;
    if (ck < 0) return peft_fail(err, PEFT_ERR_INVALID, "checkpointing every %d layers: need 0 (off) or more", ck);
    int rc0 = adapter_fits(a, m, err);
    if (rc0) return rc0;
    const int P = adapter_prompt_rows(a), PX = adapter_prefix_rows(a);
    if (T + P + PX > c->n_ctx)
        return peft_fail(err, PEFT_ERR_INVALID, "sequence length %d%s exceeds the model's context %d", T,
                         P ? " plus the virtual tokens" : PX ? " plus the prefix" : "", c->n_ctx);
    train_graph *g = peft_calloc(1, sizeof *g, err);
    if (!g) return PEFT_ERR_NOMEM;
    g->m = m;
    g->ad = a;
    g->B = B;
    g->ck = ck < c->n_layer ? ck : 0;   /* one segment of every layer: everything kept anyway */
    g->skip_down = -1;
    g->P = P;
    g->PX = PX;
    g->n_labels = adapter_n_labels(a, m);
    if (g->n_labels > 0 && c->desc->cls == ARCH_CLS_POOLER && !m->pooler_w) {
        free(g);
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: no pooler (%s), which the %s classifier reads", m->path,
                         c->desc->hf_pooler, c->arch_name);
    }
    g->pair_scale = 20.0f;
    g->pair_pool = TG_POOL_MEAN;
    g->T = T + P;
    g->T_cap = T + P;
    g->N = B * g->T;
    g->nt = m->ctx ? m->ctx->n_threads : 1;
    g->d = c->d_model;
    g->qd = c->n_head * c->head_dim;
    g->kvd = c->n_kv_head * c->head_dim;
    g->ldq = g->qd + 2 * g->kvd;
    g->ff = c->d_ff;
    g->V = c->vocab;
    g->max_in = PEFT_MAX(PEFT_MAX(g->d, g->ff), g->qd);
    g->max_out = PEFT_MAX(PEFT_MAX(g->d, g->ff), g->ldq);
    g->lowest = c->n_layer;
    if (a) {
        if (P) g->need_dx0 = true;   /* the input rows are trained */
        if (a->ops && a->ops->lowest_layer) g->lowest = PEFT_MIN(g->lowest, a->ops->lowest_layer(a, m));
        if (a->ops && (a->ops->norm_grad || a->ops->emb_grad)) {
            g->lowest = 0;
            g->need_dx0 = true;
        }
    }

    /* One arena; layout() is run twice, first to size it, then to place
     * every buffer, so the two can never disagree. */
    g->L = peft_calloc((size_t)c->n_layer, sizeof *g->L, err);
    if (!g->L) { tg_free(g); return PEFT_ERR_NOMEM; }
    g->arena_floats = layout(g, NULL);
    hook_plan(g);
    *out = g;
    return 0;
}

int tg_new_opts(peft_model *m, adapter *a, int B, int T, const tg_options *o, train_graph **out, peft_err *err) {
    train_graph *g = NULL;
    int rc = tg_setup(m, a, B, T, o, &g, err);
    if (rc) return rc;
    g->arena = peft_malloc(g->arena_floats * sizeof(float), err);
    if (!g->arena) {
        rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory for training activations (%.1f MiB for batch %d x %d)",
                       g->arena_floats * 4.0 / 1048576.0, B, T);
        tg_free(g);
        return rc;
    }
    layout(g, g->arena);
    if ((rc = hook_alloc(g, err))) { tg_free(g); return rc; }
    *out = g;
    return 0;
}

int tg_new(peft_model *m, adapter *a, int B, int T, train_graph **out, peft_err *err) {
    return tg_new_opts(m, a, B, T, NULL, out, err);
}

int tg_plan(peft_model *m, adapter *a, int B, int T, const tg_options *o, tg_memory *out, peft_err *err) {
    train_graph *g = NULL;
    int rc = tg_setup(m, a, B, T, o, &g, err);
    if (rc) return rc;
    const size_t f = sizeof(float);
    *out = (tg_memory){.n_layer = m->cfg.n_layer, .checkpoint_every = g->ck, .layer = g->layer_floats * f,
                       .input = (size_t)g->N * g->d * f, .layers = g->layers_floats * f,
                       .hooks = g->hook_bytes + g->hook_scr_floats * f, .total = tg_arena_bytes(g)};
    out->shared = out->total - out->layers - out->hooks;
    tg_free(g);
    return 0;
}

int tg_plan_bytes(peft_model *m, adapter *a, int B, int T, const tg_options *o, size_t *bytes, peft_err *err) {
    tg_memory mem;
    const int rc = tg_plan(m, a, B, T, o, &mem, err);
    if (!rc) *bytes = mem.total;
    return rc;
}


const float *tg_class_logits(const train_graph *g) {
    return g->n_anchor > 0 ? g->scores : g->n_labels > 0 ? g->cls : NULL;
}

int tg_class_width(const train_graph *g) { return g->n_anchor > 0 ? g->n_cand : g->n_labels; }

int tg_set_pairs(train_graph *g, float scale, int pool) {
    if (!(scale > 0 && scale < 1e4f) || (pool != TG_POOL_MEAN && pool != TG_POOL_CLS)) return PEFT_ERR_INVALID;
    g->pair_scale = scale;
    g->pair_pool = pool;
    return 0;
}

/* ---- small dense helpers ----------------------------------------------------- */


/* ---- linears with their method hooks ------------------------------------------ */

/* y (N, out) = beta·y + linear(x), through the method's hook on the linear
 * when it has one (method.h): HOOK_ADD runs the base product (with the
 * method's bias, lin_bias) and then the method's term, HOOK_REPLACE the
 * method alone. */
static int lin_fwd(train_graph *g, int l, model_linear_role r, const float *x, float *y, int ldy, float beta) {
    const double t0 = peft_time_s();
    const hook_kind hk = method_lin_kind(g->ad, l, r);
    const lin_call c = hook_call(g, l, r, x, y, ldy, beta);
    int rc = hk != HOOK_REPLACE ? method_base_fwd(&c) : 0;
    if (!rc && hk != HOOK_NONE) rc = g->ad->ops->lin_fwd(g->ad, &c);
    g->phase[TG_PH_LIN_FWD] += peft_time_s() - t0;
    return rc;
}

/* dx (N, in) += the input gradient of lin_fwd from dy (N, out) (row
 * stride ldy); the method's parameters accumulate their gradients. dx
 * NULL: parameter gradients only; base_dx false: the base product's part
 * of dx is done by the caller (qkv_bwd_one). */
static int lin_bwd_(train_graph *g, int l, model_linear_role r, const float *x, const float *dy, int ldy, float *dx,
                    bool base_dx) {
    adapter *a = g->ad;
    const hook_kind hk = method_lin_kind(a, l, r);
    const lin_call c = hook_call(g, l, r, x, NULL, 0, 0.0f);
    int rc = hk != HOOK_REPLACE && dx && base_dx ? method_base_dx(&c, dy, ldy, dx) : 0;
    return rc || hk == HOOK_NONE ? rc : a->ops->lin_bwd(a, &c, dy, ldy, dx);
}

static int lin_bwd(train_graph *g, int l, model_linear_role r, const float *x, const float *dy, int ldy, float *dx) {
    const double t0 = peft_time_s();
    int rc = lin_bwd_(g, l, r, x, dy, ldy, dx, true);
    g->phase[TG_PH_LIN_BWD] += peft_time_s() - t0;
    return rc;
}

/* ---- q, k, v as one product (bf16 compute) ---------------------------------------- */

/* With bf16 packs shared by q, k and v (model_qkv_fused) and only additive
 * hooks on them (HOOK_ADD: LoRA, VeRA, BitFit's biases; no HOOK_REPLACE such
 * as DoRA, IA3 or full fine-tuning), the three base products run as one
 * over the concatenated outputs: one pass over the input instead of three. */
static bool qkv_one_product(const train_graph *g, int l) {
    if (!model_qkv_fused(g->m, l)) return false;
    for (int r = ROLE_Q; r <= ROLE_V; r++) {
        if (method_lin_kind(g->ad, l, (model_linear_role)r) == HOOK_REPLACE) return false;
    }
    return true;
}

/* L->qkv = [q | k | v] of x, with biases and the methods' HOOK_ADD terms */
static int qkv_fwd_one(train_graph *g, int l, const float *x, float *qkv) {
    const double t0 = peft_time_s();
    const model_layer *ML = &g->m->layers[l];
    const int n_out = (int)(ML->lin[ROLE_Q].w.rows + ML->lin[ROLE_K].w.rows + ML->lin[ROLE_V].w.rows);
    int rc = kern_bf16_gemm(qkv, g->ldq, x, g->d, g->N, g->d, n_out, ML->lin[ROLE_Q].w.bf16_fwd, NULL, 0.0f,
                            g->mm_scratch, g->nt);
    for (int r = ROLE_Q; r <= ROLE_V && !rc; r++) {
        float *y = qkv + (r == ROLE_Q ? 0 : r == ROLE_K ? g->qd : g->qd + g->kvd);
        const int out = (int)ML->lin[r].w.rows;
        const float *bias = adapter_bias(g->ad, g->m, l, (model_linear_role)r);
        if (bias)
            for (int i = 0; i < g->N; i++)
                for (int j = 0; j < out; j++) y[(size_t)i * g->ldq + j] += bias[j];
        if (method_lin_kind(g->ad, l, (model_linear_role)r) == HOOK_ADD) {
            const lin_call hc = hook_call(g, l, (model_linear_role)r, x, y, g->ldq, 1.0f);
            if ((rc = g->ad->ops->lin_fwd(g->ad, &hc))) break;
        }
    }
    g->phase[TG_PH_LIN_FWD] += peft_time_s() - t0;
    return rc;
}

/* dx += the input gradient of qkv_fwd_one from dqkv (row stride ldq); the
 * parameters' gradients as lin_bwd */
static int qkv_bwd_one(train_graph *g, int l, const float *x, const float *dqkv, float *dx) {
    const double t0 = peft_time_s();
    const model_layer *ML = &g->m->layers[l];
    int rc = 0;
    for (int r = ROLE_Q; r <= ROLE_V && !rc; r++)
        rc = lin_bwd_(g, l, (model_linear_role)r, x, dqkv + (r == ROLE_Q ? 0 : r == ROLE_K ? g->qd : g->qd + g->kvd),
                      g->ldq, dx, false);
    if (!rc && dx) {
        const kern_weight *W = &ML->lin[ROLE_Q].w;
        const int K = (int)(W->rows + ML->lin[ROLE_K].w.rows + ML->lin[ROLE_V].w.rows);
        rc = kern_bf16_gemm_ex(dx, g->d, dqkv, g->ldq, g->N, K, g->d, W->bf16_bwd, W->bf16_bwd_nkb, NULL, 1.0f,
                               g->mm_scratch, g->nt);
    }
    g->phase[TG_PH_LIN_BWD] += peft_time_s() - t0;
    return rc;
}

/* y (N, d) += sublayer output of linear (l, r) on x, through the site's
 * bottleneck module when there is one. */
static sub_call sub_at(const train_graph *g, int l, int site, float *y) {
    sub_call c = {g->m, l, site, g->N, g->d, g->SH[l * 2 + site], y, g->SA[l * 2 + site], g->hook_scr, g->nt};
    return c;
}

static int sublayer_out_fwd(train_graph *g, int l, model_linear_role r, int site, const float *x, float *y) {
    if (!method_sub_hooked(g->ad, l, site)) return lin_fwd(g, l, r, x, y, g->d, 1.0f);
    int rc = lin_fwd(g, l, r, x, g->SH[l * 2 + site], g->d, 0.0f);
    const sub_call c = sub_at(g, l, site, y);
    return rc ? rc : g->ad->ops->sub_fwd(g->ad, &c);
}

static int sublayer_out_bwd(train_graph *g, int l, model_linear_role r, int site, const float *x, const float *dy,
                            float *dx) {
    if (!method_sub_hooked(g->ad, l, site)) return lin_bwd(g, l, r, x, dy, g->d, dx);
    const sub_call c = sub_at(g, l, site, NULL);
    int rc = g->ad->ops->sub_bwd(g->ad, &c, dy, g->dbn);
    return rc ? rc : lin_bwd(g, l, r, x, g->dbn, g->d, dx);
}

/* ---- attention ---------------------------------------------------------------------- */

/* Prefix tuning: keys (P + T, kvd) and values of rows s0..s0+T-1 of
 * sequence bi in layer l into kb, vb: the prefix rows of the table, then
 * the sequence's (one segment: an encoder's padding is a segment of its
 * own, kept out of the text's keys). */
static void prefix_kv(train_graph *g, const layer_acts *L, int l, int bi, int s0, int T, float *kb, float *vb) {
    const int PX = g->PX, kvd = g->kvd;
    for (int p = 0; p < PX; p++) {
        const float *k, *v;
        g->ad->ops->kv_row(g->ad, l, p, &k, &v);
        memcpy(kb + (size_t)p * kvd, k, (size_t)kvd * sizeof(float));
        memcpy(vb + (size_t)p * kvd, v, (size_t)kvd * sizeof(float));
    }
    for (int t = 0; t < T; t++) {
        const float *q = L->qkv + ((size_t)bi * g->T + s0 + t) * g->ldq;
        memcpy(kb + (size_t)(PX + t) * kvd, q + g->qd, (size_t)kvd * sizeof(float));
        memcpy(vb + (size_t)(PX + t) * kvd, q + g->qd + kvd, (size_t)kvd * sizeof(float));
    }
}

/* Attention over each row of the batch, segment by segment (packed rows
 * hold several examples that must not see each other). */
static void attn_fwd(train_graph *g, layer_acts *L, int l) {
    const double t0 = peft_time_s();
    const model_config *c = &g->m->cfg;
    const int T = g->T, hd = c->head_dim, PX = g->PX;
    const kern_attn_opts o = block_attn_opts(g->m, l, PX);
    for (int bi = 0; bi < g->B; bi++) {
        const int32_t *seg = g->seg + (size_t)bi * T;
        /* a segment of n rows keeps its (n_head, n) log-sum-exps back to back */
        float *lse = L->lse + (size_t)bi * c->n_head * T;
        for (int s0 = 0; s0 < T;) {
            int s1 = s0 + 1;
            while (s1 < T && seg[s1] == seg[s0]) s1++;
            const size_t row = (size_t)bi * T + s0;
            if (PX) {
                float *kb = g->kvbuf, *vb = kb + (size_t)(PX + s1 - s0) * g->kvd;
                prefix_kv(g, L, l, bi, s0, s1 - s0, kb, vb);
                kern_flash_attn_fwd(L->att + row * g->qd, lse, L->qkv + row * g->ldq, g->ldq, kb, vb, g->kvd, s1 - s0,
                                    PX, c->n_head, c->n_kv_head, hd, &o, g->nt);
                lse += (size_t)c->n_head * (s1 - s0);
                s0 = s1;
                continue;
            }
            kern_flash_attn_fwd(L->att + row * g->qd, lse, L->qkv + row * g->ldq, g->ldq, L->qkv + row * g->ldq + g->qd,
                                L->qkv + row * g->ldq + g->qd + g->kvd, g->ldq, s1 - s0, 0, c->n_head, c->n_kv_head, hd,
                                &o, g->nt);
            lse += (size_t)c->n_head * (s1 - s0);
            s0 = s1;
        }
    }
    g->phase[TG_PH_ATTN_FWD] += peft_time_s() - t0;
}

static void attn_bwd(train_graph *g, layer_acts *L, int l) {
    const double t0 = peft_time_s();
    const model_config *c = &g->m->cfg;
    const int T = g->T, hd = c->head_dim, PX = g->PX, kvd = g->kvd;
    const kern_attn_opts o = block_attn_opts(g->m, l, PX);
    for (int bi = 0; bi < g->B; bi++) {
        const int32_t *seg = g->seg + (size_t)bi * T;
        const float *lse = L->lse + (size_t)bi * c->n_head * T;
        for (int s0 = 0, s1 = 1; PX && s0 < T; s0 = s1, s1 = s0 + 1) {
            while (s1 < T && seg[s1] == seg[s0]) s1++;
            const int n = s1 - s0;
            const size_t LL = (size_t)(PX + n) * kvd;
            float *kb = g->kvbuf, *vb = kb + LL, *dk = vb + LL, *dv = dk + LL;
            prefix_kv(g, L, l, bi, s0, n, kb, vb);
            memset(dk, 0, 2 * LL * sizeof(float));
            const size_t row = (size_t)bi * T + s0;
            kern_flash_attn_bwd(g->dqkv + row * g->ldq, g->ldq, dk, dv, kvd, g->datt + row * g->qd,
                                L->att + row * g->qd, lse, L->qkv + row * g->ldq, g->ldq, kb, vb, kvd, n, PX,
                                c->n_head, c->n_kv_head, hd, &o, g->attn_scratch, g->nt);
            lse += (size_t)c->n_head * n;
            for (int t = 0; t < n; t++) {
                float *q = g->dqkv + (row + t) * g->ldq;
                for (int k = 0; k < kvd; k++) {
                    q[g->qd + k] += dk[(size_t)(PX + t) * kvd + k];
                    q[g->qd + kvd + k] += dv[(size_t)(PX + t) * kvd + k];
                }
            }
            for (int p = 0; p < PX; p++) {
                float *gk, *gv;
                g->ad->ops->kv_grad(g->ad, l, p, &gk, &gv);
                for (int k = 0; k < kvd; k++) {
                    gk[k] += dk[(size_t)p * kvd + k];
                    gv[k] += dv[(size_t)p * kvd + k];
                }
            }
        }
        if (PX) continue;
        for (int s0 = 0; s0 < T;) {
            int s1 = s0 + 1;
            while (s1 < T && seg[s1] == seg[s0]) s1++;
            const size_t row = (size_t)bi * T + s0;
            const float *q = L->qkv + row * g->ldq;
            float *dq = g->dqkv + row * g->ldq;
            kern_flash_attn_bwd(dq, g->ldq, dq + g->qd, dq + g->qd + g->kvd, g->ldq, g->datt + row * g->qd,
                                L->att + row * g->qd, lse, q, g->ldq, q + g->qd, q + g->qd + g->kvd, g->ldq, s1 - s0, 0,
                                c->n_head, c->n_kv_head, hd, &o, g->attn_scratch, g->nt);
            lse += (size_t)c->n_head * (s1 - s0);
            s0 = s1;
        }
    }
    g->phase[TG_PH_ATTN_BWD] += peft_time_s() - t0;
}


/* ---- the block recipe's callbacks (model/block.h) ------------------------------------ */

static int cb_lin(void *u, int l, model_linear_role r, const float *x, float *y, int ldy, float beta) {
    return lin_fwd(u, l, r, x, y, ldy, beta);
}

static int cb_qkv(void *u, int l, const float *x, float *qkv) {
    train_graph *g = u;
    if (qkv_one_product(g, l)) return qkv_fwd_one(g, l, x, qkv);
    int rc = lin_fwd(g, l, ROLE_Q, x, qkv, g->ldq, 0);
    if (!rc) rc = lin_fwd(g, l, ROLE_K, x, qkv + g->qd, g->ldq, 0);
    return rc ? rc : lin_fwd(g, l, ROLE_V, x, qkv + g->qd + g->kvd, g->ldq, 0);
}

static int cb_sub_out(void *u, int l, model_linear_role r, int site, const float *x, float *y) {
    const train_graph *g = u;
    if (site == 1 && l == g->skip_down) return 0;   /* a recompute that needs no output (recompute_segment) */
    return sublayer_out_fwd(u, l, r, site, x, y);
}

static int cb_attn(void *u, int l, block_acts *A) {
    (void)A;
    train_graph *g = u;
    attn_fwd(g, &g->L[l], l);
    return 0;
}

static int cb_lin_bwd(void *u, int l, model_linear_role r, const float *x, const float *dy, int ldy, float *dx) {
    return lin_bwd(u, l, r, x, dy, ldy, dx);
}

static int cb_qkv_bwd(void *u, int l, const float *x, const float *dqkv, float *dx) {
    train_graph *g = u;
    if (qkv_one_product(g, l)) return qkv_bwd_one(g, l, x, dqkv, dx);
    int rc = lin_bwd(g, l, ROLE_Q, x, dqkv, g->ldq, dx);
    if (!rc) rc = lin_bwd(g, l, ROLE_K, x, dqkv + g->qd, g->ldq, dx);
    return rc ? rc : lin_bwd(g, l, ROLE_V, x, dqkv + g->qd + g->kvd, g->ldq, dx);
}

static int cb_sub_out_bwd(void *u, int l, model_linear_role r, int site, const float *x, const float *dy, float *dx) {
    return sublayer_out_bwd(u, l, r, site, x, dy, dx);
}

static void cb_attn_bwd(void *u, int l, const block_acts *A, block_grads *G) {
    (void)A;
    (void)G;
    train_graph *g = u;
    attn_bwd(g, &g->L[l], l);
}

/* norms with trainable parameters (BitFit, full) */
static float *cb_norm_grad(void *u, int l, int which, bool bias) {
    const train_graph *g = u;
    if (g->ad && g->ad->ops && g->ad->ops->norm_grad) return g->ad->ops->norm_grad(g->ad, l, which, bias);
    return NULL;
}

static void cb_zero(void *u, float *p, size_t n);
static void cb_copy(void *u, float *dst, const float *src, size_t n);

static block_env env_of(train_graph *g) {
    return (block_env){.m = g->m, .ad = g->ad, .N = g->N, .pos = g->pos, .nt = g->nt, .u = g,
                       .lin = cb_lin, .qkv = cb_qkv, .sub_out = cb_sub_out, .attn = cb_attn,
                       .lin_bwd = cb_lin_bwd, .qkv_bwd = cb_qkv_bwd, .sub_out_bwd = cb_sub_out_bwd,
                       .attn_bwd = cb_attn_bwd, .norm_grad = cb_norm_grad, .zero = cb_zero, .copy = cb_copy};
}

/* Layer l's kept activations as the recipe sees them; its output is the
 * next layer's input. */
static block_acts acts_of(const train_graph *g, int l) {
    const layer_acts *L = &g->L[l];
    return (block_acts){.xin = L->xin, .mean1 = L->mean1, .rstd1 = L->rstd1, .h1 = L->h1, .qkv = L->qkv,
                        .att = L->att, .xmid = L->xmid, .mean2 = L->mean2, .rstd2 = L->rstd2, .h2 = L->h2,
                        .g = L->g, .u = L->u, .a = L->a, .qk_in = L->qk_in, .qk_rstd = L->qk_rstd,
                        .o1 = L->o1, .o1_mean = L->o1_mean, .o1_rstd = L->o1_rstd, .o2 = L->o2,
                        .o2_mean = L->o2_mean, .o2_rstd = L->o2_rstd, .ptmp = g->ptmp,
                        .xout = l + 1 < g->m->cfg.n_layer ? g->L[l + 1].xin : g->xfin};
}

/* Checkpointing: before the backward reaches the last layer of a segment,
 * the segment runs forward again from its kept input into the shared
 * slots. Everything a layer's forward reads is as it was in the first
 * forward (the batch's rows, positions and segments, the parameters, the
 * dropout seed and the training flag: the methods draw their masks from
 * the seed), so the activations come out bitwise the same. The last
 * segment's are still in the slots after the forward. */
static int recompute_segment(train_graph *g, const block_env *env, int l) {
    const int ck = g->ck, n = g->m->cfg.n_layer;
    if (!ck) return 0;
    const int s0 = l - l % ck;
    if (l != s0 + ck - 1 || s0 == (n - 1) - (n - 1) % ck) return 0;
    const arch_desc *desc = g->m->cfg.desc;
    for (int k = s0; k <= l; k++) {
        block_acts A = acts_of(g, k);
        if (k == l) {
            /* The segment's output is the next segment's kept input, whose
             * backward is done: it goes to scratch (dxmid: block_bwd
             * overwrites it first), and where nothing of the MLP's output
             * projection is kept (no method hook on it, no norm after it:
             * pre-norm families) the projection is skipped, a quarter of a
             * typical layer's products. */
            A.xout = g->dxmid;
            if (!desc->encoder && !desc->hf_norm[NORM_MLP_OUT] && method_lin_kind(g->ad, k, ROLE_DOWN) == HOOK_NONE &&
                !method_sub_hooked(g->ad, k, 1))
                g->skip_down = k;
        }
        const int rc = block_fwd(env, k, &A);
        g->skip_down = -1;
        if (rc) return rc;
    }
    return 0;
}

/* ---- losses ----------------------------------------------------------------------------- */

static int lm_loss(train_graph *g, bool backward, float grad_scale, double *total, int *count) {
    kern_weight tmp;
    const kern_weight *head = adapter_lm_head(g->ad, g->m, &tmp);
    float *ghead = g->ad && g->ad->ops && g->ad->ops->emb_grad ? g->ad->ops->emb_grad(g->ad, 2) : NULL;
    const int N = g->N, d = g->d;
    int rc;
    for (int r0 = 0; r0 < N; r0 += LOSS_CHUNK) {
        const int n = PEFT_MIN(LOSS_CHUNK, N - r0);
        bool any = false;
        for (int i = 0; i < n && !any; i++) any = g->tgt[r0 + i] != -100;
        if (!any) continue;
        if ((rc = kern_matmul(g->logits, g->V, g->hf + (size_t)r0 * d, n, head, NULL, 0, g->mm_scratch, g->nt))) return rc;
        const size_t nl = (size_t)n * g->V;
        const float cap = g->m->cfg.final_softcap;
        if (g->capped)
            for (size_t i = 0; i < nl; i++) {
                g->capped[i] = tanhf(g->logits[i] / cap);
                g->logits[i] = cap * g->capped[i];
            }
        double ls = 0;
        int cnt = 0;
        if ((rc = kern_xent_fwd_bwd(&ls, &cnt, g->logits, g->logits, g->tgt + r0, n, g->V, grad_scale, g->nt))) return -rc;
        *total += ls;
        *count += cnt;
        if (!backward) continue;
        if (g->capped)   /* d(c·tanh(z/c))/dz = 1 - tanh² */
            for (size_t i = 0; i < nl; i++) g->logits[i] *= 1.0f - g->capped[i] * g->capped[i];
        if ((rc = kern_matmul_dx(g->dhf + (size_t)r0 * d, g->logits, g->V, n, head, g->mm_scratch, g->nt))) return rc;
        /* the head's (or tied embedding's) gradient: (V, d) += dlogitsᵀ·h */
        if (ghead) kern_gemm_rows(true, false, g->V, d, n, 1.0f, g->logits, g->V, g->hf + (size_t)r0 * d, d, 1.0f, ghead, d, g->nt);
    }
    return 0;
}

static int cls_loss(train_graph *g, const data_batch *b, bool backward, float grad_scale, double *total, int *count) {
    const int K = g->n_labels, d = g->d;
    adapter *a = g->ad;
    float *dl = g->dlab;
    /* the adapter's head, or the model's own (a fine-tuned classifier),
     * on the row the family pools (modules_to_save.c) */
    for (int bi = 0; bi < g->B; bi++) {
        const size_t row = (size_t)bi * g->T + mts_pool_row(g->m, g->last[bi]);
        const float *h = g->hf + row * d;
        float *lg = g->cls + (size_t)bi * K, *scr = g->cls_scr + (size_t)bi * 2 * d;
        mts_head_fwd(a, g->m, h, lg, scr);
        const int y = b->labels ? b->labels[bi] : -1;
        if (y < 0) continue;
        if (y >= K) return PEFT_ERR_INVALID;
        double mx = lg[0], z = 0;
        for (int k = 1; k < K; k++) mx = fmax(mx, lg[k]);
        for (int k = 0; k < K; k++) z += exp(lg[k] - mx);
        *total += log(z) + mx - lg[y];
        *count += 1;
        if (!backward) continue;
        for (int k = 0; k < K; k++) dl[k] = (float)((exp(lg[k] - mx) / z - (k == y)) * grad_scale);
        mts_head_bwd(a, g->m, h, dl, g->dhf + row * d, scr);
    }
    return 0;
}

/* Contrastive (sentence-transformers' MultipleNegativesRankingLoss): anchor
 * i's candidates are every positive and negative of the batch, the right
 * one its own positive (label i: row n_anchor + i); the score is scale ·
 * cos(e_a, e_c) of the pooled embeddings, and the loss the cross-entropy
 * over a row of scores. Rows of length 0 (a short last batch) take no part. */
static float *pooled_row_src(const train_graph *g, int r, int *len) {
    *len = PEFT_MIN(g->last[r] - g->P + 1, g->T - g->P);
    return g->hf + ((size_t)r * g->T + g->P) * g->d;
}

static int pair_loss(train_graph *g, const data_batch *b, bool backward, float grad_scale, double *total, int *count) {
    const int d = g->d, C = b->n_cols, nA = g->B / C, nC = g->B - nA;
    const float sc = g->pair_scale;
    if (nA * C != g->B) return PEFT_ERR_SHAPE;
    for (int r = 0; r < g->B; r++) {
        float *e = g->emb + (size_t)r * d;
        int len;
        const float *h = pooled_row_src(g, r, &len);
        memset(e, 0, (size_t)d * sizeof *e);
        if (b->lengths[r] <= 0) { g->embn[r] = 0; continue; }
        const int n = g->pair_pool == TG_POOL_CLS ? 1 : len;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < d; k++) e[k] += h[(size_t)t * d + k];
        double ss = 0;
        for (int k = 0; k < d; k++) {
            e[k] /= (float)n;
            ss += (double)e[k] * e[k];
        }
        /* torch.nn.functional.normalize: x / max(||x||, 1e-12) */
        g->embn[r] = (float)fmax(sqrt(ss), 1e-12);
        for (int k = 0; k < d; k++) e[k] /= g->embn[r];
    }
    g->n_anchor = nA;
    g->n_cand = nC;
    if (backward) memset(g->demb, 0, (size_t)g->B * d * sizeof(float));
    for (int i = 0; i < nA; i++) {
        float *s = g->scores + (size_t)i * nC;
        const float *ea = g->emb + (size_t)i * d;
        for (int j = 0; j < nC; j++) {
            const float *ec = g->emb + (size_t)(nA + j) * d;
            double dot = 0;
            for (int k = 0; k < d; k++) dot += (double)ea[k] * ec[k];
            s[j] = b->lengths[nA + j] > 0 ? (float)(sc * dot) : -INFINITY;
        }
        const int y = b->labels ? b->labels[i] : -1;
        if (y < 0 || b->lengths[i] <= 0) continue;
        if (y >= nC || b->lengths[nA + y] <= 0) return PEFT_ERR_INVALID;
        double mx = -INFINITY, z = 0;
        for (int j = 0; j < nC; j++) mx = fmax(mx, s[j]);
        for (int j = 0; j < nC; j++) z += exp(s[j] - mx);
        *total += log(z) + mx - s[y];
        *count += 1;
        if (!backward) continue;
        float *da = g->demb + (size_t)i * d;
        for (int j = 0; j < nC; j++) {
            if (b->lengths[nA + j] <= 0) continue;
            const float gs = (float)((exp(s[j] - mx) / z - (j == y)) * grad_scale) * sc;
            const float *ec = g->emb + (size_t)(nA + j) * d;
            float *dc = g->demb + (size_t)(nA + j) * d;
            for (int k = 0; k < d; k++) {
                da[k] += gs * ec[k];
                dc[k] += gs * ea[k];
            }
        }
    }
    if (!backward) return 0;
    /* through the normalization and the pooling into the hidden rows */
    for (int r = 0; r < g->B; r++) {
        if (b->lengths[r] <= 0) continue;
        const float *u = g->emb + (size_t)r * d, *du = g->demb + (size_t)r * d;
        double dot = 0;
        for (int k = 0; k < d; k++) dot += (double)u[k] * du[k];
        int len;
        pooled_row_src(g, r, &len);
        const int n = g->pair_pool == TG_POOL_CLS ? 1 : len;
        const float inv = 1.0f / (g->embn[r] * (float)n);
        float *dh = g->dhf + ((size_t)r * g->T + g->P) * d;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < d; k++) dh[(size_t)t * d + k] += (du[k] - (float)dot * u[k]) * inv;
    }
    return 0;
}

/* ---- the pass ------------------------------------------------------------------------ */

/* memset / memcpy of n floats split over the graph's threads: the backward
 * clears and copies tens of MiB per layer. */
static void par_zero(const train_graph *g, float *p, size_t n) {
    const int64_t nc = (int64_t)((n + 65535) / 65536);
#pragma omp parallel for num_threads(g->nt) schedule(static) if (nc > 1)
    for (int64_t c = 0; c < nc; c++)
        memset(p + (size_t)c * 65536, 0, PEFT_MIN((size_t)65536, n - (size_t)c * 65536) * sizeof(float));
}

static void par_copy(const train_graph *g, float *dst, const float *src, size_t n) {
    const int64_t nc = (int64_t)((n + 65535) / 65536);
#pragma omp parallel for num_threads(g->nt) schedule(static) if (nc > 1)
    for (int64_t c = 0; c < nc; c++)
        memcpy(dst + (size_t)c * 65536, src + (size_t)c * 65536, PEFT_MIN((size_t)65536, n - (size_t)c * 65536) * sizeof(float));
}

static void cb_zero(void *u, float *p, size_t n) { par_zero(u, p, n); }
static void cb_copy(void *u, float *dst, const float *src, size_t n) { par_copy(u, dst, src, n); }

int tg_run(train_graph *g, const data_batch *b, bool backward, float grad_scale,
           uint64_t dropout_seed, double *loss_sum, int *n_targets, peft_err *err) {
    peft_model *m = g->m;
    adapter *ad = g->ad;
    const model_config *c = &m->cfg;
    const bool learned_pos = c->desc->pos == ARCH_POS_LEARNED;
    const int d = g->d, P = g->P;
    int rc = 0;
    const double t_run = peft_time_s();
    if (b->B != g->B || b->T + P > g->T_cap || b->T < 2)
        return peft_fail(err, PEFT_ERR_SHAPE, "batch is %d x %d, the graph was built for %d x (2..%d)", b->B, b->T, g->B,
                         g->T_cap - P);
    const bool pairs = b->n_cols > 1;
    if ((g->n_labels > 0 || pairs) && !b->lengths)
        return peft_fail(err, PEFT_ERR_INVALID, "classification needs the row lengths of the batch");
    /* a fine-tuned classifier's own head is left alone: pairs train its encoder */
    if (pairs && ad && ad->mc.n_labels > 0)
        return peft_fail(err, PEFT_ERR_INVALID, "contrastive pairs on an adapter with a classification head");
    if (!pairs && g->n_labels == 0 && c->desc->encoder)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s is an encoder (%s): it has no language-model head to train or "
                         "evaluate on text; give classification data ({\"text\", \"label\"} lines, --num-labels) "
                         "or contrastive pairs ({\"anchor\", \"positive\"} lines)", m->path, c->arch_name);
    g->n_anchor = 0;
    /* Batches may be shorter than the graph's capacity (padding trimmed to
     * the longest row): every buffer fits, only the row length changes.
     * Prompt tuning puts P virtual rows before each sequence; prefix tuning
     * moves the sequence's positions after its P key/value rows (as HF
     * PEFT's cache does). */
    g->T = b->T + P;
    g->N = g->B * g->T;
    const int N = g->N, T = g->T;
    for (int bi = 0; bi < g->B; bi++) {
        for (int t = 0; t < T; t++) {
            const size_t i = (size_t)bi * T + t;
            if (t < P) {
                g->ids[i] = -1;
                g->pos[i] = t;
                g->seg[i] = b->segments[(size_t)bi * b->T];
                g->tgt[i] = t == P - 1 && b->first_targets ? b->first_targets[bi] : -100;
                continue;
            }
            const size_t src = (size_t)bi * b->T + (t - P);
            g->ids[i] = b->inputs[src];
            g->pos[i] = b->positions[src] + P + g->PX;
            g->seg[i] = b->segments[src];
            /* encoders attend both ways: padding must be a segment of its own */
            if (c->desc->encoder && b->lengths && t - P >= b->lengths[bi]) g->seg[i] = -1;
            g->tgt[i] = g->n_labels > 0 || pairs ? -100 : b->targets[src];
            if (g->ids[i] < 0 || g->ids[i] >= c->vocab)
                return peft_fail(err, PEFT_ERR_INVALID, "token id %d out of range [0, %d)", g->ids[i], c->vocab);
            if (g->pos[i] < 0 || g->pos[i] >= c->n_ctx)
                return peft_fail(err, PEFT_ERR_INVALID, "position %d outside the context %d", g->pos[i], c->n_ctx);
        }
        if (g->n_labels > 0 || pairs) {
            const int len = PEFT_MAX(1, PEFT_MIN(b->lengths[bi], b->T));
            g->last[bi] = P + len - 1;
        }
    }
    /* dropout only while training; evaluation sees the whole adapter */
    g->training = backward;
    g->drop_seed = dropout_seed;

    /* embeddings into layer 0's input */
    kern_weight te, pe;
    const kern_weight *tok = adapter_tok_emb(ad, m, &te), *pos = learned_pos ? adapter_pos_emb(ad, m, &pe) : NULL;
    const bool enc = c->desc->encoder;
    kern_weight tt;
    const kern_weight *typ = ad && ad->ops && ad->ops->emb_weight ? ad->ops->emb_weight(ad, m, 3, &tt) : NULL;
    if (!typ) typ = &m->type_emb;
    float *x = enc ? g->xemb : g->L[0].xin;
    for (int i = 0; i < N; i++) {
        float *xr = x + (size_t)i * d;
        if (g->ids[i] < 0) memcpy(xr, ad->ops->input_row(ad, i % T), (size_t)d * sizeof(float));
        else if ((rc = kern_weight_row(tok, g->ids[i], xr))) goto fail;
        if (c->embed_scale > 0)
            for (int k = 0; k < d; k++) xr[k] *= c->embed_scale;
        if (learned_pos) {
            if ((rc = kern_weight_row(pos, g->pos[i] + c->pos_offset, g->dh))) goto fail;
            for (int k = 0; k < d; k++) xr[k] += g->dh[k];
        }
        if (m->type_emb.data) {   /* virtual rows and single texts: type 0 */
            const int bi = i / T, t = i % T;
            const int ty = g->types && t >= P ? g->types[(size_t)bi * b->T + (t - P)] : 0;
            if (ty < 0 || ty >= m->type_emb.rows) {
                rc = peft_fail(err, PEFT_ERR_INVALID, "token type %d outside 0..%lld", ty, (long long)m->type_emb.rows - 1);
                goto out;
            }
            if ((rc = kern_weight_row(typ, ty, g->dh))) goto fail;
            for (int k = 0; k < d; k++) xr[k] += g->dh[k];
        }
    }

    const block_env env = env_of(g);
    /* encoders: the embeddings' LayerNorm (the out norm slot) */
    if (enc) block_norm_fwd(&env, c->n_layer, NORM_ATTN, g->L[0].xin, g->meane, g->rstde, g->xemb, N);
    for (int l = 0; l < c->n_layer; l++) {
        block_acts A = acts_of(g, l);
        if ((rc = block_fwd(&env, l, &A))) goto fail;
    }
    if (enc) par_copy(g, g->hf, g->xfin, (size_t)N * d);   /* no norm after the last layer */
    else block_norm_fwd(&env, c->n_layer, 0, g->hf, g->meanf, g->rstdf, g->xfin, N);

    double total = 0;
    int count = 0;
    if (backward) par_zero(g, g->dhf, (size_t)N * d);
    const double t_loss = peft_time_s();
    rc = pairs              ? pair_loss(g, b, backward, grad_scale, &total, &count)
         : g->n_labels > 0 ? cls_loss(g, b, backward, grad_scale, &total, &count)
                            : lm_loss(g, backward, grad_scale, &total, &count);
    g->phase[TG_PH_LOSS] += peft_time_s() - t_loss;
    if (pairs && rc) {
        rc = peft_fail(err, rc, rc == PEFT_ERR_SHAPE ? "a contrastive batch of %d rows is not %d columns"
                                                     : "an anchor's positive is missing from its batch (%d rows, %d columns)",
                       g->B, b->n_cols);
        goto out;
    }
    if (rc < 0 || (g->n_labels > 0 && rc == PEFT_ERR_INVALID)) {
        rc = g->n_labels > 0 ? peft_fail(err, PEFT_ERR_INVALID, "a label is outside 0..%d", g->n_labels - 1)
                             : peft_fail(err, -rc, "a target token id is outside the vocabulary (%d)", g->V);
        goto out;
    }
    if (rc) goto fail;
    *loss_sum = total;
    *n_targets = count;
    if (!isfinite(total)) { rc = peft_fail(err, PEFT_ERR_NUMERIC, "the loss is not finite (%g)", total); goto out; }
    if (!backward || !ad) goto out;

    /* ---- backward ---- */
    if (enc) par_copy(g, g->dx, g->dhf, (size_t)N * d);
    else {
        par_zero(g, g->dx, (size_t)N * d);
        block_norm_bwd(&env, c->n_layer, 0, g->dx, g->dhf, g->xfin, g->meanf, g->rstdf);
    }
    /* below the lowest trained layer nothing is trained: stop there; the
     * lowest trained layer's input gradient is only needed for trained
     * embeddings, virtual tokens or layer-0 norms */
    block_grads G = {g->dx, g->dxmid, g->dh, g->dqkv, g->datt, g->dg, g->du, g->da, g->dqk};
    for (int l = c->n_layer - 1; l >= g->lowest; l--) {
        if ((rc = recompute_segment(g, &env, l))) goto fail;
        const block_acts A = acts_of(g, l);
        if ((rc = block_bwd(&env, l, &A, &G, l > g->lowest || g->need_dx0))) goto fail;
    }
    if (g->need_dx0 && enc) {
        /* through the embeddings' LayerNorm (and its parameters' gradients) */
        par_zero(g, g->dh, (size_t)N * d);
        block_norm_bwd(&env, c->n_layer, NORM_ATTN, g->dh, g->dx, g->xemb, g->meane, g->rstde);
        par_copy(g, g->dx, g->dh, (size_t)N * d);
    }
    if (g->need_dx0) {
        /* g->dx: the gradient of layer 0's input, row by row */
        float *gemb = ad->ops && ad->ops->emb_grad ? ad->ops->emb_grad(ad, 0) : NULL;
        float *gpos = ad->ops && ad->ops->emb_grad ? ad->ops->emb_grad(ad, 1) : NULL;
        float *gtype = ad->ops && ad->ops->emb_grad && m->type_emb.data ? ad->ops->emb_grad(ad, 3) : NULL;
        for (int i = 0; i < N; i++) {
            const float *dr = g->dx + (size_t)i * d;
            float *dst = NULL;
            if (g->ids[i] < 0) dst = ad->ops->input_grad(ad, i % T);
            else if (gemb && g->ids[i] != c->pad_token_id) dst = gemb + (size_t)g->ids[i] * d;
            const float es = c->embed_scale > 0 ? c->embed_scale : 1.0f;
            if (dst)
                for (int k = 0; k < d; k++) dst[k] += dr[k] * es;
            if (gpos)
                for (int k = 0; k < d; k++) gpos[(size_t)(g->pos[i] + c->pos_offset) * d + k] += dr[k];
            if (gtype) {
                const int bi = i / T, t = i % T;
                const int ty = g->types && t >= P ? g->types[(size_t)bi * b->T + (t - P)] : 0;
                for (int k = 0; k < d; k++) gtype[(size_t)ty * d + k] += dr[k];
            }
        }
    }
    adapter_refresh_bwd(ad, m);
    goto out;
fail:
    rc = peft_fail(err, rc, "%s: training step failed (%s)", m->path, peft_status_name(rc));
out:
    g->t_run += peft_time_s() - t_run;
    g->types = NULL;   /* tg_set_types is for one run */
    return rc;
}
