/* test_safetensors.c — reader against files written by the safetensors
 * library, writer round trip (checked by the Python library too when it is
 * installed), and one test per kind of corrupt input: the corrupt files are
 * made here in /tmp by mutating the good fixtures. */
#include "core/core.h"
#include "formats/safetensors.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <unistd.h>

#define FIX "tests/fixtures/formats/"

static float formula(int i) { return (float)((i * 37) % 101 - 50) / 16.0f; }

/* st_open must fail with `code`, naming the file and mentioning `what`. */
static void expect_fail(const char *path, int code, const char *what) {
    st_archive *a = (st_archive *)1;
    peft_err err = {0};
    int rc = st_open(path, &a, &err);
    CHECK_MSG(rc == code, "%s: expected %d, got %d (%s)", path, code, rc, err.msg);
    CHECK(a == NULL);
    CHECK_MSG(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    CHECK_MSG(!what || strstr(err.msg, what) != NULL, "message lacks '%s': %s", what, err.msg);
    if (rc == 0) st_close(a);
}

/* Rewrites the fixture with its header JSON changed by fn (the data section
 * is kept as is) into a fresh temp file. */
static char *mutate_header(const char *fixture, void (*fn)(cJSON *root)) {
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    if (peft_read_file(fixture, &data, &len, &err) != 0) return NULL;
    uint64_t hlen;
    memcpy(&hlen, data, 8);
    cJSON *root = cJSON_ParseWithLength(data + 8, (size_t)hlen);
    fn(root);
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t jl = strlen(js), padded = (jl + 7) / 8 * 8;
    size_t out_len = 8 + padded + (len - 8 - (size_t)hlen);
    char *out = malloc(out_len);
    uint64_t h = padded;
    memcpy(out, &h, 8);
    memcpy(out + 8, js, jl);
    memset(out + 8 + jl, ' ', padded - jl);
    memcpy(out + 8 + padded, data + 8 + hlen, len - 8 - (size_t)hlen);
    char *path = test_tmp_file();
    test_write_bytes(path, out, out_len);
    free(js);
    free(out);
    free(data);
    return path;
}

static void check_formula_f32(const st_tensor *t, int n) {
    CHECK(t && t->dtype == PEFT_DT_F32 && t->nbytes == (size_t)n * 4);
    if (!t) return;
    for (int i = 0; i < n; i++) {
        float v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        CHECK_NEAR(v, formula(i), 0);
    }
}

static void reads_basic_fixture(void) {
    st_archive *a = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(FIX "st_basic.safetensors", &a, &err));
    if (!a) { fprintf(stderr, "  %s\n", err.msg); return; }
    CHECK_EQ_INT(st_count(a), 12);
    const st_tensor *t = st_find(a, "a.f32");
    check_formula_f32(t, 6);
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && st_numel(t) == 6);
    t = st_find(a, "b.f16");
    CHECK(t && t->dtype == PEFT_DT_F16 && t->ndim == 1 && t->shape[0] == 5 && t->nbytes == 10);
    for (int i = 0; t && i < 5; i++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        CHECK_NEAR(peft_f16_to_f32(h), formula(i), 0);
    }
    t = st_find(a, "c.bf16");
    CHECK(t && t->dtype == PEFT_DT_BF16 && t->ndim == 2 && t->nbytes == 8);
    for (int i = 0; t && i < 4; i++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        CHECK_NEAR(peft_bf16_to_f32(h), formula(i), 0);
    }
    t = st_find(a, "d.i64");
    CHECK(t && t->dtype == PEFT_DT_I64 && t->nbytes == 24);
    if (t) { int64_t v[3]; memcpy(v, t->data, 24); CHECK(v[0] == 1 && v[1] == -2 && v[2] == 3); }
    t = st_find(a, "e.scalar");
    CHECK(t && t->ndim == 0 && st_numel(t) == 1 && t->nbytes == 4);
    t = st_find(a, "h.empty");
    CHECK(t && t->ndim == 2 && t->shape[0] == 0 && t->nbytes == 0 && st_numel(t) == 0);
    CHECK(st_find(a, "f.u8") && st_find(a, "f.u8")->dtype == PEFT_DT_U8);
    CHECK(st_find(a, "g.bool") && st_find(a, "g.bool")->dtype == PEFT_DT_BOOL);
    CHECK(st_find(a, "i.i8") && st_find(a, "i.i8")->dtype == PEFT_DT_I8);
    CHECK(st_find(a, "j.i16") && st_find(a, "j.i16")->dtype == PEFT_DT_I16);
    CHECK(st_find(a, "k.i32") && st_find(a, "k.i32")->dtype == PEFT_DT_I32);
    CHECK(st_find(a, "l.f64") && st_find(a, "l.f64")->dtype == PEFT_DT_F64);
    CHECK(st_find(a, "nope") == NULL);
    for (int i = 0; i < st_count(a); i++) CHECK(st_at(a, i) && st_at(a, i)->shard == 0);
    CHECK(st_at(a, 12) == NULL);
    st_close(a);
}

