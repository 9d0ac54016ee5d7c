/* test_kernels_grad.c — the training kernels' backward passes against
 * central finite differences of their forwards (float kernels, double loss),
 * against PyTorch autograd (tests/fixtures/kernels, tools/make_kernel_fixtures.py),
 * and kern_matmul_dx against a naive double loop on the dequantized weight.
 *
 * Every FD check uses the scalar loss L = Σ r·y for a random projection r of
 * the output y, so the analytic input gradient is the backward applied to
 * dy = r. The reported error is max|analytic - fd| / max|fd| over all
 * perturbed elements. */
#include "formats/safetensors.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "test.h"

#define FD_EPS 1e-3
#define FD_TOL 1e-3

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

static void fill_normal(float *x, size_t n, peft_rng *r, float scale, float offset) {
    for (size_t i = 0; i < n; i++) x[i] = offset + scale * peft_rng_normal(r);
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Central differences of f with respect to x (rows, cols, row stride ldx)
 * against the analytic gradient g (row stride ldg). The step is the one float
 * actually takes (x ± eps rounded). Returns max|g - fd| / max|fd|. */
static double fd_check(const char *what, loss_fn f, void *ctx, float *x, int rows, int cols,
                       int ldx, const float *g, int ldg) {
    double worst = 0, big = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float *p = x + (size_t)i * ldx + j, save = *p;
            float xp = (float)(save + FD_EPS), xm = (float)(save - FD_EPS);
            *p = xp;
            double lp = f(ctx);
            *p = xm;
            double lm = f(ctx);
            *p = save;
            double fd = (lp - lm) / ((double)xp - (double)xm);
            double d = fabs(fd - (double)g[(size_t)i * ldg + j]);
            if (d > worst || d != d) worst = d;
            if (fabs(fd) > big) big = fabs(fd);
        }
    double rel = worst / (big > 1e-12 ? big : 1e-12);
    printf("    %-40s max|g-fd| = %.2e  max|fd| = %.2e  rel = %.2e\n", what, worst, big, rel);
    return rel;
}

/* ---- RMSNorm / LayerNorm ------------------------------------------------ */

typedef struct {
    int T, C;
    float *x, *w, *b, *y, *r;
    bool layer;
} norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    if (c->layer) kern_layernorm_fwd(c->y, NULL, NULL, c->x, c->w, c->b, c->T, c->C, 1e-5f, 2);
    else kern_rmsnorm_fwd(c->y, NULL, c->x, c->w, c->T, c->C, 1e-5f, 2);
    return dot_d(c->y, c->r, (size_t)c->T * c->C);
}

static void norm_case(bool layer, int T, int C, uint64_t seed) {
    peft_rng rng;
    peft_rng_seed(&rng, seed);
    norm_ctx c = {T, C, falloc((size_t)T * C), falloc(C), falloc(C), falloc((size_t)T * C),
                  falloc((size_t)T * C), layer};
    fill_normal(c.x, (size_t)T * C, &rng, 1.0f, 0.3f);
    fill_normal(c.w, C, &rng, 0.3f, 1.0f);
    fill_normal(c.b, C, &rng, 0.3f, 0.0f);
    fill_normal(c.r, (size_t)T * C, &rng, 1.0f, 0.0f);
    float *mean = falloc(T), *rstd = falloc(T), *dx = falloc((size_t)T * C), *dw = falloc(C),
          *db = falloc(C), *dx2 = falloc((size_t)T * C);
    /* prefilled gradients check that the backward accumulates */
    for (int i = 0; i < T * C; i++) dx[i] = dx2[i] = 0.5f;
    for (int i = 0; i < C; i++) dw[i] = db[i] = -0.25f;
    if (layer) {
        kern_layernorm_fwd(c.y, mean, rstd, c.x, c.w, c.b, T, C, 1e-5f, 2);
        kern_layernorm_bwd(dx, dw, db, c.r, c.x, c.w, mean, rstd, T, C, 2);
        kern_layernorm_bwd(dx2, NULL, NULL, c.r, c.x, c.w, mean, rstd, T, C, 2);
    } else {
        kern_rmsnorm_fwd(c.y, rstd, c.x, c.w, T, C, 1e-5f, 2);
        kern_rmsnorm_bwd(dx, dw, c.r, c.x, c.w, rstd, T, C, 2);
        kern_rmsnorm_bwd(dx2, NULL, c.r, c.x, c.w, rstd, T, C, 2);
    }
    CHECK(memcmp(dx, dx2, sizeof(float) * (size_t)T * C) == 0); /* frozen w: same dx */
    for (int i = 0; i < T * C; i++) dx[i] -= 0.5f;
    for (int i = 0; i < C; i++) { dw[i] += 0.25f; db[i] += 0.25f; }
    char name[64];
    snprintf(name, sizeof name, "%s T=%d C=%d dx", layer ? "layernorm" : "rmsnorm", T, C);
    CHECK(fd_check(name, norm_loss, &c, c.x, T, C, C, dx, C) <= FD_TOL);
    snprintf(name, sizeof name, "%s T=%d C=%d dw", layer ? "layernorm" : "rmsnorm", T, C);
    CHECK(fd_check(name, norm_loss, &c, c.w, 1, C, C, dw, C) <= FD_TOL);
    if (layer) {
        snprintf(name, sizeof name, "layernorm T=%d C=%d db", T, C);
        CHECK(fd_check(name, norm_loss, &c, c.b, 1, C, C, db, C) <= FD_TOL);
    }
    free(c.x); free(c.w); free(c.b); free(c.y); free(c.r);
    free(mean); free(rstd); free(dx); free(dw); free(db); free(dx2);
}

static void rmsnorm_bwd_matches_fd(void) {
    norm_case(false, 5, 16, 1);
    norm_case(false, 1, 8, 2);
}

