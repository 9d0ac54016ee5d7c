/* test_bf16.c — the bfloat16 packs, the scalar model of vdpbf16ps, and the
 * bf16 GEMM on whichever unit the CPU has (AMX or AVX512-BF16).
 *
 * Everywhere: the model of one vdpbf16ps lane on hand-made cases of the
 * Intel SDM's semantics (odd pair first, each step one rounding, denormals
 * in read as zero, out flushed to zero); the reference GEMM built on it
 * against the product in double over the bf16-rounded operands within the
 * bound of f32 summation ((K + 2)·2^-24 of Σ|a·b|); packs of every stored
 * dtype and layout hold the rounded dequantized weight at the documented
 * places, zeros in the padding.
 * Where the CPU has AVX512-BF16: that kernel equals the reference bit for
 * bit on odd shapes, a view into a larger pack and denormal / rounding edge
 * values, on 1, 2 and 3 threads.
 * Where the CPU has either unit: the dispatched GEMM against the double
 * oracle (error within 1e-5 of Σ|a·b|); kern_matmul / kern_matmul_dx with
 * packs attached agree with the f32 path to bf16 precision; results are
 * bit-identical on 1, 2 and 3 threads; a training step follows f32. Skipped
 * (with the missing CPU flag) elsewhere. */
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "model/model.h"
#include "peft/lora.h"
#include "test.h"
#include "train/graph.h"

#include <float.h>

static float bf(float x) { return kern_bf16_to_f32(kern_f32_to_bf16(x)); }

/* Why the bf16 GEMM cannot run here, naming the CPU flag (NULL: it can). */
static const char *no_bf16_reason(void) {
    if (kern_bf16_supported()) return NULL;
    if (!kern_amx_compiled() && !kern_avx512bf16_compiled()) return "this build has neither bf16 kernel (the compiler lacks -mavx512bf16)";
#if defined(__x86_64__) && defined(__GNUC__)
    if (!__builtin_cpu_supports("avx512f")) return "this CPU has no avx512f (nor AMX): neither bf16 unit is here";
    if (!__builtin_cpu_supports("avx512bf16")) return "this CPU has no avx512bf16 (cpuid leaf 7 subleaf 1 EAX bit 5) nor AMX-BF16";
    return "the OS does not save the zmm / tile state (xgetbv) or the cpuid checks disagree";
#else
    return "not an x86-64 CPU: neither bf16 unit exists";
#endif
}

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* A bf16 pair (even element in the low half, as in memory). */
static uint32_t pair(float even, float odd) {
    return (uint32_t)kern_f32_to_bf16(even) | (uint32_t)kern_f32_to_bf16(odd) << 16;
}

/* The scalar model of one vdpbf16ps lane on cases that tell its rules apart
 * from the alternatives (even element first, one rounding for the pair, no
 * denormal handling, tininess before rounding). */
