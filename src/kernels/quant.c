/* quant.c — GGML block formats: sizes, row dequantization, reference
 * quantizers for the formats we write (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1).
 *
 * All multi-byte fields are little-endian and read byte by byte, so blocks
 * may sit at any address (GGUF tensors are only 32-byte aligned and rows of
 * 34-byte Q8_0 blocks are not even 2-byte aligned).
 *
 * Float order matters: results are compared bit-exactly with gguf-py, which
 * evaluates e.g. Q4_K as (d*sc)*q - (dmin*m) with no fused multiply-add.
 * GCC in ISO C mode (-std=c11) does not contract a*b+c into an FMA; clang
 * does by default, hence the pragma. */
#include "kernels/quant.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define KQ_QK 32    /* elements per block of the simple formats */
#define KQ_QKK 256  /* elements per K-quant super-block */

/* f16 bits -> f32, exact for every input, branch-free enough to vectorize:
 * place exponent+mantissa 13 bits up (a float whose exponent is the half's
 * exponent, un-rebiased), multiply by 2^(127-15) to rebias — this also turns
 * half subnormals into the right normal floats — then patch inf/NaN. */
static inline float kq_half(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7fffu) << 13;
    float f;
    memcpy(&f, &bits, 4);
    f *= 0x1p112f;
    memcpy(&bits, &f, 4);
    if ((h & 0x7c00u) == 0x7c00u) bits = 0x7f800000u | ((uint32_t)(h & 0x3ffu) << 13);
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t kq_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t kq_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline float kq_f16_at(const uint8_t *p) { return kq_half(kq_u16(p)); }
static inline void kq_put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

int64_t kern_dtype_block_elems(peft_dtype t) {
    switch (t) {
    case PEFT_DT_Q8_0: case PEFT_DT_Q4_0: case PEFT_DT_Q4_1: case PEFT_DT_Q5_0: case PEFT_DT_Q5_1:
        return KQ_QK;
    case PEFT_DT_Q2_K: case PEFT_DT_Q3_K: case PEFT_DT_Q4_K: case PEFT_DT_Q5_K: case PEFT_DT_Q6_K:
    case PEFT_DT_Q8_K:
        return KQ_QKK;
    default:
        return peft_dtype_elem_size(t) ? 1 : 0;
    }
}

size_t kern_dtype_block_bytes(peft_dtype t) {
    switch (t) {
    case PEFT_DT_Q8_0: return 2 + 32;                    /* d, q[32] */
    case PEFT_DT_Q4_0: return 2 + 16;                    /* d, nibbles[16] */
    case PEFT_DT_Q4_1: return 2 + 2 + 16;                /* d, m, nibbles[16] */
    case PEFT_DT_Q5_0: return 2 + 4 + 16;                /* d, qh, nibbles */
    case PEFT_DT_Q5_1: return 2 + 2 + 4 + 16;            /* d, m, qh, nibbles */
    case PEFT_DT_Q2_K: return 16 + 64 + 2 + 2;           /* scales, qs, d, dmin */
    case PEFT_DT_Q3_K: return 32 + 64 + 12 + 2;          /* hmask, qs, scales, d */
    case PEFT_DT_Q4_K: return 2 + 2 + 12 + 128;          /* d, dmin, scales, qs */
    case PEFT_DT_Q5_K: return 2 + 2 + 12 + 32 + 128;     /* d, dmin, scales, qh, qs */
    case PEFT_DT_Q6_K: return 128 + 64 + 16 + 2;         /* ql, qh, scales, d */
    case PEFT_DT_Q8_K: return 4 + 256 + 32;              /* f32 d, q[256], i16 bsums[16] */
    default: return peft_dtype_elem_size(t);
    }
}

size_t kern_dtype_row_bytes(peft_dtype t, int64_t n) {
    int64_t be = kern_dtype_block_elems(t);
    size_t bb = kern_dtype_block_bytes(t);
    if (be <= 0 || bb == 0 || n < 0 || n % be != 0) return 0;
    uint64_t nb = (uint64_t)(n / be);
    if (nb > SIZE_MAX / bb) return 0;
    return (size_t)nb * bb;
}

