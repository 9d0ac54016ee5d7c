/* test_gguf.c — reader against a file written by gguf-py's GGUFWriter
 * (every value type, nested arrays, several tensor types), writer round trip
 * (read back here and by gguf-py when installed), and one test per kind of
 * corrupt input, made in /tmp by mutating the good fixture. */
#include "core/core.h"
#include "formats/gguf.h"
#include "kernels/quant.h"
#include "test.h"

#include <stdint.h>
#include <unistd.h>

#define FIX "tests/fixtures/formats/all_types.gguf"

static float formula(int i) { return (float)((i * 37) % 101 - 50) / 16.0f; }

static char *read_fixture(size_t *len) {
    char *d = NULL;
    peft_err err = {0};
    if (peft_read_file(FIX, &d, len, &err) != 0) fprintf(stderr, "  %s\n", err.msg);
    return d;
}

/* Writes the (mutated) bytes to a temp file; gguf_open must fail with code,
 * naming the file and mentioning `what`. */
static void expect_fail_bytes(const void *data, size_t len, int code, const char *what) {
    char *path = test_tmp_file();
    test_write_bytes(path, data, len);
    gguf_file *f = (gguf_file *)1;
    peft_err err = {0};
    int rc = gguf_open(path, &f, &err);
    CHECK_MSG(rc == code, "expected %d, got %d (%s)", code, rc, err.msg);
    CHECK(f == NULL);
    CHECK_MSG(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    CHECK_MSG(!what || strstr(err.msg, what) != NULL, "message lacks '%s': %s", what, err.msg);
    if (rc == 0) gguf_close(f);
    unlink(path);
    free(path);
}

static void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }

/* Offset of a tensor info (its u64 name length) in the file: the last match,
 * since keys come before the infos and may have the same text. */
static size_t find_info(const char *buf, size_t len, const char *name) {
    size_t nl = strlen(name);
    char pat[80];
    put64(pat, nl);
    memcpy(pat + 8, name, nl);
    for (size_t i = len - 8 - nl; i-- > 0;)
        if (memcmp(buf + i, pat, 8 + nl) == 0) return i;
    return 0;
}

/* ---- good fixture ------------------------------------------------------------- */

static void check_int(gguf_file *f, const char *key, int64_t want, gguf_vtype type) {
    int64_t v = 0;
    peft_err err = {0};
    CHECK_OK(gguf_get_int(f, key, &v, &err));
    CHECK_MSG(v == want, "%s: %lld != %lld", key, (long long)v, (long long)want);
    CHECK_EQ_INT(gguf_kv_type(f, gguf_find_key(f, key)), type);
}

