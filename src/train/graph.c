/* graph.c — training forward and backward (Llama family and GPT-2) with
 * LoRA on any subset of the linears.
 *
 * Per layer the forward keeps (N = B·T rows):
 *   xin (N,d)  norm1 stats  h1 (N,d)  qkv (N,qd+2kvd, q and k after RoPE)
 *   probs (B·n_head·T·T)  att (N,qd)  xmid (N,d)  norm2 stats  h2 (N,d)
 *   g, u, a (N,ff)  [GPT-2: g = pre-GELU, a = post-GELU, u unused]
 *   per LoRA module: xa (N,r) and, with dropout, its mask (N,in).
 * The backward walks the layers in reverse with shared gradient buffers.
 * The loss is computed in chunks of rows (logits for a chunk only), fused
 * with its backward into the final hidden state's gradient. */
#include "train/graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOSS_CHUNK 256

typedef struct {
    float *xin, *mean1, *rstd1, *h1, *qkv, *probs, *att, *xmid, *mean2, *rstd2, *h2, *g, *u, *a;
} layer_acts;

typedef struct {
    float *xa;          /* (N, r) */
    uint8_t *mask;      /* (N, in) or NULL */
} mod_acts;

struct train_graph {
    peft_model *m;
    adapter *ad;
    int B, T, N, nt;
    int T_cap;          /* T, N above are the current batch's; buffers fit T_cap */
    int lowest;         /* lowest layer with a LoRA module: the backward stops there */
    float drop;         /* dropout of this pass: the adapter's in training, 0 in evaluation */
    int d, qd, kvd, ldq, ff, V, max_in, max_out;
    layer_acts *L;
    mod_acts *M;        /* per adapter module */
    float *xfin, *meanf, *rstdf, *hf;
    /* backward buffers */
    float *dx, *dxmid, *dh, *dqkv, *datt, *dg, *du, *da, *dtmp, *dxa, *xd, *dhf;
    float *logits;      /* (LOSS_CHUNK, V) */
    float *mm_scratch, *attn_scratch;
    int32_t *pos;       /* (N) */
    float *arena;
    size_t arena_floats;
    uint8_t *mask_arena;
};

size_t tg_arena_bytes(const train_graph *g) { return g->arena_floats * sizeof(float); }

void tg_free(train_graph *g) {
    if (!g) return;
    free(g->arena);
    free(g->mask_arena);
    free(g->L);
    free(g->M);
    free(g);
}

/* Places every buffer at base (when non-NULL) and returns the floats used. */
static size_t layout(train_graph *g, int r, float *base) {
    const model_config *c = &g->m->cfg;
    const size_t N = (size_t)g->N, d = (size_t)g->d, ff = (size_t)g->ff, B = (size_t)g->B, T = (size_t)g->T;
    const bool gpt2 = c->arch == PEFT_ARCH_GPT2;
    size_t used = 0;
#define TAKE(n) (used += (n), base ? base + used - (n) : NULL)
    for (int l = 0; l < c->n_layer; l++) {
        layer_acts *L = &g->L[l];
        L->xin = TAKE(N * d);
        L->mean1 = TAKE(N);
        L->rstd1 = TAKE(N);
        L->h1 = TAKE(N * d);
        L->qkv = TAKE(N * g->ldq);
        L->probs = TAKE(B * c->n_head * T * T);
        L->att = TAKE(N * g->qd);
        L->xmid = TAKE(N * d);
        L->mean2 = TAKE(N);
        L->rstd2 = TAKE(N);
        L->h2 = TAKE(N * d);
        L->g = TAKE(N * ff);
        L->a = TAKE(N * ff);
        L->u = gpt2 ? NULL : TAKE(N * ff);
    }
    g->xfin = TAKE(N * d);
    g->hf = TAKE(N * d);
    g->meanf = TAKE(N);
    g->rstdf = TAKE(N);
    for (int i = 0; g->ad && i < g->ad->n_modules; i++) g->M[i].xa = TAKE(N * (size_t)r);
    g->dx = TAKE(N * d);
    g->dxmid = TAKE(N * d);
    g->dh = TAKE(N * d);
    g->dhf = TAKE(N * d);
    g->dqkv = TAKE(N * g->ldq);
    g->datt = TAKE(N * g->qd);
    g->dg = TAKE(N * ff);
    g->du = TAKE(N * ff);
    g->da = TAKE(N * ff);
    g->dtmp = TAKE(N * g->max_out);
    g->dxa = TAKE(N * (size_t)r);
    g->xd = TAKE(N * g->max_in);
    g->logits = TAKE((size_t)LOSS_CHUNK * g->V);
    g->mm_scratch = TAKE(PEFT_MAX(kern_matmul_scratch_floats(g->max_in, g->nt), kern_matmul_dx_scratch_floats(g->max_in, g->nt)));
    g->attn_scratch = TAKE(kern_attn_train_scratch_floats((int)T, 0, g->nt));
    g->pos = (int32_t *)TAKE(N);
#undef TAKE
    return used;
}