bool kern_dtype_is_float_convertible(peft_dtype t) {
    switch (t) {
    case PEFT_DT_F32: case PEFT_DT_F16: case PEFT_DT_BF16:
    case PEFT_DT_Q8_0: case PEFT_DT_Q4_0: case PEFT_DT_Q4_1: case PEFT_DT_Q5_0: case PEFT_DT_Q5_1:
    case PEFT_DT_Q2_K: case PEFT_DT_Q3_K: case PEFT_DT_Q4_K: case PEFT_DT_Q5_K: case PEFT_DT_Q6_K:
    case PEFT_DT_Q8_K:
        return true;
    default:
        return false;
    }
}

bool kern_dtype_can_quantize(peft_dtype t) {
    switch (t) {
    case PEFT_DT_F32: case PEFT_DT_F16: case PEFT_DT_BF16:
    case PEFT_DT_Q8_0: case PEFT_DT_Q4_0: case PEFT_DT_Q4_1: case PEFT_DT_Q5_0: case PEFT_DT_Q5_1:
        return true;
    default:
        return false;
    }
}

/* ---- dequantization, one block at a time ---------------------------------- */

/* Q8_0: y[j] = d * q[j], q int8. */
static void dq_q8_0(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
}

/* Q4_0: element j < 16 is the low nibble of byte j, element j + 16 the high
 * nibble; y = d * (nibble - 8). */
static void dq_q4_0(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((int)(qs[j] & 0xF) - 8);
        y[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
    }
}

/* Q4_1: y = d * nibble + m. */
static void dq_q4_1(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b), m = kq_f16_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(qs[j] & 0xF) + m;
        y[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
}

/* Q5_0: 5-bit q = nibble | (bit j of the u32 qh) << 4; y = d * (q - 16). */
static void dq_q5_0(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b);
    const uint32_t qh = kq_u32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int q0 = (int)((qs[j] & 0xF) | (((qh >> j) & 1u) << 4));
        int q1 = (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
        y[j] = d * (float)(q0 - 16);
        y[j + 16] = d * (float)(q1 - 16);
    }
}

/* Q5_1: y = d * q + m. */
static void dq_q5_1(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b), m = kq_f16_at(b + 2);
    const uint32_t qh = kq_u32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        unsigned q0 = (qs[j] & 0xFu) | (((qh >> j) & 1u) << 4);
        unsigned q1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * (float)q0 + m;
        y[j + 16] = d * (float)q1 + m;
    }
}

/* Q2_K: 256 values in 16 groups of 16. Element h*128 + s*32 + j (h < 2,
 * s < 4, j < 32) is bits 2s..2s+1 of qs[h*32 + j]; group g = idx / 16 has
 * scale d * (scales[g] & 15) and offset dmin * (scales[g] >> 4):
 * y = (d*sc) * q - (dmin*m). */
static void dq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    const float d = kq_f16_at(b + 80), dmin = kq_f16_at(b + 82);
    for (int h = 0; h < 2; h++) {
        for (int s = 0; s < 4; s++) {
            for (int half = 0; half < 2; half++) {
                const int g = h * 8 + s * 2 + half;
                const float dl = d * (float)(sc[g] & 0xF), ml = dmin * (float)(sc[g] >> 4);
                const uint8_t *q = qs + h * 32 + half * 16;
                float *o = y + h * 128 + s * 32 + half * 16;
                for (int j = 0; j < 16; j++) o[j] = dl * (float)((q[j] >> (2 * s)) & 3) - ml;
            }
        }
    }
}

