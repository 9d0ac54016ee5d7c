/* test_matmul.c — kern_matmul (tile GEMM and the small-T matvec path)
 * against a double-precision loop over the dequantized weights, for every
 * weight dtype we compute with, both layouts, with bias and beta. */
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "test.h"

static double check_one(peft_dtype dt, bool transposed, int T, int N, int K, int threads) {
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)(dt * 1000 + T * 10 + transposed));
    const int64_t rows = transposed ? K : N, cols = transposed ? N : K;
    float *wf = malloc(sizeof(float) * (size_t)N * K), *x = malloc(sizeof(float) * (size_t)T * K);
    float *bias = malloc(sizeof(float) * (size_t)N), *y = malloc(sizeof(float) * (size_t)T * (N + 3));
    for (int64_t i = 0; i < (int64_t)N * K; i++) wf[i] = peft_rng_normal(&rng) * 0.5f;
    for (int64_t i = 0; i < (int64_t)T * K; i++) x[i] = peft_rng_normal(&rng);
    for (int i = 0; i < N; i++) bias[i] = peft_rng_normal(&rng);
    size_t rb = kern_dtype_row_bytes(dt, cols);
    uint8_t *wq = malloc(rb * (size_t)rows);
    float *wd = malloc(sizeof(float) * (size_t)N * K); /* what the kernel should see, (rows, cols) */
    for (int64_t r = 0; r < rows; r++) {
        CHECK_OK(kern_quant_row(dt, wf + r * cols, wq + r * rb, cols));
        CHECK_OK(kern_dequant_row(dt, wq + r * rb, wd + r * cols, cols));
    }
    const int ldy = N + 3;
    for (int64_t i = 0; i < (int64_t)T * ldy; i++) y[i] = 1.0f;
    kern_weight w = {dt, N, K, wq, transposed, NULL, NULL, 0, false};
    float *scratch = malloc(sizeof(float) * kern_matmul_scratch_floats(K, threads));
    CHECK_OK(kern_matmul(y, ldy, x, T, &w, bias, 0.5f, scratch, threads));
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double s = 0.5 + bias[n];
            for (int k = 0; k < K; k++)
                s += (double)x[t * K + k] * (transposed ? wd[(size_t)k * N + n] : wd[(size_t)n * K + k]);
            double d = fabs(s - y[(size_t)t * ldy + n]) / (1.0 + fabs(s));
            if (d > worst) worst = d;
        }
    /* the padding columns beyond N must be untouched */
    for (int t = 0; t < T; t++)
        for (int j = N; j < ldy; j++) CHECK(y[(size_t)t * ldy + j] == 1.0f);
    free(wf); free(x); free(bias); free(y); free(wq); free(wd); free(scratch);
    return worst;
}

static void matmul_matches_reference_for_every_dtype_and_size(void) {
    const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_BF16, PEFT_DT_Q8_0, PEFT_DT_Q4_0, PEFT_DT_Q4_1};
    const int Ts[] = {1, 2, 3, 4, 5, 37};
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++)
        for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++)
            for (int threads = 1; threads <= 2; threads++) {
                double e = check_one(dts[d], false, Ts[ti], 200, 96, threads);
                CHECK_MSG(e < 1e-5, "%s T=%d threads=%d: rel err %g", peft_dtype_name(dts[d]), Ts[ti], threads, e);
            }
}

static void transposed_weights_match_reference(void) {
    const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_BF16};
    for (size_t d = 0; d < 3; d++)
        for (int T = 1; T <= 9; T += 4) {
            double e = check_one(dts[d], true, T, 72, 64, 2);
            CHECK_MSG(e < 1e-5, "%s transposed T=%d: rel err %g", peft_dtype_name(dts[d]), T, e);
        }
}

/* The same product must come out bit-identical on 1 and 2 threads. */
static void results_do_not_depend_on_thread_count(void) {
    const int N = 300, K = 128;
    const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_Q4_1};
    for (size_t d = 0; d < 2; d++)
        for (int T = 1; T <= 33; T += 32) {
            peft_rng rng;
            peft_rng_seed(&rng, 5);
            float *wf = malloc(sizeof(float) * N * K), *x = malloc(sizeof(float) * T * K);
            float *y1 = malloc(sizeof(float) * T * N), *y2 = malloc(sizeof(float) * T * N);
            for (int i = 0; i < N * K; i++) wf[i] = peft_rng_normal(&rng);
            for (int i = 0; i < T * K; i++) x[i] = peft_rng_normal(&rng);
            size_t rb = kern_dtype_row_bytes(dts[d], K);
            uint8_t *wq = malloc(rb * N);
            for (int r = 0; r < N; r++) kern_quant_row(dts[d], wf + r * K, wq + r * rb, K);
            kern_weight w = {dts[d], N, K, wq, false, NULL, NULL, 0, false};
            float *s = malloc(sizeof(float) * kern_matmul_scratch_floats(K, 2));
            CHECK_OK(kern_matmul(y1, N, x, T, &w, NULL, 0, s, 1));
            CHECK_OK(kern_matmul(y2, N, x, T, &w, NULL, 0, s, 2));
            CHECK(memcmp(y1, y2, sizeof(float) * T * N) == 0);
            free(wf); free(x); free(y1); free(y2); free(wq); free(s);
        }
}

int main(void) {
    TEST_RUN(matmul_matches_reference_for_every_dtype_and_size);
    TEST_RUN(transposed_weights_match_reference);
    TEST_RUN(results_do_not_depend_on_thread_count);
    TEST_MAIN_END();
}
