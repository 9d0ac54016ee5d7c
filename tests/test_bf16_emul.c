/* test_bf16_emul.c — the AVX512-BF16 GEMM's code run on any CPU.
 *
 * src/kernels/avx512bf16.c is compiled here over tests/avx512bf16_emul.h,
 * portable stand-ins for its intrinsics with vdpbf16ps replaced by the
 * scalar model (kern_bf16_dp_model). The kernel's blocking, K chunks, edge
 * blocks, rounding of A, pack addressing (including a view into a larger
 * pack) and thread split must then give kern_bf16_gemm_ref's result bit for
 * bit, on 1, 2 and 3 threads, C's padding untouched. This does not test the
 * instruction against the model: test_bf16.c does, where the CPU has it. */
#define PEFT_AVX512BF16_EMULATE 1
#include "avx512bf16_emul.h"

#define kern_avx512bf16_compiled emul_avx512bf16_compiled
#define kern_avx512bf16_scratch_floats emul_avx512bf16_scratch_floats
#define kern_avx512bf16_gemm emul_avx512bf16_gemm
#include "kernels/avx512bf16.c"

#include "test.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* wexp > 0: values ±2^e·(1 + small), e down to -wexp, some pushed into the
 * denormals, some ±4096 (products of 2^24: ties and cancellations). */
static void emul_vs_model(int M, int K, int N, int Kpack, bool use_bias, float beta, int threads, int wexp) {
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
                if (peft_rng_u64(&rng) % 16 == 0) x = ldexpf(x, -20);
                if (peft_rng_u64(&rng) % 32 == 0) x = x < 0 ? -4096.0f : 4096.0f;
            }
            vals[t][i] = x;
        }
    memcpy(c2, c1, sizeof(float) * (size_t)M * ldc);
    uint16_t *pack = malloc(sizeof(uint16_t) * kern_bf16_pack_elems(Kpack, N));
    kern_weight kw = {PEFT_DT_F32, N, Kpack, w, false, NULL, NULL, 0, false};
    CHECK_OK(kern_bf16_pack_weight(&kw, pack, NULL, row));
    const int nkb = (Kpack + 31) / 32;
    float *scratch = malloc(sizeof(float) * emul_avx512bf16_scratch_floats(threads));
    CHECK_OK(emul_avx512bf16_gemm(c1, ldc, a, lda, M, K, N, pack, nkb, use_bias ? bias : NULL, beta, scratch, threads));
    kern_bf16_gemm_ref(c2, ldc, a, lda, M, K, N, pack, nkb, use_bias ? bias : NULL, beta);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < (size_t)M * ldc; i++)
        if (bits(c1[i]) != bits(c2[i]) && bad++ == 0) first = i;
    CHECK_MSG(bad == 0,
              "M=%d K=%d N=%d (pack K %d) bias=%d beta=%g threads=%d wexp=%d: %zu elements differ; first C[%zu][%zu]: "
              "kernel %a (%08x), model %a (%08x)",
              M, K, N, Kpack, use_bias, beta, threads, wexp, bad, first / (size_t)ldc, first % (size_t)ldc, c1[first],
              bits(c1[first]), c2[first], bits(c2[first]));
    free(w); free(a); free(bias); free(c1); free(c2); free(row); free(pack); free(scratch);
}

/* Shapes: below, at and above the 8 × 32 register block, one and several
 * 128-row blocks and 256-K chunks, odd K (a half-used last pair), column
 * groups (1 row block, 2-3 threads), B a view into a pack for more K. */
static void kernel_code_equals_the_reference(void) {
    CHECK(emul_avx512bf16_compiled());
    const int shapes[][4] = {{1, 1, 1, 1},      {1, 2, 16, 2},     {3, 5, 7, 5},      {8, 32, 32, 32},
                             {9, 33, 33, 33},   {7, 31, 65, 64},   {17, 255, 31, 255}, {33, 64, 40, 128},
                             {130, 257, 97, 257}, {129, 513, 20, 520}, {20, 300, 200, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int v = 0; v < 4; v++) {
            const bool use_bias = v == 1 || v == 3;
            const float beta = v == 0 ? 0.0f : v == 1 ? 1.0f : v == 2 ? 0.5f : 0.0f;
            for (int t = 1; t <= 3; t++) emul_vs_model(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], use_bias, beta, t, 0);
        }
}

/* Denormal inputs, tiny products, flushed sums, ties: the same bits. */
static void kernel_code_equals_the_reference_on_edge_values(void) {
    for (int wexp = 20; wexp <= 150; wexp += 65)
        for (int t = 1; t <= 3; t += 2) {
            emul_vs_model(37, 70, 45, 70, true, 1.0f, t, wexp);
            emul_vs_model(37, 70, 45, 70, false, 0.0f, t, wexp);
            emul_vs_model(20, 300, 50, 300, false, 0.75f, t, wexp);
        }
}

/* An empty sum is zeros (or beta·C + bias), as in the reference. */
static void empty_k(void) {
    float c[6] = {1, 2, 3, 4, 5, 6}, bias[3] = {0.5f, -1, 2};
    uint16_t pack[1024] = {0};
    float scratch[BR * KCH / 2];
    CHECK_OK(emul_avx512bf16_gemm(c, 3, NULL, 1, 2, 0, 3, pack, 1, NULL, 0.0f, scratch, 1));
    for (int i = 0; i < 6; i++) CHECK(c[i] == 0.0f);
    CHECK_OK(emul_avx512bf16_gemm(c, 3, NULL, 1, 2, 0, 3, pack, 1, bias, 0.0f, scratch, 1));
    for (int i = 0; i < 6; i++) CHECK(c[i] == bias[i % 3]);
}

int main(void) {
    TEST_RUN(kernel_code_equals_the_reference);
    TEST_RUN(kernel_code_equals_the_reference_on_edge_values);
    TEST_RUN(empty_k);
    TEST_MAIN_END();
}
