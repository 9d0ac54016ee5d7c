/* avx512bf16_emul.h — the AVX-512 intrinsics src/kernels/avx512bf16.c uses,
 * written out lane by lane in portable C over GCC vector types, with
 * vdpbf16ps as kern_bf16_dp_model. test_bf16_emul.c compiles the kernel
 * against it so that the kernel's own code — blocking, K chunks, edge
 * blocks, A's rounding, the pack addressing, the thread split — runs, and is
 * compared with the reference, on CPUs without AVX-512. What it cannot
 * check is the instruction itself against its model (test_bf16.c does that
 * where the CPU has it). Only the intrinsics the kernel calls, only the
 * cases it uses (the compare predicate is _CMP_UNORD_Q). */
#ifndef PEFT_AVX512BF16_EMUL_H
#define PEFT_AVX512BF16_EMUL_H

#include "kernels/kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* 64-byte vectors are passed by value: CMakeLists.txt builds the test with
 * -Wno-psabi (GCC's note on their ABI without AVX-512). */
typedef float __m512 __attribute__((vector_size(64), may_alias));
typedef long long __m512i __attribute__((vector_size(64), may_alias));
typedef short __m512bh __attribute__((vector_size(64), may_alias));
typedef long long __m256i __attribute__((vector_size(32), may_alias));
typedef uint16_t __mmask16;
#define _CMP_UNORD_Q 3

typedef struct { uint32_t u[16]; } emul_u32x16;

static inline emul_u32x16 emul_u32(__m512i v) { emul_u32x16 r; memcpy(r.u, &v, 64); return r; }
static inline __m512i emul_pack(emul_u32x16 r) { __m512i v; memcpy(&v, r.u, 64); return v; }

static inline __m512 _mm512_loadu_ps(const float *p) { __m512 v; memcpy(&v, p, 64); return v; }
static inline void _mm512_storeu_ps(float *p, __m512 v) { memcpy(p, &v, 64); }
static inline __m512 _mm512_setzero_ps(void) { __m512 v; memset(&v, 0, 64); return v; }
static inline __m512i _mm512_loadu_si512(const void *p) { __m512i v; memcpy(&v, p, 64); return v; }
static inline __m512i _mm512_castps_si512(__m512 v) { __m512i r; memcpy(&r, &v, 64); return r; }
static inline __m512i _mm512_set1_epi32(int x) {
    emul_u32x16 r;
    for (int i = 0; i < 16; i++) r.u[i] = (uint32_t)x;
    return emul_pack(r);
}
static inline __m512i _mm512_srli_epi32(__m512i v, unsigned n) {
    emul_u32x16 r = emul_u32(v);
    for (int i = 0; i < 16; i++) r.u[i] = n > 31 ? 0 : r.u[i] >> n;
    return emul_pack(r);
}
static inline __m512i _mm512_add_epi32(__m512i a, __m512i b) {
    emul_u32x16 x = emul_u32(a), y = emul_u32(b);
    for (int i = 0; i < 16; i++) x.u[i] += y.u[i]; /* wraps, as the instruction */
    return emul_pack(x);
}
static inline __m512i _mm512_and_si512(__m512i a, __m512i b) {
    emul_u32x16 x = emul_u32(a), y = emul_u32(b);
    for (int i = 0; i < 16; i++) x.u[i] &= y.u[i];
    return emul_pack(x);
}
static inline __m512i _mm512_or_si512(__m512i a, __m512i b) {
    emul_u32x16 x = emul_u32(a), y = emul_u32(b);
    for (int i = 0; i < 16; i++) x.u[i] |= y.u[i];
    return emul_pack(x);
}
static inline __mmask16 _mm512_cmp_ps_mask(__m512 a, __m512 b, int pred) {
    float x[16], y[16];
    memcpy(x, &a, 64);
    memcpy(y, &b, 64);
    __mmask16 k = 0;
    if (pred == _CMP_UNORD_Q)
        for (int i = 0; i < 16; i++) k |= (__mmask16)((isnan(x[i]) || isnan(y[i])) << i);
    return k;
}
static inline __m512i _mm512_mask_mov_epi32(__m512i src, __mmask16 k, __m512i a) {
    emul_u32x16 s = emul_u32(src), x = emul_u32(a);
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) s.u[i] = x.u[i];
    return emul_pack(s);
}
/* vpmovdw: each lane's low 16 bits */
static inline __m256i _mm512_cvtepi32_epi16(__m512i v) {
    emul_u32x16 x = emul_u32(v);
    uint16_t h[16];
    for (int i = 0; i < 16; i++) h[i] = (uint16_t)x.u[i];
    __m256i r;
    memcpy(&r, h, 32);
    return r;
}
static inline void _mm256_storeu_si256(__m256i *p, __m256i v) { memcpy(p, &v, 32); }
/* vdpbf16ps: lane i takes the bf16 pair of 32-bit lane i of a and of b */
static inline __m512 _mm512_dpbf16_ps(__m512 acc, __m512bh a, __m512bh b) {
    float c[16];
    uint32_t x[16], y[16];
    memcpy(c, &acc, 64);
    memcpy(x, &a, 64);
    memcpy(y, &b, 64);
    for (int i = 0; i < 16; i++) c[i] = kern_bf16_dp_model(c[i], x[i], y[i]);
    __m512 r;
    memcpy(&r, c, 64);
    return r;
}

#endif
