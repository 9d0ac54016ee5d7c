/* test_quant.c — GGML block formats against gguf-py.
 *
 * Fixtures (tools/make_format_fixtures.py) hold rows quantized by
 * gguf.quants.quantize (or random valid K-quant blocks) and gguf-py's
 * dequantization. Both sides compute every value with the same float32
 * operations in the same order (e.g. Q4_K: (d*sc)*q - (dmin*m), no FMA: GCC
 * does not contract in ISO C mode, quant.c disables it for clang), so
 * dequantization is compared bit for bit, and our reference quantizers must
 * reproduce gguf-py's blocks byte for byte. */
#include "core/core.h"
#include "kernels/quant.h"
#include "test.h"

#include <stdint.h>

typedef struct {
    uint32_t ggml_type, n_rows, n_per_row, has_src;
    const float *src;       /* NULL when the blocks were random */
    const uint8_t *blocks;
    const float *deq;
    char *file;
} qfix;

static uint32_t rd32(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int load_fix(const char *name, qfix *q) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/formats/quant_%s.bin", name);
    size_t len = 0;
    peft_err err = {0};
    memset(q, 0, sizeof *q);
    if (peft_read_file(path, &q->file, &len, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    if (len < 20 || memcmp(q->file, "PQF1", 4) != 0) return -1;
    q->ggml_type = rd32(q->file + 4);
    q->n_rows = rd32(q->file + 8);
    q->n_per_row = rd32(q->file + 12);
    q->has_src = rd32(q->file + 16);
    size_t n = (size_t)q->n_rows * q->n_per_row;
    const char *p = q->file + 20;
    if (q->has_src) { q->src = (const float *)p; p += n * 4; }
    q->blocks = (const uint8_t *)p;
    return 0;
}

static const struct { const char *name; peft_dtype t; } types[] = {
    {"F16", PEFT_DT_F16},   {"BF16", PEFT_DT_BF16}, {"Q8_0", PEFT_DT_Q8_0}, {"Q4_0", PEFT_DT_Q4_0},
    {"Q4_1", PEFT_DT_Q4_1}, {"Q5_0", PEFT_DT_Q5_0}, {"Q5_1", PEFT_DT_Q5_1}, {"Q2_K", PEFT_DT_Q2_K},
    {"Q3_K", PEFT_DT_Q3_K}, {"Q4_K", PEFT_DT_Q4_K}, {"Q5_K", PEFT_DT_Q5_K}, {"Q6_K", PEFT_DT_Q6_K},
    {"Q8_K", PEFT_DT_Q8_K},
};
#define N_TYPES (int)(sizeof types / sizeof types[0])

static void block_sizes_match_ggml(void) {
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q8_0), 34);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q4_0), 18);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q4_1), 20);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q5_0), 22);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q5_1), 24);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q2_K), 84);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q3_K), 110);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q4_K), 144);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q5_K), 176);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q6_K), 210);
    CHECK_EQ_INT(kern_dtype_block_bytes(PEFT_DT_Q8_K), 292);
    CHECK_EQ_INT(kern_dtype_block_elems(PEFT_DT_Q4_K), 256);
    CHECK_EQ_INT(kern_dtype_block_elems(PEFT_DT_F16), 1);
    CHECK_EQ_INT(kern_dtype_row_bytes(PEFT_DT_Q4_0, 64), 36);
    CHECK_EQ_INT(kern_dtype_row_bytes(PEFT_DT_Q4_0, 65), 0);
    CHECK_EQ_INT(kern_dtype_row_bytes(PEFT_DT_F32, 3), 12);
    CHECK_EQ_INT(kern_dtype_row_bytes(PEFT_DT_Q6_K, 512), 420);
    CHECK(kern_dtype_is_float_convertible(PEFT_DT_Q3_K));
    CHECK(!kern_dtype_is_float_convertible(PEFT_DT_I32));
    CHECK(kern_dtype_can_quantize(PEFT_DT_Q4_1));
    CHECK(!kern_dtype_can_quantize(PEFT_DT_Q4_K));
}

static void dequant_matches_gguf_py_exactly(void) {
    for (int k = 0; k < N_TYPES; k++) {
        qfix q;
        if (load_fix(types[k].name, &q) != 0) { CHECK_MSG(0, "cannot load fixture %s", types[k].name); continue; }
        size_t n = (size_t)q.n_rows * q.n_per_row;
        size_t rb = kern_dtype_row_bytes(types[k].t, q.n_per_row);
        CHECK(rb > 0);
        q.deq = (const float *)(q.blocks + rb * q.n_rows);
        float *out = malloc(n * sizeof *out);
        int bad = 0;
        for (uint32_t r = 0; r < q.n_rows; r++) {
            CHECK_OK(kern_dequant_row(types[k].t, q.blocks + r * rb, out + (size_t)r * q.n_per_row, q.n_per_row));
        }
        for (size_t i = 0; i < n; i++) {
            float want;
            memcpy(&want, (const char *)q.deq + 4 * i, 4);
            if (memcmp(&out[i], &want, 4) != 0) {
                if (bad < 3) fprintf(stderr, "  %s[%zu]: got %.9g want %.9g\n", types[k].name, i, out[i], want);
                bad++;
            }
        }
        CHECK_MSG(bad == 0, "%s: %d values differ", types[k].name, bad);
        free(out);
        free(q.file);
    }
}

