/* qdot.h — decoding products on 8-bit activations (llama.cpp's scheme, our
 * own code): x is quantized once per product to blocks of 32 int8 with an
 * f32 scale, then each weight block is dotted with an activation block in
 * integers (u8 × s8 pairs summed in int32: AVX2 vpmaddubsw + vpmaddwd, or
 * vpdpbusd with AVX-VNNI / AVX512-VNNI), the int32 sums scaled in f32.
 *
 * The activation format (one row of K values, K a multiple of 32):
 *   q[k]  = rint(x[k] / d[b]) in [-127, 127], b = k / 32
 *   d[b]  = max |x| over block b / 127 (0 for an all-zero block)
 *   s[b]  = Σ x over block b, in f32 (exact x, not q: the min terms of
 *           Q4_1, Q5_1, Q4_K, Q5_K are m·Σx, which need no quantization)
 *
 * Every kernel's arithmetic is fixed, lane by lane: for each unit of 32
 * weights (a block, or a K-quant group of 32) eight int32 lanes hold the
 * sums of 4 consecutive products (lane k: elements 4k..4k+3), converted to
 * f32 (exact: |sum| < 2^17) and fused-multiply-added into eight f32 lanes
 * with the unit's scale (wscale · d[b], rounded once); a row's result is
 * the lanes summed as (l0+l4 + l2+l6) + (l1+l5 + l3+l7), plus the min
 * terms. kern_qdot_rows_ref computes exactly that in scalar C: each SIMD
 * unit equals it bit for bit (tests/test_qdot.c), whatever the instruction
 * (vpmaddubsw cannot saturate here: |u| <= 128, |s| <= 127). */
#ifndef PEFT_KERN_QDOT_H
#define PEFT_KERN_QDOT_H

#include "kernels/kernels.h"

/* One quantized activation row (q: K bytes; d, s: K / 32 floats). */
typedef struct {
    const int8_t *q;
    const float *d, *s;
} kq8_row;

/* Weight types with an int8 kernel (K a multiple of their block). */
bool kern_qdot_type(peft_dtype t);

/* x (K floats, K % 32 == 0) into q, d, s as above. s is summed as the
 * SIMD quantizer sums it (eight lanes of four, then the lanes as below), so
 * kern_qdot_quantize gives the same q, d and s bit for bit on finite x. */
void kern_qdot_quantize_ref(const float *x, int64_t K, int8_t *q, float *d, float *s);

/* out[n·T + t] = Σ_k W[n, k]·x_t[k] for rows n < n_rows of w (row stride rb
 * bytes), K columns, T <= 4 activation rows; dtype must pass kern_qdot_type.
 * Scalar reference of the kernels' arithmetic. */
void kern_qdot_rows_ref(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                        int T, float *out);

typedef enum { KERN_QDOT_NONE = 0, KERN_QDOT_AVX2 = 1, KERN_QDOT_AVXVNNI = 2, KERN_QDOT_AVX512VNNI = 3 } kern_qdot_unit;
/* The best unit this build and CPU have (the compiler runtime's cpu flags:
 * no system call, cheap enough per product). */
kern_qdot_unit kern_qdot_unit_best(void);
const char *kern_qdot_unit_name(kern_qdot_unit u);   /* "avx512vnni", "avxvnni", "avx2", "none" */
/* Whether this build has unit u's kernel (whatever the CPU). */
bool kern_qdot_unit_compiled(kern_qdot_unit u);

/* Unit u's products and quantizer (u must be compiled and supported by the
 * CPU; KERN_QDOT_NONE runs the references). */
void kern_qdot_rows(kern_qdot_unit u, peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K,
                    const kq8_row *x, int T, float *out);
void kern_qdot_quantize(kern_qdot_unit u, const float *x, int64_t K, int8_t *q, float *d, float *s);

/* The units' entry points (qdot_avx2.c, qdot_avxvnni.c, qdot_avx512vnni.c). */
void kern_qdot_rows_avx2(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                         int T, float *out);
void kern_qdot_quantize_avx2(const float *x, int64_t K, int8_t *q, float *d, float *s);
void kern_qdot_rows_avxvnni(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                            int T, float *out);
void kern_qdot_rows_avx512vnni(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K,
                               const kq8_row *x, int T, float *out);
bool kern_qdot_avx2_compiled(void);
bool kern_qdot_avxvnni_compiled(void);
bool kern_qdot_avx512vnni_compiled(void);

/* y (T, N) = beta·y + x (T, K)·Wᵀ (+ bias) on unit u (not NONE), for
 * T <= KERN_MATVEC_MAX_T and W's dtype passing kern_qdot_type: kern_matvec
 * runs it for weights with q8_act set. scratch: at least
 * kern_matvec_q8_scratch_floats(K) floats (kern_matvec_scratch_floats
 * counts them). */
size_t kern_matvec_q8_scratch_floats(int64_t K);
int kern_matvec_q8(kern_qdot_unit u, float *y, int ldy, const float *x, int T, const kern_weight *w,
                   const float *bias, float beta, float *scratch, int n_threads);

#endif