static void reads_metadata(void) {
    st_archive *a = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(FIX "st_meta.safetensors", &a, &err));
    if (!a) return;
    CHECK(st_metadata(a, "format") && strcmp(st_metadata(a, "format"), "pt") == 0);
    CHECK(st_metadata(a, "note") && strcmp(st_metadata(a, "note"), "hello \"world\"\n") == 0);
    CHECK(st_metadata(a, "missing") == NULL);
    check_formula_f32(st_find(a, "w"), 12);
    st_close(a);
}

static void check_sharded(st_archive *a) {
    CHECK_EQ_INT(st_count(a), 3);
    const st_tensor *w0 = st_find(a, "layer.0.w"), *b0 = st_find(a, "layer.0.b"), *w1 = st_find(a, "layer.1.w");
    CHECK(w0 && b0 && w1);
    if (!w0 || !b0 || !w1) return;
    check_formula_f32(w0, 6);
    CHECK(w0->shard == b0->shard && w1->shard != w0->shard);
    CHECK(w1->dtype == PEFT_DT_BF16 && w1->shape[0] == 4 && w1->shape[1] == 2);
    CHECK(st_metadata(a, "format") && strcmp(st_metadata(a, "format"), "pt") == 0);
}

static void reads_sharded_index_and_folder(void) {
    st_archive *a = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(FIX "st_sharded", &a, &err));
    if (a) { check_sharded(a); st_close(a); }
    a = NULL;
    CHECK_OK(st_open(FIX "st_sharded/model.safetensors.index.json", &a, &err));
    if (a) { check_sharded(a); st_close(a); }
    a = NULL;
    CHECK_OK(st_open(FIX "st_sharded/model-00002-of-00002.safetensors", &a, &err));
    if (a) { CHECK_EQ_INT(st_count(a), 1); st_close(a); }
}

static void reads_single_file_folder(void) {
    st_archive *a = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(FIX "st_single_dir", &a, &err));
    if (!a) { fprintf(stderr, "  %s\n", err.msg); return; }
    check_formula_f32(st_find(a, "lora_A"), 8);
    st_close(a);
}

/* Writes the file tools/make_format_fixtures.py --check-st expects. */
static int write_sample(const char *path, peft_err *err) {
    float a[6], c32[4];
    uint16_t b[5], c[4];
    int32_t d[3] = {7, 8, 9};
    for (int i = 0; i < 6; i++) a[i] = formula(i);
    for (int i = 0; i < 5; i++) b[i] = peft_f32_to_f16(formula(i));
    for (int i = 0; i < 4; i++) { c32[i] = formula(i); c[i] = peft_f32_to_bf16(c32[i]); }
    st_write_tensor t[5] = {
        {"a", PEFT_DT_F32, 2, {2, 3}, a},
        {"b", PEFT_DT_F16, 1, {5}, b},
        {"c", PEFT_DT_BF16, 2, {2, 2}, c},
        {"d", PEFT_DT_I32, 1, {3}, d},
        {"e", PEFT_DT_F32, 2, {0, 3}, NULL},
    };
    const char *meta[] = {"format", "pt", "k", "v \"quoted\"\n\\", NULL};
    return st_write(path, t, 5, meta, err);
}