static void dp_model_follows_the_sdm(void) {
    const float p12 = 4096.0f; /* 2^12: 2^12·2^12 = 2^24, where +1 is a tie */
    /* odd first: (1 + 2^24) rounds to 2^24 (tie, even), then - 2^24 = 0;
     * even first or one rounding would give 1 */
    CHECK(kern_bf16_dp_model(1.0f, pair(-p12, p12), pair(p12, p12)) == 0.0f);
    /* and the mirror: (1 - 2^24) is exact, + 2^24 = 1; even first: 0 */
    CHECK(kern_bf16_dp_model(1.0f, pair(p12, -p12), pair(p12, p12)) == 1.0f);
    /* one rounding per step, to nearest even: 1 + 2^-24 ties to 1, 1 + 3·2^-24 goes up */
    CHECK(kern_bf16_dp_model(1.0f, pair(0, 0x1p-12f), pair(0, 0x1p-12f)) == 1.0f);
    CHECK(kern_bf16_dp_model(1.0f, pair(0, 0x1.8p-11f), pair(0, 0x1p-12f)) == 1.0f + 0x1p-22f);
    /* plain sums */
    CHECK(kern_bf16_dp_model(0.5f, pair(2.0f, 3.0f), pair(-1.5f, 0.25f)) == 0.5f - 3.0f + 0.75f);
    /* a denormal bf16 input counts as zero (its product 2^-133·2^100 would be 2^-33) */
    const uint32_t den = 0x0001u; /* bf16 2^-133 */
    CHECK(kern_bf16_dp_model(0.0f, den, pair(0x1p100f, 0)) == 0.0f);
    CHECK(kern_bf16_dp_model(0.0f, den << 16, pair(0, 0x1p100f)) == 0.0f);
    /* a denormal accumulator counts as zero; the sign of a zero survives */
    CHECK(kern_bf16_dp_model(1e-40f, 0, 0) == 0.0f);
    CHECK(kern_bf16_dp_model(1e-40f, pair(0, 1.0f), pair(0, 0x1p-100f)) == 0x1p-100f);
    /* a denormal result is flushed: 2^-70·2^-70 = 2^-140, to a zero of its
     * sign (the even step last: -0 + -2^-140) */
    CHECK(kern_bf16_dp_model(0.0f, pair(0, 0x1p-70f), pair(0, 0x1p-70f)) == 0.0f);
    CHECK(bits(kern_bf16_dp_model(-0.0f, pair(-0x1p-70f, 0), pair(0x1p-70f, 0))) == bits(-0.0f));
    CHECK(bits(kern_bf16_dp_model(-0.0f, pair(0x1p-70f, 0), pair(0x1p-70f, 0))) == bits(0.0f));
    /* FLT_MIN - 2^-150 is 24-bit exact and below FLT_MIN (tiny after
     * rounding: flushed), though on the denormal grid it rounds up to FLT_MIN */
    CHECK(kern_bf16_dp_model(FLT_MIN, pair(0, -0x1p-75f), pair(0, 0x1p-75f)) == 0.0f);
    /* FLT_MIN + 2^-150 rounds (tie, even) to FLT_MIN and stays */
    CHECK(kern_bf16_dp_model(FLT_MIN, pair(0, 0x1p-75f), pair(0, 0x1p-75f)) == FLT_MIN);
    /* FLT_MIN + 2^-63·2^-63 = 2·FLT_MIN */
    CHECK(kern_bf16_dp_model(FLT_MIN, pair(0, 0x1p-63f), pair(0, 0x1p-63f)) == 2 * FLT_MIN);
    /* overflow and NaN */
    CHECK(isinf(kern_bf16_dp_model(FLT_MAX, pair(0, 0x1p127f), pair(0, 2.0f))));
    CHECK(isnan(kern_bf16_dp_model(1.0f, pair(NAN, 0), pair(1.0f, 0))));
    CHECK(isnan(kern_bf16_dp_model(INFINITY, pair(0, INFINITY), pair(0, -1.0f))));
}

static void rounding_is_nearest_even(void) {
    CHECK(kern_f32_to_bf16(1.0f) == 0x3f80);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0) */
    CHECK(kern_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);
    /* 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up */
    CHECK(kern_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);
    CHECK(kern_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(bf(1.0f + 1.0f / 128) == 1.0f + 1.0f / 128);
    CHECK(kern_bf16_to_f32(kern_f32_to_bf16(NAN)) != kern_bf16_to_f32(kern_f32_to_bf16(NAN)));
}

/* C (M, N) = beta·C + bias + A·B with B = Wᵀ (forward pack of W (N, K)),
 * through the dispatched GEMM or the scalar reference; returns the largest
 * error against the double oracle relative to Σ|term| of its element. */
