/* lora_compute.c — LoRA's forward and backward around a frozen linear.
 *
 *   xa = drop(x)·Aᵀ            (N, r)
 *   y += s · xa·Bᵀ             (N, out)
 * backward from dy (N, out):
 *   gB += s · dyᵀ·xa           (out, r)
 *   dxa = s · dy·B             (N, r)
 *   gA += dxaᵀ·drop(x)         (r, in)
 *   dx += drop'(dxa·A)         (N, in)
 * The products with N rows are split over threads by fixed row blocks (each
 * element is computed by one single-threaded GEMM over the full inner
 * dimension, so results do not depend on the thread count); the weight
 * gradients, summed over N, are split over their own rows instead. */
#include "peft/lora.h"

#include <cblas.h>
#include <string.h>

static const float *dropped(const float *x, int ldx, int N, int in, const uint8_t *mask, float p,
                            float *xd, int *ld) {
    if (!mask) { *ld = ldx; return x; }
    const float keep = 1.0f / (1.0f - p);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < in; j++)
            xd[(size_t)i * in + j] = mask[(size_t)i * in + j] ? x[(size_t)i * ldx + j] * keep : 0.0f;
    *ld = in;
    return xd;
}

void lora_fwd(const lora_module *mod, const float *x, int ldx, int N, const uint8_t *mask,
              float p_drop, float *xd, float *xa, float *y, int ldy, int n_threads) {
    int ld;
    const float *xin = dropped(x, ldx, N, mod->in, mask, p_drop, xd, &ld);
    /* xa (N, r) = xin (N, in) · Aᵀ */
    kern_gemm_rows(false, true, N, mod->r, mod->in, 1.0f, xin, ld, mod->A, mod->in, 0.0f, xa,
              mod->r, n_threads);
    /* y (N, out) += s · xa (N, r) · Bᵀ */
    kern_gemm_rows(false, true, N, mod->out, mod->r, mod->scale, xa, mod->r, mod->B, mod->r, 1.0f,
              y, ldy, n_threads);
}

void lora_bwd(const lora_module *mod, const float *x, int ldx, int N, const uint8_t *mask,
              float p_drop, float *xd, const float *xa, const float *dy, int ldy, float *dxa,
              float *dx, int lddx, int n_threads) {
    const int r = mod->r, in = mod->in, out = mod->out;
    /* gB (out, r) += s · dyᵀ (out, N) · xa (N, r) */
    kern_gemm_rows(true, false, out, r, N, mod->scale, dy, ldy, xa, r, 1.0f, mod->gB, r, n_threads);
    /* dxa (N, r) = s · dy (N, out) · B (out, r) */
    kern_gemm_rows(false, false, N, r, out, mod->scale, dy, ldy, mod->B, r, 0.0f, dxa, r, n_threads);
    int ld;
    const float *xin = dropped(x, ldx, N, in, mask, p_drop, xd, &ld);
    /* gA (r, in) += dxaᵀ (r, N) · xin (N, in): split over in-columns is not
     * possible with kern_gemm_rows, r is tiny: one GEMM */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, N, 1.0f, dxa, r, xin, ld, 1.0f, mod->gA, in);
    if (!dx) return;
    if (!mask) {
        /* dx (N, in) += dxa (N, r) · A (r, in) */
        kern_gemm_rows(false, false, N, in, r, 1.0f, dxa, r, mod->A, in, 1.0f, dx, lddx, n_threads);
        return;
    }
    kern_gemm_rows(false, false, N, in, r, 1.0f, dxa, r, mod->A, in, 0.0f, xd, in, n_threads);
    const float keep = 1.0f / (1.0f - p_drop);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < in; j++)
            if (mask[(size_t)i * in + j]) dx[(size_t)i * lddx + j] += xd[(size_t)i * in + j] * keep;
}
