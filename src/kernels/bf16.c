/* bf16.c — frozen weights packed as bfloat16 for the bf16 GEMMs (amx.c,
 * avx512bf16.c), the choice between them, and a portable model of the
 * AVX512-BF16 one that tests compare it with bit for bit.
 *
 * A packed operand is the B of C (M, N) += A (M, K) · B (K, N), cut into
 * AMX tiles: for every 16 columns and every 32 rows of K, one 1 KiB tile of
 * 16 rows, row k2 holding the pairs B[2·k2][n], B[2·k2 + 1][n] for its 16
 * columns n (the "VNNI" order tdpbf16ps reads). Tiles of one column block
 * follow each other along K. K is padded to a multiple of 32 and N to a
 * multiple of 32 with zeros, so the micro-kernel never sees a partial tile.
 *
 * A linear y = x·Wᵀ (W: out × in) needs two packs: the forward one (B = Wᵀ,
 * K = in, N = out) and the backward one for dx = dy·W (B = W, K = out,
 * N = in). Both are made in one pass over W's stored rows. */
#include "kernels/kernels.h"
#include "kernels/quant.h"

#include <float.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static int64_t pad32(int64_t v) { return (v + 31) / 32 * 32; }

size_t kern_bf16_pack_elems(int64_t K, int64_t N) { return (size_t)pad32(K) * (size_t)pad32(N); }

uint16_t kern_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                            /* nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float kern_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Offset of B[k][n] in a pack of K rows (nkb = pad32(K) / 32 tiles per
 * column block). */
static inline size_t pack_off(int64_t k, int64_t n, int64_t nkb) {
    return ((size_t)(n >> 4) * (size_t)nkb + (size_t)(k >> 5)) * 512u + (size_t)((k & 31) >> 1) * 32u +
           (size_t)(n & 15) * 2u + (size_t)(k & 1);
}

/* One pass over W's stored rows into the forward pack (stride nkb_f) and/or
 * the backward pack (stride nkb_b, W's rows from row k_off of it). */
static int pack_rows(const kern_weight *w, uint16_t *fwd, int64_t nkb_f, uint16_t *bwd, int64_t k_off, int64_t nkb_b,
                     float *rowbuf) {
    const int64_t out = w->rows, in = w->cols;
    /* stored rows: W's rows (out of them, in long), or for the transposed
     * layout W's columns (in of them, out long) */
    const int64_t n_rows = w->transposed ? in : out, len = w->transposed ? out : in;
    const size_t rb = w->transposed ? (size_t)out * peft_dtype_elem_size(w->dtype) : kern_dtype_row_bytes(w->dtype, in);
    if (rb == 0 || k_off % 32) return PEFT_ERR_UNSUPPORTED;
    for (int64_t s = 0; s < n_rows; s++) {
        int rc = kern_dequant_row(w->dtype, (const char *)w->data + (size_t)s * rb, rowbuf, len);
        if (rc) return rc;
        for (int64_t e = 0; e < len; e++) {
            const int64_t r = w->transposed ? e : s, c = w->transposed ? s : e; /* W[r][c] */
            const uint16_t h = kern_f32_to_bf16(rowbuf[e]);
            if (fwd) fwd[pack_off(c, r, nkb_f)] = h;         /* B = Wᵀ: B[c][r] */
            if (bwd) bwd[pack_off(k_off + r, c, nkb_b)] = h; /* B = W:  B[r][c] */
        }
    }
    return 0;
}

int kern_bf16_pack_weight(const kern_weight *w, uint16_t *fwd, uint16_t *bwd, float *rowbuf) {
    const int64_t out = w->rows, in = w->cols;
    if (fwd) memset(fwd, 0, kern_bf16_pack_elems(in, out) * sizeof(uint16_t));
    if (bwd) memset(bwd, 0, kern_bf16_pack_elems(out, in) * sizeof(uint16_t));
    return pack_rows(w, fwd, pad32(in) / 32, bwd, 0, pad32(out) / 32, rowbuf);
}

int kern_bf16_pack_weight_at(const kern_weight *w, uint16_t *bwd, int64_t k_off, int64_t nkb, float *rowbuf) {
    return pack_rows(w, NULL, 0, bwd, k_off, nkb, rowbuf);
}