int tg_new(peft_model *m, adapter *a, int B, int T, train_graph **out, peft_err *err) {
    const model_config *c = &m->cfg;
    if (B <= 0 || T <= 1) return peft_fail(err, PEFT_ERR_INVALID, "batch %d x %d: need B >= 1 and T >= 2", B, T);
    if (T > c->n_ctx) return peft_fail(err, PEFT_ERR_INVALID, "sequence length %d exceeds the model's context %d", T, c->n_ctx);
    train_graph *g = peft_calloc(1, sizeof *g, err);
    if (!g) return PEFT_ERR_NOMEM;
    g->m = m;
    g->ad = a;
    g->B = B;
    g->T = T;
    g->T_cap = T;
    g->N = B * T;
    g->nt = m->ctx ? m->ctx->n_threads : 1;
    g->d = c->d_model;
    g->qd = c->n_head * c->head_dim;
    g->kvd = c->n_kv_head * c->head_dim;
    g->ldq = g->qd + 2 * g->kvd;
    g->ff = c->d_ff;
    g->V = c->vocab;
    g->max_in = PEFT_MAX(PEFT_MAX(g->d, g->ff), g->qd);
    g->max_out = PEFT_MAX(PEFT_MAX(g->d, g->ff), g->ldq);
    const size_t N = (size_t)g->N;
    int r = 0; /* largest rank: modules may differ (rank_pattern) */
    g->lowest = c->n_layer;
    for (int i = 0; a && i < a->n_modules; i++) {
        r = PEFT_MAX(r, a->mods[i].r);
        g->lowest = PEFT_MIN(g->lowest, a->mods[i].layer);
    }

    /* One arena; layout() is run twice, first to size it, then to place
     * every buffer, so the two can never disagree. */
    g->L = peft_calloc((size_t)c->n_layer, sizeof *g->L, err);
    g->M = peft_calloc((size_t)(a ? a->n_modules : 0) + 1, sizeof *g->M, err);
    if (!g->L || !g->M) { tg_free(g); return PEFT_ERR_NOMEM; }
    size_t total = layout(g, r, NULL);
    g->arena_floats = total;
    g->arena = peft_malloc(total * sizeof(float), err);
    if (!g->arena) {
        tg_free(g);
        return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for training activations (%.1f MiB for batch %d x %d)",
                         total * 4.0 / 1048576.0, B, T);
    }
    layout(g, r, g->arena);
    if (a && a->cfg.dropout > 0) {
        size_t bytes = 0;
        for (int i = 0; i < a->n_modules; i++) bytes += N * (size_t)a->mods[i].in;
        g->mask_arena = peft_malloc(bytes, err);
        if (!g->mask_arena) { tg_free(g); return PEFT_ERR_NOMEM; }
        uint8_t *q = g->mask_arena;
        for (int i = 0; i < a->n_modules; i++) { g->M[i].mask = q; q += N * (size_t)a->mods[i].in; }
    }
    *out = g;
    return 0;
}

/* ---- pieces ------------------------------------------------------------- */

static int mod_index(const train_graph *g, const lora_module *mod) { return (int)(mod - g->ad->mods); }

