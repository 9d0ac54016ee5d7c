/* matmul.c — y = x·Wᵀ against frozen weights of any stored dtype.
 *
 * The weight is walked in tiles of output rows. A tile is converted to f32
 * into a per-thread buffer just before its GEMM, so a quantized model never
 * exists as a full f32 copy. Tile boundaries depend only on K, so every
 * output element is produced by the same sequence of operations whatever the
 * thread count (results are reproducible across --threads). */
#include "kernels/kernels.h"
#include "kernels/quant.h"

#include <cblas.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int kern_matmul_tile_rows(int64_t K) {
    /* About 128 KiB of f32 per tile: stays in L2 while the GEMM reads it. */
    int64_t nb = 32768 / (K > 0 ? K : 1);
    nb = (nb / 16) * 16;
    if (nb < 16) nb = 16;
    if (nb > 256) nb = 256;
    return (int)nb;
}

size_t kern_matmul_scratch_floats(int64_t K, int n_threads) {
    /* A tile holds nb·K' floats with nb = clamp(32768/K', 16, 256) rounded
     * down to 16, hence at most max(32768, 16·K') — a bound for every K' <= K. */
    size_t per = PEFT_MAX((size_t)32768, (size_t)16 * (size_t)K);
    return PEFT_MAX(per * (size_t)(n_threads > 0 ? n_threads : 1), kern_matvec_scratch_floats(K, n_threads));
}

/* Converts output rows [n0, n0 + nb) of w to f32.
 * Normal layout: tile is (nb, K). Transposed layout: tile is (K, nb). */
static int load_tile(const kern_weight *w, int64_t n0, int64_t nb, float *tile) {
    const int64_t K = w->cols, N = w->rows;
    if (!w->transposed) {
        size_t rb = kern_dtype_row_bytes(w->dtype, K);
        const char *base = (const char *)w->data + (size_t)n0 * rb;
        for (int64_t r = 0; r < nb; r++) {
            int rc = kern_dequant_row(w->dtype, base + (size_t)r * rb, tile + r * K, K);
            if (rc) return rc;
        }
        return 0;
    }
    size_t es = peft_dtype_elem_size(w->dtype);
    for (int64_t k = 0; k < K; k++) {
        const char *src = (const char *)w->data + ((size_t)k * (size_t)N + (size_t)n0) * es;
        int rc = kern_dequant_row(w->dtype, src, tile + k * nb, nb);
        if (rc) return rc;
    }
    return 0;
}

int kern_matmul(float *y, int ldy, const float *x, int T, const kern_weight *w,
                const float *bias, float beta, float *scratch, int n_threads) {
    const int64_t K = w->cols, N = w->rows;
    const int nb_max = kern_matmul_tile_rows(K);
    const int64_t n_tiles = (N + nb_max - 1) / nb_max;
    if (w->transposed && peft_dtype_elem_size(w->dtype) == 0) return PEFT_ERR_UNSUPPORTED;
    if (T <= KERN_MATVEC_MAX_T && !w->transposed)
        return kern_matvec(y, ldy, x, T, w, bias, beta, scratch, n_threads);
    int status = 0;
    if (n_threads < 1) n_threads = 1;

#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) reduction(min : status)
    for (int64_t t = 0; t < n_tiles; t++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int64_t n0 = t * nb_max, nb = PEFT_MIN((int64_t)nb_max, N - n0);
        float *tile = scratch + (size_t)tid * (size_t)nb_max * (size_t)K;
        const float *b;
        int ldb;
        CBLAS_TRANSPOSE tb;
        if (w->dtype == PEFT_DT_F32) {
            /* Already f32: read the weight in place. */
            if (w->transposed) { b = (const float *)w->data + n0; ldb = (int)N; tb = CblasNoTrans; }
            else { b = (const float *)w->data + n0 * K; ldb = (int)K; tb = CblasTrans; }
        } else {
            int rc = load_tile(w, n0, nb, tile);
            if (rc) { status = rc; continue; }
            b = tile;
            if (w->transposed) { ldb = (int)nb; tb = CblasNoTrans; }
            else { ldb = (int)K; tb = CblasTrans; }
        }
        float *yt = y + n0;
        if (bias) {
            /* y = beta·y + bias, then accumulate the product with beta 1. */
            for (int i = 0; i < T; i++)
                for (int64_t j = 0; j < nb; j++)
                    yt[(size_t)i * ldy + j] =
                        (beta == 0.0f ? 0.0f : beta * yt[(size_t)i * ldy + j]) + bias[n0 + j];
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, T, (int)nb, (int)K, 1.0f, x, (int)K, b,
                        ldb, 1.0f, yt, ldy);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, T, (int)nb, (int)K, 1.0f, x, (int)K, b,
                        ldb, beta, yt, ldy);
        }
    }
    return status;
}

int kern_matmul_dx(float *dx, const float *dy, int T, const kern_weight *w, float *scratch,
                   int n_threads) {
    /* dx (T, K) += dy (T, N) · W (N, K). Every tile of W's rows contributes
     * to all of dx, so tiles are summed in a fixed order (deterministic). */
    const int64_t K = w->cols, N = w->rows;
    const int nb_max = kern_matmul_tile_rows(K);
    if (w->transposed && peft_dtype_elem_size(w->dtype) == 0) return PEFT_ERR_UNSUPPORTED;
    (void)n_threads;
    for (int64_t n0 = 0; n0 < N; n0 += nb_max) {
        int64_t nb = PEFT_MIN((int64_t)nb_max, N - n0);
        const float *b;
        int ldb;
        CBLAS_TRANSPOSE tb;
        if (w->dtype == PEFT_DT_F32) {
            if (w->transposed) { b = (const float *)w->data + n0; ldb = (int)N; tb = CblasTrans; }
            else { b = (const float *)w->data + n0 * K; ldb = (int)K; tb = CblasNoTrans; }
        } else {
            int rc = load_tile(w, n0, nb, scratch);
            if (rc) return rc;
            b = scratch;
            if (w->transposed) { ldb = (int)nb; tb = CblasTrans; }
            else { ldb = (int)K; tb = CblasNoTrans; }
        }
        /* dx += dy[:, n0:n0+nb] · tile, tile as (nb, K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, T, (int)K, (int)nb, 1.0f, dy + n0, (int)N, b,
                    ldb, 1.0f, dx, (int)K);
    }
    return 0;
}

int kern_weight_row(const kern_weight *w, int64_t r, float *out) {
    if (r < 0 || r >= w->rows) return PEFT_ERR_INVALID;
    if (w->transposed) {
        size_t es = peft_dtype_elem_size(w->dtype);
        for (int64_t k = 0; k < w->cols; k++) {
            int rc = kern_dequant_row(w->dtype, (const char *)w->data + ((size_t)k * (size_t)w->rows + (size_t)r) * es,
                                      out + k, 1);
            if (rc) return rc;
        }
        return 0;
    }
    size_t rb = kern_dtype_row_bytes(w->dtype, w->cols);
    return kern_dequant_row(w->dtype, (const char *)w->data + (size_t)r * rb, out, w->cols);
}
