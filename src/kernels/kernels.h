/* kernels.h — pure functions on float arrays: the building blocks of every
 * architecture. Shapes are in the comments: x is (T, C) means T rows of C
 * contiguous floats. Backward functions accumulate (+=) into gradients so a
 * tensor used twice just works. Nothing here owns memory beyond the call. */
#ifndef PEFT_KERNELS_H
#define PEFT_KERNELS_H

#include "core/core.h"

/* A frozen weight matrix for y = x·Wᵀ, in its stored dtype.
 * Logical shape (rows = out features N, cols = in features K). Normally
 * stored row-major as (N, K) (HF nn.Linear, GGUF ne = [K, N]); transposed
 * means stored (K, N), as GPT-2's Conv1D does (plain float dtypes only). */
typedef struct {
    peft_dtype dtype;
    int64_t rows, cols;
    const void *data;
    bool transposed;
} kern_weight;

/* Output rows per dequantized tile; fixed so that results do not depend on
 * the thread count. */
int kern_matmul_tile_rows(int64_t K);
/* Floats of scratch kern_matmul needs for any weight of at most K columns on
 * n_threads. */
size_t kern_matmul_scratch_floats(int64_t K, int n_threads);

/* y (T, N) = beta·y + x (T, K) · Wᵀ (+ bias (N), may be NULL).
 * Quantized and half weights are converted to f32 one tile of output rows at
 * a time, just before their GEMM; OpenMP splits tiles across n_threads, BLAS
 * runs single-threaded inside. ldy is y's row stride (>= N). */
int kern_matmul(float *y, int ldy, const float *x, int T, const kern_weight *w,
                const float *bias, float beta, float *scratch, int n_threads);

/* dx (T, K) += dy (T, N) · W — the input gradient of a frozen linear. */
int kern_matmul_dx(float *dx, const float *dy, int T, const kern_weight *w, float *scratch,
                   int n_threads);

/* Row r of W as f32 (K floats): embedding lookups on any dtype. */
int kern_weight_row(const kern_weight *w, int64_t r, float *out);

/* RMSNorm: y = x / sqrt(mean(x²) + eps) · w.  x, y (T, C); rstd (T) saved
 * for the backward when non-NULL. */
void kern_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int T, int C,
                      float eps);
/* LayerNorm: y = (x - mean) · rstd · w + b.  mean, rstd (T) optional. */
void kern_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                        const float *b, int T, int C, float eps);

/* RoPE tables: cos/sin (n_pos, half) for angle pos·inv_freq[i]. */
void kern_rope_table(float *cos_t, float *sin_t, int n_pos, int half, const float *inv_freq);
/* Rotates x (T, n_heads, head_dim) in place, row stride ldx floats, pairing
 * (i, i + half) as HF's rotate_half does; pos (T) indexes the tables.
 * inverse = true rotates by -angle (the backward). */
void kern_rope(float *x, int ldx, const int32_t *pos, int T, int n_heads, int head_dim,
               int half, const float *cos_t, const float *sin_t, bool inverse);

/* a (n) = silu(g) · u  (SwiGLU). */
void kern_swiglu_fwd(float *a, const float *g, const float *u, int64_t n);
/* GELU, tanh approximation (GPT-2's gelu_new), in place allowed. */
void kern_gelu_tanh_fwd(float *y, const float *x, int64_t n);

/* Softmax of each row of x (T, C) in place. */
void kern_softmax_rows(float *x, int T, int C);

/* Causal attention over a KV store, one sequence.
 * q (T, n_head, hd) with row stride ldq; k, v hold positions [0, p0 + T) as
 * (n_kv, kv_cap, hd); query t sits at position p0 + t and sees keys
 * 0..p0 + t. Head h uses kv head h / (n_head / n_kv) (grouped-query).
 * out (T, n_head, hd) with row stride ldo. scale = 1/sqrt(hd) usually.
 * scratch: n_threads · T · (p0 + T) floats. */
void kern_attention(float *out, int ldo, const float *q, int ldq, const float *k,
                    const float *v, int kv_cap, int T, int p0, int n_head, int n_kv, int hd,
                    float scale, float *scratch, int n_threads);

#endif