static const lora_module *module_at(const train_graph *g, int l, model_linear_role r) {
    return g->ad ? g->ad->slot[l * ROLE_N_LINEAR + r] : NULL;
}

/* y (N, out) = beta·y + x·Wᵀ + b (+ LoRA). */
static int lin_fwd(train_graph *g, int l, model_linear_role r, const float *x, float *y, int ldy, float beta) {
    const model_linear *lin = &g->m->layers[l].lin[r];
    int rc = kern_matmul(y, ldy, x, g->N, &lin->w, lin->b, beta, g->mm_scratch, g->nt);
    if (rc) return rc;
    const lora_module *mod = module_at(g, l, r);
    if (mod) {
        mod_acts *A = &g->M[mod_index(g, mod)];
        lora_fwd(mod, x, mod->in, g->N, g->drop > 0 ? A->mask : NULL, g->drop, g->xd, A->xa, y, ldy, g->nt);
    }
    return 0;
}

/* dx (N, in) += dy·W (+ LoRA's input gradient), LoRA grads accumulate.
 * dy (N, out) with row stride ldy. dx NULL: only the LoRA gradients (the
 * first layer's input gradient flows into the frozen embeddings). */
static int lin_bwd(train_graph *g, int l, model_linear_role r, const float *x, const float *dy, int ldy, float *dx) {
    const model_linear *lin = &g->m->layers[l].lin[r];
    const int out = (int)lin->w.rows;
    const float *dyc = dy;
    if (ldy != out) {
        /* kern_matmul_dx wants dy contiguous */
        for (int i = 0; i < g->N; i++) memcpy(g->dtmp + (size_t)i * out, dy + (size_t)i * ldy, (size_t)out * sizeof(float));
        dyc = g->dtmp;
    }
    int rc = dx ? kern_matmul_dx(dx, dyc, g->N, &lin->w, g->mm_scratch, g->nt) : 0;
    if (rc) return rc;
    const lora_module *mod = module_at(g, l, r);
    if (mod) {
        mod_acts *A = &g->M[mod_index(g, mod)];
        lora_bwd(mod, x, mod->in, g->N, g->drop > 0 ? A->mask : NULL, g->drop, g->xd, A->xa, dyc, out, g->dxa, dx, mod->in, g->nt);
    }
    return 0;
}

/* Attention over each row of the batch, segment by segment (packed rows
 * hold several examples that must not see each other). */
static void attn_fwd(train_graph *g, layer_acts *L, const data_batch *b) {
    const model_config *c = &g->m->cfg;
    const int T = g->T, hd = c->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int bi = 0; bi < g->B; bi++) {
        const int32_t *seg = b->segments + (size_t)bi * T;
        float *probs = L->probs + (size_t)bi * c->n_head * T * T;
        for (int s0 = 0; s0 < T;) {
            int s1 = s0 + 1;
            while (s1 < T && seg[s1] == seg[s0]) s1++;
            const size_t row = (size_t)bi * T + s0;
            kern_attn_train_fwd(L->att + row * g->qd, probs, L->qkv + row * g->ldq, g->ldq, L->qkv + row * g->ldq + g->qd,
                                L->qkv + row * g->ldq + g->qd + g->kvd, g->ldq, s1 - s0, 0, c->n_head, c->n_kv_head, hd,
                                scale, g->nt);
            probs += (size_t)c->n_head * (s1 - s0) * (s1 - s0);
            s0 = s1;
        }
    }
}

static void attn_bwd(train_graph *g, layer_acts *L, const data_batch *b) {
    const model_config *c = &g->m->cfg;
    const int T = g->T, hd = c->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int bi = 0; bi < g->B; bi++) {
        const int32_t *seg = b->segments + (size_t)bi * T;
        const float *probs = L->probs + (size_t)bi * c->n_head * T * T;
        for (int s0 = 0; s0 < T;) {
            int s1 = s0 + 1;
            while (s1 < T && seg[s1] == seg[s0]) s1++;
            const size_t row = (size_t)bi * T + s0;
            const float *q = L->qkv + row * g->ldq;
            float *dq = g->dqkv + row * g->ldq;
            kern_attn_train_bwd(dq, g->ldq, dq + g->qd, dq + g->qd + g->kvd, g->ldq, g->datt + row * g->qd, probs, q,
                                g->ldq, q + g->qd, q + g->qd + g->kvd, g->ldq, s1 - s0, 0, c->n_head, c->n_kv_head, hd,
                                scale, g->attn_scratch, g->nt);
            probs += (size_t)c->n_head * (s1 - s0) * (s1 - s0);
            s0 = s1;
        }
    }
}

