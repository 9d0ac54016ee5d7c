/* probe.c — the measurement of `peft probe` (probe.h): an internal method
 * whose linear hooks add nothing to the forward and accumulate the weight
 * gradient G += dyᵀ·x in the backward, and the singular values of G. */
#include "train/probe.h"
#include "peft/method.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK's divide-and-conquer SVD from OpenBLAS (as lora_combine.c); the
 * trailing size_t is gfortran's hidden length of the CHARACTER jobz. */
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
                    const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork,
                    int *info, size_t jobz_len);

#define S(a) ((probe_state *)(a)->priv)

static const method_ops method_probe;

probe_state *probe_of(const adapter *a) { return a && a->ops == &method_probe ? S(a) : NULL; }

static bool probed(const peft_model *m, uint32_t targets, uint64_t layers, int l, int r) {
    return m->layers[l].lin[r].present && (!targets || ((targets >> r) & 1u)) &&
           (!layers || (l < 64 && ((layers >> l) & 1u)));
}

size_t probe_grad_bytes(const peft_model *m, uint32_t targets, uint64_t layers) {
    size_t n = 0;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            if (probed(m, targets, layers, l, r))
                n += (size_t)m->layers[l].lin[r].w.rows * (size_t)m->layers[l].lin[r].w.cols * sizeof(float);
    return n;
}

static hook_kind probe_kind(const adapter *a, int l, model_linear_role r) {
    return S(a)->slot[l * ROLE_N_LINEAR + r] ? HOOK_ADD : HOOK_NONE;
}

/* y is the base's: the probe changes nothing in the forward */
static int probe_fwd(const adapter *a, const lin_call *c) {
    (void)a;
    (void)c;
    return 0;
}

/* G (out, in) += dyᵀ (out, N) · x (N, in): the frozen weight's gradient,
 * which the graph never forms for a frozen model */
static int probe_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    (void)dx;
    probe_module *md = S(a)->slot[c->l * ROLE_N_LINEAR + c->r];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, md->out, md->in, c->N, 1.0f, dy, lddy, c->x, c->in, 1.0f, md->G,
                md->in);
    return 0;
}

/* the backward must reach every probed layer */
static int probe_lowest(const adapter *a, const peft_model *m) {
    int lo = m->cfg.n_layer;
    for (int i = 0; i < S(a)->n_modules; i++) lo = PEFT_MIN(lo, S(a)->mods[i].layer);
    return lo;
}

static void probe_free_priv(adapter *a) {
    probe_state *st = S(a);
    if (!st) return;
    for (int i = 0; i < st->n_modules; i++) {
        free(st->mods[i].G);
        free(st->mods[i].sv);
    }
    free(st->mods);
    free(st->slot);
    free(st);
    a->priv = NULL;
}

/* mc->targets / mc->layers select the linears; the limit comes in
 * mc->options as max_bytes */
static int probe_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    const int nl = m->cfg.n_layer;
    probe_state *st = peft_calloc(1, sizeof *st, err);
    if (!st) return PEFT_ERR_NOMEM;
    a->priv = st;
    int n = 0;
    for (int l = 0; l < nl; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) n += probed(m, mc->targets, mc->layers, l, r);
    if (n == 0) return model_no_targets(m, "probe", err);
    st->mods = peft_calloc((size_t)n, sizeof *st->mods, err);
    st->slot = peft_calloc((size_t)nl * ROLE_N_LINEAR, sizeof *st->slot, err);
    if (!st->mods || !st->slot) return PEFT_ERR_NOMEM;
    for (int l = 0; l < nl; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            if (!probed(m, mc->targets, mc->layers, l, r)) continue;
            probe_module *md = &st->mods[st->n_modules++];
            md->layer = l;
            md->role = (model_linear_role)r;
            md->out = (int)m->layers[l].lin[r].w.rows;
            md->in = (int)m->layers[l].lin[r].w.cols;
            md->G = peft_calloc((size_t)md->out * (size_t)md->in, sizeof(float), err);
            if (!md->G) return PEFT_ERR_NOMEM;
            st->slot[l * ROLE_N_LINEAR + r] = md;
        }
    return 0;
}

static const method_ops method_probe = {
    .name = "probe",
    .summary = "internal: the weight gradients of every linear (peft probe)",
    .create = probe_create,
    .free_priv = probe_free_priv,
    .lin_kind = probe_kind,
    .lin_fwd = probe_fwd,
    .lin_bwd = probe_bwd,
    .lowest_layer = probe_lowest,
};

int probe_adapter_new(const peft_model *m, uint32_t targets, uint64_t layers, int n_labels, uint64_t seed,
                      size_t max_bytes, adapter **out, peft_err *err) {
    *out = NULL;
    const size_t need = probe_grad_bytes(m, targets, layers);
    if (max_bytes && need > max_bytes)
        return peft_fail(err, PEFT_ERR_NOMEM,
                         "%s: the probe keeps every probed linear's full weight gradient in f32: %.2f GiB, over the "
                         "limit of %.2f GiB (--max-memory); probe fewer kinds (--target) or layers (--layers)",
                         m->path, (double)need / (1u << 30), (double)max_bytes / (1u << 30));
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.ops = &method_probe;
    mc.alpha = NAN;
    mc.targets = targets;
    mc.layers = layers;
    mc.n_labels = n_labels;
    mc.seed = seed;
    return method_adapter_new(m, &mc, true, out, err);
}