static void layernorm_bwd_matches_fd(void) {
    norm_case(true, 5, 16, 3);
    norm_case(true, 1, 8, 4);
}

/* ---- RoPE ----------------------------------------------------------------- */

typedef struct {
    int T, H, hd, ld;
    float *x, *y, *r, *cos_t, *sin_t;
    const int32_t *pos;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    memcpy(c->y, c->x, sizeof(float) * (size_t)c->T * c->ld);
    kern_rope(c->y, c->ld, c->pos, c->T, c->H, c->hd, c->hd / 2, c->cos_t, c->sin_t, false, 2);
    double s = 0;
    for (int t = 0; t < c->T; t++)
        s += dot_d(c->y + (size_t)t * c->ld, c->r + (size_t)t * c->ld, (size_t)c->H * c->hd);
    return s;
}

static void rope_inverse_is_exact_backward(void) {
    const int T = 5, H = 3, hd = 8, half = 4, ld = H * hd + 3, n_pos = 64;
    const int32_t pos[5] = {0, 3, 1, 63, 17};
    peft_rng rng;
    peft_rng_seed(&rng, 5);
    float inv_freq[4];
    for (int i = 0; i < half; i++) inv_freq[i] = powf(10000.0f, -(float)(2 * i) / hd);
    rope_ctx c = {T, H, hd, ld, falloc((size_t)T * ld), falloc((size_t)T * ld),
                  falloc((size_t)T * ld), falloc((size_t)n_pos * half),
                  falloc((size_t)n_pos * half), pos};
    kern_rope_table(c.cos_t, c.sin_t, n_pos, half, inv_freq);
    fill_normal(c.x, (size_t)T * ld, &rng, 1.0f, 0.0f);
    fill_normal(c.r, (size_t)T * ld, &rng, 1.0f, 0.0f);
    /* gradient of Σ r·rope(x) is rope⁻¹(r) */
    float *g = falloc((size_t)T * ld);
    memcpy(g, c.r, sizeof(float) * (size_t)T * ld);
    kern_rope(g, ld, pos, T, H, hd, half, c.cos_t, c.sin_t, true, 2);
    CHECK(fd_check("rope (inverse = backward) dx", rope_loss, &c, c.x, T, H * hd, ld, g, ld) <=
          FD_TOL);
    /* and the inverse undoes the forward */
    memcpy(c.y, c.x, sizeof(float) * (size_t)T * ld);
    kern_rope(c.y, ld, pos, T, H, hd, half, c.cos_t, c.sin_t, false, 2);
    kern_rope(c.y, ld, pos, T, H, hd, half, c.cos_t, c.sin_t, true, 2);
    CHECK(test_max_abs_diff(c.y, c.x, (size_t)T * ld) <= 1e-6);
    free(c.x); free(c.y); free(c.r); free(c.cos_t); free(c.sin_t); free(g);
}

/* ---- activations ---------------------------------------------------------- */

typedef struct {
    int n;
    float *g, *u, *y, *r;
    bool gelu;
} act_ctx;

static double act_loss(void *p) {
    act_ctx *c = p;
    if (c->gelu) kern_gelu_tanh_fwd(c->y, c->g, c->n, 1);
    else kern_swiglu_fwd(c->y, c->g, c->u, c->n, 1);
    return dot_d(c->y, c->r, (size_t)c->n);
}

static void swiglu_bwd_matches_fd(void) {
    const int n = 48;
    peft_rng rng;
    peft_rng_seed(&rng, 6);
    act_ctx c = {n, falloc(n), falloc(n), falloc(n), falloc(n), false};
    for (int i = 0; i < n; i++) c.g[i] = -8.0f + 16.0f * (float)i / (n - 1); /* incl. saturation */
    fill_normal(c.u, n, &rng, 1.0f, 0.0f);
    fill_normal(c.r, n, &rng, 1.0f, 0.0f);
    float *dg = falloc(n), *du = falloc(n);
    kern_swiglu_bwd(dg, du, c.r, c.g, c.u, n, 1);
    kern_swiglu_bwd(dg, du, c.r, c.g, c.u, n, 1); /* accumulates: twice = 2× */
    for (int i = 0; i < n; i++) { dg[i] *= 0.5f; du[i] *= 0.5f; }
    CHECK(fd_check("swiglu dg", act_loss, &c, c.g, 1, n, n, dg, n) <= FD_TOL);
    CHECK(fd_check("swiglu du", act_loss, &c, c.u, 1, n, n, du, n) <= FD_TOL);
    free(c.g); free(c.u); free(c.y); free(c.r); free(dg); free(du);
}

static double gelu_erf_loss(void *p) {
    act_ctx *c = p;
    kern_gelu_erf_fwd(c->y, c->g, c->n, 1);
    return dot_d(c->y, c->r, (size_t)c->n);
}

static void gelu_erf_matches_libm_and_fd(void) {
    const int n = 48;
    peft_rng rng;
    peft_rng_seed(&rng, 9);
    act_ctx c = {n, falloc(n), NULL, falloc(n), falloc(n), false};
    for (int i = 0; i < n; i++) c.g[i] = -6.0f + 12.0f * (float)i / (n - 1);
    fill_normal(c.r, n, &rng, 1.0f, 0.0f);
    kern_gelu_erf_fwd(c.y, c.g, n, 1);
    double worst = 0;
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs(c.y[i] - 0.5 * c.g[i] * (1 + erf(c.g[i] / sqrt(2.0)))));
    CHECK(worst <= 1e-6);
    float *dx = falloc(n);
    kern_gelu_erf_bwd(dx, c.r, c.g, n, 1);
    CHECK(fd_check("gelu_erf dx", gelu_erf_loss, &c, c.g, 1, n, n, dx, n) <= FD_TOL);
    free(c.g); free(c.y); free(c.r); free(dx);
}

