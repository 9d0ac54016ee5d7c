/* test_qdot.c — the int8 decoding products (src/kernels/qdot.h).
 *
 * 1. The scalar reference is the dot product it claims to be: on
 *    activations that 8 bits represent exactly, it equals the double sum
 *    over kern_dequant_row's weights (which test_quant.c checks against
 *    gguf-py) to f32 rounding, for every block type.
 * 2. The AVX2 unit (and the VNNI units where this CPU has them) equal the
 *    reference bit for bit, for every type, odd row counts, K of 1 to 9
 *    blocks, T = 1..4, random block bytes (every code, Q8_0's -128, Q6_K's
 *    scale -128 included); the SIMD quantizer equals the scalar one.
 * 3. kern_matvec with q8_act: the unit's results with beta, bias and a row
 *    stride, the same bits on 1, 2 and 3 threads, and within the bound the
 *    activations' rounding allows of the f32 product:
 *    |Σ w·(x - q·d)| <= Σ_b (d_b / 2)·Σ_{k in b} |w_k| (plus f32 slack).
 * tests/test_qdot_emul.c runs the units' code over a model of vpdpbusd. */
#include "kernels/kernels.h"
#include "kernels/qdot.h"
#include "kernels/quant.h"
#include "test.h"

static const peft_dtype TYPES[] = {PEFT_DT_Q8_0, PEFT_DT_Q4_0, PEFT_DT_Q4_1, PEFT_DT_Q5_0,
                                   PEFT_DT_Q5_1, PEFT_DT_Q4_K, PEFT_DT_Q5_K, PEFT_DT_Q6_K};
enum { NTYPES = sizeof TYPES / sizeof TYPES[0] };

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void put_f16(uint8_t *p, float f) {
    const uint16_t h = peft_f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* Random bytes for every field, then sane f16 scales (and Q8_0's codes
 * left random: -128 occurs). */
static void random_blocks(peft_dtype dt, uint8_t *w, size_t n_bytes, peft_rng *rng) {
    for (size_t i = 0; i < n_bytes; i++) w[i] = (uint8_t)peft_rng_u64(rng);
    const size_t bb = kern_dtype_block_bytes(dt);
    for (size_t o = 0; o + bb <= n_bytes; o += bb) {
        uint8_t *p = w + o;
        const float d = (0.2f + peft_rng_uniform(rng)) * 0.01f, m = (peft_rng_uniform(rng) - 0.5f) * 0.05f;
        switch (dt) {
        case PEFT_DT_Q8_0: case PEFT_DT_Q4_0: case PEFT_DT_Q5_0: put_f16(p, d); break;
        case PEFT_DT_Q4_1: case PEFT_DT_Q5_1: put_f16(p, d); put_f16(p + 2, m); break;
        case PEFT_DT_Q4_K: case PEFT_DT_Q5_K: put_f16(p, d * 0.1f); put_f16(p + 2, fabsf(m) * 0.1f); break;
        case PEFT_DT_Q6_K: put_f16(p + 208, d * 0.05f); break;
        default: break;
        }
    }
}

typedef struct {
    int8_t *q;
    float *d, *s;
    kq8_row r[4];
} qx;

static void qx_alloc(qx *a, int64_t K, int T) {
    a->q = malloc((size_t)(K * T));
    a->d = malloc(sizeof(float) * (size_t)(K / 32 * T));
    a->s = malloc(sizeof(float) * (size_t)(K / 32 * T));
    for (int t = 0; t < T; t++) a->r[t] = (kq8_row){a->q + t * K, a->d + t * (K / 32), a->s + t * (K / 32)};
}

static void qx_free(qx *a) {
    free(a->q);
    free(a->d);
    free(a->s);
}

/* 1: the reference against a double dot over dequantized weights, with x
 * of the form integer·2^e, |integer| <= 127 and 127 or -127 in each block:
 * 8 bits hold it exactly (d = 2^e, q = x / d). */
static void test_reference_is_the_dot_product(void) {
    peft_rng rng;
    peft_rng_seed(&rng, 11);
    for (int ti = 0; ti < NTYPES; ti++) {
        const peft_dtype dt = TYPES[ti];
        const int64_t be = kern_dtype_block_elems(dt), K = be == 256 ? 512 : 160, N = 9;
        const size_t rb = kern_dtype_row_bytes(dt, K);
        uint8_t *w = malloc(rb * N);
        random_blocks(dt, w, rb * N, &rng);
        float *x = malloc(sizeof(float) * K), *wf = malloc(sizeof(float) * K), out[9];
        for (int64_t b = 0; b < K / 32; b++) {
            const float scale = ldexpf(1.0f, (int)(peft_rng_u64(&rng) % 9) - 6);
            for (int j = 0; j < 32; j++) x[b * 32 + j] = (float)((int)(peft_rng_u64(&rng) % 255) - 127) * scale;
            x[b * 32 + (int)(peft_rng_u64(&rng) % 32)] = (b % 2 ? 127.0f : -127.0f) * scale;
        }
        qx a;
        qx_alloc(&a, K, 1);
        kern_qdot_quantize_ref(x, K, a.q, a.d, a.s);
        for (int64_t k = 0; k < K; k++) CHECK(bits((float)a.q[k] * a.d[k / 32]) == bits(x[k]));
        kern_qdot_rows_ref(dt, w, rb, N, K, a.r, 1, out);
        for (int64_t n = 0; n < N; n++) {
            CHECK_OK(kern_dequant_row(dt, w + n * rb, wf, K));
            double s = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                s += (double)wf[k] * x[k];
                mag += fabs((double)wf[k] * x[k]);
            }
            CHECK_MSG(fabs(out[n] - s) <= 2e-6 * mag + 1e-30, "%s row %lld: reference %.9g, dequantized dot %.9g (|w||x| %g)",
                      peft_dtype_name(dt), (long long)n, out[n], s, mag);
        }
        qx_free(&a);
        free(w);
        free(x);
        free(wf);
    }
}