static void write_round_trip(void) {
    char *path = test_tmp_file();
    peft_err err = {0};
    CHECK_OK(write_sample(path, &err));
    /* header: 8-byte length, multiple of 8, padded with spaces */
    char *raw = NULL;
    size_t len = 0;
    CHECK_OK(peft_read_file(path, &raw, &len, &err));
    uint64_t hlen = 0;
    if (raw) memcpy(&hlen, raw, 8);
    CHECK(hlen % 8 == 0 && hlen < len);
    CHECK(raw && raw[8] == '{' && (raw[8 + hlen - 1] == '}' || raw[8 + hlen - 1] == ' '));
    free(raw);
    st_archive *a = NULL;
    CHECK_OK(st_open(path, &a, &err));
    if (a) {
        CHECK_EQ_INT(st_count(a), 5);
        check_formula_f32(st_find(a, "a"), 6);
        const st_tensor *t = st_find(a, "c");
        CHECK(t && t->dtype == PEFT_DT_BF16 && t->nbytes == 8);
        t = st_find(a, "d");
        if (t) { int32_t d[3]; memcpy(d, t->data, 12); CHECK(d[0] == 7 && d[2] == 9); }
        t = st_find(a, "e");
        CHECK(t && t->nbytes == 0 && t->ndim == 2 && t->shape[1] == 3);
        CHECK(st_metadata(a, "k") && strcmp(st_metadata(a, "k"), "v \"quoted\"\n\\") == 0);
        CHECK(st_at(a, 0) && strcmp(st_at(a, 0)->name, "a") == 0);  /* given order kept */
        st_close(a);
    }
    /* no temp files left behind, and rewriting replaces atomically */
    CHECK_OK(write_sample(path, &err));
    unlink(path);
    free(path);
}

static void python_library_loads_our_file(void) {
    if (system("python3 -c 'import safetensors, torch, numpy' >/dev/null 2>&1") != 0)
        TEST_SKIP("python3 with safetensors and torch not available");
    char *path = test_tmp_file();
    peft_err err = {0};
    CHECK_OK(write_sample(path, &err));
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 tools/make_format_fixtures.py --check-st %s", path);
    CHECK_EQ_INT(system(cmd), 0);
    unlink(path);
    free(path);
}