static double gemm_case_via(int M, int K, int N, bool use_bias, float beta, int threads, float *out, bool ref) {
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)(M * 7919 + K * 31 + N));
    const int lda = K + 5, ldc = N + 3;
    float *w = malloc(sizeof(float) * (size_t)N * K), *a = malloc(sizeof(float) * (size_t)M * lda);
    float *bias = malloc(sizeof(float) * (size_t)N), *c = malloc(sizeof(float) * (size_t)M * ldc);
    float *c0 = malloc(sizeof(float) * (size_t)M * ldc), *row = malloc(sizeof(float) * (size_t)(N > K ? N : K));
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = peft_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)M * lda; i++) a[i] = peft_rng_normal(&rng);
    for (int i = 0; i < N; i++) bias[i] = peft_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)M * ldc; i++) c0[i] = c[i] = peft_rng_normal(&rng);
    uint16_t *pack = malloc(sizeof(uint16_t) * kern_bf16_pack_elems(K, N));
    kern_weight kw = {PEFT_DT_F32, N, K, w, false, NULL, NULL, 0, false};
    CHECK_OK(kern_bf16_pack_weight(&kw, pack, NULL, row));
    float *scratch = malloc(sizeof(float) * (kern_bf16_scratch_floats(threads) + 1));
    if (ref) kern_bf16_gemm_ref(c, ldc, a, lda, M, K, N, pack, (K + 31) / 32, use_bias ? bias : NULL, beta);
    else CHECK_OK(kern_bf16_gemm(c, ldc, a, lda, M, K, N, pack, use_bias ? bias : NULL, beta, scratch, threads));
    double worst = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double s = (beta == 0.0f ? 0.0 : (double)beta * c0[(size_t)i * ldc + j]) + (use_bias ? bias[j] : 0.0), mag = fabs(s);
            for (int k = 0; k < K; k++) {
                const double p = (double)bf(a[(size_t)i * lda + k]) * bf(w[(size_t)j * K + k]);
                s += p;
                mag += fabs(p);
            }
            const double e = fabs(s - c[(size_t)i * ldc + j]) / (mag + 1e-30);
            if (e > worst) worst = e;
        }
        for (int j = N; j < ldc; j++) CHECK(c[(size_t)i * ldc + j] == c0[(size_t)i * ldc + j]); /* padding untouched */
    }
    if (out)
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * N, c + (size_t)i * ldc, sizeof(float) * (size_t)N);
    free(w); free(a); free(bias); free(c); free(c0); free(row); free(pack); free(scratch);
    return worst;
}

static double gemm_case(int M, int K, int N, bool use_bias, float beta, int threads, float *out) {
    return gemm_case_via(M, K, N, use_bias, beta, threads, out, false);
}

/* The reference GEMM against the double oracle: its products are exact
 * (8-bit by 8-bit significands) and it adds K of them (plus beta·C + bias,
 * two roundings) in f32 one at a time, so each element is within
 * ((1 + u)^(K+2) - 1)·Σ|term| ≈ (K + 2)·u of the exact sum, u = 2^-24
 * (flushed denormals add at most K·2^-126, far below). */
static void reference_gemm_matches_double(void) {
    const int shapes[][3] = {{1, 1, 1}, {1, 32, 32}, {5, 7, 3}, {9, 33, 17}, {33, 64, 40}, {130, 100, 290}, {17, 2100, 35}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int v = 0; v < 3; v++) {
            const bool use_bias = v == 1;
            const float beta = v == 0 ? 0.0f : v == 1 ? 1.0f : 0.5f;
            const int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
            const double e = gemm_case_via(M, K, N, use_bias, beta, 1, NULL, true), bound = (K + 2) * 0x1p-24;
            CHECK_MSG(e <= bound, "M=%d K=%d N=%d bias=%d beta=%g: rel err %g > %g", M, K, N, use_bias, beta, e, bound);
        }
}

/* Packs of every stored dtype and layout hold the rounded dequantized W at
 * the documented places and zeros everywhere else; a backward pack written
 * into a larger one (kern_bf16_pack_weight_at) lands at its row offset. */