static void fill_x(float *x, int64_t n, peft_rng *rng) {
    for (int64_t i = 0; i < n; i++) x[i] = peft_rng_normal(rng);
    /* a zero block, a tiny one and a large one */
    if (n >= 96) {
        for (int j = 0; j < 32; j++) x[j] = 0.0f;
        for (int j = 32; j < 64; j++) x[j] *= 1e-30f;
        for (int j = 64; j < 96; j++) x[j] *= 1e6f;
    }
}

static void test_quantizers_agree(void) {
    const kern_qdot_unit u = kern_qdot_unit_best();
    if (u == KERN_QDOT_NONE) TEST_SKIP_HW("no AVX2 + FMA + F16C here (or not built): the reference only");
    peft_rng rng;
    peft_rng_seed(&rng, 5);
    for (int64_t K = 32; K <= 32 * 40; K += 32 * 3) {
        float *x = malloc(sizeof(float) * K);
        fill_x(x, K, &rng);
        qx a, b;
        qx_alloc(&a, K, 1);
        qx_alloc(&b, K, 1);
        kern_qdot_quantize_ref(x, K, a.q, a.d, a.s);
        kern_qdot_quantize(u, x, K, b.q, b.d, b.s);
        CHECK(memcmp(a.q, b.q, (size_t)K) == 0);
        for (int64_t i = 0; i < K / 32; i++) {
            CHECK(bits(a.d[i]) == bits(b.d[i]));
            CHECK(bits(a.s[i]) == bits(b.s[i]));
        }
        /* the rounding the error bounds below rely on */
        for (int64_t k = 0; k < K; k++) {
            const float d = a.d[k / 32];
            CHECK(a.q[k] >= -127 && a.q[k] <= 127);
            CHECK(fabsf((float)a.q[k] * d - x[k]) <= 0.5f * d * (1.0f + 1e-5f) + 1e-37f);
        }
        qx_free(&a);
        qx_free(&b);
        free(x);
    }
}

