/* matvec_q8.c — decoding products on 8-bit activations (qdot.h): x is
 * quantized once per product, then threads take chunks of W's output rows
 * as they come free. Each output element is computed by the same code
 * whichever thread runs it, so results do not depend on the thread count. */
#include "kernels/kernels.h"
#include "kernels/qdot.h"
#include "kernels/quant.h"


/* Output rows per call into the unit and per item of work: 32 rows of a
 * 576-column Q4_1 weight are 11 KiB. */
enum { QROWS = 32 };

size_t kern_matvec_q8_scratch_floats(int64_t K) {
    /* per row of x: K int8 (K / 4 floats, K % 32 == 0), d and s */
    return (size_t)KERN_MATVEC_Q8_MAX_T * ((size_t)K / 4 + 2 * ((size_t)K / 32 + 1));
}

int kern_matvec_q8(kern_qdot_unit u, float *y, int ldy, const float *x, int T, const kern_weight *w,
                   const float *bias, float beta, float *scratch, int n_threads) {
    const int64_t K = w->cols, N = w->rows, nb = K / 32;
    const peft_dtype dt = w->dtype;
    if (T > KERN_MATVEC_Q8_MAX_T || K % kern_dtype_block_elems(dt) || K % 32) return PEFT_ERR_SHAPE;
    kq8_row xr[KERN_MATVEC_Q8_MAX_T];
    int8_t *qa = (int8_t *)scratch;
    float *da = scratch + (size_t)T * (size_t)K / 4, *sa = da + (size_t)T * (size_t)nb;
    for (int t = 0; t < T; t++) {
        int8_t *q = qa + (size_t)t * (size_t)K;
        float *d = da + (size_t)t * (size_t)nb, *s = sa + (size_t)t * (size_t)nb;
        kern_qdot_quantize(u, x + (size_t)t * (size_t)K, K, q, d, s);
        xr[t] = (kq8_row){q, d, s};
    }
    const size_t rb = kern_dtype_row_bytes(dt, K);
    const uint8_t *wd = w->data;
    if (n_threads < 1) n_threads = 1;
    /* Waking a thread costs microseconds: a product gets one thread per
     * 64 Ki weights at least (a k or v projection of a small model runs
     * on one). */
    const int64_t by_work = (N * K) / 65536;
    const int nt = (int)PEFT_MAX((int64_t)1, PEFT_MIN((int64_t)n_threads, by_work));
    /* Chunks of rows handed out as threads ask: on a shared machine a thread
     * that is descheduled for a while leaves its share to the others. */
    const int64_t n_chunks = (N + QROWS - 1) / QROWS;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        float out[QROWS * KERN_MATVEC_MAX_T];
        const int64_t n0 = c * QROWS, nr = PEFT_MIN((int64_t)QROWS, N - n0);
        /* the chunk's rows stay in cache while each group of x's rows meets them */
        for (int t0 = 0; t0 < T; t0 += KERN_MATVEC_MAX_T) {
            const int tg = PEFT_MIN(KERN_MATVEC_MAX_T, T - t0);
            kern_qdot_rows(u, dt, wd + (size_t)n0 * rb, rb, nr, K, xr + t0, tg, out);
            for (int64_t r = 0; r < nr; r++)
                for (int t = 0; t < tg; t++) {
                    float *yy = y + (size_t)(t0 + t) * (size_t)ldy + (size_t)(n0 + r);
                    *yy = (beta == 0.0f ? 0.0f : beta * *yy) + out[r * tg + t] + (bias ? bias[n0 + r] : 0.0f);
                }
        }
    }
    return 0;
}