static void packs_hold_the_rounded_weight(void) {
    const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_BF16, PEFT_DT_Q8_0, PEFT_DT_Q4_1};
    const int N = 70, K = 96;
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++)
        for (int tr = 0; tr < 2; tr++) {
            const bool transposed = tr == 1;
            if (transposed && peft_dtype_elem_size(dts[d]) == 0) continue;
            peft_rng rng;
            peft_rng_seed(&rng, 21 + d);
            const int64_t rows = transposed ? K : N, cols = transposed ? N : K;
            const size_t rb = kern_dtype_row_bytes(dts[d], cols);
            float *wf = malloc(sizeof(float) * N * K), *wd = malloc(sizeof(float) * N * K), *row = malloc(sizeof(float) * 128);
            uint8_t *wq = malloc(rb * (size_t)rows);
            for (int i = 0; i < N * K; i++) wf[i] = peft_rng_normal(&rng) * 0.3f;
            for (int64_t r = 0; r < rows; r++) {
                CHECK_OK(kern_quant_row(dts[d], wf + r * cols, wq + r * rb, cols));
                CHECK_OK(kern_dequant_row(dts[d], wq + r * rb, wd + r * cols, cols));
            }
            kern_weight w = {dts[d], N, K, wq, transposed, NULL, NULL, 0, false};
            const size_t ef = kern_bf16_pack_elems(K, N), eb = kern_bf16_pack_elems(N, K);
            const int64_t nkf = (K + 31) / 32, nkb = (N + 31) / 32, nkw = nkb + 2; /* the larger pack: 64 rows more */
            const size_t ew = (size_t)nkw * 32 * (size_t)((K + 31) / 32 * 32);
            uint16_t *pf = malloc(2 * ef), *pb = malloc(2 * eb), *pw = calloc(ew, 2);
            uint16_t *xf = calloc(ef, 2), *xb = calloc(eb, 2), *xw = calloc(ew, 2);
            memset(pf, 0xff, 2 * ef);
            memset(pb, 0xff, 2 * eb);
            CHECK_OK(kern_bf16_pack_weight(&w, pf, pb, row));
            CHECK_OK(kern_bf16_pack_weight_at(&w, pw, 64, nkw, row));
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++) {
                    const uint16_t want = kern_f32_to_bf16(transposed ? wd[(size_t)k * N + n] : wd[(size_t)n * K + k]);
                    /* forward: B[k][n] = W[n][k]; backward: B[n][k] = W[n][k] */
                    xf[((size_t)(n >> 4) * nkf + (k >> 5)) * 512 + ((k & 31) >> 1) * 32 + (n & 15) * 2 + (k & 1)] = want;
                    xb[((size_t)(k >> 4) * nkb + (n >> 5)) * 512 + ((n & 31) >> 1) * 32 + (k & 15) * 2 + (n & 1)] = want;
                    const int nn = n + 64;
                    xw[((size_t)(k >> 4) * nkw + (nn >> 5)) * 512 + ((nn & 31) >> 1) * 32 + (k & 15) * 2 + (nn & 1)] = want;
                }
            CHECK_MSG(memcmp(pf, xf, 2 * ef) == 0, "%s transposed=%d: forward pack", peft_dtype_name(dts[d]), transposed);
            CHECK_MSG(memcmp(pb, xb, 2 * eb) == 0, "%s transposed=%d: backward pack", peft_dtype_name(dts[d]), transposed);
            CHECK_MSG(memcmp(pw, xw, 2 * ew) == 0, "%s transposed=%d: backward pack at row 64 of a larger one",
                      peft_dtype_name(dts[d]), transposed);
            free(wf); free(wd); free(row); free(wq); free(pf); free(pb); free(pw); free(xf); free(xb); free(xw);
        }
}

/* The AVX512-BF16 kernel and the reference on the same data: equal bit for
 * bit, C's padding untouched. Bp may be a view (nkb larger than K needs).
 * wexp > 0: A, B and C drawn as ±2^e·(1 + small) with e up to wexp below
 * zero, f32 denormals among them (tiny products, flushed results, denormal
 * inputs and accumulators). */
