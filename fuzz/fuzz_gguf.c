/* fuzz_gguf.c — the GGUF reader: gguf_open on the input, then every
 * metadata value (scalars, strings, arrays, arrays of arrays) through the
 * generic and the typed getters, and rows of every tensor dequantized. */
#include "fuzz.h"
#include "formats/gguf.h"
#include "kernels/quant.h"

#include <stdlib.h>

static size_t walk_value(const gguf_value *v, int depth) {
    size_t sum = 0;
    int64_t i64;
    double d;
    size_t len;
    gguf_vtype et;
    uint64_t n;
    const void *data;
    if (gguf_value_int(v, &i64) == 0) sum += (size_t)i64;
    if (gguf_value_float(v, &d) == 0) sum += d == d;
    sum += (size_t)gguf_value_u64(v);
    const char *s = gguf_value_str(v, &len);
    for (size_t i = 0; s && i < len; i++) sum += (unsigned char)s[i];
    if (gguf_value_arr(v, &et, &n, &data) == 0) {
        uint64_t lim = n < 4096 ? n : 4096;
        sum += gguf_vtype_name(et) != NULL;
        for (uint64_t i = 0; i < lim; i++) {
            if (et == GGUF_TYPE_STRING) {
                const char *e = gguf_value_arr_str(v, i, &len);
                for (size_t j = 0; e && j < len; j++) sum += (unsigned char)e[j];
            } else if (et == GGUF_TYPE_ARRAY) {
                const gguf_value *it = gguf_value_arr_item(v, i);
                if (it && depth < 8) sum += walk_value(it, depth + 1);
            } else if (data && (et == GGUF_TYPE_UINT8 || et == GGUF_TYPE_INT8 || et == GGUF_TYPE_BOOL)) {
                sum += ((const unsigned char *)data)[i];
            }
        }
        /* the last element of a numeric array: its end must be inside the file */
        if (data && n > 0 && et != GGUF_TYPE_STRING && et != GGUF_TYPE_ARRAY) {
            static const int size[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
            if ((int)et < GGUF_TYPE_COUNT && size[et] > 0)
                sum += ((const unsigned char *)data)[n * (uint64_t)size[et] - 1];
        }
    }
    return sum;
}

int fuzz_gguf_one(const uint8_t *data, size_t size) {
    if (!fuzz_dir() || fuzz_write("f.gguf", data, size) != 0) return 0;
    gguf_file *g = NULL;
    peft_err err = {0};
    int rc = gguf_open(fuzz_path("f.gguf"), &g, &err);
    if (rc != 0) return fuzz_err_msg(&err);
    volatile size_t sum = gguf_version(g) + gguf_alignment(g) + gguf_data_offset(g);
    char buf[256];
    for (int i = 0; i < gguf_n_kv(g); i++) {
        const char *key = gguf_kv_key(g, i);
        sum += gguf_kv_type(g, i);
        gguf_kv_to_string(g, i, buf, sizeof buf);
        const gguf_value *v = gguf_kv_value(g, i);
        if (v) sum += walk_value(v, 0);
        if (!key) continue;
        sum += (size_t)gguf_find_key(g, key);
        int64_t i64;
        double d;
        gguf_vtype et;
        uint64_t n;
        const void *arr;
        peft_err e2 = {0};
        if (gguf_get_int(g, key, &i64, &e2) == 0) sum += (size_t)i64;
        if (gguf_get_float(g, key, &d, &e2) == 0) sum += d == d;
        const char *s = gguf_get_str(g, key);
        if (s) sum += (unsigned char)s[0];
        if (gguf_get_arr(g, key, &et, &n, &arr, &e2) == 0 && et == GGUF_TYPE_STRING && n > 0) {
            const char *e = gguf_get_arr_str(g, key, n - 1);
            if (e) sum += (unsigned char)e[0];
        }
    }
    for (int i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (!t || !t->name) continue;
        sum += gguf_find_tensor(g, t->name) == t;
        sum += gguf_ggml_type_name(t->ggml_type) != NULL;
        if (t->nbytes == 0 || !t->data) continue;
        /* every byte of the tensor is inside the file */
        sum += ((const unsigned char *)t->data)[0] + ((const unsigned char *)t->data)[t->nbytes - 1];
        if (t->dtype == PEFT_DT_COUNT || !kern_dtype_is_float_convertible(t->dtype)) continue;
        int64_t row = t->ne[0];
        size_t rb = kern_dtype_row_bytes(t->dtype, row);
        if (row <= 0 || row > (1 << 20) || rb == 0) continue;
        size_t rows = t->nbytes / rb;
        float *out = malloc((size_t)row * sizeof(float));
        if (!out) continue;
        /* first, second and last rows: enough to reach every block type's
         * decoder and both ends of the data */
        size_t pick[3] = {0, 1, rows ? rows - 1 : 0};
        for (int k = 0; k < 3; k++) {
            if (pick[k] >= rows) continue;
            if (kern_dequant_row(t->dtype, (const char *)t->data + pick[k] * rb, out, row) == 0)
                sum += out[row - 1] == out[row - 1];
        }
        free(out);
    }
    (void)sum;
    gguf_close(g);
    return 1;
}

FUZZ_MAIN(fuzz_gguf_one)