/* Q3_K: element idx = h*128 + s*32 + j takes 2 low bits from qs as in Q2_K
 * and a high bit from bit (h*4 + s) of hmask[j]; q = low - (hbit ? 0 : 4).
 * 16 signed 6-bit scales: low nibble from scales[g % 8] (>> 4 for g >= 8),
 * high 2 bits from scales[8 + g % 4] >> (2 * (g / 4)); minus 32.
 * y = (d * scale[idx / 16]) * q. */
static void dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
    const float d = kq_f16_at(b + 108);
    float dl[16];
    for (int g = 0; g < 16; g++) {
        int lo = g < 8 ? (sc[g] & 0xF) : (sc[g - 8] >> 4);
        int hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        dl[g] = d * (float)((lo | (hi << 4)) - 32);
    }
    for (int h = 0; h < 2; h++) {
        for (int s = 0; s < 4; s++) {
            const int bit = h * 4 + s;
            for (int half = 0; half < 2; half++) {
                const float scale = dl[h * 8 + s * 2 + half];
                const uint8_t *q = qs + h * 32 + half * 16, *m = hm + half * 16;
                float *o = y + h * 128 + s * 32 + half * 16;
                for (int j = 0; j < 16; j++) {
                    int v = (int)((q[j] >> (2 * s)) & 3) - (((m[j] >> bit) & 1) ? 0 : 4);
                    o[j] = scale * (float)v;
                }
            }
        }
    }
}

/* 8 pairs of 6-bit (scale, min) packed into 12 bytes (Q4_K, Q5_K): groups
 * 0..3 use the low 6 bits of bytes g and g+4; groups 4..7 take their low
 * nibbles from byte g+4 and their top 2 bits from the top of bytes g-4 / g. */
static inline void kq_scale_min_k4(int g, const uint8_t *s, int *sc, int *mn) {
    if (g < 4) {
        *sc = s[g] & 63;
        *mn = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4);
        *mn = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

/* Q4_K: 8 groups of 32; element c*64 + t*32 + j is nibble t of qs[c*32 + j];
 * y = (d*sc) * q - (dmin*m). */
static void dq_q4_k(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b), dmin = kq_f16_at(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int g = 0; g < 8; g++) {
        int sc, mn;
        kq_scale_min_k4(g, scales, &sc, &mn);
        const float dl = d * (float)sc, ml = dmin * (float)mn;
        const uint8_t *q = qs + (g / 2) * 32;
        const int shift = 4 * (g % 2);
        float *o = y + g * 32;
        for (int j = 0; j < 32; j++) o[j] = dl * (float)((q[j] >> shift) & 0xF) - ml;
    }
}

/* Q5_K: Q4_K plus a fifth bit: bit g of qh[j] for element g*32 + j. */
static void dq_q5_k(const uint8_t *b, float *y) {
    const float d = kq_f16_at(b), dmin = kq_f16_at(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int g = 0; g < 8; g++) {
        int sc, mn;
        kq_scale_min_k4(g, scales, &sc, &mn);
        const float dl = d * (float)sc, ml = dmin * (float)mn;
        const uint8_t *q = qs + (g / 2) * 32;
        const int shift = 4 * (g % 2);
        float *o = y + g * 32;
        for (int j = 0; j < 32; j++) {
            unsigned v = ((q[j] >> shift) & 0xFu) | (((qh[j] >> g) & 1u) << 4);
            o[j] = dl * (float)v - ml;
        }
    }
}

/* Q6_K: element h*128 + s*32 + j: low nibble from ql[h*64 + (s%2)*32 + j]
 * (high nibble when s >= 2), 2 high bits from qh[h*32 + j] >> 2s;
 * q = 6-bit - 32; y = (d * scales[idx/16]) * q with int8 scales. */