static double geglu_loss(void *p) {
    act_ctx *c = p;
    kern_geglu_tanh_fwd(c->y, c->g, c->u, c->n, 1);
    return dot_d(c->y, c->r, (size_t)c->n);
}

static void geglu_tanh_bwd_matches_fd(void) {
    const int n = 48;
    peft_rng rng;
    peft_rng_seed(&rng, 8);
    act_ctx c = {n, falloc(n), falloc(n), falloc(n), falloc(n), false};
    for (int i = 0; i < n; i++) c.g[i] = -6.0f + 12.0f * (float)i / (n - 1);
    fill_normal(c.u, n, &rng, 1.0f, 0.0f);
    fill_normal(c.r, n, &rng, 1.0f, 0.0f);
    float *dg = falloc(n), *du = falloc(n);
    kern_geglu_tanh_bwd(dg, du, c.r, c.g, c.u, n, 1);
    /* the forward: gelu_tanh(g)·u */
    kern_geglu_tanh_fwd(c.y, c.g, c.u, n, 1);
    float *ref = falloc(n);
    kern_gelu_tanh_fwd(ref, c.g, n, 1);
    double worst = 0;
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs(c.y[i] - ref[i] * c.u[i]));
    CHECK(worst <= 1e-6);
    CHECK(fd_check("geglu dg", geglu_loss, &c, c.g, 1, n, n, dg, n) <= FD_TOL);
    CHECK(fd_check("geglu du", geglu_loss, &c, c.u, 1, n, n, du, n) <= FD_TOL);
    free(c.g); free(c.u); free(c.y); free(c.r); free(dg); free(du); free(ref);
}

static void gelu_tanh_bwd_matches_fd(void) {
    const int n = 48;
    peft_rng rng;
    peft_rng_seed(&rng, 7);
    act_ctx c = {n, falloc(n), NULL, falloc(n), falloc(n), true};
    for (int i = 0; i < n; i++) c.g[i] = -6.0f + 12.0f * (float)i / (n - 1);
    fill_normal(c.r, n, &rng, 1.0f, 0.0f);
    float *dx = falloc(n);
    for (int i = 0; i < n; i++) dx[i] = 1.0f;
    kern_gelu_tanh_bwd(dx, c.r, c.g, n, 1);
    for (int i = 0; i < n; i++) dx[i] -= 1.0f;
    CHECK(fd_check("gelu_tanh dx", act_loss, &c, c.g, 1, n, n, dx, n) <= FD_TOL);
    free(c.g); free(c.y); free(c.r); free(dx);
}

/* ---- training attention --------------------------------------------------- */

typedef struct {
    int T, P, H, KV, hd, ldq, ldkv, threads;
    kern_attn_opts o;
    float *q, *k, *v, *out, *lse, *r;
} attn_ctx;

static double attn_loss(void *p) {
    attn_ctx *c = p;
    kern_flash_attn_fwd(c->out, c->lse, c->q, c->ldq, c->k, c->v, c->ldkv, c->T, c->P, c->H,
                        c->KV, c->hd, &c->o, c->threads);
    return dot_d(c->out, c->r, (size_t)c->T * c->H * c->hd);
}

/* dq, dk, dv for dout = c->r, with row strides lddq, lddkv, accumulated onto
 * a prefill of 0.25 that is then removed. */
static void attn_grads(attn_ctx *c, int threads, float *dq, int lddq, float *dk, float *dv,
                       int lddkv) {
    const int L = c->P + c->T;
    for (size_t i = 0; i < (size_t)c->T * lddq; i++) dq[i] = 0.25f;
    for (size_t i = 0; i < (size_t)L * lddkv; i++) dk[i] = dv[i] = 0.25f;
    float *scratch = falloc(kern_flash_attn_scratch_floats(c->T, c->P, c->H, c->hd, threads));
    kern_flash_attn_fwd(c->out, c->lse, c->q, c->ldq, c->k, c->v, c->ldkv, c->T, c->P, c->H,
                        c->KV, c->hd, &c->o, threads);
    kern_flash_attn_bwd(dq, lddq, dk, dv, lddkv, c->r, c->out, c->lse, c->q, c->ldq, c->k, c->v,
                        c->ldkv, c->T, c->P, c->H, c->KV, c->hd, &c->o, scratch, threads);
    for (size_t i = 0; i < (size_t)c->T * lddq; i++) dq[i] -= 0.25f;
    for (size_t i = 0; i < (size_t)L * lddkv; i++) { dk[i] -= 0.25f; dv[i] -= 0.25f; }
    free(scratch);
}

/* softcap > 0: Gemma 2's score soft-capping; window > 0: a sliding window
 * (the P prefix rows stay visible) */