static void reads_every_value_type(void) {
    gguf_file *f = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(FIX, &f, &err));
    if (!f) { fprintf(stderr, "  %s\n", err.msg); return; }
    CHECK_EQ_INT(gguf_version(f), 3);
    CHECK_EQ_INT(gguf_alignment(f), 32);
    CHECK(strcmp(gguf_path(f), FIX) == 0);
    CHECK(gguf_get_str(f, "general.architecture") && strcmp(gguf_get_str(f, "general.architecture"), "testarch") == 0);
    check_int(f, "t.u8", 200, GGUF_TYPE_UINT8);
    check_int(f, "t.i8", -100, GGUF_TYPE_INT8);
    check_int(f, "t.u16", 60000, GGUF_TYPE_UINT16);
    check_int(f, "t.i16", -30000, GGUF_TYPE_INT16);
    check_int(f, "t.u32", 4000000000LL, GGUF_TYPE_UINT32);
    check_int(f, "t.i32", -2000000000LL, GGUF_TYPE_INT32);
    check_int(f, "t.i64", -9000000000000000000LL, GGUF_TYPE_INT64);
    check_int(f, "t.bool", 1, GGUF_TYPE_BOOL);
    /* u64 above INT64_MAX: not an int64, but readable raw */
    int64_t iv;
    CHECK_EQ_INT(gguf_get_int(f, "t.u64", &iv, &err), PEFT_ERR_FORMAT);
    CHECK(strstr(err.msg, "t.u64") && strstr(err.msg, FIX));
    const gguf_value *v = gguf_kv_value(f, gguf_find_key(f, "t.u64"));
    CHECK(v && gguf_value_u64(v) == 18000000000000000000ULL);
    double d = 0;
    CHECK_OK(gguf_get_float(f, "t.f32", &d, &err));
    CHECK_NEAR(d, 0.15625, 0);
    CHECK_OK(gguf_get_float(f, "t.f64", &d, &err));
    CHECK_NEAR(d, 2.718281828459045, 0);
    CHECK_OK(gguf_get_float(f, "t.i16", &d, &err));
    CHECK_NEAR(d, -30000, 0);
    CHECK(gguf_get_str(f, "t.str") && strcmp(gguf_get_str(f, "t.str"), "h\xc3\xa9llo w\xc3\xb6rld") == 0);
    CHECK(gguf_get_str(f, "t.empty_str") && gguf_get_str(f, "t.empty_str")[0] == 0);
    CHECK(gguf_get_str(f, "t.u8") == NULL);
    /* typed getters: mismatch and missing */
    CHECK_EQ_INT(gguf_get_int(f, "t.str", &iv, &err), PEFT_ERR_FORMAT);
    CHECK(strstr(err.msg, "t.str") != NULL);
    CHECK_EQ_INT(gguf_get_int(f, "no.such.key", &iv, &err), PEFT_ERR_INVALID);
    CHECK(strstr(err.msg, "no.such.key") && strstr(err.msg, FIX));
    CHECK_EQ_INT(gguf_get_float(f, "t.str", &d, &err), PEFT_ERR_FORMAT);
    CHECK_EQ_INT(gguf_find_key(f, "nope"), -1);

    /* arrays */
    gguf_vtype et;
    uint64_t n;
    const void *data;
    CHECK_OK(gguf_get_arr(f, "t.arr_str", &et, &n, &data, &err));
    CHECK(et == GGUF_TYPE_STRING && n == 1000);
    CHECK(gguf_get_arr_str(f, "t.arr_str", 0) && strcmp(gguf_get_arr_str(f, "t.arr_str", 0), "tok0") == 0);
    CHECK(gguf_get_arr_str(f, "t.arr_str", 5) && gguf_get_arr_str(f, "t.arr_str", 5)[0] == 0);
    CHECK(gguf_get_arr_str(f, "t.arr_str", 6) &&
          strcmp(gguf_get_arr_str(f, "t.arr_str", 6), "\xc3\xbcn\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9 \xe2\x9c\x93") == 0);
    CHECK(gguf_get_arr_str(f, "t.arr_str", 999) && strcmp(gguf_get_arr_str(f, "t.arr_str", 999), "tok999") == 0);
    CHECK(gguf_get_arr_str(f, "t.arr_str", 1000) == NULL);
    size_t sl = 0;
    v = gguf_kv_value(f, gguf_find_key(f, "t.arr_str"));
    CHECK(v && gguf_value_arr_str(v, 6, &sl) && sl == strlen(gguf_get_arr_str(f, "t.arr_str", 6)));
    CHECK_OK(gguf_get_arr(f, "t.arr_i32", &et, &n, &data, &err));
    CHECK(et == GGUF_TYPE_INT32 && n == 5);
    if (n == 5) { int32_t x[5]; memcpy(x, data, 20); CHECK(x[0] == 1 && x[1] == -2 && x[4] == 5); }
    CHECK_OK(gguf_get_arr(f, "t.arr_f32", &et, &n, &data, &err));
    CHECK(et == GGUF_TYPE_FLOAT32 && n == 3);
    if (n == 3) { float x[3]; memcpy(x, data, 12); CHECK(x[0] == 0.5f && x[1] == -1.25f && x[2] == 3.0f); }
    CHECK_OK(gguf_get_arr(f, "t.arr_bool", &et, &n, &data, &err));
    CHECK(et == GGUF_TYPE_BOOL && n == 3 && ((const uint8_t *)data)[1] == 0 && ((const uint8_t *)data)[2] == 1);
    CHECK_EQ_INT(gguf_get_arr(f, "t.u8", &et, &n, &data, &err), PEFT_ERR_FORMAT);

    /* arrays of arrays: [[1,2,3],[4,5]], [["a","bc"],["def"]], [[[7],[8,9]],[[10]]] */
    v = gguf_kv_value(f, gguf_find_key(f, "t.arr_arr"));
    CHECK(v && gguf_value_arr(v, &et, &n, NULL) == 0 && et == GGUF_TYPE_ARRAY && n == 2);
    const gguf_value *it = v ? gguf_value_arr_item(v, 1) : NULL;
    CHECK(it && gguf_value_arr(it, &et, &n, &data) == 0 && et == GGUF_TYPE_INT32 && n == 2);
    if (it && n == 2) { int32_t x[2]; memcpy(x, data, 8); CHECK(x[0] == 4 && x[1] == 5); }
    CHECK(v && gguf_value_arr_item(v, 2) == NULL);
    v = gguf_kv_value(f, gguf_find_key(f, "t.arr_arr_str"));
    it = v ? gguf_value_arr_item(v, 0) : NULL;
    CHECK(it && gguf_value_arr_str(it, 1, NULL) && strcmp(gguf_value_arr_str(it, 1, NULL), "bc") == 0);
    it = v ? gguf_value_arr_item(v, 1) : NULL;
    CHECK(it && gguf_value_arr_str(it, 0, NULL) && strcmp(gguf_value_arr_str(it, 0, NULL), "def") == 0);
    v = gguf_kv_value(f, gguf_find_key(f, "t.arr_arr_arr"));
    it = v ? gguf_value_arr_item(v, 0) : NULL;
    it = it ? gguf_value_arr_item(it, 1) : NULL;
    CHECK(it && gguf_value_arr(it, &et, &n, &data) == 0 && n == 2);
    if (it && n == 2) { int32_t x[2]; memcpy(x, data, 8); CHECK(x[0] == 8 && x[1] == 9); }

    /* display strings */
    char buf[64];
    CHECK_OK(gguf_kv_to_string(f, gguf_find_key(f, "t.i8"), buf, sizeof buf));
    CHECK(strcmp(buf, "-100") == 0);
    CHECK_OK(gguf_kv_to_string(f, gguf_find_key(f, "t.arr_str"), buf, sizeof buf));
    CHECK(strcmp(buf, "[1000 x string]") == 0);
    CHECK_OK(gguf_kv_to_string(f, gguf_find_key(f, "general.architecture"), buf, sizeof buf));
    CHECK(strcmp(buf, "\"testarch\"") == 0);
    for (int i = 0; i < gguf_n_kv(f); i++) CHECK_OK(gguf_kv_to_string(f, i, buf, sizeof buf));
    gguf_close(f);
}