static void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = kq_f16_at(b + 208);
    for (int h = 0; h < 2; h++) {
        for (int s = 0; s < 4; s++) {
            const uint8_t *l = ql + h * 64 + (s % 2) * 32, *hh = qh + h * 32;
            const int lshift = 4 * (s / 2), hshift = 2 * s;
            for (int half = 0; half < 2; half++) {
                const int idx0 = h * 128 + s * 32 + half * 16;
                const float dl = d * (float)sc[idx0 / 16];
                float *o = y + idx0;
                for (int j = half * 16; j < half * 16 + 16; j++) {
                    int v = (int)(((l[j] >> lshift) & 0xF) | (((hh[j] >> hshift) & 3) << 4)) - 32;
                    o[j - half * 16] = dl * (float)v;
                }
            }
        }
    }
}

/* Q8_K: f32 d, int8 q[256] (bsums unused here): y = d * q. */
static void dq_q8_k(const uint8_t *b, float *y) {
    uint32_t bits = kq_u32(b);
    float d;
    memcpy(&d, &bits, 4);
    const int8_t *q = (const int8_t *)(b + 4);
    for (int j = 0; j < 256; j++) y[j] = d * (float)q[j];
}

int kern_dequant_row(peft_dtype t, const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    if (n < 0) return PEFT_ERR_INVALID;
    switch (t) {
    case PEFT_DT_F32:
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    case PEFT_DT_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = kq_half(kq_u16(p + 2 * i));
        return 0;
    case PEFT_DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)kq_u16(p + 2 * i) << 16;
            memcpy(dst + i, &bits, 4);
        }
        return 0;
    default: break;
    }
    void (*fn)(const uint8_t *, float *);
    switch (t) {
    case PEFT_DT_Q8_0: fn = dq_q8_0; break;
    case PEFT_DT_Q4_0: fn = dq_q4_0; break;
    case PEFT_DT_Q4_1: fn = dq_q4_1; break;
    case PEFT_DT_Q5_0: fn = dq_q5_0; break;
    case PEFT_DT_Q5_1: fn = dq_q5_1; break;
    case PEFT_DT_Q2_K: fn = dq_q2_k; break;
    case PEFT_DT_Q3_K: fn = dq_q3_k; break;
    case PEFT_DT_Q4_K: fn = dq_q4_k; break;
    case PEFT_DT_Q5_K: fn = dq_q5_k; break;
    case PEFT_DT_Q6_K: fn = dq_q6_k; break;
    case PEFT_DT_Q8_K: fn = dq_q8_k; break;
    default: return PEFT_ERR_UNSUPPORTED;
    }
    const int64_t be = kern_dtype_block_elems(t);
    const size_t bb = kern_dtype_block_bytes(t);
    if (n % be != 0) return PEFT_ERR_INVALID;
    /* One call per block (32 or 256 values), the inner loops are flat. */
    for (int64_t i = 0; i < n / be; i++) fn(p + (size_t)i * bb, dst + i * be);
    return 0;
}

/* ---- quantization (ggml's *_ref quantizers) ------------------------------- */

/* Q8_0: d = amax / 127, q = round-half-away(x / d) (as x * (1/d)). */
static void q_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        float a = fabsf(x[j]);
        if (a > amax) amax = a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    kq_put_u16(b, peft_f32_to_f16(d));
    for (int j = 0; j < 32; j++) {
        float v = roundf(x[j] * id);  /* |v| <= 127 unless id overflowed */
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        b[2 + j] = (uint8_t)(int8_t)(v == v ? v : 0.0f);
    }
}

/* trunc(v) clipped to [0, hi] as ggml's MIN(hi, (int8_t)v) for the values a
 * sane block produces, but defined for every float (NaN and inf included). */
static inline int kq_trunc_clip(float v, int hi) {
    if (!(v > 0.0f)) return 0;
    if (v >= (float)hi) return hi;
    return (int)v;
}

/* The signed value of largest magnitude (first one on ties), as ggml picks it. */
static float kq_signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    }
    return max;
}