static void attn_case_full(int T, int P, int H, int KV, int hd, float softcap, int window, bool bidir) {
    const int L = P + T, qd = H * hd, kvd = KV * hd;
    attn_ctx c = {T, P, H, KV, hd, qd + 5, kvd + 3, 1, {1.0f / sqrtf((float)hd), softcap, window, P, bidir}, NULL, NULL,
                  NULL, NULL, NULL, NULL};
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)(1000 + T * 100 + P * 10 + KV));
    c.q = falloc((size_t)T * c.ldq);
    c.k = falloc((size_t)L * c.ldkv);
    c.v = falloc((size_t)L * c.ldkv);
    c.out = falloc((size_t)T * qd);
    c.lse = falloc((size_t)H * T);
    c.r = falloc((size_t)T * qd);
    fill_normal(c.q, (size_t)T * c.ldq, &rng, 1.0f, 0.0f);
    fill_normal(c.k, (size_t)L * c.ldkv, &rng, 1.0f, 0.0f);
    fill_normal(c.v, (size_t)L * c.ldkv, &rng, 1.0f, 0.0f);
    fill_normal(c.r, (size_t)T * qd, &rng, 1.0f, 0.0f);
    const int lddq = qd + 2, lddkv = kvd + 1;
    float *dq = falloc((size_t)T * lddq), *dk = falloc((size_t)L * lddkv),
          *dv = falloc((size_t)L * lddkv);
    attn_grads(&c, 1, dq, lddq, dk, dv, lddkv);

    /* every row's log-sum-exp is at least its largest visible score: finite */
    int bad_lse = 0;
    for (int i = 0; i < H * T; i++) bad_lse += !isfinite(c.lse[i]);
    CHECK_EQ_INT(bad_lse, 0);

    char name[96];
    if (L == 1) {
        /* one key: the softmax is 1 whatever q and k are, dq = dk = 0 up to
         * the rounding of D = rowsum(dO ⊙ O) against dO·vᵀ */
        double big = 0;
        for (int e = 0; e < qd; e++) big = fmax(big, fabs(dq[e]));
        for (int e = 0; e < kvd; e++) big = fmax(big, fabs(dk[e]));
        CHECK(big <= 1e-6);
    } else {
        snprintf(name, sizeof name, "attn T=%d P=%d H=%d KV=%d hd=%d cap=%g win=%d dq", T, P, H, KV, hd, softcap, window);
        CHECK(fd_check(name, attn_loss, &c, c.q, T, qd, c.ldq, dq, lddq) <= FD_TOL);
        snprintf(name, sizeof name, "attn T=%d P=%d H=%d KV=%d hd=%d cap=%g win=%d dk", T, P, H, KV, hd, softcap, window);
        CHECK(fd_check(name, attn_loss, &c, c.k, L, kvd, c.ldkv, dk, lddkv) <= FD_TOL);
    }
    snprintf(name, sizeof name, "attn T=%d P=%d H=%d KV=%d hd=%d cap=%g win=%d dv", T, P, H, KV, hd, softcap, window);
    CHECK(fd_check(name, attn_loss, &c, c.v, L, kvd, c.ldkv, dv, lddkv) <= FD_TOL);
    /* padding columns of the gradients are untouched */
    double pad = 0;
    for (int t = 0; t < T; t++)
        for (int j = qd; j < lddq; j++) pad = fmax(pad, fabs(dq[(size_t)t * lddq + j]));
    for (int l = 0; l < L; l++)
        for (int j = kvd; j < lddkv; j++)
            pad = fmax(pad, fmax(fabs(dk[(size_t)l * lddkv + j]), fabs(dv[(size_t)l * lddkv + j])));
    CHECK(pad == 0);

    /* bitwise the same on 3 threads (kv heads own their dk/dv) */
    float *dq3 = falloc((size_t)T * lddq), *dk3 = falloc((size_t)L * lddkv),
          *dv3 = falloc((size_t)L * lddkv), *out1 = falloc((size_t)T * qd);
    attn_grads(&c, 1, dq, lddq, dk, dv, lddkv);
    memcpy(out1, c.out, sizeof(float) * (size_t)T * qd);
    attn_grads(&c, 3, dq3, lddq, dk3, dv3, lddkv);
    CHECK(memcmp(out1, c.out, sizeof(float) * (size_t)T * qd) == 0);
    CHECK(memcmp(dq, dq3, sizeof(float) * (size_t)T * lddq) == 0);
    CHECK(memcmp(dk, dk3, sizeof(float) * (size_t)L * lddkv) == 0);
    CHECK(memcmp(dv, dv3, sizeof(float) * (size_t)L * lddkv) == 0);

    free(c.q); free(c.k); free(c.v); free(c.out); free(c.lse); free(c.r);
    free(dq); free(dk); free(dv); free(dq3); free(dk3); free(dv3); free(out1);
}

static void attn_case_opts(int T, int P, int H, int KV, int hd, float softcap, int window) {
    attn_case_full(T, P, H, KV, hd, softcap, window, false);
}
static void attn_case(int T, int P, int H, int KV, int hd) { attn_case_opts(T, P, H, KV, hd, 0.0f, 0); }

static void attn_train_gqa_no_prefix_matches_fd(void) { attn_case(5, 0, 4, 2, 8); }
static void attn_train_gqa_prefix_matches_fd(void) { attn_case(5, 3, 4, 2, 8); }
static void attn_train_single_token_matches_fd(void) {
    attn_case(1, 0, 4, 2, 8);
    attn_case(1, 3, 4, 2, 8);
}
static void attn_train_mha_and_mqa_match_fd(void) {
    attn_case(6, 2, 4, 4, 4);
    attn_case(5, 3, 4, 1, 8);
}
/* Gemma 2's attention: soft-capped scores (a cap that bites: scores of
 * random unit q, k reach ~3), sliding windows, both, with a prefix */
static void attn_train_softcap_and_window_match_fd(void) {
    attn_case_opts(9, 0, 4, 2, 8, 1.5f, 0);
    attn_case_opts(9, 0, 4, 2, 8, 0.0f, 3);
    attn_case_opts(70, 0, 2, 1, 4, 2.0f, 5);   /* more than one 64-query block */
    attn_case_opts(7, 2, 4, 2, 8, 1.5f, 3);
}
/* encoders: no causal mask (with a prefix, and past one 64-query block) */
static void attn_train_bidirectional_matches_fd(void) {
    attn_case_full(9, 0, 4, 2, 8, 0.0f, 0, true);
    attn_case_full(7, 2, 4, 4, 8, 0.0f, 0, true);
    attn_case_full(70, 0, 2, 1, 4, 0.0f, 0, true);
}