static void write_rejects_bad_input(void) {
    float x[4] = {0};
    peft_err err = {0};
    char *path = test_tmp_file();
    st_write_tensor dup[2] = {{"x", PEFT_DT_F32, 1, {4}, x}, {"x", PEFT_DT_F32, 1, {4}, x}};
    CHECK_EQ_INT(st_write(path, dup, 2, NULL, &err), PEFT_ERR_INVALID);
    CHECK(strstr(err.msg, path) && strstr(err.msg, "duplicate"));
    st_write_tensor q = {"q", PEFT_DT_Q4_0, 1, {32}, x};
    CHECK_EQ_INT(st_write(path, &q, 1, NULL, &err), PEFT_ERR_UNSUPPORTED);
    st_write_tensor neg = {"n", PEFT_DT_F32, 1, {-1}, x};
    CHECK_EQ_INT(st_write(path, &neg, 1, NULL, &err), PEFT_ERR_INVALID);
    st_write_tensor ok = {"ok", PEFT_DT_F32, 1, {4}, x};
    CHECK_EQ_INT(st_write("/nonexistent-dir/x.safetensors", &ok, 1, NULL, &err), PEFT_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent-dir/x.safetensors") != NULL);
    unlink(path);
    free(path);
}

/* ---- corrupt input ------------------------------------------------------------ */

static void bad_truncated_at_several_points(void) {
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    CHECK_OK(peft_read_file(FIX "st_basic.safetensors", &data, &len, &err));
    if (!data) return;
    uint64_t hlen;
    memcpy(&hlen, data, 8);
    size_t cuts[] = {0, 4, 7, 8, 8 + (size_t)hlen / 2, 8 + (size_t)hlen - 1, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char *path = test_tmp_file();
        test_write_bytes(path, data, cuts[i]);
        expect_fail(path, PEFT_ERR_FORMAT, NULL);
        unlink(path);
        free(path);
    }
    free(data);
}

static void bad_header_length_past_eof(void) {
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    CHECK_OK(peft_read_file(FIX "st_basic.safetensors", &data, &len, &err));
    if (!data) return;
    uint64_t h = len;   /* 8 + len > len */
    memcpy(data, &h, 8);
    char *path = test_tmp_file();
    test_write_bytes(path, data, len);
    expect_fail(path, PEFT_ERR_FORMAT, "header length");
    h = UINT64_MAX;
    memcpy(data, &h, 8);
    test_write_bytes(path, data, len);
    expect_fail(path, PEFT_ERR_FORMAT, "header length");
    unlink(path);
    free(path);
    free(data);
}

static void bad_corrupt_json(void) {
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    CHECK_OK(peft_read_file(FIX "st_basic.safetensors", &data, &len, &err));
    if (!data) return;
    uint64_t hlen;
    memcpy(&hlen, data, 8);
    char *path = test_tmp_file();
    /* a colon after a key replaced by garbage */
    char *colon = strstr(data + 8, "\"dtype\":");
    CHECK(colon != NULL && colon < data + 8 + hlen);
    if (!colon) { free(data); free(path); return; }
    colon[7] = '!';
    test_write_bytes(path, data, len);
    expect_fail(path, PEFT_ERR_FORMAT, "JSON");
    colon[7] = ':';
    /* garbage after the object */
    char last = data[8 + hlen - 1];
    data[8 + hlen - 1] = 'x';
    test_write_bytes(path, data, len);
    expect_fail(path, PEFT_ERR_FORMAT, NULL);
    data[8 + hlen - 1] = last;
    /* not an object at all */
    memcpy(data + 8, "[1, 2]", 6);
    test_write_bytes(path, data, len);
    expect_fail(path, PEFT_ERR_FORMAT, "JSON object");
    unlink(path);
    free(path);
    free(data);
}

static void set_dtype_q16(cJSON *r) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, "b.f16"), "dtype", cJSON_CreateString("Q16"));
}
static void set_dtype_f8(cJSON *r) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, "i.i8"), "dtype", cJSON_CreateString("F8_E4M3"));
}
static void set_dtype_number(cJSON *r) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, "a.f32"), "dtype", cJSON_CreateNumber(3));
}

static void bad_unknown_dtype(void) {
    char *p = mutate_header(FIX "st_basic.safetensors", set_dtype_q16);
    expect_fail(p, PEFT_ERR_FORMAT, "unknown dtype \"Q16\"");
    unlink(p); free(p);
    p = mutate_header(FIX "st_basic.safetensors", set_dtype_f8);   /* valid but unmapped */
    expect_fail(p, PEFT_ERR_UNSUPPORTED, "F8_E4M3");
    unlink(p); free(p);
    p = mutate_header(FIX "st_basic.safetensors", set_dtype_number);
    expect_fail(p, PEFT_ERR_FORMAT, "dtype");
    unlink(p); free(p);
}