int probe_batch(train_graph *g, adapter *a, const data_batch *b, peft_err *err) {
    probe_state *st = probe_of(a);
    if (!st || st->finished) return peft_fail(err, PEFT_ERR_INVALID, "probe: not a probe adapter, or already finished");
    if (b->n_targets == 0) return 0;
    double ls = 0;
    int cnt = 0;
    tg_set_types(g, b->types);
    int rc = tg_run(g, b, true, 1.0f, 0, &ls, &cnt, err);
    if (rc == PEFT_ERR_NUMERIC) return peft_fail(err, rc, "probe: the loss is not finite on batch %d", st->n_batches + 1);
    if (rc) return rc;
    st->loss_sum += ls;
    st->n_targets += cnt;
    st->n_batches++;
    return 0;
}

/* Singular values of row-major G (out, in) into s (min(in, out)); with u and
 * v, the top pair too. Row-major G is column-major Gᵀ (in × out) = U S Vᵀ, so
 * G = V S Uᵀ: G's left vectors are V's columns (rows of vt), its right ones
 * U's columns. */
static int svd(const float *G, int out, int in, double *s, float *u1, float *v1, peft_err *err) {
    const int m = in, n = out, k = PEFT_MIN(in, out);
    const bool vec = u1 && v1;
    double *a = peft_malloc((size_t)m * n * sizeof(double), err);
    double *u = vec ? peft_malloc((size_t)m * k * sizeof(double), err) : NULL;
    double *vt = vec ? peft_malloc((size_t)k * n * sizeof(double), err) : NULL;
    int *iwork = peft_malloc((size_t)8 * k * sizeof(int), err);
    double *work = NULL, wq = 0, dummy = 0;
    int rc = 0, lwork = -1, info = 0, one = 1;
    if (!a || !iwork || (vec && (!u || !vt))) { rc = PEFT_ERR_NOMEM; goto done; }
    for (size_t i = 0; i < (size_t)m * n; i++) a[i] = G[i];
    const char *job = vec ? "S" : "N";
    dgesdd_(job, &m, &n, a, &m, s, vec ? u : &dummy, vec ? &m : &one, vec ? vt : &dummy, vec ? &k : &one, &wq, &lwork,
            iwork, &info, 1);
    if (info != 0 || !(wq >= 1 && wq <= (double)INT_MAX)) {
        rc = peft_fail(err, PEFT_ERR_NUMERIC, "probe: the SVD's workspace query failed (LAPACK dgesdd info %d)", info);
        goto done;
    }
    lwork = (int)wq;
    if (!(work = peft_malloc((size_t)lwork * sizeof(double), err))) { rc = PEFT_ERR_NOMEM; goto done; }
    dgesdd_(job, &m, &n, a, &m, s, vec ? u : &dummy, vec ? &m : &one, vec ? vt : &dummy, vec ? &k : &one, work, &lwork,
            iwork, &info, 1);
    if (info != 0) {
        rc = peft_fail(err, PEFT_ERR_NUMERIC, "probe: the SVD did not converge (LAPACK dgesdd info %d)", info);
        goto done;
    }
    if (vec) {
        for (int i = 0; i < out; i++) u1[i] = (float)vt[(size_t)i * k];
        for (int i = 0; i < in; i++) v1[i] = (float)u[i];
    }
done:
    free(a);
    free(u);
    free(vt);
    free(iwork);
    free(work);
    return rc;
}

int probe_finish(adapter *a, peft_err *err) {
    probe_state *st = probe_of(a);
    if (!st || st->finished) return peft_fail(err, PEFT_ERR_INVALID, "probe: not a probe adapter, or already finished");
    if (st->n_targets == 0) return peft_fail(err, PEFT_ERR_INVALID, "probe: no batch had a loss token");
    const float inv = 1.0f / (float)st->n_targets;
    for (int i = 0; i < st->n_modules; i++) {
        probe_module *md = &st->mods[i];
        const size_t n = (size_t)md->out * md->in;
        double f2 = 0;
        for (size_t k = 0; k < n; k++) {
            md->G[k] *= inv;
            f2 += (double)md->G[k] * md->G[k];
        }
        if (!isfinite(f2)) return peft_fail(err, PEFT_ERR_NUMERIC, "probe: layer %d's gradient is not finite", md->layer);
        md->fro2 = f2;
        md->n_sv = PEFT_MIN(md->in, md->out);
        if (!(md->sv = peft_malloc((size_t)md->n_sv * sizeof(double), err))) return PEFT_ERR_NOMEM;
        int rc = svd(md->G, md->out, md->in, md->sv, NULL, NULL, err);
        if (rc) return rc;
    }
    st->finished = true;
    return 0;
}

int probe_top_pair(const probe_module *md, float *u, float *v, double *s1, peft_err *err) {
    const int k = PEFT_MIN(md->in, md->out);
    double *s = peft_malloc((size_t)k * sizeof(double), err);
    if (!s) return PEFT_ERR_NOMEM;
    int rc = svd(md->G, md->out, md->in, s, u, v, err);
    if (!rc) *s1 = s[0];
    free(s);
    return rc;
}