static void attn_train_fwd_matches_inference_attention(void) {
    const int T = 7, H = 4, KV = 2, hd = 8, cap = T + 2, qd = H * hd, kvd = KV * hd;
    peft_rng rng;
    peft_rng_seed(&rng, 9);
    float *q = falloc((size_t)T * qd), *k = falloc((size_t)T * kvd), *v = falloc((size_t)T * kvd);
    fill_normal(q, (size_t)T * qd, &rng, 1.0f, 0.0f);
    fill_normal(k, (size_t)T * kvd, &rng, 1.0f, 0.0f);
    fill_normal(v, (size_t)T * kvd, &rng, 1.0f, 0.0f);
    /* the inference kernel's KV store is (n_kv, cap, hd) */
    float *kc = falloc((size_t)KV * cap * hd), *vc = falloc((size_t)KV * cap * hd);
    for (int t = 0; t < T; t++)
        for (int g = 0; g < KV; g++)
            for (int d = 0; d < hd; d++) {
                kc[((size_t)g * cap + t) * hd + d] = k[(size_t)t * kvd + g * hd + d];
                vc[((size_t)g * cap + t) * hd + d] = v[(size_t)t * kvd + g * hd + d];
            }
    float *o1 = falloc((size_t)T * qd), *o2 = falloc((size_t)T * qd),
          *lse = falloc((size_t)H * T);
    const float scale = 1.0f / sqrtf((float)hd);
    const kern_attn_opts o = {scale, 0, 0, 0, false}, og = {scale, 1.5f, 3, 0, false};
    kern_attention(o1, qd, q, qd, kc, vc, cap, T, 0, H, KV, hd, &o, 2);
    kern_flash_attn_fwd(o2, lse, q, qd, k, v, kvd, T, 0, H, KV, hd, &o, 2);
    double d = test_max_abs_diff(o1, o2, (size_t)T * qd);
    /* with soft-capping and a sliding window */
    kern_attention(o1, qd, q, qd, kc, vc, cap, T, 0, H, KV, hd, &og, 2);
    kern_flash_attn_fwd(o2, lse, q, qd, k, v, kvd, T, 0, H, KV, hd, &og, 2);
    d = fmax(d, test_max_abs_diff(o1, o2, (size_t)T * qd));
    printf("    train vs inference attention max|diff| = %.2e\n", d);
    CHECK(d <= 1e-6);
    free(q); free(k); free(v); free(kc); free(vc); free(o1); free(o2); free(lse);
}

/* ---- cross-entropy ------------------------------------------------------- */

static double xent_ref(const float *x, const int32_t *y, int T, int V, int *counted) {
    double loss = 0;
    *counted = 0;
    for (int t = 0; t < T; t++) {
        if (y[t] == -100) continue;
        const float *r = x + (size_t)t * V;
        double m = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) m = fmax(m, r[i]);
        for (int i = 0; i < V; i++) s += exp((double)r[i] - m);
        loss += m + log(s) - r[y[t]];
        (*counted)++;
    }
    return loss;
}

typedef struct {
    float *x, *d;
    const int32_t *y;
    int V;
} xent_row_ctx;

/* the kernel's loss on one row (its only dependence on that row's logits) */
static double xent_row_loss(void *p) {
    xent_row_ctx *c = p;
    double loss;
    int n;
    kern_xent_fwd_bwd(&loss, &n, c->d, c->x, c->y, 1, c->V, 1.0f, 1);
    return loss;
}

static void xent_fwd_bwd_matches_fd(void) {
    const int T = 6, V = 11;
    const int32_t y[6] = {3, -100, 0, 10, -100, 5};
    peft_rng rng;
    peft_rng_seed(&rng, 10);
    float *x = falloc((size_t)T * V), *d = falloc((size_t)T * V), *tmp = falloc(V);
    fill_normal(x, (size_t)T * V, &rng, 3.0f, 0.0f);
    for (int i = 0; i < T * V; i++) d[i] = 123.0f; /* written, not accumulated */
    double loss;
    int n = -1;
    CHECK_OK(kern_xent_fwd_bwd(&loss, &n, d, x, y, T, V, 1.0f, 2));
    CHECK_EQ_INT(n, 4);
    int nref;
    double ref = xent_ref(x, y, T, V, &nref);
    CHECK_NEAR(loss, ref, 1e-6 * fabs(ref));
    double worst = 0;
    for (int t = 0; t < T; t++) {
        if (y[t] == -100) {
            for (int i = 0; i < V; i++) CHECK(d[(size_t)t * V + i] == 0.0f);
            continue;
        }
        xent_row_ctx c = {x + (size_t)t * V, tmp, y + t, V};
        char name[64];
        snprintf(name, sizeof name, "xent row %d dlogits", t);
        worst = fmax(worst, fd_check(name, xent_row_loss, &c, c.x, 1, V, V, d + (size_t)t * V, V));
    }
    CHECK(worst <= FD_TOL);
    /* grad_scale scales the gradient only */
    float *d2 = falloc((size_t)T * V);
    double loss2;
    CHECK_OK(kern_xent_fwd_bwd(&loss2, &n, d2, x, y, T, V, 0.25f, 1));
    CHECK(loss2 == loss);
    double ds = 0;
    for (int i = 0; i < T * V; i++) ds = fmax(ds, fabs(d2[i] - 0.25 * d[i]));
    CHECK(ds <= 1e-7);
    free(x); free(d); free(tmp); free(d2);
}

