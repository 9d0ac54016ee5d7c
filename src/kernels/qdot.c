/* qdot.c — the 8-bit activation format, the scalar references of the int8
 * decoding products (qdot.h states their arithmetic) and the choice of unit.
 *
 * The references are the specification the SIMD units are tested against
 * bit for bit, so their float operations are spelled out: fmaf where a unit
 * fuses, plain products and sums elsewhere (GCC in ISO C mode contracts
 * nothing; clang is told so below). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include "kernels/qdot.h"
#include "kernels/quant.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

bool kern_qdot_type(peft_dtype t) {
    switch (t) {
    case PEFT_DT_Q8_0: case PEFT_DT_Q4_0: case PEFT_DT_Q4_1: case PEFT_DT_Q5_0: case PEFT_DT_Q5_1:
    case PEFT_DT_Q4_K: case PEFT_DT_Q5_K: case PEFT_DT_Q6_K:
        return true;
    default:
        return false;
    }
}

/* The eight lanes summed in the units' order (qdot.h). */
static float lanes_sum(const float *l) {
    const float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    return (a0 + a2) + (a1 + a3);
}

void kern_qdot_quantize_ref(const float *x, int64_t K, int8_t *q, float *d, float *s) {
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f, lane[8];
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        for (int i = 0; i < 8; i++) lane[i] = (xb[i] + xb[8 + i]) + (xb[16 + i] + xb[24 + i]);
        s[b] = lanes_sum(lane);
        d[b] = amax / 127.0f;
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int j = 0; j < 32; j++) {
            float v = nearbyintf(xb[j] * id);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            q[b * 32 + j] = (int8_t)(v == v ? v : 0.0f);
        }
    }
}

