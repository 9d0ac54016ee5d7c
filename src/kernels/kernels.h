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
    /* Optional bfloat16 packs (kern_bf16_pack_weight) for the AMX path:
     * forward (B = Wᵀ) and backward (B = W). When set, kern_matmul (more
     * than KERN_MATVEC_MAX_T rows) and kern_matmul_dx compute in bf16 with
     * f32 sums instead of converting W to f32. */
    const uint16_t *bf16_fwd, *bf16_bwd;
    /* Column-block stride of bf16_bwd in tiles when it is a view into a
     * pack made for more rows (q, k, v share one backward pack); 0: its
     * own, (rows + 31) / 32. */
    int bf16_bwd_nkb;
    /* Decoding products (at most KERN_MATVEC_MAX_T rows of x) may quantize
     * x to 8-bit blocks and take integer dot products with W's blocks
     * (src/kernels/qdot.h, llama.cpp's scheme) where W's dtype has such a
     * kernel and the CPU has AVX2; the results then differ from the f32
     * products by x's rounding (half a step of 1/127 of each 32-block's
     * largest value). false: x stays f32. The model sets it on its frozen
     * linears (peft_model_set_decode). */
    bool q8_act;
} kern_weight;

/* Output rows per dequantized tile; fixed so that results do not depend on
 * the thread count. */
int kern_matmul_tile_rows(int64_t K);
/* Floats of scratch kern_matmul needs for any f32 or quantized weight of at
 * most K columns on n_threads; a weight with bf16 packs needs
 * kern_bf16_scratch_floats(n_threads) too (the larger of the two). */
size_t kern_matmul_scratch_floats(int64_t K, int n_threads);

/* y (T, N) = beta·y + x (T, K) · Wᵀ (+ bias (N), may be NULL).
 * Quantized and half weights are converted to f32 one tile of output rows at
 * a time, just before their GEMM; OpenMP splits tiles across n_threads, BLAS
 * runs single-threaded inside. ldy is y's row stride (>= N). */
int kern_matmul(float *y, int ldy, const float *x, int T, const kern_weight *w,
                const float *bias, float beta, float *scratch, int n_threads);

/* The same product for at most KERN_MATVEC_MAX_T rows of x (decoding):
 * dots straight from the stored blocks, no tile conversion. kern_matmul
 * calls it by itself when T is small; scratch as kern_matvec_scratch_floats. */
#define KERN_MATVEC_MAX_T 4
/* On 8-bit activations (q8_act) up to this many rows: each chunk of W's
 * rows, read once, meets every row of x, four at a time, so a batched
 * decoding step (one row per sequence) reads the weight once, and each
 * row's result is the one it gets alone. */
#define KERN_MATVEC_Q8_MAX_T 32
/* Whether kern_matmul hands this product (T rows of x) to kern_matvec. */
bool kern_matvec_takes(const kern_weight *w, int T);
size_t kern_matvec_scratch_floats(int64_t K, int n_threads);
int kern_matvec(float *y, int ldy, const float *x, int T, const kern_weight *w, const float *bias,
                float beta, float *scratch, int n_threads);

/* dx (T, K) += dy (T, N; row stride lddy >= N) · W — the input gradient of
 * a frozen linear.
 * dx is split into fixed blocks of (256 rows × 256 columns); OpenMP hands
 * blocks to threads and each block walks W's rows in tiles, in order,
 * converting only its columns of each tile to f32 (so a quantized weight is
 * converted once per 256 rows of dx, whatever the thread count). Block shapes
 * do not depend on n_threads: results are identical for every thread count.
 * scratch: kern_matmul_dx_scratch_floats(K, n_threads, bf16) floats (bf16:
 * the weight may have bf16 packs, whose GEMM needs more). */
int kern_matmul_dx(float *dx, const float *dy, int lddy, int T, const kern_weight *w, float *scratch,
                   int n_threads);
/* Floats of scratch kern_matmul_dx needs for any weight of at most K columns
 * on n_threads; never more than kern_matmul_scratch_floats(K, n_threads), so
 * a buffer sized for kern_matmul serves both. */
size_t kern_matmul_dx_scratch_floats(int64_t K, int n_threads, bool bf16);