static void xent_alias_threads_and_bad_targets(void) {
    const int T = 200, V = 50;
    peft_rng rng;
    peft_rng_seed(&rng, 11);
    float *x = falloc((size_t)T * V), *d1 = falloc((size_t)T * V), *d4 = falloc((size_t)T * V);
    int32_t *y = malloc(sizeof(int32_t) * T);
    fill_normal(x, (size_t)T * V, &rng, 2.0f, 0.0f);
    for (int t = 0; t < T; t++) y[t] = t % 7 == 0 ? -100 : (int32_t)(peft_rng_u64(&rng) % V);
    /* very large logits stay finite (max subtraction) */
    for (int i = 0; i < V; i++) x[5 * V + i] += 1e4f;
    double l1, l4, la;
    int n1, n4, na;
    CHECK_OK(kern_xent_fwd_bwd(&l1, &n1, d1, x, y, T, V, 0.5f, 1));
    CHECK_OK(kern_xent_fwd_bwd(&l4, &n4, d4, x, y, T, V, 0.5f, 4));
    CHECK(l1 == l4 && n1 == n4);
    CHECK(memcmp(d1, d4, sizeof(float) * (size_t)T * V) == 0);
    CHECK(isfinite(l1));
    int nref;
    CHECK_NEAR(l1, xent_ref(x, y, T, V, &nref), 1e-5 * fabs(l1));
    CHECK_EQ_INT(n1, nref);
    /* in place: dlogits aliasing logits gives the same gradient */
    CHECK_OK(kern_xent_fwd_bwd(&la, &na, x, x, y, T, V, 0.5f, 3));
    CHECK(la == l1);
    CHECK(memcmp(x, d1, sizeof(float) * (size_t)T * V) == 0);
    /* a target outside [0, V) that is not -100: error, nothing written */
    memcpy(d4, d1, sizeof(float) * (size_t)T * V);
    y[3] = V;
    CHECK_EQ_INT(kern_xent_fwd_bwd(&la, &na, d4, x, y, T, V, 1.0f, 1), PEFT_ERR_INVALID);
    y[3] = -1;
    CHECK_EQ_INT(kern_xent_fwd_bwd(&la, &na, d4, x, y, T, V, 1.0f, 1), PEFT_ERR_INVALID);
    CHECK(memcmp(d4, d1, sizeof(float) * (size_t)T * V) == 0);
    /* every row ignored: loss 0, gradient 0 */
    for (int t = 0; t < T; t++) y[t] = -100;
    CHECK_OK(kern_xent_fwd_bwd(&la, &na, d4, d1, y, T, V, 1.0f, 2));
    CHECK(la == 0.0f && na == 0);
    CHECK(d4[0] == 0.0f && d4[(size_t)T * V - 1] == 0.0f);
    free(x); free(d1); free(d4); free(y);
}

/* ---- kern_matmul_dx -------------------------------------------------------- */

/* Builds W (N, K) of dtype dt from random floats; transposed stores (K, N). */
static void *make_weight(peft_dtype dt, bool transposed, int N, int K, peft_rng *rng,
                         kern_weight *w) {
    if (dt == PEFT_DT_Q8_K) {
        /* not quantizable here: random valid blocks {f32 d; i8 q[256]; i16 bsums[16]} */
        size_t rb = kern_dtype_row_bytes(dt, K);
        unsigned char *data = calloc(rb, (size_t)N);
        for (int b = 0; b < N * K / 256; b++) {
            unsigned char *blk = data + (size_t)b * 292;
            float d = 0.004f * (1.0f + peft_rng_uniform(rng));
            memcpy(blk, &d, 4);
            for (int i = 0; i < 256; i++) blk[4 + i] = (unsigned char)(peft_rng_u64(rng) & 0xff);
        }
        *w = (kern_weight){dt, N, K, data, false, NULL, NULL, 0, false};
        return data;
    }
    float *src = falloc((size_t)N * K);
    fill_normal(src, (size_t)N * K, rng, 0.5f, 0.0f);
    void *data;
    if (!transposed) {
        size_t rb = kern_dtype_row_bytes(dt, K);
        data = malloc(rb * N);
        for (int n = 0; n < N; n++)
            if (kern_quant_row(dt, src + (size_t)n * K, (char *)data + rb * n, K)) abort();
    } else {
        float *t = falloc((size_t)N * K);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) t[(size_t)k * N + n] = src[(size_t)n * K + k];
        size_t rb = kern_dtype_row_bytes(dt, N);
        data = malloc(rb * K);
        for (int k = 0; k < K; k++)
            if (kern_quant_row(dt, t + (size_t)k * N, (char *)data + rb * k, N)) abort();
        free(t);
    }
    free(src);
    *w = (kern_weight){dt, N, K, data, transposed, NULL, NULL, 0, false};
    return data;
}

static void matmul_dx_case(peft_dtype dt, bool transposed, int T, int N, int K) {
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)(dt * 1000 + T + N + K + transposed));
    kern_weight w;
    void *data = make_weight(dt, transposed, N, K, &rng, &w);
    float *W = falloc((size_t)N * K); /* dequantized, (N, K) */
    for (int n = 0; n < N; n++) CHECK_OK(kern_weight_row(&w, n, W + (size_t)n * K));
    float *dy = falloc((size_t)T * N), *dx0 = falloc((size_t)T * K);
    fill_normal(dy, (size_t)T * N, &rng, 1.0f, 0.0f);
    fill_normal(dx0, (size_t)T * K, &rng, 1.0f, 0.0f);
    double worst = 0, big = 0;
    float *dx[3];
    const int threads[3] = {1, 3, 4};
    for (int i = 0; i < 3; i++) {
        dx[i] = falloc((size_t)T * K);
        memcpy(dx[i], dx0, sizeof(float) * (size_t)T * K);
        size_t ns = kern_matmul_dx_scratch_floats(K, threads[i], false);
        CHECK(ns <= kern_matmul_scratch_floats(K, threads[i]));
        float *scratch = falloc(ns);
        CHECK_OK(kern_matmul_dx(dx[i], dy, N, T, &w, scratch, threads[i]));
        free(scratch);
    }
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            double s = dx0[(size_t)t * K + k];
            for (int n = 0; n < N; n++) s += (double)dy[(size_t)t * N + n] * W[(size_t)n * K + k];
            worst = fmax(worst, fabs(s - dx[0][(size_t)t * K + k]));
            big = fmax(big, fabs(s));
        }
    const char *dname = dt == PEFT_DT_F32 ? "F32" : dt == PEFT_DT_F16 ? "F16"
                      : dt == PEFT_DT_BF16 ? "BF16" : dt == PEFT_DT_Q8_0 ? "Q8_0"
                      : dt == PEFT_DT_Q4_1 ? "Q4_1" : dt == PEFT_DT_Q8_K ? "Q8_K" : "?";
    printf("    matmul_dx %-4s%s T=%d N=%d K=%d  max|diff| = %.2e (max|dx| = %.2e)\n", dname, transposed ? " (T)" : "    ", T, N, K, worst, big);
    CHECK(worst <= 1e-5 * big);
    CHECK(memcmp(dx[0], dx[1], sizeof(float) * (size_t)T * K) == 0);
    CHECK(memcmp(dx[0], dx[2], sizeof(float) * (size_t)T * K) == 0);
    for (int i = 0; i < 3; i++) free(dx[i]);
    free(data); free(W); free(dy); free(dx0);
}