static inline float f16_at(const uint8_t *p) { return peft_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* acc (8 lanes) += the unit's 32 products w·q, lane k the sum of elements
 * 4k..4k+3 times sc_lo (lanes 0-3) or sc_hi (lanes 4-7). */
static void unit(float *acc, const int *w, const int8_t *q, float sc_lo, float sc_hi) {
    for (int k = 0; k < 8; k++) {
        int32_t is = 0;
        for (int j = 0; j < 4; j++) is += w[4 * k + j] * q[4 * k + j];
        acc[k] = fmaf((float)is, k < 4 ? sc_lo : sc_hi, acc[k]);
    }
}

/* The weights of a 32-block of the simple formats as integers, its scale
 * and min (0 where none). */
static void simple_block(peft_dtype dt, const uint8_t *p, int *w, float *dw, float *mn) {
    *mn = 0.0f;
    switch (dt) {
    case PEFT_DT_Q8_0:
        *dw = f16_at(p);
        for (int j = 0; j < 32; j++) w[j] = (int8_t)p[2 + j];
        break;
    case PEFT_DT_Q4_0: case PEFT_DT_Q4_1: {
        const bool m = dt == PEFT_DT_Q4_1;
        const uint8_t *qs = p + (m ? 4 : 2);
        *dw = f16_at(p);
        if (m) *mn = f16_at(p + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = (qs[j] & 15) - (m ? 0 : 8);
            w[j + 16] = (qs[j] >> 4) - (m ? 0 : 8);
        }
        break;
    }
    default: { /* Q5_0, Q5_1 */
        const bool m = dt == PEFT_DT_Q5_1;
        const uint8_t *h = p + (m ? 4 : 2), *qs = h + 4;
        const uint32_t qh = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
        *dw = f16_at(p);
        if (m) *mn = f16_at(p + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = (int)((qs[j] & 15) | ((qh >> j & 1u) << 4)) - (m ? 0 : 16);
            w[j + 16] = (int)((qs[j] >> 4) | ((qh >> (j + 16) & 1u) << 4)) - (m ? 0 : 16);
        }
        break;
    }
    }
}

static void scale_min_k4(int g, const uint8_t *s, int *sc, int *mn) {
    if (g < 4) {
        *sc = s[g] & 63;
        *mn = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4);
        *mn = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

static float row_ref(peft_dtype dt, const uint8_t *row, int64_t K, const kq8_row *x) {
    float acc[8] = {0}, macc[8] = {0}, msum = 0.0f;
    int w[32];
    if (dt == PEFT_DT_Q4_K || dt == PEFT_DT_Q5_K) {
        const bool five = dt == PEFT_DT_Q5_K;
        const size_t bb = kern_dtype_block_bytes(dt);
        for (int64_t sb = 0; sb < K / 256; sb++) {
            const uint8_t *p = row + (size_t)sb * bb, *qh = p + 16, *qs = p + (five ? 48 : 16);
            const float d = f16_at(p), dmin = f16_at(p + 2);
            for (int g = 0; g < 8; g++) {
                int sc, mn;
                scale_min_k4(g, p + 4, &sc, &mn);
                for (int j = 0; j < 32; j++) {
                    w[j] = (qs[(g / 2) * 32 + j] >> (4 * (g % 2))) & 15;
                    if (five) w[j] |= (qh[j] >> g & 1) << 4;
                }
                const int64_t b = sb * 8 + g;
                const float f = (d * (float)sc) * x->d[b];
                unit(acc, w, x->q + b * 32, f, f);
                macc[g] = fmaf(dmin * (float)mn, x->s[b], macc[g]);
            }
        }
        return lanes_sum(acc) - lanes_sum(macc);
    }
    if (dt == PEFT_DT_Q6_K) {
        for (int64_t sb = 0; sb < K / 256; sb++) {
            const uint8_t *p = row + (size_t)sb * 210, *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            const float d = f16_at(p + 208);
            for (int h = 0; h < 2; h++)
                for (int s = 0; s < 4; s++) {
                    const uint8_t *l = ql + h * 64 + (s % 2) * 32, *hh = qh + h * 32;
                    for (int j = 0; j < 32; j++)
                        w[j] = (int)(((l[j] >> (4 * (s / 2))) & 15) | (((hh[j] >> (2 * s)) & 3) << 4)) - 32;
                    const int64_t b = sb * 8 + h * 4 + s;
                    const float lo = (d * (float)sc[h * 8 + s * 2]) * x->d[b];
                    const float hi = (d * (float)sc[h * 8 + s * 2 + 1]) * x->d[b];
                    unit(acc, w, x->q + b * 32, lo, hi);
                }
        }
        return lanes_sum(acc);
    }
    const size_t bb = kern_dtype_block_bytes(dt);
    for (int64_t b = 0; b < K / 32; b++) {
        float dw, mn;
        simple_block(dt, row + (size_t)b * bb, w, &dw, &mn);
        const float f = dw * x->d[b];
        unit(acc, w, x->q + b * 32, f, f);
        if (dt == PEFT_DT_Q4_1 || dt == PEFT_DT_Q5_1) msum += mn * x->s[b];
    }
    return lanes_sum(acc) + msum;
}

void kern_qdot_rows_ref(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                        int T, float *out) {
    for (int64_t n = 0; n < n_rows; n++)
        for (int t = 0; t < T; t++) out[n * T + t] = row_ref(dt, w + (size_t)n * rb, K, &x[t]);
}

/* ---- units ---------------------------------------------------------------- */

bool kern_qdot_unit_compiled(kern_qdot_unit u) {
    switch (u) {
    case KERN_QDOT_NONE: return true;
    case KERN_QDOT_AVX2: return kern_qdot_avx2_compiled();
    case KERN_QDOT_AVXVNNI: return kern_qdot_avxvnni_compiled();
    case KERN_QDOT_AVX512VNNI: return kern_qdot_avx512vnni_compiled();
    }
    return false;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports
 * does not know the name. */
static bool cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1u);
}
#endif

kern_qdot_unit kern_qdot_unit_best(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    /* every unit also uses AVX2, FMA and F16C (the block scales) */
    if (!kern_qdot_avx2_compiled() || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !cpu_f16c())
        return KERN_QDOT_NONE;
    if (kern_qdot_avx512vnni_compiled() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl"))
        return KERN_QDOT_AVX512VNNI;
#if !defined(__clang__) /* clang 14 does not know the name */
    if (kern_qdot_avxvnni_compiled() && __builtin_cpu_supports("avxvnni")) return KERN_QDOT_AVXVNNI;
#endif
    return KERN_QDOT_AVX2;
#else
    return KERN_QDOT_NONE;
#endif
}

const char *kern_qdot_unit_name(kern_qdot_unit u) {
    switch (u) {
    case KERN_QDOT_AVX2: return "avx2";
    case KERN_QDOT_AVXVNNI: return "avxvnni";
    case KERN_QDOT_AVX512VNNI: return "avx512vnni";
    default: return "none";
    }
}

void kern_qdot_rows(kern_qdot_unit u, peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K,
                    const kq8_row *x, int T, float *out) {
    switch (u) {
    case KERN_QDOT_AVX512VNNI: kern_qdot_rows_avx512vnni(dt, w, rb, n_rows, K, x, T, out); return;
    case KERN_QDOT_AVXVNNI: kern_qdot_rows_avxvnni(dt, w, rb, n_rows, K, x, T, out); return;
    case KERN_QDOT_AVX2: kern_qdot_rows_avx2(dt, w, rb, n_rows, K, x, T, out); return;
    default: kern_qdot_rows_ref(dt, w, rb, n_rows, K, x, T, out); return;
    }
}

void kern_qdot_quantize(kern_qdot_unit u, const float *x, int64_t K, int8_t *q, float *d, float *s) {
    if (u == KERN_QDOT_NONE) kern_qdot_quantize_ref(x, K, q, d, s);
    else kern_qdot_quantize_avx2(x, K, q, d, s);
}