static void set_offsets(cJSON *r, const char *name, double b, double e) {
    cJSON *o = cJSON_CreateArray();
    cJSON_AddItemToArray(o, cJSON_CreateNumber(b));
    cJSON_AddItemToArray(o, cJSON_CreateNumber(e));
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, name), "data_offsets", o);
}
static void offsets_past_end(cJSON *r) { set_offsets(r, "a.f32", 100000, 100024); }
static void offsets_reversed(cJSON *r) { set_offsets(r, "a.f32", 24, 0); }
static void offsets_negative(cJSON *r) { set_offsets(r, "a.f32", -24, 0); }
static void offsets_fraction(cJSON *r) { set_offsets(r, "a.f32", 0.5, 24.5); }

static void bad_data_offsets_out_of_range(void) {
    void (*fns[])(cJSON *) = {offsets_past_end, offsets_reversed, offsets_negative, offsets_fraction};
    const char *what[] = {"past the data section", "reversed", "data_offsets", "data_offsets"};
    for (int i = 0; i < 4; i++) {
        char *p = mutate_header(FIX "st_basic.safetensors", fns[i]);
        expect_fail(p, PEFT_ERR_FORMAT, what[i]);
        unlink(p); free(p);
    }
}

static void set_shape(cJSON *r, const char *name, const double *dims, int n) {
    cJSON *s = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(s, cJSON_CreateNumber(dims[i]));
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, name), "shape", s);
}
static void shape_mismatch(cJSON *r) { double d[] = {3, 3}; set_shape(r, "a.f32", d, 2); }
static void shape_absurd(cJSON *r) { double d[] = {4294967296.0, 4294967296.0, 4294967296.0}; set_shape(r, "a.f32", d, 3); }
static void shape_huge_dim(cJSON *r) { double d[] = {1e300}; set_shape(r, "a.f32", d, 1); }
static void shape_too_many_dims(cJSON *r) { double d[9] = {1, 1, 1, 1, 1, 1, 1, 2, 3}; set_shape(r, "a.f32", d, 9); }
static void shape_negative(cJSON *r) { double d[] = {-2, -3}; set_shape(r, "a.f32", d, 2); }

static void bad_shape_vs_offsets_and_absurd_dims(void) {
    char *p = mutate_header(FIX "st_basic.safetensors", shape_mismatch);
    expect_fail(p, PEFT_ERR_FORMAT, "data_offsets span");
    unlink(p); free(p);
    p = mutate_header(FIX "st_basic.safetensors", shape_absurd);
    expect_fail(p, PEFT_ERR_FORMAT, "absurd");
    unlink(p); free(p);
    p = mutate_header(FIX "st_basic.safetensors", shape_huge_dim);
    expect_fail(p, PEFT_ERR_FORMAT, "shape[0]");
    unlink(p); free(p);
    p = mutate_header(FIX "st_basic.safetensors", shape_negative);
    expect_fail(p, PEFT_ERR_FORMAT, "shape[0]");
    unlink(p); free(p);
    p = mutate_header(FIX "st_basic.safetensors", shape_too_many_dims);
    expect_fail(p, PEFT_ERR_UNSUPPORTED, "dimensions");
    unlink(p); free(p);
}

static void overlap(cJSON *r) {
    /* b.f16 (10 bytes) moved onto the start of the data of a.f32 */
    const cJSON *a = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "a.f32"), "data_offsets");
    double b = cJSON_GetArrayItem(a, 0)->valuedouble;
    set_offsets(r, "b.f16", b, b + 10);
}
static void duplicate(cJSON *r) {
    cJSON_AddItemToObject(r, "a.f32", cJSON_Duplicate(cJSON_GetObjectItem(r, "b.f16"), 1));
}
static void no_dtype(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "a.f32"), "dtype"); }
static void no_offsets(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "a.f32"), "data_offsets"); }
static void no_shape(cJSON *r) { cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "a.f32"), "shape"); }
static void entry_not_object(cJSON *r) { cJSON_ReplaceItemInObject(r, "a.f32", cJSON_CreateString("x")); }
static void meta_not_string(cJSON *r) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddNumberToObject(m, "n", 3);
    cJSON_AddItemToObject(r, "__metadata__", m);
}