/* Unit u against the reference on every type, bit for bit. */
static void units_vs_ref(kern_qdot_unit u) {
    peft_rng rng;
    peft_rng_seed(&rng, 7 + (uint64_t)u);
    for (int ti = 0; ti < NTYPES; ti++) {
        const peft_dtype dt = TYPES[ti];
        const int64_t be = kern_dtype_block_elems(dt);
        for (int64_t nblk = 1; nblk <= 9; nblk += 2) {
            const int64_t K = be * nblk, N = 37;
            const size_t rb = kern_dtype_row_bytes(dt, K);
            uint8_t *w = malloc(rb * N);
            random_blocks(dt, w, rb * N, &rng);
            for (int T = 1; T <= 4; T++) {
                float *x = malloc(sizeof(float) * K * T), r1[37 * 4], r2[37 * 4];
                fill_x(x, K * T, &rng);
                qx a;
                qx_alloc(&a, K, T);
                for (int t = 0; t < T; t++) kern_qdot_quantize_ref(x + t * K, K, a.q + t * K, a.d + t * (K / 32), a.s + t * (K / 32));
                kern_qdot_rows_ref(dt, w, rb, N, K, a.r, T, r1);
                kern_qdot_rows(u, dt, w, rb, N, K, a.r, T, r2);
                int bad = 0, first = -1;
                for (int i = 0; i < N * T; i++)
                    if (bits(r1[i]) != bits(r2[i]) && bad++ == 0) first = i;
                CHECK_MSG(bad == 0, "%s %s K=%lld T=%d: %d of %lld differ, first [%d]: %.9g vs reference %.9g",
                          kern_qdot_unit_name(u), peft_dtype_name(dt), (long long)K, T, bad, (long long)(N * T), first,
                          first >= 0 ? r2[first] : 0.0f, first >= 0 ? r1[first] : 0.0f);
                qx_free(&a);
                free(x);
            }
            free(w);
        }
    }
}

static void test_avx2_equals_reference(void) {
    if (!kern_qdot_avx2_compiled() || kern_qdot_unit_best() == KERN_QDOT_NONE)
        TEST_SKIP_HW("no AVX2 + FMA + F16C here (or not built)");
    units_vs_ref(KERN_QDOT_AVX2);
}

static void test_vnni_equals_reference(void) {
    const kern_qdot_unit best = kern_qdot_unit_best();
    if (best != KERN_QDOT_AVXVNNI && best != KERN_QDOT_AVX512VNNI)
        TEST_SKIP_HW("this CPU has no AVX-VNNI / AVX512-VNNI (test_qdot_emul.c runs their code over a model)");
    units_vs_ref(best);
    if (best == KERN_QDOT_AVX512VNNI && kern_qdot_avxvnni_compiled() && __builtin_cpu_supports("avxvnni"))
        units_vs_ref(KERN_QDOT_AVXVNNI);
}

