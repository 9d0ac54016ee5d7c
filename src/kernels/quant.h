/* quant.h — GGML block formats: sizes, dequantization (row at a time) and
 * quantization of the formats we write back (Q8_0, Q4_0, Q4_1).
 *
 * Block layouts follow the GGUF spec / ggml: Q8_0 = {f16 d; int8 q[32]},
 * Q4_0 = {f16 d; u8 q[16]}, Q4_1 = {f16 d, m; u8 q[16]}, Q5_0, Q5_1, and the
 * K-quants over super-blocks of 256 (Q2_K .. Q6_K, Q8_K). */
#ifndef PEFT_KERN_QUANT_H
#define PEFT_KERN_QUANT_H

#include "core/core.h"

/* Elements per block (1 for plain types) and bytes per block. */
int64_t kern_dtype_block_elems(peft_dtype t);
size_t kern_dtype_block_bytes(peft_dtype t);
/* Bytes of a row of n elements; 0 when n is not a multiple of the block. */
size_t kern_dtype_row_bytes(peft_dtype t, int64_t n);
/* True for the types kern_dequant_row can convert to f32. */
bool kern_dtype_is_float_convertible(peft_dtype t);

/* dst[0..n) = f32 values of the n elements at src (n a multiple of the block).
 * Handles F32, F16, BF16 and every block type above. Returns 0 or
 * PEFT_ERR_UNSUPPORTED. */
int kern_dequant_row(peft_dtype t, const void *src, float *dst, int64_t n);

/* Quantize n floats into dst (row bytes as above). F32, F16, BF16, Q8_0,
 * Q4_0, Q4_1 (round to nearest as ggml's reference quantizers do). */
int kern_quant_row(peft_dtype t, const float *src, void *dst, int64_t n);
/* True for the types kern_quant_row can write (also Q5_0, Q5_1). */
bool kern_dtype_can_quantize(peft_dtype t);

#endif
