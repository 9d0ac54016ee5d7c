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

/* Work is cut into fixed (row block of x) × (tile of W's output rows) items:
 * shapes depend only on T, N and K, so every output element is produced by
 * the same single-threaded GEMM whatever the thread count. A tile is about
 * 512 KiB of f32 (L2-resident while its GEMM reads it) and large enough that
 * OpenBLAS's packing of x is amortised over many output columns. */
enum { MM_ROWS = 512, MM_TILE_FLOATS = 294912 };

int kern_matmul_tile_rows(int64_t K) {
    int64_t nb = MM_TILE_FLOATS / (K > 0 ? K : 1);
    nb = (nb / 16) * 16;
    if (nb < 16) nb = 16;
    if (nb > 512) nb = 512;
    return (int)nb;
}

/* A thread's tile holds nb·K' floats with nb = kern_matmul_tile_rows(K'),
 * hence at most min(max(MM_TILE_FLOATS, 16·K), 512·K) for every K' <= K:
 * the stride between threads' tiles, so that a small model's scratch is
 * no larger than what it touches. */
static size_t tile_stride(int64_t K) {
    const size_t k = (size_t)PEFT_MAX(K, (int64_t)1);
    return PEFT_MIN(PEFT_MAX((size_t)MM_TILE_FLOATS, 16 * k), 512 * k);
}

size_t kern_matmul_scratch_floats(int64_t K, int n_threads) {
    size_t per = tile_stride(K);
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
    /* Rows of x per item: as many as possible (each weight tile is packed
     * once per row block), but enough items to keep a few threads busy when
     * the weight has few tiles. Depends on the shapes only. */
    const int64_t rows = n_tiles >= 4 ? 2 * MM_ROWS : n_tiles >= 2 ? MM_ROWS : MM_ROWS / 2;
    const int64_t n_rb = (T + rows - 1) / rows;
    if (w->transposed && peft_dtype_elem_size(w->dtype) == 0) return PEFT_ERR_UNSUPPORTED;
    if (kern_matvec_takes(w, T)) return kern_matvec(y, ldy, x, T, w, bias, beta, scratch, n_threads);
    if (w->bf16_fwd)
        return kern_bf16_gemm(y, ldy, x, (int)K, T, (int)K, (int)N, w->bf16_fwd, bias, beta, scratch, n_threads);
    int status = 0;
    if (n_threads < 1) n_threads = 1;

    /* items run tile-major so consecutive items of one thread share a tile */
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) reduction(min : status)
    for (int64_t item = 0; item < n_tiles * n_rb; item++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int64_t t = item / n_rb, rb = item % n_rb;
        const int64_t n0 = t * nb_max, nb = PEFT_MIN((int64_t)nb_max, N - n0);
        const int t0 = (int)(rb * rows), tb = (int)PEFT_MIN(rows, T - t0);
        float *tile = scratch + (size_t)tid * tile_stride(K);
        const float *b;
        int ldb;
        CBLAS_TRANSPOSE tr;
        if (w->dtype == PEFT_DT_F32) {
            /* Already f32: read the weight in place. */
            if (w->transposed) { b = (const float *)w->data + n0; ldb = (int)N; tr = CblasNoTrans; }
            else { b = (const float *)w->data + n0 * K; ldb = (int)K; tr = CblasTrans; }
        } else {
            int rc = load_tile(w, n0, nb, tile);
            if (rc) { status = rc; continue; }
            b = tile;
            if (w->transposed) { ldb = (int)nb; tr = CblasNoTrans; }
            else { ldb = (int)K; tr = CblasTrans; }
        }
        float *yt = y + (size_t)t0 * ldy + n0;
        const float *xt = x + (size_t)t0 * K;
        float bt = beta;
        if (bias) {
            /* y = beta·y + bias, then accumulate the product with beta 1. */
            for (int i = 0; i < tb; i++)
                for (int64_t j = 0; j < nb; j++)
                    yt[(size_t)i * ldy + j] =
                        (beta == 0.0f ? 0.0f : beta * yt[(size_t)i * ldy + j]) + bias[n0 + j];
            bt = 1.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tr, tb, (int)nb, (int)K, 1.0f, xt, (int)K, b, ldb, bt, yt, ldy);
    }
    return status;
}

/* kern_matmul_dx blocks: dx is cut into DX_ROWS × DX_COLS blocks (fixed, so
 * every dx element sees the same sequence of operations on any thread count)
 * and W's rows are walked DX_TILE at a time. DX_COLS is a multiple of every
 * block size (32, 256), so a block's columns of a quantized row convert on
 * their own. A thread's buffer holds DX_TILE × DX_COLS floats = 131072, within
 * kern_matmul's per-thread share. */
enum { DX_ROWS = 128, DX_COLS = 256, DX_TILE = 512 };
/* Rows per dx block: small blocks balance threads for f32 weights (read in
 * place); converted weights are dequantized once per block, so those get
 * taller blocks. Depends on the dtype only. */
static int64_t dx_rows(peft_dtype t) { return t == PEFT_DT_F32 ? DX_ROWS : 4 * DX_ROWS; }