/* 3: kern_matvec with q8_act set, through the best unit. */
static void test_matvec_q8(void) {
    const kern_qdot_unit u = kern_qdot_unit_best();
    if (u == KERN_QDOT_NONE) TEST_SKIP_HW("no AVX2 + FMA + F16C here: q8_act decodes on f32 activations");
    peft_rng rng;
    peft_rng_seed(&rng, 3);
    for (int ti = 0; ti < NTYPES; ti++) {
        const peft_dtype dt = TYPES[ti];
        const int64_t be = kern_dtype_block_elems(dt), K = be == 256 ? 768 : 416;
        const int N = 301, ldy = N + 5;   /* more rows than one thread's first chunk */
        const size_t rb = kern_dtype_row_bytes(dt, K);
        uint8_t *w = malloc(rb * N);
        random_blocks(dt, w, rb * N, &rng);
        for (int T = 1; T <= 4; T++) {
            float *x = malloc(sizeof(float) * K * T), *bias = malloc(sizeof(float) * N);
            float *y[4], *ref = malloc(sizeof(float) * N * T), *wf = malloc(sizeof(float) * K);
            fill_x(x, K * T, &rng);
            for (int i = 0; i < N; i++) bias[i] = peft_rng_normal(&rng);
            qx a;
            qx_alloc(&a, K, T);
            for (int t = 0; t < T; t++) kern_qdot_quantize_ref(x + t * K, K, a.q + t * K, a.d + t * (K / 32), a.s + t * (K / 32));
            kern_qdot_rows_ref(dt, w, rb, N, K, a.r, T, ref);
            kern_weight kw = {dt, N, K, w, false, NULL, NULL, 0, true};
            for (int th = 1; th <= 3; th++) {
                y[th] = malloc(sizeof(float) * ldy * T);
                for (int i = 0; i < ldy * T; i++) y[th][i] = 2.0f;
                float *scr = malloc(sizeof(float) * kern_matmul_scratch_floats(K, th));
                CHECK_OK(kern_matmul(y[th], ldy, x, T, &kw, bias, 0.5f, scr, th));
                free(scr);
                for (int t = 0; t < T; t++) {
                    for (int n = 0; n < N; n++) {
                        const float want = (0.5f * 2.0f + ref[n * T + t]) + bias[n];
                        if (bits(want) != bits(y[th][t * ldy + n])) {
                            TEST_FAIL("%s T=%d threads=%d y[%d][%d] = %.9g, want %.9g", peft_dtype_name(dt), T, th, t, n,
                                      y[th][t * ldy + n], want);
                        }
                    }
                    for (int j = N; j < ldy; j++) CHECK(y[th][t * ldy + j] == 2.0f);
                }
            }
            for (int th = 2; th <= 3; th++) CHECK(memcmp(y[1], y[th], sizeof(float) * ldy * T) == 0);
            /* against the exact f32 product: the rounding bound */
            kw.q8_act = false;
            float *ye = malloc(sizeof(float) * ldy * T), *scr = malloc(sizeof(float) * kern_matmul_scratch_floats(K, 1));
            CHECK_OK(kern_matmul(ye, ldy, x, T, &kw, NULL, 0.0f, scr, 1));
            for (int n = 0; n < N; n++) {
                CHECK_OK(kern_dequant_row(dt, w + n * rb, wf, K));
                for (int t = 0; t < T; t++) {
                    double bound = 0, mag = 0;
                    for (int64_t k = 0; k < K; k++) {
                        bound += 0.5 * a.r[t].d[k / 32] * fabs(wf[k]);
                        mag += fabs((double)wf[k] * x[t * K + k]);
                    }
                    const double got = (double)y[1][t * ldy + n] - 1.0 - bias[n], exact = ye[t * ldy + n];
                    CHECK_MSG(fabs(got - exact) <= bound * 1.0001 + 1e-5 * mag + 1e-6 * (fabs(got) + fabs(bias[n]) + 1.0),
                              "%s T=%d row %d: 8-bit %.9g, f32 %.9g: off by %g, bound %g", peft_dtype_name(dt), T, n, got,
                              exact, fabs(got - exact), bound);
                }
            }
            free(ye);
            free(scr);
            for (int th = 1; th <= 3; th++) free(y[th]);
            qx_free(&a);
            free(x);
            free(bias);
            free(ref);
            free(wf);
        }
        free(w);
    }
}

/* A batched decoding step (5 to KERN_MATVEC_Q8_MAX_T rows, one per
 * sequence) on 8-bit activations reads the weight once for all rows, and
 * each row gets the bits it gets alone; past that, the GEMM path. */