/* C (M, N) = alpha·op(A)·op(B) + beta·C (row-major; trans_a / trans_b
 * transpose A / B) with C's rows split over n_threads in fixed blocks of 64,
 * each a single-threaded sgemm over the whole inner dimension, so results
 * do not depend on the thread count. For the small products around adapters. */
void kern_gemm_rows(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc, int n_threads);

/* ---- bfloat16 products (bf16.c; amx.c, avx512bf16.c) ----
 * C (M, N) = beta·C + bias + A (M, K) · B (K, N): A f32, rounded to bf16 as
 * it is packed; B pre-packed bf16 (K and N padded to multiples of 32);
 * products summed in f32. Two units run it, chosen at run time: AMX
 * (tdpbf16ps) where the CPU has AMX-BF16, else AVX512-BF16 (vdpbf16ps).
 * Items of fixed shape: results do not depend on the thread count. */
typedef enum { KERN_BF16_NONE = 0, KERN_BF16_AVX512 = 1, KERN_BF16_AMX = 2 } kern_bf16_unit;
/* The unit kern_bf16_gemm uses on this CPU and build (cpuid, xgetbv; for
 * AMX, Linux is asked for the tile state). Costs microseconds (cpuid traps
 * in a VM): call it when setting up, not per product. */
kern_bf16_unit kern_bf16_unit_detect(void);
const char *kern_bf16_unit_name(kern_bf16_unit u);   /* "amx", "avx512bf16", "none" */
bool kern_bf16_supported(void);   /* kern_bf16_unit_detect() != KERN_BF16_NONE */
bool kern_amx_compiled(void);         /* this build has the AMX kernel */
bool kern_avx512bf16_compiled(void);  /* this build has the AVX512-BF16 kernel */
size_t kern_bf16_pack_elems(int64_t K, int64_t N);
/* One pass over W's stored rows fills the forward pack (K = in, N = out)
 * and/or the backward pack (K = out, N = in); either may be NULL. rowbuf
 * holds max(rows, cols) floats. */
int kern_bf16_pack_weight(const kern_weight *w, uint16_t *fwd, uint16_t *bwd, float *rowbuf);
/* Floats of scratch kern_bf16_gemm needs on n_threads, whichever unit runs
 * it (0 in a build with neither kernel). */
size_t kern_bf16_scratch_floats(int n_threads);
int kern_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp,
                   const float *bias, float beta, float *scratch, int n_threads);
uint16_t kern_f32_to_bf16(float f);   /* round to nearest even */
float kern_bf16_to_f32(uint16_t h);
/* kern_bf16_gemm with the pack's column-block stride given (nkb, in
 * tiles of 32 rows): B may be the first K rows of a pack made for more. */
int kern_bf16_gemm_ex(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                      const float *bias, float beta, float *scratch, int n_threads);
/* The units' kernels themselves (kern_bf16_gemm_ex picks one; each returns
 * PEFT_ERR_UNSUPPORTED in a build without it). */
int kern_amx_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                       const float *bias, float beta, float *scratch, int n_threads);
size_t kern_amx_scratch_floats(int n_threads);
int kern_avx512bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                         const float *bias, float beta, float *scratch, int n_threads);
size_t kern_avx512bf16_scratch_floats(int n_threads);
/* Portable model of one vdpbf16ps lane as the Intel SDM defines it: two
 * fused multiply-adds in f32, the odd (high) pair element first, each with
 * denormal inputs read as zero, a denormal result flushed to zero and
 * round to nearest even. */
float kern_bf16_dp_model(float acc, uint32_t a_pair, uint32_t b_pair);
/* kern_bf16_gemm_ex computed one element at a time with kern_bf16_dp_model,
 * in the AVX512-BF16 kernel's order: C starts as beta·C + bias (as f32:
 * beta·C rounded, then bias added; 0 when beta is 0 and there is no bias),
 * then the pairs k = 0, 2, 4, ... < K in order. The AVX512-BF16 kernel's
 * results equal it bit for bit. Single-threaded; for tests. */
void kern_bf16_gemm_ref(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                        const float *bias, float beta);
/* The column-block stride of w's backward pack. */
static inline int kern_weight_bwd_nkb(const kern_weight *w) {
    return w->bf16_bwd_nkb ? w->bf16_bwd_nkb : (int)((w->rows + 31) / 32);
}
/* W's backward pack (B = W) written into a larger pack of column-block
 * stride nkb, its rows starting at row k_off (a multiple of 32) of that
 * pack: the backward of linears that share an input (q, k, v) as one
 * product over their concatenated outputs. The larger pack must be zeroed
 * first. */