/* Q4_0: d = max / -8 (signed extreme maps to -8), q = min(15, trunc(x/d + 8.5)). */
static void q_q4_0(const float *x, uint8_t *b) {
    const float d = kq_signed_absmax(x, 32) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    kq_put_u16(b, peft_f32_to_f16(d));
    for (int j = 0; j < 16; j++) {
        int q0 = kq_trunc_clip(x[j] * id + 8.5f, 15), q1 = kq_trunc_clip(x[j + 16] * id + 8.5f, 15);
        b[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void kq_minmax(const float *x, int n, float *mn, float *mx) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo; *mx = hi;
}

/* Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + 0.5)). */
static void q_q4_1(const float *x, uint8_t *b) {
    float mn, mx;
    kq_minmax(x, 32, &mn, &mx);
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    kq_put_u16(b, peft_f32_to_f16(d));
    kq_put_u16(b + 2, peft_f32_to_f16(mn));
    for (int j = 0; j < 16; j++) {
        int q0 = kq_trunc_clip((x[j] - mn) * id + 0.5f, 15), q1 = kq_trunc_clip((x[j + 16] - mn) * id + 0.5f, 15);
        b[4 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

/* Q5_0: d = max / -16, q = min(31, trunc(x/d + 16.5)); bit 4 of element j
 * goes to bit j of qh. */
static void q_q5_0(const float *x, uint8_t *b) {
    const float d = kq_signed_absmax(x, 32) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    kq_put_u16(b, peft_f32_to_f16(d));
    for (int j = 0; j < 16; j++) {
        int q0 = kq_trunc_clip(x[j] * id + 16.5f, 31), q1 = kq_trunc_clip(x[j + 16] * id + 16.5f, 31);
        b[6 + j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
        qh |= (uint32_t)((q0 >> 4) & 1) << j;
        qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
    }
    for (int k = 0; k < 4; k++) b[2 + k] = (uint8_t)(qh >> (8 * k));
}

/* Q5_1: d = (max - min) / 31, q = min(31, trunc((x - min)/d + 0.5)). */
static void q_q5_1(const float *x, uint8_t *b) {
    float mn, mx;
    kq_minmax(x, 32, &mn, &mx);
    const float d = (mx - mn) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    kq_put_u16(b, peft_f32_to_f16(d));
    kq_put_u16(b + 2, peft_f32_to_f16(mn));
    for (int j = 0; j < 16; j++) {
        int q0 = kq_trunc_clip((x[j] - mn) * id + 0.5f, 31), q1 = kq_trunc_clip((x[j + 16] - mn) * id + 0.5f, 31);
        b[8 + j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
        qh |= (uint32_t)((q0 >> 4) & 1) << j;
        qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
    }
    for (int k = 0; k < 4; k++) b[4 + k] = (uint8_t)(qh >> (8 * k));
}

int kern_quant_row(peft_dtype t, const float *src, void *dst, int64_t n) {
    uint8_t *p = dst;
    if (n < 0) return PEFT_ERR_INVALID;
    switch (t) {
    case PEFT_DT_F32:
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    case PEFT_DT_F16:
        for (int64_t i = 0; i < n; i++) kq_put_u16(p + 2 * i, peft_f32_to_f16(src[i]));
        return 0;
    case PEFT_DT_BF16:
        for (int64_t i = 0; i < n; i++) kq_put_u16(p + 2 * i, peft_f32_to_bf16(src[i]));
        return 0;
    default: break;
    }
    void (*fn)(const float *, uint8_t *);
    switch (t) {
    case PEFT_DT_Q8_0: fn = q_q8_0; break;
    case PEFT_DT_Q4_0: fn = q_q4_0; break;
    case PEFT_DT_Q4_1: fn = q_q4_1; break;
    case PEFT_DT_Q5_0: fn = q_q5_0; break;
    case PEFT_DT_Q5_1: fn = q_q5_1; break;
    default: return PEFT_ERR_UNSUPPORTED;
    }
    if (n % KQ_QK != 0) return PEFT_ERR_INVALID;
    const size_t bb = kern_dtype_block_bytes(t);
    for (int64_t i = 0; i < n / KQ_QK; i++) fn(src + i * KQ_QK, p + (size_t)i * bb);
    return 0;
}