static void simd_vs_model(int M, int K, int N, int Kpack, bool use_bias, float beta, int threads, int wexp) {
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)(M * 131 + K * 17 + N * 3 + (int)(beta * 4) + wexp));
    const int lda = K + 3, ldc = N + 5;
    float *w = malloc(sizeof(float) * (size_t)N * Kpack), *a = malloc(sizeof(float) * (size_t)M * lda);
    float *bias = malloc(sizeof(float) * (size_t)N), *c1 = malloc(sizeof(float) * (size_t)M * ldc);
    float *c2 = malloc(sizeof(float) * (size_t)M * ldc), *row = malloc(sizeof(float) * (size_t)(N > Kpack ? N : Kpack));
    float *vals[] = {w, a, bias, c1};
    const size_t counts[] = {(size_t)N * Kpack, (size_t)M * lda, (size_t)N, (size_t)M * ldc};
    for (int t = 0; t < 4; t++)
        for (size_t i = 0; i < counts[t]; i++) {
            float x = peft_rng_normal(&rng);
            if (wexp > 0) {
                const int e = -(int)(peft_rng_u64(&rng) % (uint64_t)wexp);
                x = ldexpf(1.0f + 0.25f * x, e);
                if (peft_rng_u64(&rng) % 16 == 0) x = ldexpf(x, -20); /* into the denormals */
                if (peft_rng_u64(&rng) % 32 == 0) x = 4096.0f * (x < 0 ? -1.0f : 1.0f); /* big terms: ties and cancellations */
            }
            vals[t][i] = x;
        }
    memcpy(c2, c1, sizeof(float) * (size_t)M * ldc);
    uint16_t *pack = malloc(sizeof(uint16_t) * kern_bf16_pack_elems(Kpack, N));
    kern_weight kw = {PEFT_DT_F32, N, Kpack, w, false, NULL, NULL, 0, false};
    CHECK_OK(kern_bf16_pack_weight(&kw, pack, NULL, row));
    const int nkb = (Kpack + 31) / 32;
    float *scratch = malloc(sizeof(float) * (kern_avx512bf16_scratch_floats(threads) + 1));
    CHECK_OK(kern_avx512bf16_gemm(c1, ldc, a, lda, M, K, N, pack, nkb, use_bias ? bias : NULL, beta, scratch, threads));
    kern_bf16_gemm_ref(c2, ldc, a, lda, M, K, N, pack, nkb, use_bias ? bias : NULL, beta);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < (size_t)M * ldc; i++)
        if (bits(c1[i]) != bits(c2[i]) && !(isnan(c1[i]) && isnan(c2[i])) && bad++ == 0) first = i;
    CHECK_MSG(bad == 0,
              "M=%d K=%d N=%d (pack K %d) bias=%d beta=%g threads=%d wexp=%d: %zu elements differ; first C[%zu][%zu]: "
              "kernel %a (%08x), model %a (%08x)",
              M, K, N, Kpack, use_bias, beta, threads, wexp, bad, first / (size_t)ldc, first % (size_t)ldc, c1[first],
              bits(c1[first]), c2[first], bits(c2[first]));
    free(w); free(a); free(bias); free(c1); free(c2); free(row); free(pack); free(scratch);
}