static void bad_overlapping_ranges(void) {
    char *p = mutate_header(FIX "st_basic.safetensors", overlap);
    expect_fail(p, PEFT_ERR_FORMAT, "overlapping");
    unlink(p); free(p);
}

static void bad_duplicate_names(void) {
    char *p = mutate_header(FIX "st_basic.safetensors", duplicate);
    expect_fail(p, PEFT_ERR_FORMAT, NULL);   /* overlapping ranges or duplicate name */
    unlink(p); free(p);
}

static void bad_missing_fields(void) {
    void (*fns[])(cJSON *) = {no_dtype, no_offsets, no_shape, entry_not_object, meta_not_string};
    const char *what[] = {"dtype", "data_offsets", "shape", "not a JSON object", "__metadata__"};
    for (int i = 0; i < 5; i++) {
        char *p = mutate_header(FIX "st_basic.safetensors", fns[i]);
        expect_fail(p, PEFT_ERR_FORMAT, what[i]);
        unlink(p); free(p);
    }
}

static void bad_sharded_index(void) {
    char dir[] = "/tmp/peft_st_idx_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char idx[256], shard[256];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    snprintf(shard, sizeof shard, "%s/s1.safetensors", dir);
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    CHECK_OK(peft_read_file(FIX "st_sharded/model-00001-of-00002.safetensors", &data, &len, &err));
    test_write_bytes(shard, data, len);
    free(data);
    const char *missing = "{\"weight_map\": {\"layer.0.w\": \"s1.safetensors\", \"x\": \"s9.safetensors\"}}";
    test_write_bytes(idx, missing, strlen(missing));
    expect_fail(idx, PEFT_ERR_IO, "s9.safetensors");
    const char *absent = "{\"weight_map\": {\"layer.0.w\": \"s1.safetensors\", \"zzz\": \"s1.safetensors\"}}";
    test_write_bytes(idx, absent, strlen(absent));
    expect_fail(idx, PEFT_ERR_FORMAT, "zzz");
    const char *escape = "{\"weight_map\": {\"layer.0.w\": \"../s1.safetensors\"}}";
    test_write_bytes(idx, escape, strlen(escape));
    expect_fail(idx, PEFT_ERR_FORMAT, "shard file name");
    const char *nomap = "{\"metadata\": {}}";
    test_write_bytes(idx, nomap, strlen(nomap));
    expect_fail(idx, PEFT_ERR_FORMAT, "weight_map");
    /* the folder form finds the index */
    expect_fail(dir, PEFT_ERR_FORMAT, "weight_map");
    unlink(idx);
    unlink(shard);
    rmdir(dir);
    expect_fail("/nonexistent/model.safetensors", PEFT_ERR_IO, NULL);
}

int main(void) {
    TEST_RUN(reads_basic_fixture);
    TEST_RUN(reads_metadata);
    TEST_RUN(reads_sharded_index_and_folder);
    TEST_RUN(reads_single_file_folder);
    TEST_RUN(write_round_trip);
    TEST_RUN(python_library_loads_our_file);
    TEST_RUN(write_rejects_bad_input);
    TEST_RUN(bad_truncated_at_several_points);
    TEST_RUN(bad_header_length_past_eof);
    TEST_RUN(bad_corrupt_json);
    TEST_RUN(bad_unknown_dtype);
    TEST_RUN(bad_data_offsets_out_of_range);
    TEST_RUN(bad_shape_vs_offsets_and_absurd_dims);
    TEST_RUN(bad_overlapping_ranges);
    TEST_RUN(bad_duplicate_names);
    TEST_RUN(bad_missing_fields);
    TEST_RUN(bad_sharded_index);
    TEST_MAIN_END();
}