static void matmul_dx_matches_naive(void) {
    /* T = 300 and K = 320 span two dx blocks each, N = 200 two row tiles */
    const peft_dtype types[4] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_Q8_0, PEFT_DT_Q4_1};
    for (int i = 0; i < 4; i++) {
        matmul_dx_case(types[i], false, 300, 200, 320);
        matmul_dx_case(types[i], false, 1, 5, 32);
    }
    matmul_dx_case(PEFT_DT_F32, true, 300, 200, 320);
    matmul_dx_case(PEFT_DT_F32, true, 3, 7, 5);
    matmul_dx_case(PEFT_DT_F16, true, 37, 130, 260);
    matmul_dx_case(PEFT_DT_BF16, false, 17, 129, 257);
    matmul_dx_case(PEFT_DT_Q8_K, false, 9, 140, 768); /* 256-element blocks, 3 column blocks */
}

static void matmul_dx_rejects_transposed_quant(void) {
    kern_weight w = {PEFT_DT_Q8_0, 4, 32, NULL, true, NULL, NULL, 0, false};
    float dx[32] = {0}, dy[4] = {0}, scratch[4096];
    CHECK_EQ_INT(kern_matmul_dx(dx, dy, 4, 1, &w, scratch, 1), PEFT_ERR_UNSUPPORTED);
}

/* ---- PyTorch autograd reference ------------------------------------------- */

static const float *fx(const st_archive *a, const char *name, size_t n) {
    const st_tensor *t = st_find(a, name);
    if (!t || (size_t)st_numel(t) != n) {
        fprintf(stderr, "  fixture tensor %s missing or wrong size\n", name);
        return NULL;
    }
    return t->data;
}

/* max|a - b| / max|b| */
static double rel_diff(const char *what, const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    double r = d / (m > 0 ? m : 1);
    printf("    torch %-16s max|diff| = %.2e  rel = %.2e\n", what, d, r);
    return r;
}