static void avx512bf16_kernel_equals_its_model_bitwise(void) {
    if (!kern_avx512bf16_compiled()) { TEST_SKIP_HW("this build has no AVX512-BF16 kernel (the compiler lacks -mavx512bf16)"); }
    if (!kern_bf16_supported()) { TEST_SKIP_HW("%s", no_bf16_reason()); }
    /* (AMX CPUs have AVX512-BF16 too: the kernel is called directly) */
    const int shapes[][4] = {{1, 1, 1, 1},     {1, 2, 16, 2},     {3, 5, 7, 5},        {8, 32, 32, 32},   {9, 33, 33, 33},
                             {17, 255, 31, 255}, {33, 64, 40, 128}, {130, 257, 290, 257}, {257, 600, 70, 600}, {64, 1031, 33, 1100}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int v = 0; v < 4; v++) {
            const bool use_bias = v == 1 || v == 3;
            const float beta = v == 0 ? 0.0f : v == 1 ? 1.0f : v == 2 ? 0.5f : 0.0f;
            for (int t = 1; t <= 3; t++)
                simd_vs_model(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], use_bias, beta, t, 0);
        }
    /* edge values: wide exponents, denormals, ties */
    for (int wexp = 20; wexp <= 150; wexp += 65)
        for (int t = 1; t <= 3; t += 2) {
            simd_vs_model(37, 70, 45, 70, true, 1.0f, t, wexp);
            simd_vs_model(37, 70, 45, 70, false, 0.0f, t, wexp);
            simd_vs_model(20, 300, 50, 300, false, 0.75f, t, wexp);
        }
}

static void gemm_matches_reference_on_edges(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("%s: the bf16 path is not used here", no_bf16_reason()); }
    const int shapes[][3] = {{1, 32, 32}, {5, 7, 3}, {33, 64, 40}, {128, 96, 256}, {130, 100, 290}, {257, 2100, 70}, {64, 4100, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int v = 0; v < 3; v++) {
            const bool use_bias = v == 1;
            const float beta = v == 0 ? 0.0f : v == 1 ? 1.0f : 0.5f;
            const int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
            const double e = gemm_case(M, K, N, use_bias, beta, 2, NULL);
            CHECK_MSG(e < 1e-5, "M=%d K=%d N=%d bias=%d beta=%g: rel err %g", M, K, N, use_bias, beta, e);
        }
}

static void gemm_does_not_depend_on_thread_count(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("%s", no_bf16_reason()); }
    const int M = 300, K = 2200, N = 530;
    float *r1 = malloc(sizeof(float) * M * N), *r2 = malloc(sizeof(float) * M * N), *r3 = malloc(sizeof(float) * M * N);
    gemm_case(M, K, N, true, 1.0f, 1, r1);
    gemm_case(M, K, N, true, 1.0f, 2, r2);
    gemm_case(M, K, N, true, 1.0f, 3, r3);
    CHECK(memcmp(r1, r2, sizeof(float) * M * N) == 0);
    CHECK(memcmp(r1, r3, sizeof(float) * M * N) == 0);
    free(r1); free(r2); free(r3);
}

/* Packs of quantized, half and transposed weights hold the rounded
 * dequantized W, and kern_matmul / kern_matmul_dx with packs attached agree
 * with the f32 path to bf16 precision. */