static void reads_tensors_of_several_types(void) {
    gguf_file *f = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(FIX, &f, &err));
    if (!f) return;
    CHECK_EQ_INT(gguf_n_tensors(f), 8);
    for (int i = 0; i < gguf_n_tensors(f); i++) CHECK(gguf_tensor_at(f, i)->offset % 32 == 0);
    CHECK(gguf_tensor_at(f, 8) == NULL);
    const gguf_tensor *t = gguf_find_tensor(f, "t.f32");
    CHECK(t && t->dtype == PEFT_DT_F32 && t->ggml_type == 0 && t->ndim == 2 && t->ne[0] == 8 && t->ne[1] == 3);
    float row[64];
    if (t) {
        for (int r = 0; r < 3; r++) {
            CHECK_OK(kern_dequant_row(t->dtype, (const char *)t->data + r * 32, row, 8));
            for (int j = 0; j < 8; j++) CHECK_NEAR(row[j], formula(r * 8 + j), 0);
        }
    }
    const char *half[] = {"t.f16", "t.bf16"};
    for (int k = 0; k < 2; k++) {
        t = gguf_find_tensor(f, half[k]);
        CHECK(t && t->nbytes == 48 && t->ne[0] == 8);
        if (!t) continue;
        float all[24];
        CHECK_OK(kern_dequant_row(t->dtype, t->data, all, 24));
        for (int j = 0; j < 24; j++) CHECK_NEAR(all[j], formula(j), 0);   /* exact in both */
    }
    /* quantized by gguf-py from the same values: our quantizer gives the same bytes */
    const struct { const char *name; peft_dtype dt; } q[] = {
        {"t.q8_0", PEFT_DT_Q8_0}, {"t.q4_0", PEFT_DT_Q4_0}, {"t.q4_1", PEFT_DT_Q4_1}};
    float src[128];
    for (int i = 0; i < 128; i++) src[i] = formula(i);
    for (int k = 0; k < 3; k++) {
        t = gguf_find_tensor(f, q[k].name);
        CHECK(t && t->dtype == q[k].dt && t->ne[0] == 64 && t->ne[1] == 2);
        if (!t) continue;
        size_t rb = kern_dtype_row_bytes(q[k].dt, 64);
        CHECK_EQ_INT(t->nbytes, 2 * rb);
        uint8_t mine[256];
        CHECK_OK(kern_quant_row(q[k].dt, src, mine, 128));
        CHECK_MSG(memcmp(mine, t->data, 2 * rb) == 0, "%s differs from gguf-py", q[k].name);
    }
    t = gguf_find_tensor(f, "t.q4_k");
    CHECK(t && t->dtype == PEFT_DT_Q4_K && t->ne[0] == 256 && t->nbytes == 144);
    t = gguf_find_tensor(f, "t.i32");
    CHECK(t && t->dtype == PEFT_DT_I32 && t->nbytes == 20);
    if (t) { int32_t x[5]; memcpy(x, t->data, 20); CHECK(x[0] == 0 && x[4] == 4); }
    CHECK(gguf_find_tensor(f, "t.nope") == NULL);
    CHECK_EQ_INT(gguf_dtype_from_ggml(12), PEFT_DT_Q4_K);
    CHECK_EQ_INT(gguf_dtype_from_ggml(20), PEFT_DT_COUNT);   /* IQ4_NL: known size, no dtype */
    CHECK_EQ_INT(gguf_ggml_from_dtype(PEFT_DT_BF16), 30);
    CHECK_EQ_INT(gguf_ggml_from_dtype(PEFT_DT_U8), -1);
    gguf_close(f);
}