static void quantize_matches_gguf_py_bit_exactly(void) {
    for (int k = 0; k < N_TYPES; k++) {
        if (!kern_dtype_can_quantize(types[k].t)) continue;
        qfix q;
        if (load_fix(types[k].name, &q) != 0) { CHECK_MSG(0, "cannot load fixture %s", types[k].name); continue; }
        CHECK(q.has_src);
        size_t rb = kern_dtype_row_bytes(types[k].t, q.n_per_row);
        uint8_t *out = malloc(rb * q.n_rows);
        float *src = malloc((size_t)q.n_rows * q.n_per_row * 4);
        memcpy(src, q.src, (size_t)q.n_rows * q.n_per_row * 4);   /* fixture data may be unaligned */
        for (uint32_t r = 0; r < q.n_rows; r++)
            CHECK_OK(kern_quant_row(types[k].t, src + (size_t)r * q.n_per_row, out + r * rb, q.n_per_row));
        size_t first = SIZE_MAX;
        for (size_t i = 0; i < rb * q.n_rows; i++)
            if (out[i] != q.blocks[i]) { first = i; break; }
        CHECK_MSG(first == SIZE_MAX, "%s: first differing byte at %zu (got %02x want %02x)", types[k].name, first,
                  first == SIZE_MAX ? 0 : out[first], first == SIZE_MAX ? 0 : q.blocks[first]);
        free(src);
        free(out);
        free(q.file);
    }
}

static void f16_dequant_covers_every_half(void) {
    uint16_t *h = malloc(65536 * 2);
    float *out = malloc(65536 * 4);
    for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    CHECK_OK(kern_dequant_row(PEFT_DT_F16, h, out, 65536));
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        float want = peft_f16_to_f32((uint16_t)i);
        if (isnan(want) ? !isnan(out[i]) : memcmp(&want, &out[i], 4) != 0) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    free(h);
    free(out);
}

static void round_trip_error_is_bounded(void) {
    /* Quantize then dequantize: Q8_0 error <= d/2 = amax/254 per block. */
    peft_rng rng;
    peft_rng_seed(&rng, 5);
    float x[256], y[256];
    uint8_t buf[256 * 4];
    for (int i = 0; i < 256; i++) x[i] = peft_rng_normal(&rng);
    CHECK_OK(kern_quant_row(PEFT_DT_Q8_0, x, buf, 256));
    CHECK_OK(kern_dequant_row(PEFT_DT_Q8_0, buf, y, 256));
    for (int b = 0; b < 8; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
        double e = test_max_abs_diff(x + 32 * b, y + 32 * b, 32);
        CHECK(e <= amax / 254.0 * 1.01 + 1e-3 * amax);
    }
    CHECK_OK(kern_quant_row(PEFT_DT_Q4_1, x, buf, 256));
    CHECK_OK(kern_dequant_row(PEFT_DT_Q4_1, buf, y, 256));
    CHECK(test_max_abs_diff(x, y, 256) < 0.5);
}

static void rejects_unsupported_and_partial_blocks(void) {
    float f[64] = {0};
    uint8_t b[512] = {0};
    CHECK_EQ_INT(kern_dequant_row(PEFT_DT_I32, b, f, 4), PEFT_ERR_UNSUPPORTED);
    CHECK_EQ_INT(kern_quant_row(PEFT_DT_Q4_K, f, b, 64), PEFT_ERR_UNSUPPORTED);
    CHECK_EQ_INT(kern_dequant_row(PEFT_DT_Q8_0, b, f, 33), PEFT_ERR_INVALID);
    CHECK_EQ_INT(kern_quant_row(PEFT_DT_Q4_0, f, b, 48), PEFT_ERR_INVALID);
}

static void dequant_throughput(void) {
    /* Not a pass/fail benchmark: prints Melem/s so regressions are visible. */
    const int64_t n = 4096, rows = 256;
    size_t rb = kern_dtype_row_bytes(PEFT_DT_Q4_K, n);
    uint8_t *blk = calloc(rows, rb);
    float *out = malloc(n * sizeof *out);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < n / 256; b++) blk[r * rb + b * 144] = 0x3c;   /* d = 1.0-ish */
    double t0 = peft_time_s();
    for (int64_t r = 0; r < rows; r++) CHECK_OK(kern_dequant_row(PEFT_DT_Q4_K, blk + r * rb, out, n));
    double dt = peft_time_s() - t0;
    printf("  Q4_K dequant: %.0f Melem/s\n", (double)(n * rows) / dt / 1e6);
    free(blk);
    free(out);
}

int main(void) {
    TEST_RUN(block_sizes_match_ggml);
    TEST_RUN(dequant_matches_gguf_py_exactly);
    TEST_RUN(quantize_matches_gguf_py_bit_exactly);
    TEST_RUN(f16_dequant_covers_every_half);
    TEST_RUN(round_trip_error_is_bounded);
    TEST_RUN(rejects_unsupported_and_partial_blocks);
    TEST_RUN(dequant_throughput);
    TEST_MAIN_END();
}