static void packed_linears_match_the_f32_path(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("%s", no_bf16_reason()); }
    const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_BF16, PEFT_DT_Q8_0, PEFT_DT_Q4_1};
    const int N = 96, K = 160, T = 70;
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++)
        for (int tr = 0; tr < 2; tr++) {
            const bool transposed = tr == 1;
            if (transposed && peft_dtype_elem_size(dts[d]) == 0) continue;
            peft_rng rng;
            peft_rng_seed(&rng, 11 + d);
            const int64_t rows = transposed ? K : N, cols = transposed ? N : K;
            const size_t rb = kern_dtype_row_bytes(dts[d], cols);
            float *wf = malloc(sizeof(float) * N * K), *wd = malloc(sizeof(float) * N * K);
            uint8_t *wq = malloc(rb * (size_t)rows);
            for (int i = 0; i < N * K; i++) wf[i] = peft_rng_normal(&rng) * 0.3f;
            for (int64_t r = 0; r < rows; r++) {
                CHECK_OK(kern_quant_row(dts[d], wf + r * cols, wq + r * rb, cols));
                CHECK_OK(kern_dequant_row(dts[d], wq + r * rb, wd + r * cols, cols));
            }
            kern_weight w = {dts[d], N, K, wq, transposed, NULL, NULL, 0, false};
            uint16_t *pf = malloc(2 * kern_bf16_pack_elems(K, N)), *pb = malloc(2 * kern_bf16_pack_elems(N, K));
            float *row = malloc(sizeof(float) * (N > K ? N : K));
            CHECK_OK(kern_bf16_pack_weight(&w, pf, pb, row));
            /* the packs hold the rounded weights at their documented places */
            const int64_t nkf = (K + 31) / 32, nkb = (N + 31) / 32;
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++) {
                    const float want = bf(transposed ? wd[(size_t)k * N + n] : wd[(size_t)n * K + k]);
                    const size_t of = ((size_t)(n >> 4) * nkf + (k >> 5)) * 512 + ((k & 31) >> 1) * 32 + (n & 15) * 2 + (k & 1);
                    const size_t ob = ((size_t)(k >> 4) * nkb + (n >> 5)) * 512 + ((n & 31) >> 1) * 32 + (k & 15) * 2 + (n & 1);
                    CHECK(kern_bf16_to_f32(pf[of]) == want);
                    CHECK(kern_bf16_to_f32(pb[ob]) == want);
                }
            float *x = malloc(sizeof(float) * T * K), *dy = malloc(sizeof(float) * T * N);
            float *y1 = malloc(sizeof(float) * T * N), *y2 = malloc(sizeof(float) * T * N);
            float *dx1 = calloc((size_t)T * K, sizeof(float)), *dx2 = calloc((size_t)T * K, sizeof(float));
            for (int i = 0; i < T * K; i++) x[i] = peft_rng_normal(&rng);
            for (int i = 0; i < T * N; i++) dy[i] = peft_rng_normal(&rng);
            const size_t nscr = kern_matmul_scratch_floats(K > N ? K : N, 2), nbf = kern_bf16_scratch_floats(2);
            float *scr = malloc(sizeof(float) * (nscr > nbf ? nscr : nbf));
            CHECK_OK(kern_matmul(y1, N, x, T, &w, NULL, 0.0f, scr, 2));
            CHECK_OK(kern_matmul_dx(dx1, dy, N, T, &w, scr, 2));
            kern_weight wp = w;
            wp.bf16_fwd = pf;
            wp.bf16_bwd = pb;
            CHECK_OK(kern_matmul(y2, N, x, T, &wp, NULL, 0.0f, scr, 2));
            CHECK_OK(kern_matmul_dx(dx2, dy, N, T, &wp, scr, 2));
            double ey = 0, edx = 0, sy = 0, sdx = 0;
            for (int i = 0; i < T * N; i++) { ey = fmax(ey, fabs(y1[i] - y2[i])); sy = fmax(sy, fabs(y1[i])); }
            for (int i = 0; i < T * K; i++) { edx = fmax(edx, fabs(dx1[i] - dx2[i])); sdx = fmax(sdx, fabs(dx1[i])); }
            /* bf16 keeps 8 significant bits: a few 2^-9 relative to the largest output */
            CHECK_MSG(ey < 2e-2 * sy && edx < 2e-2 * sdx, "%s transposed=%d: y err %g of %g, dx err %g of %g",
                      peft_dtype_name(dts[d]), transposed, ey, sy, edx, sdx);
            CHECK_MSG(ey > 0 || edx > 0, "the bf16 path must actually run (no difference from f32 at all)");
            free(wf); free(wd); free(wq); free(pf); free(pb); free(row); free(x); free(dy);
            free(y1); free(y2); free(dx1); free(dx2); free(scr);
        }
}

/* A LoRA training step through the graph with bf16 compute against the same
 * step in f32 on the tiny fixtures (Llama with GQA and strided q/k/v
 * gradients; GPT-2 with transposed Conv1D weights; Q8_0 GGUF): the loss
 * within 1 %, the LoRA gradient within 5 % (in norm) — bf16 keeps 8
 * significant bits — and not identical (the bf16 path ran). */