static void accepts_version_2(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    put32(d + 4, 2);
    char *path = test_tmp_file();
    test_write_bytes(path, d, len);
    gguf_file *f = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(path, &f, &err));
    if (f) { CHECK_EQ_INT(gguf_version(f), 2); gguf_close(f); }
    unlink(path);
    free(path);
    free(d);
}

/* ---- writer --------------------------------------------------------------------- */

static int write_sample(const char *path, const gguf_file *src, peft_err *err, float *f32, uint8_t *q8) {
    gguf_writer *w = gguf_writer_new(err);
    if (!w) return PEFT_ERR_NOMEM;
    for (int i = 0; i < 64; i++) f32[i] = formula(i);
    kern_quant_row(PEFT_DT_Q8_0, f32, q8, 64);
    if (src) gguf_w_copy_kv(w, src, "general.");
    gguf_w_u32(w, "w.u32", 7);
    gguf_w_i32(w, "w.i32", -7);
    gguf_w_u64(w, "w.u64", (uint64_t)1 << 40);
    gguf_w_f32(w, "w.f32", 0.5f);
    gguf_w_bool(w, "w.bool", true);
    gguf_w_str(w, "w.str", "hi there");
    const char *strs[] = {"x", "", "yz"};
    gguf_w_arr_str(w, "w.arr_str", strs, 3);
    int32_t ints[] = {1, 2, 3};
    gguf_w_arr(w, "w.arr_i32", GGUF_TYPE_INT32, ints, 3);
    gguf_w_u32(w, "w.replaced", 1);
    gguf_w_u32(w, "w.replaced", 2);
    int64_t ne[2] = {32, 2};
    gguf_w_tensor(w, "w.f32", PEFT_DT_F32, 2, ne, f32, 256);
    gguf_w_tensor(w, "w.q8_0", PEFT_DT_Q8_0, 2, ne, q8, 68);
    int rc = gguf_writer_save(w, path, err);
    gguf_writer_free(w);
    return rc;
}