static void torch_autograd_reference(void) {
    const char *path = "tests/fixtures/kernels/grads.safetensors";
    if (!peft_file_exists(path)) TEST_FAIL("%s missing (tools/make_kernel_fixtures.py)", path);
    st_archive *a = NULL;
    peft_err err = {0};
    if (st_open(path, &a, &err)) { CHECK_MSG(0, "%s", err.msg); return; }
    const double tol = 2e-6;

    /* attention T=5 P=3 H=4 KV=2 hd=8 */
    {
        const int T = 5, P = 3, H = 4, KV = 2, hd = 8, L = P + T, qd = H * hd, kvd = KV * hd;
        const float *q = fx(a, "attn.q", (size_t)T * qd), *k = fx(a, "attn.k", (size_t)L * kvd),
                    *v = fx(a, "attn.v", (size_t)L * kvd), *dout = fx(a, "attn.dout", (size_t)T * qd),
                    *out = fx(a, "attn.out", (size_t)T * qd), *dq = fx(a, "attn.dq", (size_t)T * qd),
                    *dk = fx(a, "attn.dk", (size_t)L * kvd), *dv = fx(a, "attn.dv", (size_t)L * kvd);
        CHECK(q && k && v && dout && out && dq && dk && dv);
        if (q && k && v && dout && out && dq && dk && dv) {
            float *o = falloc((size_t)T * qd), *pr = falloc((size_t)H * T),
                  *gq = falloc((size_t)T * qd), *gk = falloc((size_t)L * kvd),
                  *gv = falloc((size_t)L * kvd),
                  *s = falloc(kern_flash_attn_scratch_floats(T, P, H, hd, 2));
            const float scale = 1.0f / sqrtf((float)hd);
            const kern_attn_opts ao = {scale, 0, 0, P, false};
            kern_flash_attn_fwd(o, pr, q, qd, k, v, kvd, T, P, H, KV, hd, &ao, 2);
            kern_flash_attn_bwd(gq, qd, gk, gv, kvd, dout, o, pr, q, qd, k, v, kvd, T, P, H, KV, hd,
                                &ao, s, 2);
            CHECK(rel_diff("attn out", o, out, (size_t)T * qd) <= tol);
            CHECK(rel_diff("attn dq", gq, dq, (size_t)T * qd) <= tol);
            CHECK(rel_diff("attn dk", gk, dk, (size_t)L * kvd) <= tol);
            CHECK(rel_diff("attn dv", gv, dv, (size_t)L * kvd) <= tol);
            free(o); free(pr); free(gq); free(gk); free(gv); free(s);
        }
    }
    /* cross-entropy, mean reduction */
    {
        const int T = 6, V = 11;
        const float *lg = fx(a, "xent.logits", (size_t)T * V), *ls = fx(a, "xent.loss_sum", 1),
                    *dl = fx(a, "xent.dlogits", (size_t)T * V);
        const st_tensor *tg = st_find(a, "xent.targets");
        CHECK(lg && ls && dl && tg && tg->dtype == PEFT_DT_I32);
        if (lg && ls && dl && tg && tg->dtype == PEFT_DT_I32) {
            double loss;
            float *d = falloc((size_t)T * V);
            int n;
            CHECK_OK(kern_xent_fwd_bwd(&loss, &n, d, lg, tg->data, T, V, 0.25f, 1));
            CHECK_EQ_INT(n, 4);
            const float lossf = (float)loss;
            CHECK(rel_diff("xent loss_sum", &lossf, ls, 1) <= tol);
            CHECK(rel_diff("xent dlogits", d, dl, (size_t)T * V) <= tol);
            free(d);
        }
    }
    /* norms */
    {
        const int T = 5, C = 16;
        const size_t n = (size_t)T * C;
        const float *x = fx(a, "rms.x", n), *w = fx(a, "rms.w", C), *dy = fx(a, "rms.dy", n),
                    *y = fx(a, "rms.y", n), *dx = fx(a, "rms.dx", n), *dw = fx(a, "rms.dw", C);
        const float *lx = fx(a, "ln.x", n), *lw = fx(a, "ln.w", C), *lb = fx(a, "ln.b", C),
                    *ly = fx(a, "ln.y", n), *ldx = fx(a, "ln.dx", n), *ldw = fx(a, "ln.dw", C),
                    *ldb = fx(a, "ln.db", C);
        CHECK(x && w && dy && y && dx && dw && lx && lw && lb && ly && ldx && ldw && ldb);
        if (x && w && dy && y && dx && dw && lx && lw && lb && ly && ldx && ldw && ldb) {
            float *gy = falloc(n), *gx = falloc(n), *gw = falloc(C), *gb = falloc(C),
                  *mean = falloc(T), *rstd = falloc(T);
            kern_rmsnorm_fwd(gy, rstd, x, w, T, C, 1e-5f, 2);
            kern_rmsnorm_bwd(gx, gw, dy, x, w, rstd, T, C, 2);
            CHECK(rel_diff("rmsnorm y", gy, y, n) <= tol);
            CHECK(rel_diff("rmsnorm dx", gx, dx, n) <= tol);
            CHECK(rel_diff("rmsnorm dw", gw, dw, C) <= tol);
            memset(gx, 0, sizeof(float) * n);
            memset(gw, 0, sizeof(float) * C);
            kern_layernorm_fwd(gy, mean, rstd, lx, lw, lb, T, C, 1e-5f, 2);
            kern_layernorm_bwd(gx, gw, gb, dy, lx, lw, mean, rstd, T, C, 2);
            CHECK(rel_diff("layernorm y", gy, ly, n) <= tol);
            CHECK(rel_diff("layernorm dx", gx, ldx, n) <= tol);
            CHECK(rel_diff("layernorm dw", gw, ldw, C) <= tol);
            CHECK(rel_diff("layernorm db", gb, ldb, C) <= tol);
            free(gy); free(gx); free(gw); free(gb); free(mean); free(rstd);
        }
    }
    /* activations */
    {
        const int n = 40;
        const float *g = fx(a, "swiglu.g", n), *u = fx(a, "swiglu.u", n),
                    *da = fx(a, "swiglu.da", n), *sa = fx(a, "swiglu.a", n),
                    *dg = fx(a, "swiglu.dg", n), *du = fx(a, "swiglu.du", n);
        const float *x = fx(a, "gelu.x", n), *dy = fx(a, "gelu.dy", n), *y = fx(a, "gelu.y", n),
                    *dx = fx(a, "gelu.dx", n);
        CHECK(g && u && da && sa && dg && du && x && dy && y && dx);
        if (g && u && da && sa && dg && du && x && dy && y && dx) {
            float o[40], gg[40] = {0}, gu[40] = {0};
            kern_swiglu_fwd(o, g, u, n, 1);
            kern_swiglu_bwd(gg, gu, da, g, u, n, 1);
            CHECK(rel_diff("swiglu a", o, sa, n) <= tol);
            CHECK(rel_diff("swiglu dg", gg, dg, n) <= tol);
            CHECK(rel_diff("swiglu du", gu, du, n) <= tol);
            float gx[40] = {0};
            kern_gelu_tanh_fwd(o, x, n, 1);
            kern_gelu_tanh_bwd(gx, dy, x, n, 2);
            CHECK(rel_diff("gelu y", o, y, n) <= tol);
            CHECK(rel_diff("gelu dx", gx, dx, n) <= tol);
        }
    }
    st_close(a);
}

int main(void) {
    TEST_RUN(rmsnorm_bwd_matches_fd);
    TEST_RUN(layernorm_bwd_matches_fd);
    TEST_RUN(rope_inverse_is_exact_backward);
    TEST_RUN(swiglu_bwd_matches_fd);
    TEST_RUN(gelu_tanh_bwd_matches_fd);
    TEST_RUN(geglu_tanh_bwd_matches_fd);
    TEST_RUN(gelu_erf_matches_libm_and_fd);
    TEST_RUN(attn_train_gqa_no_prefix_matches_fd);
    TEST_RUN(attn_train_gqa_prefix_matches_fd);
    TEST_RUN(attn_train_single_token_matches_fd);
    TEST_RUN(attn_train_mha_and_mqa_match_fd);
    TEST_RUN(attn_train_softcap_and_window_match_fd);
    TEST_RUN(attn_train_bidirectional_matches_fd);
    TEST_RUN(attn_train_fwd_matches_inference_attention);
    TEST_RUN(xent_fwd_bwd_matches_fd);
    TEST_RUN(xent_alias_threads_and_bad_targets);
    TEST_RUN(matmul_dx_matches_naive);
    TEST_RUN(matmul_dx_rejects_transposed_quant);
    TEST_RUN(torch_autograd_reference);
    TEST_MAIN_END();
}