static void make_masks(train_graph *g, uint64_t seed) {
    const float p = g->ad->cfg.dropout;
    for (int i = 0; i < g->ad->n_modules; i++) {
        peft_rng rng;
        peft_rng_seed(&rng, seed * 1000003ULL + (uint64_t)i);
        const size_t n = (size_t)g->N * g->ad->mods[i].in;
        for (size_t k = 0; k < n; k++) g->M[i].mask[k] = peft_rng_uniform(&rng) >= p;
    }
}

/* ---- the pass ------------------------------------------------------------ */

int tg_run(train_graph *g, const data_batch *b, bool backward, float grad_scale,
           uint64_t dropout_seed, double *loss_sum, int *n_targets, peft_err *err) {
    peft_model *m = g->m;
    const model_config *c = &m->cfg;
    const bool gpt2 = c->arch == PEFT_ARCH_GPT2;
    const int d = g->d, ff = g->ff, half = c->rope_dim / 2;
    const float eps = c->norm_eps;
    int rc = 0;
    if (b->B != g->B || b->T > g->T_cap || b->T < 2)
        return peft_fail(err, PEFT_ERR_SHAPE, "batch is %d x %d, the graph was built for %d x (2..%d)", b->B, b->T, g->B,
                         g->T_cap);
    /* Batches may be shorter than the graph's capacity (padding trimmed to
     * the longest row): every buffer fits, only the row length changes. */
    g->T = b->T;
    g->N = g->B * b->T;
    const int N = g->N;
    for (int i = 0; i < N; i++) {
        if (b->inputs[i] < 0 || b->inputs[i] >= c->vocab)
            return peft_fail(err, PEFT_ERR_INVALID, "token id %d out of range [0, %d)", b->inputs[i], c->vocab);
        if (b->positions[i] < 0 || b->positions[i] >= c->n_ctx)
            return peft_fail(err, PEFT_ERR_INVALID, "position %d outside the context %d", b->positions[i], c->n_ctx);
        g->pos[i] = b->positions[i];
    }
    /* dropout only while training; evaluation sees the whole adapter */
    g->drop = (g->ad && backward) ? g->ad->cfg.dropout : 0.0f;
    if (g->drop > 0) make_masks(g, dropout_seed);

    /* embeddings into layer 0's input */
    float *x = g->L[0].xin;
    for (int i = 0; i < N; i++) {
        if ((rc = kern_weight_row(&m->tok_emb, b->inputs[i], x + (size_t)i * d))) goto fail;
        if (gpt2) {
            if ((rc = kern_weight_row(&m->pos_emb, g->pos[i], g->dh))) goto fail;
            for (int k = 0; k < d; k++) x[(size_t)i * d + k] += g->dh[k];
        }
    }

    for (int l = 0; l < c->n_layer; l++) {
        layer_acts *L = &g->L[l];
        const model_layer *Ly = &m->layers[l];
        if (gpt2) kern_layernorm_fwd(L->h1, L->mean1, L->rstd1, L->xin, Ly->attn_norm_w, Ly->attn_norm_b, N, d, eps);
        else kern_rmsnorm_fwd(L->h1, L->rstd1, L->xin, Ly->attn_norm_w, N, d, eps);
        if (gpt2) {
            if ((rc = lin_fwd(g, l, ROLE_QKV, L->h1, L->qkv, g->ldq, 0))) goto fail;
        } else {
            if ((rc = lin_fwd(g, l, ROLE_Q, L->h1, L->qkv, g->ldq, 0)) ||
                (rc = lin_fwd(g, l, ROLE_K, L->h1, L->qkv + g->qd, g->ldq, 0)) ||
                (rc = lin_fwd(g, l, ROLE_V, L->h1, L->qkv + g->qd + g->kvd, g->ldq, 0)))
                goto fail;
            kern_rope(L->qkv, g->ldq, g->pos, N, c->n_head, c->head_dim, half, m->rope_cos, m->rope_sin, false);
            kern_rope(L->qkv + g->qd, g->ldq, g->pos, N, c->n_kv_head, c->head_dim, half, m->rope_cos, m->rope_sin, false);
        }
        attn_fwd(g, L, b);
        memcpy(L->xmid, L->xin, (size_t)N * d * sizeof(float));
        if ((rc = lin_fwd(g, l, ROLE_O, L->att, L->xmid, d, 1.0f))) goto fail;
        if (gpt2) kern_layernorm_fwd(L->h2, L->mean2, L->rstd2, L->xmid, Ly->ffn_norm_w, Ly->ffn_norm_b, N, d, eps);
        else kern_rmsnorm_fwd(L->h2, L->rstd2, L->xmid, Ly->ffn_norm_w, N, d, eps);
        if (gpt2) {
            if ((rc = lin_fwd(g, l, ROLE_UP, L->h2, L->g, ff, 0))) goto fail;
            kern_gelu_tanh_fwd(L->a, L->g, (int64_t)N * ff, g->nt);
        } else {
            if ((rc = lin_fwd(g, l, ROLE_GATE, L->h2, L->g, ff, 0)) || (rc = lin_fwd(g, l, ROLE_UP, L->h2, L->u, ff, 0)))
                goto fail;
            kern_swiglu_fwd(L->a, L->g, L->u, (int64_t)N * ff, g->nt);
        }
        float *xout = l + 1 < c->n_layer ? g->L[l + 1].xin : g->xfin;
        memcpy(xout, L->xmid, (size_t)N * d * sizeof(float));
        if ((rc = lin_fwd(g, l, ROLE_DOWN, L->a, xout, d, 1.0f))) goto fail;
    }
    if (gpt2) kern_layernorm_fwd(g->hf, g->meanf, g->rstdf, g->xfin, m->out_norm_w, m->out_norm_b, N, d, eps);
    else kern_rmsnorm_fwd(g->hf, g->rstdf, g->xfin, m->out_norm_w, N, d, eps);

    /* loss, chunk by chunk, fused with its backward into dhf */
    double total = 0;
    int count = 0;
    if (backward) memset(g->dhf, 0, (size_t)N * d * sizeof(float));
    for (int r0 = 0; r0 < N; r0 += LOSS_CHUNK) {
        const int n = PEFT_MIN(LOSS_CHUNK, N - r0);
        bool any = false;
        for (int i = 0; i < n && !any; i++) any = b->targets[r0 + i] != -100;
        if (!any) continue;
        if ((rc = kern_matmul(g->logits, g->V, g->hf + (size_t)r0 * d, n, &m->lm_head, NULL, 0, g->mm_scratch, g->nt)))
            goto fail;
        float ls = 0;
        int cnt = 0;
        if ((rc = kern_xent_fwd_bwd(&ls, &cnt, g->logits, g->logits, b->targets + r0, n, g->V, grad_scale, g->nt))) {
            rc = peft_fail(err, rc, "a target token id is outside the vocabulary (%d)", g->V);
            goto out;
        }
        total += ls;
        count += cnt;
        if (backward && (rc = kern_matmul_dx(g->dhf + (size_t)r0 * d, g->logits, n, &m->lm_head, g->mm_scratch, g->nt)))
            goto fail;
    }
    *loss_sum = total;
    *n_targets = count;
    if (!isfinite(total)) { rc = peft_fail(err, PEFT_ERR_NUMERIC, "the loss is not finite (%g)", total); goto out; }
    if (!backward || !g->ad) goto out;

    /* ---- backward ---- */
    memset(g->dx, 0, (size_t)N * d * sizeof(float));
    if (gpt2) kern_layernorm_bwd(g->dx, NULL, NULL, g->dhf, g->xfin, m->out_norm_w, g->meanf, g->rstdf, N, d);
    else kern_rmsnorm_bwd(g->dx, NULL, g->dhf, g->xfin, m->out_norm_w, g->rstdf, N, d);
    /* below the lowest adapted layer nothing is trained: stop there */
    for (int l = c->n_layer - 1; l >= g->lowest; l--) {
        layer_acts *L = &g->L[l];
        const model_layer *Ly = &m->layers[l];
        const size_t nff = (size_t)N * ff * sizeof(float);
        /* MLP: xout = xmid + down(act) */
        memcpy(g->dxmid, g->dx, (size_t)N * d * sizeof(float));
        memset(g->da, 0, nff);
        if ((rc = lin_bwd(g, l, ROLE_DOWN, L->a, g->dx, d, g->da))) goto fail;
        memset(g->dh, 0, (size_t)N * d * sizeof(float));
        if (gpt2) {
            memset(g->dg, 0, nff);
            kern_gelu_tanh_bwd(g->dg, g->da, L->g, (int64_t)N * ff, g->nt);
            if ((rc = lin_bwd(g, l, ROLE_UP, L->h2, g->dg, ff, g->dh))) goto fail;
            kern_layernorm_bwd(g->dxmid, NULL, NULL, g->dh, L->xmid, Ly->ffn_norm_w, L->mean2, L->rstd2, N, d);
        } else {
            memset(g->dg, 0, nff);
            memset(g->du, 0, nff);
            kern_swiglu_bwd(g->dg, g->du, g->da, L->g, L->u, (int64_t)N * ff, g->nt);
            if ((rc = lin_bwd(g, l, ROLE_GATE, L->h2, g->dg, ff, g->dh)) || (rc = lin_bwd(g, l, ROLE_UP, L->h2, g->du, ff, g->dh)))
                goto fail;
            kern_rmsnorm_bwd(g->dxmid, NULL, g->dh, L->xmid, Ly->ffn_norm_w, L->rstd2, N, d);
        }
        /* attention: xmid = xin + o(att) */
        memcpy(g->dx, g->dxmid, (size_t)N * d * sizeof(float));
        memset(g->datt, 0, (size_t)N * g->qd * sizeof(float));
        if ((rc = lin_bwd(g, l, ROLE_O, L->att, g->dxmid, d, g->datt))) goto fail;
        memset(g->dqkv, 0, (size_t)N * g->ldq * sizeof(float));
        attn_bwd(g, L, b);
        /* the lowest adapted layer's input gradient is not needed */
        float *dh = l > g->lowest ? g->dh : NULL;
        if (dh) memset(dh, 0, (size_t)N * d * sizeof(float));
        if (gpt2) {
            if ((rc = lin_bwd(g, l, ROLE_QKV, L->h1, g->dqkv, g->ldq, dh))) goto fail;
            if (dh) kern_layernorm_bwd(g->dx, NULL, NULL, dh, L->xin, Ly->attn_norm_w, L->mean1, L->rstd1, N, d);
        } else {
            kern_rope(g->dqkv, g->ldq, g->pos, N, c->n_head, c->head_dim, half, m->rope_cos, m->rope_sin, true);
            kern_rope(g->dqkv + g->qd, g->ldq, g->pos, N, c->n_kv_head, c->head_dim, half, m->rope_cos, m->rope_sin, true);
            if ((rc = lin_bwd(g, l, ROLE_Q, L->h1, g->dqkv, g->ldq, dh)) ||
                (rc = lin_bwd(g, l, ROLE_K, L->h1, g->dqkv + g->qd, g->ldq, dh)) ||
                (rc = lin_bwd(g, l, ROLE_V, L->h1, g->dqkv + g->qd + g->kvd, g->ldq, dh)))
                goto fail;
            if (dh) kern_rmsnorm_bwd(g->dx, NULL, dh, L->xin, Ly->attn_norm_w, L->rstd1, N, d);
        }
    }
    goto out;
fail:
    rc = peft_fail(err, rc, "%s: training step failed (%s)", m->path, peft_status_name(rc));
out:
    return rc;
}