static void writer_round_trip(void) {
    gguf_file *src = NULL, *f = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(FIX, &src, &err));
    char *path = test_tmp_file();
    float f32[64];
    uint8_t q8[68];
    CHECK_OK(write_sample(path, src, &err, f32, q8));
    CHECK_OK(gguf_open(path, &f, &err));
    if (!f) { fprintf(stderr, "  %s\n", err.msg); gguf_close(src); free(path); return; }
    CHECK_EQ_INT(gguf_version(f), 3);
    CHECK_EQ_INT(gguf_alignment(f), 32);
    CHECK_EQ_INT(gguf_data_offset(f) % 32, 0);
    int64_t iv;
    double dv;
    CHECK_OK(gguf_get_int(f, "w.u32", &iv, &err)); CHECK_EQ_INT(iv, 7);
    CHECK_OK(gguf_get_int(f, "w.i32", &iv, &err)); CHECK_EQ_INT(iv, -7);
    CHECK_OK(gguf_get_int(f, "w.u64", &iv, &err)); CHECK_EQ_INT(iv, (int64_t)1 << 40);
    CHECK_OK(gguf_get_int(f, "w.bool", &iv, &err)); CHECK_EQ_INT(iv, 1);
    CHECK_OK(gguf_get_int(f, "w.replaced", &iv, &err)); CHECK_EQ_INT(iv, 2);
    CHECK_OK(gguf_get_float(f, "w.f32", &dv, &err)); CHECK_NEAR(dv, 0.5, 0);
    CHECK(gguf_get_str(f, "w.str") && strcmp(gguf_get_str(f, "w.str"), "hi there") == 0);
    CHECK(gguf_get_arr_str(f, "w.arr_str", 2) && strcmp(gguf_get_arr_str(f, "w.arr_str", 2), "yz") == 0);
    CHECK(gguf_get_arr_str(f, "w.arr_str", 1) && gguf_get_arr_str(f, "w.arr_str", 1)[0] == 0);
    /* copied keys, nested arrays included; general.* skipped */
    CHECK_EQ_INT(gguf_find_key(f, "general.architecture"), -1);
    CHECK_EQ_INT(gguf_n_kv(f), gguf_n_kv(src) - 1 + 9);
    CHECK_OK(gguf_get_int(f, "t.i64", &iv, &err)); CHECK_EQ_INT(iv, -9000000000000000000LL);
    CHECK(gguf_get_arr_str(f, "t.arr_str", 999) && strcmp(gguf_get_arr_str(f, "t.arr_str", 999), "tok999") == 0);
    const gguf_value *v = gguf_kv_value(f, gguf_find_key(f, "t.arr_arr_arr"));
    const gguf_value *it = v ? gguf_value_arr_item(v, 1) : NULL;
    it = it ? gguf_value_arr_item(it, 0) : NULL;
    gguf_vtype et;
    uint64_t n;
    const void *data;
    CHECK(it && gguf_value_arr(it, &et, &n, &data) == 0 && n == 1);
    if (it && n == 1) { int32_t x; memcpy(&x, data, 4); CHECK_EQ_INT(x, 10); }
    const gguf_tensor *t = gguf_find_tensor(f, "w.f32");
    CHECK(t && t->dtype == PEFT_DT_F32 && t->ne[0] == 32 && t->ne[1] == 2 && memcmp(t->data, f32, 256) == 0);
    t = gguf_find_tensor(f, "w.q8_0");
    CHECK(t && t->dtype == PEFT_DT_Q8_0 && t->nbytes == 68 && memcmp(t->data, q8, 68) == 0);
    CHECK(t && t->offset % 32 == 0);
    gguf_close(f);
    gguf_close(src);
    unlink(path);
    free(path);
}