/* ---- which unit ------------------------------------------------------------
 * Two checks, which must agree before a unit is offered:
 * - kern_bf16_unit_detect, at set-up: cpuid's feature bits and xgetbv's
 *   view of which register state the OS saves (zmm, opmask; the AMX tiles),
 *   and for AMX Linux's permission for the tile state.
 * - the dispatch in kern_bf16_gemm_ex, per product: the compiler runtime's
 *   cpu flags (read once at start-up by libgcc / compiler-rt, so free; our
 *   own cpuid traps to the hypervisor in a VM, about 5 µs here) and, on AMX
 *   CPUs only, the tile permission (one system call).
 * The dispatch never picks a unit that detect did not find, as long as the
 * runtime's flags and our cpuid read the same bits. */
#if defined(__x86_64__) && defined(__GNUC__)
enum { ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };

static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

/* AVX512F and AVX512_BF16 (leaf 7 subleaf 1, EAX bit 5), and the OS saves
 * the xmm, ymm, opmask and both halves of the zmm registers (XCR0 bits 1,
 * 2, 5, 6, 7). */
static bool cpuid_avx512bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1u)) return false; /* OSXSAVE: xgetbv usable */
    if ((xcr0() & 0xe6u) != 0xe6u) return false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b >> 16 & 1u)) return false; /* AVX512F */
    if (a < 1) return false;                                                      /* no subleaf 1 */
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1u);
}

/* AMX-BF16 and AMX-TILE (leaf 7, EDX bits 22 and 24) with the OS saving the
 * tile state (XCR0 bits 17, 18); the AMX kernel also uses AVX512-BF16. */
static bool cpuid_amx(void) {
    unsigned a, b, c, d;
    if (!cpuid_avx512bf16()) return false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 22 & 1u) || !(d >> 24 & 1u)) return false;
    return (xcr0() >> 17 & 3u) == 3u;
}

static bool runtime_avx512bf16(void) {
    return kern_avx512bf16_compiled() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

static bool runtime_amx(void) {
    if (!kern_amx_compiled() || !__builtin_cpu_supports("avx512bf16")) return false;
#if !defined(__clang__) /* clang 14 does not know these names */
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
#endif
    /* only a process that asked for the tile state (kern_bf16_unit_detect,
     * after cpuid_amx) has it */
    unsigned long perm = 0; /* a kernel before 5.16 knows neither call: no AMX */
    return syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) == 0 && (perm >> XFEATURE_XTILEDATA & 1u);
}

kern_bf16_unit kern_bf16_unit_detect(void) {
    __builtin_cpu_init(); /* a no-op once the runtime has read the flags; needed before that */
    /* Linux hands out the tile state on request (per process, idempotent). */
    if (kern_amx_compiled() && cpuid_amx() && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 &&
        runtime_amx())
        return KERN_BF16_AMX;
    if (kern_avx512bf16_compiled() && cpuid_avx512bf16() && runtime_avx512bf16() && !runtime_amx()) return KERN_BF16_AVX512;
    return KERN_BF16_NONE;
}

static kern_bf16_unit dispatch_unit(void) {
    return runtime_amx() ? KERN_BF16_AMX : runtime_avx512bf16() ? KERN_BF16_AVX512 : KERN_BF16_NONE;
}
#else
kern_bf16_unit kern_bf16_unit_detect(void) { return KERN_BF16_NONE; }
static kern_bf16_unit dispatch_unit(void) { return KERN_BF16_NONE; }
#endif

const char *kern_bf16_unit_name(kern_bf16_unit u) {
    return u == KERN_BF16_AMX ? "amx" : u == KERN_BF16_AVX512 ? "avx512bf16" : "none";
}

bool kern_bf16_supported(void) { return kern_bf16_unit_detect() != KERN_BF16_NONE; }

size_t kern_bf16_scratch_floats(int n_threads) {
    return PEFT_MAX(kern_amx_scratch_floats(n_threads), kern_avx512bf16_scratch_floats(n_threads));
}