int kern_bf16_pack_weight_at(const kern_weight *w, uint16_t *bwd, int64_t k_off, int64_t nkb, float *rowbuf);

/* Row r of W as f32 (K floats): embedding lookups on any dtype. */
int kern_weight_row(const kern_weight *w, int64_t r, float *out);

/* RMSNorm: y = x / sqrt(mean(x²) + eps) · w.  x, y (T, C); rstd (T) saved
 * for the backward when non-NULL. The norms split rows over n_threads
 * (backwards that sum a weight gradient run on one thread). */
void kern_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int T, int C,
                      float eps, int n_threads);
/* LayerNorm: y = (x - mean) · rstd · w + b.  mean, rstd (T) optional. */
void kern_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                        const float *b, int T, int C, float eps, int n_threads);
/* RMSNorm backward from the forward's x, w and saved rstd (T).
 * dx (T, C) += ∂L/∂x; dw (C) += ∂L/∂w unless dw is NULL (frozen weight).
 * dx must not alias dy or x. */
void kern_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                      const float *rstd, int T, int C, int n_threads);
/* LayerNorm backward from the forward's x, w and saved mean, rstd (T).
 * dx (T, C) +=; dw, db (C) += unless NULL (frozen). dx must not alias dy, x. */
void kern_layernorm_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const float *mean, const float *rstd, int T, int C, int n_threads);

/* RoPE tables: cos/sin (n_pos, half) for angle pos·inv_freq[i]. */
void kern_rope_table(float *cos_t, float *sin_t, int n_pos, int half, const float *inv_freq);
/* Rotates x (T, n_heads, head_dim) in place, row stride ldx floats, pairing
 * (i, i + half) as HF's rotate_half does; pos (T) indexes the tables.
 * inverse = true rotates by -angle. The rotation is orthogonal, so applying
 * it with inverse = true to the gradient of the rotated tensor gives exactly
 * the gradient of the input (the backward; no separate function). */
void kern_rope(float *x, int ldx, const int32_t *pos, int T, int n_heads, int head_dim,
               int half, const float *cos_t, const float *sin_t, bool inverse, int n_threads);

/* Activations (act.c) use a vectorizable exp accurate to ~1 ulp and split
 * the work over n_threads in fixed chunks.
 * a (n) = silu(g) · u  (SwiGLU). */
void kern_swiglu_fwd(float *a, const float *g, const float *u, int64_t n, int n_threads);
/* GELU, tanh approximation (GPT-2's gelu_new), in place allowed. */
void kern_gelu_tanh_fwd(float *y, const float *x, int64_t n, int n_threads);
/* SwiGLU backward: dg (n) += da·u·silu'(g), du (n) += da·silu(g). */
void kern_swiglu_bwd(float *dg, float *du, const float *da, const float *g, const float *u,
                     int64_t n, int n_threads);
/* Exact (erf) GELU, BERT's "gelu": y = x·Φ(x), in place allowed; backward
 * dx (n) += dy·(Φ(x) + x·φ(x)), dx must not alias x. */
void kern_gelu_erf_fwd(float *y, const float *x, int64_t n, int n_threads);
void kern_gelu_erf_bwd(float *dx, const float *dy, const float *x, int64_t n, int n_threads);
/* GeGLU with the tanh GELU (Gemma): a = gelu_tanh(g)·u; backward
 * dg += da·u·gelu'(g), du += da·gelu(g). */
void kern_geglu_tanh_fwd(float *a, const float *g, const float *u, int64_t n, int n_threads);
void kern_geglu_tanh_bwd(float *dg, float *du, const float *da, const float *g, const float *u, int64_t n,
                         int n_threads);
/* GELU (tanh) backward: dx (n) += dy·gelu'(x). dx must not alias x. */
void kern_gelu_tanh_bwd(float *dx, const float *dy, const float *x, int64_t n, int n_threads);

/* Softmax of each row of x (T, C) in place. */
void kern_softmax_rows(float *x, int T, int C);