static void writer_honours_alignment_and_rejects_bad_input(void) {
    peft_err err = {0};
    char *path = test_tmp_file();
    gguf_writer *w = gguf_writer_new(&err);
    float x[32] = {1};
    int64_t ne[1] = {32};
    CHECK_OK(gguf_w_u32(w, "general.alignment", 64));
    CHECK_OK(gguf_w_tensor(w, "a", PEFT_DT_F32, 1, ne, x, 128));
    CHECK_OK(gguf_w_tensor(w, "b", PEFT_DT_F32, 1, ne, x, 128));
    CHECK_OK(gguf_writer_save(w, path, &err));
    gguf_writer_free(w);
    gguf_file *f = NULL;
    CHECK_OK(gguf_open(path, &f, &err));
    if (f) {
        CHECK_EQ_INT(gguf_alignment(f), 64);
        CHECK_EQ_INT(gguf_data_offset(f) % 64, 0);
        CHECK(gguf_find_tensor(f, "b") && gguf_find_tensor(f, "b")->offset == 128);
        gguf_close(f);
    }
    /* errors are sticky and reported by save, naming the path */
    w = gguf_writer_new(&err);
    CHECK_EQ_INT(gguf_w_u32(w, "general.alignment", 48), PEFT_ERR_INVALID);
    CHECK_EQ_INT(gguf_writer_save(w, path, &err), PEFT_ERR_INVALID);
    CHECK(strstr(err.msg, path) && strstr(err.msg, "alignment"));
    gguf_writer_free(w);
    w = gguf_writer_new(&err);
    CHECK_EQ_INT(gguf_w_tensor(w, "q", PEFT_DT_Q8_0, 1, ne, x, 128), PEFT_ERR_INVALID);   /* nbytes != 34 */
    ne[0] = 33;
    CHECK_EQ_INT(gguf_w_tensor(w, "r", PEFT_DT_Q8_0, 1, ne, x, 34), PEFT_ERR_INVALID);    /* partial block */
    CHECK_EQ_INT(gguf_w_tensor(w, "s", PEFT_DT_U8, 1, ne, x, 33), PEFT_ERR_UNSUPPORTED);
    gguf_writer_free(w);
    w = gguf_writer_new(&err);
    ne[0] = 32;
    CHECK_OK(gguf_w_tensor(w, "a", PEFT_DT_F32, 1, ne, x, 128));
    CHECK_EQ_INT(gguf_w_tensor(w, "a", PEFT_DT_F32, 1, ne, x, 128), PEFT_ERR_INVALID);
    gguf_writer_free(w);
    w = gguf_writer_new(&err);
    CHECK_EQ_INT(gguf_writer_save(w, "/nonexistent-dir/x.gguf", &err), PEFT_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent-dir/x.gguf") != NULL);
    gguf_writer_free(w);
    unlink(path);
    free(path);
}

static void gguf_py_reads_our_file(void) {
    if (system("python3 -c 'import gguf, numpy' >/dev/null 2>&1") != 0)
        TEST_SKIP("python3 with gguf-py not available");
    peft_err err = {0};
    char *path = test_tmp_file();
    float f32[64];
    uint8_t q8[68];
    CHECK_OK(write_sample(path, NULL, &err, f32, q8));
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 tools/make_format_fixtures.py --check-gguf %s", path);
    CHECK_EQ_INT(system(cmd), 0);
    unlink(path);
    free(path);
}

static void opens_large_vocab_fast(void) {
    /* tokenizer-sized string arrays: 50k tokens + 50k merges */
    enum { N = 50000 };
    char **toks = malloc(N * sizeof *toks), **merges = malloc(N * sizeof *merges);
    for (int i = 0; i < N; i++) {
        toks[i] = malloc(16);
        merges[i] = malloc(24);
        snprintf(toks[i], 16, "t%d", i);
        snprintf(merges[i], 24, "a%d b%d", i, i + 1);
    }
    peft_err err = {0};
    gguf_writer *w = gguf_writer_new(&err);
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, N);
    gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, N);
    char *path = test_tmp_file();
    CHECK_OK(gguf_writer_save(w, path, &err));
    gguf_writer_free(w);
    double t0 = peft_time_s();
    gguf_file *f = NULL;
    CHECK_OK(gguf_open(path, &f, &err));
    int ok = 1;
    for (int i = 0; f && i < N; i++) {
        const char *s = gguf_get_arr_str(f, "tokenizer.ggml.tokens", (uint64_t)i);
        if (!s || strcmp(s, toks[i]) != 0) ok = 0;
    }
    double dt = peft_time_s() - t0;
    CHECK(ok);
    printf("  open + 50k lookups: %.1f ms\n", dt * 1e3);
    CHECK(dt < 2.0);
    gguf_close(f);
    for (int i = 0; i < N; i++) { free(toks[i]); free(merges[i]); }
    free(toks);
    free(merges);
    unlink(path);
    free(path);
}