int kern_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp,
                   const float *bias, float beta, float *scratch, int n_threads) {
    return kern_bf16_gemm_ex(C, ldc, A, lda, M, K, N, Bp, (K + 31) / 32, bias, beta, scratch, n_threads);
}

int kern_bf16_gemm_ex(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                      const float *bias, float beta, float *scratch, int n_threads) {
    switch (dispatch_unit()) {
    case KERN_BF16_AMX: return kern_amx_bf16_gemm(C, ldc, A, lda, M, K, N, Bp, nkb, bias, beta, scratch, n_threads);
    case KERN_BF16_AVX512:
        return kern_avx512bf16_gemm(C, ldc, A, lda, M, K, N, Bp, nkb, bias, beta, scratch, n_threads);
    default: return PEFT_ERR_UNSUPPORTED;
    }
}

/* ---- the scalar model of vdpbf16ps -------------------------------------------
 * Intel SDM, VDPBF16PS, per 32-bit lane i:
 *   srcdest.fp32[i] += make_fp32(src1.bf16[2i+1]) * make_fp32(src2.bf16[2i+1])
 *   srcdest.fp32[i] += make_fp32(src1.bf16[2i+0]) * make_fp32(src2.bf16[2i+0])
 * each an f32 FMA with denormal inputs as zero, denormal outputs flushed to
 * zero, round to nearest even, MXCSR not consulted. NaN payloads are not
 * modelled (a NaN in, a NaN out). */
static float daz(float x) { return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x; }

/* acc + a·b rounded once; a result whose magnitude, rounded to 24 bits with
 * an unbounded exponent, is below FLT_MIN becomes a zero of its sign (x86
 * detects tininess after rounding). */
static float fma_daz_ftz(float acc, float a, float b) {
    a = daz(a);
    b = daz(b);
    acc = daz(acc);
    const float r = fmaf(a, b, acc);
    if (!(fabsf(r) <= FLT_MIN) || r == 0.0f) return r; /* normal, infinite, NaN or zero */
    /* fmaf rounded on the denormal grid, which differs from the 24-bit
     * rounding just below FLT_MIN: redo it 2^64 higher. That cannot
     * overflow: a nonzero |acc + a·b| < 2^-125 needs |a·b| < 2^-99 (else
     * acc and a·b are multiples of 2^-123 and so is their sum), so the
     * smaller factor is below 2^-49 and |acc| below 2^-98. */
    if (fabsf(a) < fabsf(b)) { const float t = a; a = b; b = t; }
    const float rs = fmaf(a, b * 0x1p64f, acc * 0x1p64f);
    return fabsf(rs) < FLT_MIN * 0x1p64f ? copysignf(0.0f, rs) : rs * 0x1p-64f;
}

float kern_bf16_dp_model(float acc, uint32_t a_pair, uint32_t b_pair) {
    acc = fma_daz_ftz(acc, kern_bf16_to_f32((uint16_t)(a_pair >> 16)), kern_bf16_to_f32((uint16_t)(b_pair >> 16)));
    return fma_daz_ftz(acc, kern_bf16_to_f32((uint16_t)(a_pair & 0xffffu)), kern_bf16_to_f32((uint16_t)(b_pair & 0xffffu)));
}

void kern_bf16_gemm_ref(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                        const float *bias, float beta) {
    const bool acc = bias || beta != 0.0f;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float *c = C + (size_t)m * ldc + n, v = 0.0f;
            if (acc) {
                v = beta == 0.0f ? 0.0f : beta == 1.0f ? *c : beta * *c;
                if (bias) v = v + bias[n];
            }
            const float *a = A + (size_t)m * lda;
            for (int k = 0; k < K; k += 2) {
                const uint32_t ap = kern_f32_to_bf16(a[k]) | (uint32_t)(k + 1 < K ? kern_f32_to_bf16(a[k + 1]) : 0) << 16;
                const uint32_t bp = Bp[pack_off(k, n, nkb)] | (uint32_t)Bp[pack_off(k + 1, n, nkb)] << 16;
                v = kern_bf16_dp_model(v, ap, bp);
            }
            *c = v;
        }
}