size_t kern_matmul_dx_scratch_floats(int64_t K, int n_threads, bool bf16) {
    size_t cols = (size_t)PEFT_MIN((int64_t)DX_COLS, PEFT_MAX(K, (int64_t)1));
    const size_t f32 = (size_t)DX_TILE * cols * (size_t)(n_threads > 0 ? n_threads : 1);
    return bf16 ? PEFT_MAX(f32, kern_bf16_scratch_floats(n_threads)) : f32;
}

/* Columns [k0, k0 + kc) of W's rows [n0, n0 + nb) as f32 into buf (nb, kc),
 * or for the transposed layout (stored (K, N)) into buf (kc, nb). */
static int load_dx_tile(const kern_weight *w, int64_t n0, int64_t nb, int64_t k0, int64_t kc,
                        float *buf) {
    const int64_t K = w->cols, N = w->rows;
    if (!w->transposed) {
        size_t rb = kern_dtype_row_bytes(w->dtype, K), off = kern_dtype_row_bytes(w->dtype, k0);
        if (rb == 0 || (k0 > 0 && off == 0)) return PEFT_ERR_SHAPE;
        const char *base = (const char *)w->data + (size_t)n0 * rb + off;
        for (int64_t r = 0; r < nb; r++) {
            int rc = kern_dequant_row(w->dtype, base + (size_t)r * rb, buf + r * kc, kc);
            if (rc) return rc;
        }
        return 0;
    }
    size_t es = peft_dtype_elem_size(w->dtype);
    for (int64_t k = 0; k < kc; k++) {
        const char *src =
            (const char *)w->data + ((size_t)(k0 + k) * (size_t)N + (size_t)n0) * es;
        int rc = kern_dequant_row(w->dtype, src, buf + k * nb, nb);
        if (rc) return rc;
    }
    return 0;
}

int kern_matmul_dx(float *dx, const float *dy, int lddy, int T, const kern_weight *w, float *scratch,
                   int n_threads) {
    /* dx (T, K) += dy (T, N; row stride lddy) · W (N, K). Each dx block is owned by one
     * thread, which adds W's row tiles in order (deterministic, race-free). */
    const int64_t K = w->cols, N = w->rows;
    if (w->transposed && peft_dtype_elem_size(w->dtype) == 0) return PEFT_ERR_UNSUPPORTED;
    if (T <= 0 || K <= 0 || N <= 0) return 0;
    if (w->bf16_bwd)
        return kern_bf16_gemm_ex(dx, (int)K, dy, lddy, T, (int)N, (int)K, w->bf16_bwd, kern_weight_bwd_nkb(w), NULL,
                                 1.0f, scratch, n_threads);
    const int64_t rows = dx_rows(w->dtype);
    const int64_t n_rb = (T + rows - 1) / rows, n_cb = (K + DX_COLS - 1) / DX_COLS;
    const size_t per = (size_t)DX_TILE * (size_t)PEFT_MIN((int64_t)DX_COLS, K);
    int status = 0;
    if (n_threads < 1) n_threads = 1;

#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) reduction(min : status)
    for (int64_t blk = 0; blk < n_rb * n_cb; blk++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int64_t t0 = (blk / n_cb) * rows, k0 = (blk % n_cb) * DX_COLS;
        const int tb = (int)PEFT_MIN(rows, T - t0);
        const int kc = (int)PEFT_MIN((int64_t)DX_COLS, K - k0);
        float *dxb = dx + (size_t)t0 * K + k0;
        const float *dyb = dy + (size_t)t0 * lddy;
        if (w->dtype == PEFT_DT_F32) {
            /* Already f32: one product over all of N, read in place. */
            const float *W = w->data;
            if (w->transposed) /* stored (K, N): rows k0.. are W[:, k0..]ᵀ */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, kc, (int)N, 1.0f, dyb,
                            lddy, W + (size_t)k0 * N, (int)N, 1.0f, dxb, (int)K);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, kc, (int)N, 1.0f, dyb,
                            lddy, W + k0, (int)K, 1.0f, dxb, (int)K);
            continue;
        }
        float *buf = scratch + (size_t)tid * per;
        for (int64_t n0 = 0; n0 < N; n0 += DX_TILE) {
            const int nb = (int)PEFT_MIN((int64_t)DX_TILE, N - n0);
            int rc = load_dx_tile(w, n0, nb, k0, kc, buf);
            if (rc) { status = rc; break; }
            /* dx block (tb, kc) += dy[:, n0:n0+nb] (tb, nb) · tile (nb, kc) */
            if (w->transposed)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, kc, nb, 1.0f, dyb + n0,
                            lddy, buf, nb, 1.0f, dxb, (int)K);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, kc, nb, 1.0f,
                            dyb + n0, lddy, buf, kc, 1.0f, dxb, (int)K);
        }
    }
    return status;
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

void kern_gemm_rows(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc, int n_threads) {
    const int blk = 64, nblk = (M + blk - 1) / blk;
    const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int bi = 0; bi < nblk; bi++) {
        const int m0 = bi * blk, mb = PEFT_MIN(blk, M - m0);
        const float *a = trans_a ? A + m0 : A + (size_t)m0 * lda;
        cblas_sgemm(CblasRowMajor, ta, tb, mb, N, K, alpha, a, lda, B, ldb, beta, C + (size_t)m0 * ldc, ldc);
    }
}