/* ---- corrupt input ------------------------------------------------------------- */

static void bad_magic(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    d[0] = 'X';
    expect_fail_bytes(d, len, PEFT_ERR_FORMAT, "magic");
    expect_fail_bytes("GGU", 3, PEFT_ERR_FORMAT, "magic");
    free(d);
}

static void bad_version(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    put32(d + 4, 1);
    expect_fail_bytes(d, len, PEFT_ERR_UNSUPPORTED, "version");
    put32(d + 4, 0x03000000);   /* a big-endian file */
    expect_fail_bytes(d, len, PEFT_ERR_UNSUPPORTED, "big-endian");
    free(d);
}

static void bad_truncated_at_several_points(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    gguf_file *f = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(FIX, &f, &err));
    if (!f) { free(d); return; }
    size_t data_off = gguf_data_offset(f);
    const gguf_tensor *last = gguf_find_tensor(f, "t.i32");
    size_t cuts[] = {6, 12, 20, 24, 30, 100, 1000, 9000, data_off - 40, data_off - 1,
                     data_off + (size_t)last->offset + 10};
    gguf_close(f);
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) expect_fail_bytes(d, cuts[i], PEFT_ERR_FORMAT, NULL);
    free(d);
}

static void bad_truncated_kv_section(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    /* inside the 1000-string array value */
    size_t key = find_info(d, len, "t.arr_str");
    CHECK(key > 0);
    expect_fail_bytes(d, key + 8 + 9 + 4 + 4 + 8 + 8500, PEFT_ERR_FORMAT, "truncated");
    /* too short for the announced number of strings: caught before allocating */
    expect_fail_bytes(d, key + 8 + 9 + 4 + 4 + 8 + 100, PEFT_ERR_FORMAT, "cannot fit");
    /* inside a nested array, the last key */
    size_t nested = find_info(d, len, "t.arr_arr_arr");
    CHECK(nested > 0);
    expect_fail_bytes(d, nested + 8 + 13 + 4 + 4 + 8 + 45, PEFT_ERR_FORMAT, "runs past the end");
    /* a file that ends right after the counts */
    expect_fail_bytes(d, 24 + 4, PEFT_ERR_FORMAT, "absurd");
    free(d);
}

static void bad_string_length_past_eof(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    char *m = malloc(len);
    memcpy(m, d, len);
    put64(m + 24, (uint64_t)1 << 40);   /* first key's length */
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "string length");
    memcpy(m, d, len);
    size_t klen = 0;
    memcpy(&klen, d + 24, 8);           /* general.architecture value length */
    put64(m + 24 + 8 + klen + 4, len);
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "string length");
    memcpy(m, d, len);
    size_t key = find_info(d, len, "t.arr_str");   /* length of the array's first string */
    put64(m + key + 8 + 9 + 4 + 4 + 8, UINT64_MAX - 3);
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "string length");
    free(m);
    free(d);
}

static void bad_absurd_counts(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    char *m = malloc(len);
    memcpy(m, d, len);
    put64(m + 16, (uint64_t)1 << 50);
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "key/value count");
    memcpy(m, d, len);
    put64(m + 8, (uint64_t)1 << 50);
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "tensor count");
    memcpy(m, d, len);
    size_t key = find_info(d, len, "t.arr_str");   /* array length */
    put64(m + key + 8 + 9 + 4 + 4, (uint64_t)1 << 60);
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "t.arr_str");
    memcpy(m, d, len);
    put32(m + key + 8 + 9, 99);                     /* key's value type */
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "value type");
    free(m);
    free(d);
}