static void test_matvec_q8_batches_equal_rows_alone(void) {
    const kern_qdot_unit u = kern_qdot_unit_best();
    if (u == KERN_QDOT_NONE) TEST_SKIP_HW("no AVX2 + FMA + F16C here: q8_act decodes on f32 activations");
    peft_rng rng;
    peft_rng_seed(&rng, 9);
    static const int Ts[] = {5, 13, KERN_MATVEC_Q8_MAX_T};
    for (int ti = 0; ti < NTYPES; ti++) {
        const peft_dtype dt = TYPES[ti];
        const int64_t be = kern_dtype_block_elems(dt), K = be == 256 ? 512 : 320;
        const int N = 77;
        const size_t rb = kern_dtype_row_bytes(dt, K);
        uint8_t *w = malloc(rb * N);
        random_blocks(dt, w, rb * N, &rng);
        kern_weight kw = {dt, N, K, w, false, NULL, NULL, 0, true};
        CHECK(kern_matvec_takes(&kw, KERN_MATVEC_Q8_MAX_T) && !kern_matvec_takes(&kw, KERN_MATVEC_Q8_MAX_T + 1));
        float *scr = malloc(sizeof(float) * kern_matmul_scratch_floats(K, 2));
        for (size_t k = 0; k < sizeof Ts / sizeof *Ts; k++) {
            const int T = Ts[k];
            float *x = malloc(sizeof(float) * K * T), *y = malloc(sizeof(float) * N * T), *y1 = malloc(sizeof(float) * N);
            fill_x(x, K * T, &rng);
            CHECK_OK(kern_matmul(y, N, x, T, &kw, NULL, 0.0f, scr, 2));
            for (int t = 0; t < T; t++) {
                CHECK_OK(kern_matmul(y1, N, x + (size_t)t * K, 1, &kw, NULL, 0.0f, scr, 2));
                if (memcmp(y1, y + (size_t)t * N, sizeof(float) * N))
                    TEST_FAIL("%s: row %d of a %d-row product differs from the row alone", peft_dtype_name(dt), t, T);
            }
            free(x);
            free(y);
            free(y1);
        }
        free(scr);
        free(w);
    }
}

/* A weight without q8_act (or of a type without a kernel) keeps the f32
 * products: the same bits as before this path existed. */
static void test_flag_off_and_other_types_stay_f32(void) {
    peft_rng rng;
    peft_rng_seed(&rng, 9);
    const peft_dtype dts[] = {PEFT_DT_Q4_1, PEFT_DT_F16, PEFT_DT_Q2_K};
    for (int i = 0; i < 3; i++) {
        const peft_dtype dt = dts[i];
        const int64_t K = 512, N = 40;
        const size_t rb = kern_dtype_row_bytes(dt, K);
        uint8_t *w = malloc(rb * N);
        random_blocks(dt, w, rb * N, &rng);
        if (dt == PEFT_DT_F16)
            for (int64_t k = 0; k < K * N; k++) put_f16(w + 2 * k, peft_rng_normal(&rng));
        if (dt == PEFT_DT_Q2_K)
            for (size_t o = 0; o < rb * N; o += 84) { put_f16(w + o + 80, 0.01f); put_f16(w + o + 82, 0.01f); }
        float x[512], y1[40], y2[40];
        fill_x(x, K, &rng);
        float *scr = malloc(sizeof(float) * kern_matmul_scratch_floats(K, 2));
        kern_weight a = {dt, N, K, w, false, NULL, NULL, 0, dt != PEFT_DT_Q4_1}, b = a;
        b.q8_act = false;
        CHECK_OK(kern_matmul(y1, (int)N, x, 1, &a, NULL, 0.0f, scr, 2));
        CHECK_OK(kern_matmul(y2, (int)N, x, 1, &b, NULL, 0.0f, scr, 2));
        CHECK(memcmp(y1, y2, sizeof y1) == 0);
        free(scr);
        free(w);
    }
}

int main(void) {
    printf("qdot unit here: %s\n", kern_qdot_unit_name(kern_qdot_unit_best()));
    TEST_RUN(test_reference_is_the_dot_product);
    TEST_RUN(test_quantizers_agree);
    TEST_RUN(test_avx2_equals_reference);
    TEST_RUN(test_vnni_equals_reference);
    TEST_RUN(test_matvec_q8);
    TEST_RUN(test_matvec_q8_batches_equal_rows_alone);
    TEST_RUN(test_flag_off_and_other_types_stay_f32);
    TEST_MAIN_END();
}