/* What shapes an attention's scores besides causality:
 *   scale    on q·kᵀ (1/sqrt(head_dim); Gemma 2: 1/sqrt(query_pre_attn_scalar))
 *   softcap  > 0: score → softcap·tanh(score / softcap) before the softmax
 *            (Gemma 2's attn_logit_softcapping)
 *   window   > 0: a query sees only keys less than `window` positions back
 *            (sliding-window layers; the query itself included), besides
 *   sink     leading key rows every query sees (prefix tuning's rows)
 *   bidir    encoders: every key visible (the caller keeps padding out of
 *            the keys, e.g. by segments). */
typedef struct {
    float scale, softcap;
    int window, sink;
    bool bidir;   /* every query sees every key (encoders): no causal mask, no window */
} kern_attn_opts;

/* Causal attention over a KV store, one sequence (flash_attn.c: the
 * training forward's blocked online softmax, no T × (p0 + T) scratch).
 * q (T, n_head, hd) with row stride ldq; k, v hold positions [0, p0 + T) as
 * (n_kv, kv_cap, hd); query t sits at position p0 + t and sees keys
 * 0..p0 + t (o->bidir: all). Head h uses kv head h / (n_head / n_kv)
 * (grouped-query). out (T, n_head, hd) with row stride ldo. o: scale,
 * soft-capping, window (the o->sink leading rows stay visible). */
void kern_attention(float *out, int ldo, const float *q, int ldq, const float *k,
                    const float *v, int kv_cap, int T, int p0, int n_head, int n_kv, int hd,
                    const kern_attn_opts *o, int n_threads);

/* Training attention (flash_attn.c): grouped-query attention for one
 * sequence that keeps only each row's log-sum-exp for the backward
 * (FlashAttention-2's blocked online softmax), with P optional prefix
 * key/value rows (prefix tuning) that every query sees (o->sink is not read).
 * q (T, n_head·hd), row stride ldq; k, v (P + T, n_kv·hd), row stride ldkv:
 * rows 0..P-1 are the prefix, row P + t is the sequence position t. Causal:
 * query t sees key rows 0..P + t (o->window narrows that, the prefix stays);
 * o->bidir: every row. Head h uses kv head h / (n_head / n_kv). o->scale,
 * o->softcap shape the scores. The forward writes out (T, n_head·hd)
 * contiguous and lse (n_head, T); OpenMP over (query head, block of 64
 * queries), key blocks a query block cannot see skipped. */
void kern_flash_attn_fwd(float *out, float *lse, const float *q, int ldq, const float *k, const float *v, int ldkv,
                         int T, int P, int n_head, int n_kv, int hd, const kern_attn_opts *o, int n_threads);
/* Floats of scratch kern_flash_attn_bwd needs: per thread 3 (64, 64) tiles
 * and T floats, plus n_head · 2 · (P + T) · hd for each query head's dK, dV. */
size_t kern_flash_attn_scratch_floats(int T, int P, int n_head, int hd, int n_threads);
/* Backward of kern_flash_attn_fwd from dout (T, n_head·hd) contiguous, the
 * forward's out and lse: the probabilities are recomputed tile by tile.
 * dq (T, n_head·hd) row stride lddq, dk, dv (P + T, n_kv·hd) row stride
 * lddkv: all three +=. OpenMP over query heads, each writing its own dK, dV
 * part into scratch, summed per kv head in head order: race-free and the
 * same bits for every thread count. */
void kern_flash_attn_bwd(float *dq, int lddq, float *dk, float *dv, int lddkv, const float *dout, const float *out,
                         const float *lse, const float *q, int ldq, const float *k, const float *v, int ldkv, int T,
                         int P, int n_head, int n_kv, int hd, const kern_attn_opts *o, float *scratch,
                         int n_threads);

/* Fused softmax cross-entropy (xent.c) over logits (T, V) and targets (T),
 * target -100 = ignored row. *loss_sum = Σ over counted rows of -log p[target]
 * (double accumulation, summed in a fixed order: identical for every thread
 * count), *n_counted = counted rows. dlogits (T, V) is written (not +=):
 * grad_scale·(softmax - onehot) on counted rows, 0 on ignored rows; it may
 * alias logits. Returns 0, or PEFT_ERR_INVALID (nothing written) when a
 * target is neither -100 nor in [0, V). */
int kern_xent_fwd_bwd(double *loss_sum, int *n_counted, float *dlogits, const float *logits,
                      const int32_t *targets, int T, int V, float grad_scale, int n_threads);

#endif
