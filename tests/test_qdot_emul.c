/* test_qdot_emul.c — the AVX-VNNI and AVX512-VNNI units' code run on any
 * AVX2 CPU.
 *
 * src/kernels/qdot_avxvnni.c and qdot_avx512vnni.c are compiled here with
 * vpdpbusd (their only instruction beyond AVX2) replaced by a portable
 * model of it as the Intel SDM defines it: per 32-bit lane, four products
 * of an unsigned byte of the first source and a signed byte of the second,
 * summed with the lane of the accumulator, wrapping, no saturation. Their
 * results must equal kern_qdot_rows_ref bit for bit, for every block type,
 * odd row counts and T = 1..4. What this cannot check is the instruction
 * itself against the model (test_qdot.c does that where the CPU has it). */
#include "test.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "kernels/qdot.h"
#include "kernels/quant.h"

#include <immintrin.h>

static __m256i emul_dpbusd(__m256i src, __m256i a, __m256i b) {
    uint8_t u[32];
    int8_t s[32];
    uint32_t acc[8];
    memcpy(u, &a, 32);
    memcpy(s, &b, 32);
    memcpy(acc, &src, 32);
    for (int k = 0; k < 8; k++) {
        int32_t sum = 0;
        for (int j = 0; j < 4; j++) sum += (int32_t)u[4 * k + j] * (int32_t)s[4 * k + j];
        acc[k] += (uint32_t)sum;
    }
    __m256i r;
    memcpy(&r, acc, 32);
    return r;
}

#define PEFT_QDOT_EMULATE 1
#undef _mm256_dpbusd_avx_epi32
#undef _mm256_dpbusd_epi32
#define _mm256_dpbusd_avx_epi32 emul_dpbusd
#define _mm256_dpbusd_epi32 emul_dpbusd
#define kern_qdot_avxvnni_compiled emul_avxvnni_compiled
#define kern_qdot_rows_avxvnni emul_rows_avxvnni
#include "kernels/qdot_avxvnni.c"
#undef QD_DOT
#undef QD_UNIT
#define kern_qdot_avx512vnni_compiled emul_avx512vnni_compiled
#define kern_qdot_rows_avx512vnni emul_rows_avx512vnni
#include "kernels/qdot_avx512vnni.c"

static uint32_t bits(float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    return v;
}

static void put_f16(uint8_t *p, float f) {
    const uint16_t h = peft_f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* The model itself, on the extremes: 255·(-128)·4 and 255·127·4 per lane. */
static void dpbusd_model_extremes(void) {
    uint8_t u[32];
    int8_t s[32];
    for (int i = 0; i < 32; i++) { u[i] = 255; s[i] = i < 16 ? -128 : 127; }
    __m256i a, b, z = _mm256_set1_epi32(5);
    memcpy(&a, u, 32);
    memcpy(&b, s, 32);
    int32_t r[8];
    __m256i v = emul_dpbusd(z, a, b);
    memcpy(r, &v, 32);
    for (int k = 0; k < 8; k++) CHECK_EQ_INT(r[k], 5 + (k < 4 ? -4 * 255 * 128 : 4 * 255 * 127));
    /* and it is what vpmaddubsw + vpmaddwd give where those do not saturate */
    for (int i = 0; i < 32; i++) { u[i] = (uint8_t)(i * 37 % 129); s[i] = (int8_t)(i * 53 % 255 - 127); }
    memcpy(&a, u, 32);
    memcpy(&b, s, 32);
    __m256i w = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
    v = emul_dpbusd(_mm256_setzero_si256(), a, b);
    CHECK(memcmp(&v, &w, 32) == 0);
}

static void units_vs_ref(const char *name, void (*rows)(peft_dtype, const uint8_t *, size_t, int64_t, int64_t,
                                                         const kq8_row *, int, float *)) {
    static const peft_dtype types[] = {PEFT_DT_Q8_0, PEFT_DT_Q4_0, PEFT_DT_Q4_1, PEFT_DT_Q5_0,
                                       PEFT_DT_Q5_1, PEFT_DT_Q4_K, PEFT_DT_Q5_K, PEFT_DT_Q6_K};
    peft_rng rng;
    peft_rng_seed(&rng, 21);
    for (int ti = 0; ti < 8; ti++) {
        const peft_dtype dt = types[ti];
        const int64_t be = kern_dtype_block_elems(dt);
        for (int64_t nblk = 1; nblk <= 5; nblk += 2) {
            const int64_t K = be * nblk, N = 23;
            const size_t rb = kern_dtype_row_bytes(dt, K), bb = kern_dtype_block_bytes(dt);
            uint8_t *w = malloc(rb * N);
            for (size_t i = 0; i < rb * N; i++) w[i] = (uint8_t)peft_rng_u64(&rng);
            for (size_t o = 0; o < rb * N; o += bb) {   /* finite scales */
                const float d = 0.001f + 0.01f * peft_rng_uniform(&rng);
                if (dt == PEFT_DT_Q6_K) put_f16(w + o + 208, d);
                else {
                    put_f16(w + o, d);
                    if (dt != PEFT_DT_Q8_0 && dt != PEFT_DT_Q4_0 && dt != PEFT_DT_Q5_0) put_f16(w + o + 2, d);
                }
            }
            for (int T = 1; T <= 4; T++) {
                int8_t *q = malloc((size_t)(K * T));
                float *x = malloc(sizeof(float) * (size_t)(K * T)), *d = malloc(sizeof(float) * (size_t)(K / 32 * T));
                float *s = malloc(sizeof(float) * (size_t)(K / 32 * T)), r1[23 * 4], r2[23 * 4];
                kq8_row xr[4];
                for (int64_t i = 0; i < K * T; i++) x[i] = peft_rng_normal(&rng);
                for (int t = 0; t < T; t++) {
                    kern_qdot_quantize_ref(x + t * K, K, q + t * K, d + t * (K / 32), s + t * (K / 32));
                    xr[t] = (kq8_row){q + t * K, d + t * (K / 32), s + t * (K / 32)};
                }
                kern_qdot_rows_ref(dt, w, rb, N, K, xr, T, r1);
                rows(dt, w, rb, N, K, xr, T, r2);
                int bad = 0;
                for (int i = 0; i < N * T; i++) bad += bits(r1[i]) != bits(r2[i]);
                CHECK_MSG(bad == 0, "%s (emulated) %s K=%lld T=%d: %d of %lld results differ from the reference", name,
                          peft_dtype_name(dt), (long long)K, T, bad, (long long)(N * T));
                free(q);
                free(x);
                free(d);
                free(s);
            }
            free(w);
        }
    }
}

static void avxvnni_code_equals_reference(void) {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
        TEST_SKIP_HW("no AVX2 + FMA + F16C here");
    CHECK(emul_avxvnni_compiled());
    units_vs_ref("avxvnni", emul_rows_avxvnni);
}

static void avx512vnni_code_equals_reference(void) {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
        TEST_SKIP_HW("no AVX2 + FMA + F16C here");
    CHECK(emul_avx512vnni_compiled());
    units_vs_ref("avx512vnni", emul_rows_avx512vnni);
}

int main(void) {
    TEST_RUN(dpbusd_model_extremes);
    TEST_RUN(avxvnni_code_equals_reference);
    TEST_RUN(avx512vnni_code_equals_reference);
    TEST_MAIN_END();
}
#else
static void needs_avx2_build(void) { TEST_SKIP_HW("the compiler cannot build AVX2 code: no unit to emulate"); }
int main(void) {
    TEST_RUN(needs_avx2_build);
    TEST_MAIN_END();
}
#endif
