/* bf16.c — frozen weights packed as bfloat16 for the AMX GEMM (amx.c).
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

bool kern_bf16_supported(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx = (d >> 22 & 1u) && (d >> 24 & 1u); /* AMX-BF16, AMX-TILE */
    if (!amx || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a >> 5 & 1u)) return false; /* AVX512-BF16 */
    if (!kern_amx_compiled()) return false;
    /* Linux hands out the tile state on request (per process, idempotent). */
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return false;
#endif
}