static void training_step_in_bf16_follows_f32(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("%s", no_bf16_reason()); }
    const char *models[] = {"tests/fixtures/models/tiny-llama", "tests/fixtures/models/tiny-gpt2",
                            "tests/fixtures/models/tiny-qwen2.q8_0.gguf"};
    for (int mi = 0; mi < 3; mi++) {
        peft_ctx_params cp = peft_ctx_default_params();
        cp.n_threads = 2;
        peft_ctx *ctx = peft_init(&cp);
        peft_model *m = peft_model_load(ctx, models[mi]);
        CHECK_MSG(m != NULL, "%s", models[mi]);
        if (!m) { peft_free(ctx); continue; }
        lora_config cfg = lora_default_config();
        cfg.r = 4;
        cfg.alpha = 8;
        cfg.init = LORA_INIT_GAUSSIAN;
        peft_err err = {0};
        adapter *a = NULL;
        CHECK_OK(lora_parse_targets(m, "all-linear", &cfg.targets, &err));
        CHECK_OK(lora_new(m, &cfg, &a, &err));
        peft_rng rng;
        peft_rng_seed(&rng, 7);
        for (int64_t k = 0; k < a->n_params; k++) a->params[k] = 0.2f * peft_rng_normal(&rng);
        enum { B = 2, T = 24 };
        static int32_t buf[6][B * T];
        data_batch b = {B, T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], 0, 0, NULL, NULL, 0};
        for (int i = 0; i < B * T; i++) {
            b.inputs[i] = (int32_t)(peft_rng_u64(&rng) % (uint64_t)m->cfg.vocab);
            b.positions[i] = i % T;
            b.segments[i] = 0;
        }
        for (int i = 0; i < B * T; i++) {
            b.targets[i] = i % T == T - 1 ? -100 : b.inputs[i + 1];
            b.n_targets += b.targets[i] != -100;
        }
        for (int i = 0; i < B; i++) b.lengths[i] = T;
        float *g32 = malloc(sizeof(float) * (size_t)a->n_params);
        double l32 = 0, lbf = 0;
        int n = 0;
        for (int pass = 0; pass < 2; pass++) {
            CHECK_OK(peft_model_set_compute(m, pass ? PEFT_COMPUTE_BF16 : PEFT_COMPUTE_F32));
            train_graph *g = NULL;
            CHECK_OK(tg_new(m, a, B, T, &g, &err));
            memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
            CHECK_OK(tg_run(g, &b, true, 1.0f / (float)b.n_targets, 0, pass ? &lbf : &l32, &n, &err));
            if (!pass) memcpy(g32, a->grads, sizeof(float) * (size_t)a->n_params);
            tg_free(g);
        }
        double dn = 0, gn = 0;
        for (int64_t k = 0; k < a->n_params; k++) {
            dn += ((double)a->grads[k] - g32[k]) * ((double)a->grads[k] - g32[k]);
            gn += (double)g32[k] * g32[k];
        }
        const double rel = sqrt(dn / gn);
        CHECK_MSG(fabs(lbf - l32) < 1e-2 * fabs(l32) && rel < 5e-2 && lbf != l32,
                  "%s: loss f32 %.6f bf16 %.6f, gradient rel diff %.3g", models[mi], l32 / n, lbf / n, rel);
        printf("    %-40s loss f32 %.6f bf16 %.6f, LoRA gradient rel diff %.3g\n", models[mi], l32 / n, lbf / n, rel);
        free(g32);
        adapter_free(a);
        peft_model_free(m);
        peft_free(ctx);
    }
}

int main(void) {
    TEST_RUN(rounding_is_nearest_even);
    TEST_RUN(dp_model_follows_the_sdm);
    TEST_RUN(reference_gemm_matches_double);
    TEST_RUN(packs_hold_the_rounded_weight);
    TEST_RUN(avx512bf16_kernel_equals_its_model_bitwise);
    TEST_RUN(gemm_matches_reference_on_edges);
    TEST_RUN(gemm_does_not_depend_on_thread_count);
    TEST_RUN(packed_linears_match_the_f32_path);
    TEST_RUN(training_step_in_bf16_follows_f32);
    TEST_MAIN_END();
}