/* Patches a tensor info field: 0 = n_dims, 1 = ne[0], 2 = type, 3 = offset. */
static void patch_info(char *m, size_t len, const char *name, int field, uint64_t value) {
    size_t at = find_info(m, len, name);
    CHECK(at > 0);
    size_t p = at + 8 + strlen(name);
    uint32_t nd;
    memcpy(&nd, m + p, 4);
    if (field == 0) put32(m + p, (uint32_t)value);
    else if (field == 1) put64(m + p + 4, value);
    else if (field == 2) put32(m + p + 4 + 8 * nd, (uint32_t)value);
    else put64(m + p + 4 + 8 * nd + 4, value);
}

static void bad_tensor_infos(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    char *m = malloc(len);
    struct { const char *name; int field; uint64_t value; int code; const char *what; } cases[] = {
        {"t.i32", 3, 1 << 20, PEFT_ERR_FORMAT, "runs past"},        /* data out of range */
        {"t.i32", 3, UINT64_MAX - 31, PEFT_ERR_FORMAT, "runs past"},
        {"t.i32", 3, 33, PEFT_ERR_FORMAT, "alignment"},             /* misaligned */
        {"t.i32", 2, 99, PEFT_ERR_UNSUPPORTED, "99"},               /* unknown ggml type */
        {"t.f32", 0, 5, PEFT_ERR_FORMAT, "dimensions"},             /* n_dims > 4 */
        {"t.f32", 1, (uint64_t)1 << 62, PEFT_ERR_FORMAT, "t.f32"},  /* huge ne */
        {"t.f32", 1, UINT64_MAX, PEFT_ERR_FORMAT, "ne[0]"},         /* negative ne */
        {"t.q8_0", 1, 65, PEFT_ERR_FORMAT, "block size"},           /* ne[0] % 32 */
        {"t.q8_0", 3, 0, PEFT_ERR_FORMAT, "overlap"},               /* onto t.f32 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(m, d, len);
        patch_info(m, len, cases[i].name, cases[i].field, cases[i].value);
        expect_fail_bytes(m, len, cases[i].code, cases[i].what);
        if (cases[i].code == PEFT_ERR_UNSUPPORTED) expect_fail_bytes(m, len, cases[i].code, cases[i].name);
    }
    /* duplicate tensor name: rename t.i32 to t.f16 (same length) */
    memcpy(m, d, len);
    size_t at = find_info(m, len, "t.i32");
    memcpy(m + at + 8, "t.f16", 5);
    expect_fail_bytes(m, len, PEFT_ERR_FORMAT, "duplicate tensor name 't.f16'");
    free(m);
    free(d);
}

static void known_but_unmapped_type_opens(void) {
    size_t len;
    char *d = read_fixture(&len);
    if (!d) return;
    patch_info(d, len, "t.q8_0", 2, 20);   /* IQ4_NL: 18 bytes per 32, smaller than Q8_0 */
    char *path = test_tmp_file();
    test_write_bytes(path, d, len);
    gguf_file *f = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(path, &f, &err));
    const gguf_tensor *t = f ? gguf_find_tensor(f, "t.q8_0") : NULL;
    CHECK(t && t->dtype == PEFT_DT_COUNT && t->ggml_type == 20 && t->nbytes == 2 * 2 * 18);
    gguf_close(f);
    unlink(path);
    free(path);
    free(d);
}

int main(void) {
    TEST_RUN(reads_every_value_type);
    TEST_RUN(reads_tensors_of_several_types);
    TEST_RUN(accepts_version_2);
    TEST_RUN(writer_round_trip);
    TEST_RUN(writer_honours_alignment_and_rejects_bad_input);
    TEST_RUN(gguf_py_reads_our_file);
    TEST_RUN(opens_large_vocab_fast);
    TEST_RUN(bad_magic);
    TEST_RUN(bad_version);
    TEST_RUN(bad_truncated_at_several_points);
    TEST_RUN(bad_truncated_kv_section);
    TEST_RUN(bad_string_length_past_eof);
    TEST_RUN(bad_absurd_counts);
    TEST_RUN(bad_tensor_infos);
    TEST_RUN(known_but_unmapped_type_opens);
    TEST_MAIN_END();
}
