/* test_hostile.c — crafted files from the security review of issue 9 (and
 * more found since): each loader must refuse them with one error naming
 * the file and the problem, quickly and without a large allocation. Each
 * test writes a minimal reproducer into a temp folder. Checks that need the
 * CLI run it through $PEFT_CLI, under `ulimit -v` where an over-allocation is
 * the bug, so it fails the test instead of exhausting the machine. */
#include "peft.h"
#include "core/core.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "train/data.h"
#include "test.h"

#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/"
/* Helpers some builds of this file (while cases are added) leave unused. */
#define MAYBE_UNUSED __attribute__((unused))

static char tmpdir[256];

static const char *tpath(const char *name) {
    static char p[4][600];
    static int k = 0;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

MAYBE_UNUSED static void write_str(const char *path, const char *text) { test_write_bytes(path, text, strlen(text)); }

static bool has(const char *msg, const char *needle) { return msg && needle && strstr(msg, needle) != NULL; }

static const char *nz(const char *s) { return s ? s : "(null)"; }
#define CHECK_HAS(msg, needle) CHECK_MSG(has((msg), (needle)), "message \"%s\" lacks \"%s\"", nz(msg), nz(needle))

/* A .safetensors file whose header is `json` (padded to 8) and `data_len` zero bytes of data. */
static void write_safetensors(const char *path, const char *json, size_t data_len) {
    size_t hl = strlen(json), pad = (8 - hl % 8) % 8;
    size_t total = 8 + hl + pad + data_len;
    unsigned char *b = calloc(1, total);
    uint64_t n = hl + pad;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, json, hl);
    memset(b + 8 + hl, ' ', pad);
    test_write_bytes(path, b, total);
    free(b);
}

MAYBE_UNUSED static void copy_file(const char *src, const char *dst) {
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    if (peft_read_file(src, &data, &len, &err) == 0) test_write_bytes(dst, data, len);
    free(data);
}

/* A copy of a fixture folder's files into tmpdir/<name>. */
MAYBE_UNUSED static const char *copy_dir(const char *src, const char *name, const char *const *files) {
    static char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    mkdir(dir, 0755);
    for (int i = 0; files[i]; i++) {
        char s[700], d[700];
        snprintf(s, sizeof s, "%s/%s", src, files[i]);
        snprintf(d, sizeof d, "%s/%s", dir, files[i]);
        copy_file(s, d);
    }
    return dir;
}

MAYBE_UNUSED static const char *const model_files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                          "tokenizer_config.json", NULL};

/* peft_model_load must fail with a message holding both needles. */
MAYBE_UNUSED static void expect_model_error(const char *path, const char *needle1, const char *needle2) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, path);
    CHECK_MSG(m == NULL, "%s loaded but should not", path);
    if (m) peft_model_free(m);
    const char *msg = peft_last_error(ctx);
    if (needle1) CHECK_HAS(msg, needle1);
    if (needle2) CHECK_HAS(msg, needle2);
    peft_free(ctx);
}

/* Runs the CLI with args under a virtual-memory limit (KiB); returns the exit status. */
MAYBE_UNUSED static int run_cli_limited(long kib, const char *args, char *out, size_t cap) {
    char cmd[8192];
#if defined(__SANITIZE_ADDRESS__)
    /* ASan reserves terabytes of shadow address space: no ulimit -v there
     * (the release build runs these checks with it). */
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", getenv("PEFT_CLI"), args);
    (void)kib;
#else
    snprintf(cmd, sizeof cmd, "sh -c 'ulimit -v %ld; exec %s %s' 2>&1", kib, getenv("PEFT_CLI"), args);
#endif
    return test_run_shell(cmd, out, cap);
}

/* ---- safetensors ------------------------------------------------------------ */

/* Found 1: a second __metadata__ object wrote past the metadata array. */
static void safetensors_duplicate_metadata_is_refused(void) {
    const char *p = tpath("dupmeta.safetensors");
    write_safetensors(p, "{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"b\":\"2\",\"c\":\"3\",\"d\":\"4\"},"
                         "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    st_archive *a = NULL;
    peft_err err = {0};
    CHECK(st_open(p, &a, &err) == PEFT_ERR_FORMAT);
    CHECK(a == NULL);
    CHECK_HAS(err.msg, "dupmeta.safetensors");
    CHECK_HAS(err.msg, "__metadata__");
    st_close(a);
}

/* A zero dimension made the element count 0 and let the others be anything:
 * the product of the trailing dims (a row count) then overflowed int64. */
static void safetensors_zero_dim_does_not_hide_huge_dims(void) {
    const char *p = tpath("zerodim.safetensors");
    write_safetensors(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[0,4503599627370496,4503599627370496],"
                         "\"data_offsets\":[0,0]}}", 0);
    st_archive *a = NULL;
    peft_err err = {0};
    CHECK(st_open(p, &a, &err) == PEFT_ERR_FORMAT);
    CHECK_HAS(err.msg, "zerodim.safetensors");
    CHECK_HAS(err.msg, "absurd shape");
    st_close(a);
    /* a plain empty tensor still opens */
    write_safetensors(p, "{\"x\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]}}", 0);
    CHECK_OK(st_open(p, &a, &err));
    st_close(a);
}

/* ---- config.json ------------------------------------------------------------- */


/* Found 4: 130 bytes of config.json asked for 3.2 GB of layers. */
static void config_layer_count_is_capped(void) {
    const char *d = copy_dir(FIX "models/tiny-llama", "layers", model_files);
    test_edit_file(d, "config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 4748368");
    expect_model_error(d, "config.json", "num_hidden_layers");
    expect_model_error(d, "1024", NULL);
}

/* Found 5: pad_token_id 1e17 was an undefined float-to-int conversion. */
static void config_pad_token_id_is_range_checked(void) {
    const char *d = copy_dir(FIX "models/tiny-llama", "pad", model_files);
    test_edit_file(d, "config.json", "\"pad_token_id\": 317", "\"pad_token_id\": 1e17");
    expect_model_error(d, "config.json", "pad_token_id");
    test_edit_file(d, "config.json", "\"pad_token_id\": 1e17", "\"pad_token_id\": 320");
    expect_model_error(d, "config.json", "pad_token_id");
    test_edit_file(d, "config.json", "\"pad_token_id\": 320", "\"pad_token_id\": -1");
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, d);
    CHECK_MSG(m != NULL, "pad_token_id -1 (LLaMA's \"none\") must load: %s", peft_last_error(ctx));
    peft_model_free(m);
    peft_free(ctx);
}

/* Every JSON number that becomes an integer is range-checked, and floats
 * must fit a float (1e300 -> float is undefined). */
static void config_numbers_are_range_checked(void) {
    const char *d = copy_dir(FIX "models/tiny-llama", "nums", model_files);
    test_edit_file(d, "config.json", "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 1e300");
    expect_model_error(d, "config.json", "rms_norm_eps");
    test_edit_file(d, "config.json", "\"rms_norm_eps\": 1e300", "\"rms_norm_eps\": 1e-05");
    test_edit_file(d, "config.json", "\"head_dim\": 16", "\"head_dim\": 16.5");
    expect_model_error(d, "config.json", "head_dim");
    test_edit_file(d, "config.json", "\"head_dim\": 16.5", "\"head_dim\": 16");
    test_edit_file(d, "config.json", "\"max_position_embeddings\": 128", "\"max_position_embeddings\": 9000000");
    expect_model_error(d, "config.json", "max_position_embeddings");
}

/* A JSON file is bounded before it is read (its cJSON tree costs ~10x). */
static void config_file_size_is_capped(void) {
    const char *d = copy_dir(FIX "models/tiny-llama", "bigcfg", model_files);
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "ab");
    CHECK(f != NULL);
    if (!f) return;
    static char pad[1 << 16];
    memset(pad, ' ', sizeof pad);
    for (int i = 0; i < 17 * 16; i++) fwrite(pad, 1, sizeof pad, f);
    fclose(f);
    expect_model_error(d, "config.json", "16 MiB");
}

/* A FIFO in place of a file would block the loader forever (waiting for a
 * writer): the weights are refused as not a regular file, a config.json is
 * not one (the folder is not a model), a tokenizer.json is not one (there
 * is no tokenizer). */
static void fifo_in_place_of_a_file_does_not_block(void) {
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    const char *needle[] = {"config.json", "not a regular file", NULL};
    alarm(60);   /* a regression blocks in open(): die (and fail) instead of hanging */
    for (int i = 0; i < 3; i++) {
        const char *d = copy_dir(FIX "models/tiny-llama", "fifo", model_files);
        char p[700];
        snprintf(p, sizeof p, "%s/%s", d, files[i]);
        unlink(p);
        CHECK(mkfifo(p, 0644) == 0);
        if (needle[i]) {
            expect_model_error(d, files[i], needle[i]);
        } else {
            peft_ctx *ctx = peft_init(NULL);
            peft_model_free(peft_model_load(ctx, d));
            peft_free(ctx);
        }
        unlink(p);
    }
    /* the library's readers refuse it too */
    const char *p = tpath("fifo.json");
    unlink(p);
    CHECK(mkfifo(p, 0644) == 0);
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK(bpe_load_json(p, &t, &err) == PEFT_ERR_IO);
    CHECK_HAS(err.msg, "not a regular file");
    unlink(p);
    alarm(0);
}

/* llama3 rope scaling divides by high_freq_factor - low_freq_factor. */
static void config_llama3_rope_factors_are_validated(void) {
    const char *d = copy_dir(FIX "models/tiny-llama3-rope", "rope3", model_files);
    test_edit_file(d, "config.json", "\"low_freq_factor\": 1.0", "\"low_freq_factor\": 4.0");
    expect_model_error(d, "config.json", "low_freq_factor");
}

/* ---- tokenizer.json ------------------------------------------------------------ */

/* A copy of tiny-llama whose tokenizer.json is `tok` (tokenizer_config.json removed). */
static const char *model_with_tokenizer(const char *name, const char *tok) {
    const char *d = copy_dir(FIX "models/tiny-llama", name, model_files);
    char p[700];
    snprintf(p, sizeof p, "%s/tokenizer.json", d);
    write_str(p, tok);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
    unlink(p);
    return d;
}

#define TINY_VOCAB "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}"

/* Found 2: a BertProcessing cls id past the vocabulary became BOS and the
 * chat formatter read the token table with it; 1e20 was an undefined cast. */
static void tokenizer_post_processor_ids_are_range_checked(void) {
    const char *ids[] = {"999999", "1e20", "-1", "1.5"};
    for (int i = 0; i < 4; i++) {
        char tok[512];
        snprintf(tok, sizeof tok,
                 "{\"model\":{\"type\":\"BPE\"," TINY_VOCAB ",\"merges\":[]},"
                 "\"post_processor\":{\"type\":\"BertProcessing\",\"cls\":[\"a\",%s],\"sep\":[\"b\",1]}}", ids[i]);
        const char *d = model_with_tokenizer("postids", tok);
        expect_model_error(d, "tokenizer.json", "post_processor.cls");
    }
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char out[8192], args[800];
    snprintf(args, sizeof args, "generate --model %s/postids --chat --prompt hi --max-tokens 2", tmpdir);
    CHECK_EQ_INT(run_cli_limited(4000000, args, out, sizeof out), 1);
    CHECK_HAS(out, "tokenizer.json");
    CHECK_HAS(out, "post_processor.cls");
}

/* Found 4: one added token with id 2^24 sized a 16M-entry token table. */
static void tokenizer_added_token_id_is_bounded(void) {
    const char *d = model_with_tokenizer("addedid",
        "{\"model\":{\"type\":\"BPE\"," TINY_VOCAB ",\"merges\":[]},"
        "\"added_tokens\":[{\"id\":16777216,\"content\":\"<x>\",\"special\":true}]}");
    expect_model_error(d, "tokenizer.json", "added_tokens.id");
    d = model_with_tokenizer("vocabid", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":4000000}}}");
    expect_model_error(d, "tokenizer.json", "vocab.b");
}

/* A token id past the model's embedding table would be read out of bounds
 * by the first forward pass that meets it. */
static void tokenizer_ids_must_fit_the_model(void) {
    const char *d = copy_dir(FIX "models/tiny-llama", "tokfit", model_files);
    test_edit_file(d, "tokenizer.json", "\"added_tokens\": [", "\"added_tokens\": [{\"id\": 330, \"content\": \"<evil>\"},");
    expect_model_error(d, "vocab_size", "ids up to 330");
}

/* Runs fn(arg) in a child under a CPU-time limit: a regression to quadratic
 * work fails the test (SIGXCPU) instead of hanging it. */
static void run_cpu_limited(const char *what, rlim_t seconds, int (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl = {seconds, seconds};
        setrlimit(RLIMIT_CPU, &rl);
        _exit(fn(arg));
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: child %s %d", what,
              WIFEXITED(st) ? "exited" : "killed by signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

static int chat_format_child(void *dir) {
    char p[700];
    snprintf(p, sizeof p, "%s/tokenizer.json", (const char *)dir);
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    if (bpe_load_json(p, &t, &err)) { fprintf(stderr, "  %s\n", err.msg); return 2; }
    bpe_chat_msg msg = {"user", "hi"};
    char *out = NULL;
    int rc = bpe_chat_format(t, &msg, 1, true, &out, &err);
    free(out);
    bpe_free(t);
    return rc ? 3 : 0;
}

static int load_tokenizer_child(void *path) {
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    int rc = bpe_load_json(path, &t, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    int n = t ? bpe_vocab_size(t) : 0;
    bpe_free(t);
    return rc ? 2 : n == 200003 ? 0 : 3;
}

/* 200000 added tokens, each listed twice: adding them scanned every earlier
 * one and grew the array by one (quadratic: ~20 s of CPU, against well
 * under one now). */
static void many_added_tokens_load_in_linear_time(void) {
    const int n = 200000;
    peft_buf b = {0};
    peft_buf_printf(&b, "{\"model\":{\"type\":\"BPE\"," TINY_VOCAB ",\"merges\":[]},\"added_tokens\":[");
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < n; i++)
            peft_buf_printf(&b, "%s{\"id\":%d,\"content\":\"<t%d>\",\"special\":true}", r || i ? "," : "", 3 + i, i);
    peft_buf_printf(&b, "]}");
    const char *p = tpath("manyadded.json");
    test_write_bytes(p, b.data, b.len);
    peft_buf_free(&b);
    run_cpu_limited("tokenizer with many added tokens", 10, load_tokenizer_child, (void *)p);
}

/* A chat template with 100000 "<|im_start|>system" candidates before one
 * <|im_end|> made the default-system-prompt search quadratic. */
static void chat_template_search_is_linear(void) {
    const char *d = copy_dir(FIX "models/tiny-llama", "tpl", model_files);
    peft_buf b = {0};
    peft_buf_printf(&b, "{\"chat_template\": \"");
    for (int i = 0; i < 100000; i++) peft_buf_printf(&b, "<|im_start|>system\\n{{ x }}");
    peft_buf_printf(&b, "<|im_end|>\"}");
    char p[700];
    snprintf(p, sizeof p, "%s/tokenizer_config.json", d);
    test_write_bytes(p, b.data, b.len);
    peft_buf_free(&b);
    run_cpu_limited("chat format", 20, chat_format_child, (void *)d);
}

/* Found 6: merges naming tokens that are not in the vocabulary (HF refuses them). */
static void tokenizer_merges_must_name_tokens(void) {
    const char *d = model_with_tokenizer("merges",
        "{\"model\":{\"type\":\"BPE\"," TINY_VOCAB ",\"merges\":[\"a b\",\"a zz\"]}}");
    expect_model_error(d, "tokenizer.json", "merge 1");
    d = model_with_tokenizer("merges2",
        "{\"model\":{\"type\":\"BPE\"," TINY_VOCAB ",\"merges\":[[\"b\",\"a\"]]}}");
    expect_model_error(d, "tokenizer.json", "not in the vocabulary");
}

/* ---- GGUF ---------------------------------------------------------------------- */

/* Copies src (its key/values and tensors) to dst and adds one F32 tensor. */
static void gguf_copy_plus(const char *src, const char *dst, const char *name, int ndim, const int64_t *ne,
                           const float *data, size_t nbytes) {
    gguf_file *g = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(src, &g, &err));
    if (!g) return;
    gguf_writer *w = gguf_writer_new(&err);
    CHECK_OK(gguf_w_copy_kv(w, g, NULL));
    for (int i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        CHECK_OK(gguf_w_tensor(w, t->name, t->dtype, t->ndim, t->ne, t->data, t->nbytes));
    }
    CHECK_OK(gguf_w_tensor(w, name, PEFT_DT_F32, ndim, ne, data, nbytes));
    CHECK_OK(gguf_writer_save(w, dst, &err));
    gguf_writer_free(w);
    gguf_close(g);
}

/* GGUF bytes under construction. */
static void put_le(peft_buf *b, uint64_t v, int n) {
    unsigned char x[8];
    for (int i = 0; i < n; i++) x[i] = (unsigned char)(v >> (8 * i));
    peft_buf_append(b, x, (size_t)n);
}
static void put_str(peft_buf *b, const char *s, size_t n) {
    put_le(b, n, 8);
    peft_buf_append(b, s, n);
}
static void gguf_header(peft_buf *b, uint64_t n_t, uint64_t n_kv) {
    peft_buf_append(b, "GGUF", 4);
    put_le(b, 3, 4);
    put_le(b, n_t, 8);
    put_le(b, n_kv, 8);
}

static int open_gguf_bytes(const char *name, const peft_buf *b, peft_err *err) {
    const char *p = tpath(name);
    test_write_bytes(p, b->data, b->len);
    gguf_file *g = NULL;
    int rc = gguf_open(p, &g, err);
    gguf_close(g);
    return rc;
}

/* Found 4: a GGUF that is one array of empty arrays took 9x its size (one
 * gguf_value per 12-byte item); such items are capped, a few still parse. */
static void gguf_arrays_of_arrays_are_bounded(void) {
    for (int big = 0; big < 2; big++) {
        const uint64_t n = big ? 200000 : 1000;
        peft_buf b = {0};
        gguf_header(&b, 0, 1);
        put_str(&b, "k", 1);
        put_le(&b, GGUF_TYPE_ARRAY, 4);
        put_le(&b, GGUF_TYPE_ARRAY, 4);
        put_le(&b, n, 8);
        for (uint64_t i = 0; i < n; i++) {
            put_le(&b, GGUF_TYPE_UINT8, 4);
            put_le(&b, 0, 8);
        }
        peft_err err = {0};
        int rc = open_gguf_bytes("nested.gguf", &b, &err);
        if (big) {
            CHECK(rc == PEFT_ERR_FORMAT);
            CHECK_HAS(err.msg, "nested.gguf");
            CHECK_HAS(err.msg, "arrays of arrays");
        } else {
            CHECK_MSG(rc == 0, "%s", err.msg);
        }
        peft_buf_free(&b);
    }
}

/* The GGUF twin of the zero-dimension overflow. */
static void gguf_zero_dim_does_not_hide_huge_dims(void) {
    peft_buf b = {0};
    gguf_header(&b, 1, 0);
    put_str(&b, "x", 1);
    put_le(&b, 3, 4);
    put_le(&b, 0, 8);
    put_le(&b, (uint64_t)1 << 40, 8);
    put_le(&b, (uint64_t)1 << 40, 8);
    put_le(&b, 0, 4);   /* F32 */
    put_le(&b, 0, 8);
    while (b.len % 32) put_le(&b, 0, 1);
    peft_err err = {0};
    CHECK(open_gguf_bytes("zerodim.gguf", &b, &err) == PEFT_ERR_FORMAT);
    CHECK_HAS(err.msg, "zerodim.gguf");
    CHECK_HAS(err.msg, "absurd dimensions");
    peft_buf_free(&b);
}

/* Key/value pairs are capped (each costs ~9x its 13 bytes once parsed). */
static void gguf_kv_count_is_capped(void) {
    const uint64_t n = 70000;
    peft_buf b = {0};
    gguf_header(&b, 0, n);
    for (uint64_t i = 0; i < n; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "k%llu", (unsigned long long)i);
        put_str(&b, k, (size_t)kl);
        put_le(&b, GGUF_TYPE_UINT8, 4);
        put_le(&b, 1, 1);
    }
    peft_err err = {0};
    CHECK(open_gguf_bytes("manykv.gguf", &b, &err) == PEFT_ERR_FORMAT);
    CHECK_HAS(err.msg, "manykv.gguf");
    CHECK_HAS(err.msg, "65536");
    peft_buf_free(&b);
}

/* A NUL inside a tensor name would let two different names compare equal. */
static void gguf_tensor_name_with_nul_is_refused(void) {
    peft_buf b = {0};
    gguf_header(&b, 1, 0);
    put_str(&b, "a\0b", 3);
    put_le(&b, 1, 4);
    put_le(&b, 4, 8);
    put_le(&b, 0, 4);   /* F32 */
    put_le(&b, 0, 8);
    while (b.len % 32) put_le(&b, 0, 1);
    put_le(&b, 0, 8);
    put_le(&b, 0, 8);
    peft_err err = {0};
    CHECK(open_gguf_bytes("nulname.gguf", &b, &err) == PEFT_ERR_FORMAT);
    CHECK_HAS(err.msg, "NUL");
    peft_buf_free(&b);
}

/* Found 3: rope_freqs.weight was checked by dtype and shape[0] only; a
 * [half, 0] tensor (0 bytes, at the end of the file) made memcpy read past
 * the mapping. */
static void gguf_rope_freqs_byte_size_is_checked(void) {
    const char *p = tpath("ropefreqs.gguf");
    const int64_t ne[2] = {0, 8};   /* tiny-llama: head_dim 16, 8 frequencies */
    gguf_copy_plus(FIX "models/tiny-llama.f32.gguf", p, "rope_freqs.weight", 2, ne, NULL, 0);
    expect_model_error(p, "ropefreqs.gguf", "rope_freqs.weight");
    /* a zero divisor would make every frequency infinite */
    const int64_t ne1[1] = {8};
    const float zeros[8] = {0};
    gguf_copy_plus(FIX "models/tiny-llama.f32.gguf", p, "rope_freqs.weight", 1, ne1, zeros, sizeof zeros);
    expect_model_error(p, "ropefreqs.gguf", "rope_freqs.weight[0]");
    const float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    gguf_copy_plus(FIX "models/tiny-llama.f32.gguf", p, "rope_freqs.weight", 1, ne1, ones, sizeof ones);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, p);
    CHECK_MSG(m != NULL, "a valid rope_freqs.weight must load: %s", peft_last_error(ctx));
    peft_model_free(m);
    peft_free(ctx);
}

/* ---- JSONL data ------------------------------------------------------------------- */

static bpe_tokenizer *tiny_tok(void) {
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json(FIX "models/tiny-llama/tokenizer.json", &t, &err));
    return t;
}

/* data_load_jsonl of `text` (one file); returns the status, message in err. */
static int load_data(const bpe_tokenizer *t, const char *name, const char *text, data_set *d, peft_err *err) {
    const char *p = tpath(name);
    write_str(p, text);
    data_params dp = data_default_params();
    return data_load_jsonl(p, t, &dp, d, err);
}

/* Found 4 and 5: labels size the classification head, so they are capped
 * (5000000 made peft train allocate 5 GB; INT_MAX overflowed label + 1). */
static void data_labels_are_capped(void) {
    bpe_tokenizer *t = tiny_tok();
    if (!t) return;
    const char *bad[] = {"{\"text\": \"a\", \"label\": 5000000}\n", "{\"text\": \"a\", \"label\": 2147483647}\n",
                         "{\"text\": \"a\", \"label\": 1e300}\n", "{\"text\": \"a\", \"label\": 0.5}\n"};
    for (int i = 0; i < 4; i++) {
        data_set d;
        peft_err err = {0};
        CHECK(load_data(t, "labels.jsonl", bad[i], &d, &err) == PEFT_ERR_FORMAT);
        CHECK_HAS(err.msg, "labels.jsonl:1");
        CHECK_HAS(err.msg, "\"label\"");
        CHECK_HAS(err.msg, "65536");
    }
    data_set d;
    peft_err err = {0};
    CHECK_OK(load_data(t, "labels.jsonl", "{\"text\": \"a\", \"label\": 65535}\n", &d, &err));
    CHECK_EQ_INT(d.n_labels, 65536);
    data_free(&d);
    bpe_free(t);

    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char out[8192], args[900];
    write_str(tpath("labels.jsonl"), "{\"text\": \"a b c\", \"label\": 0}\n{\"text\": \"a\", \"label\": 5000000}\n");
    snprintf(args, sizeof args, "train --model " FIX "models/tiny-llama --method lora --data %s --out %s "
             "--steps 1 --seq 16 --quiet", tpath("labels.jsonl"), tpath("labels_out"));
    CHECK_EQ_INT(run_cli_limited(3000000, args, out, sizeof out), 1);
    CHECK_HAS(out, "labels.jsonl:2");
    CHECK_HAS(out, "label");
    CHECK_MSG(!peft_file_exists(tpath("labels_out/adapter_model.safetensors")), "an adapter was written");
}

/* Found 5: {"text": ""} pushed zero tokens from a NULL array (UB under
 * UBSan); it must load (as an example without targets, dropped). */
static void data_empty_text_is_harmless(void) {
    bpe_tokenizer *t = tiny_tok();
    if (!t) return;
    data_set d;
    peft_err err = {0};
    CHECK_OK(load_data(t, "empty.jsonl", "{\"text\": \"\"}\n{\"text\": \"a b a b\"}\n", &d, &err));
    CHECK_EQ_INT(d.n, 1);
    data_free(&d);
    CHECK_OK(load_data(t, "emptypc.jsonl", "{\"prompt\": \"\", \"completion\": \"ab\"}\n", &d, &err));
    data_free(&d);
    bpe_free(t);
}

/* Found 6: \u0000 cut a text silently (cJSON decodes it into a C string's
 * terminator); it is refused, and an escaped backslash before u0000 is not one. */
static void data_nul_escape_is_refused(void) {
    bpe_tokenizer *t = tiny_tok();
    if (!t) return;
    data_set d;
    peft_err err = {0};
    CHECK(load_data(t, "nul.jsonl", "{\"text\": \"a b\"}\n{\"text\": \"ab\\u0000hidden\"}\n", &d, &err) ==
          PEFT_ERR_FORMAT);
    CHECK_HAS(err.msg, "nul.jsonl:2");
    CHECK_HAS(err.msg, "u0000");
    CHECK_OK(load_data(t, "nul2.jsonl", "{\"text\": \"ab \\\\u0000 literal\"}\n", &d, &err));
    data_free(&d);
    bpe_free(t);
}

/* Found 4: a messages line with 20000 messages never finished (every prefix
 * was formatted again: quadratic). Run in a child under a CPU-time limit so
 * a regression fails instead of hanging; the result must still be right. */
static void data_many_messages_load_in_linear_time(void) {
    bpe_tokenizer *t = tiny_tok();
    if (!t) return;
    const int n = 20000;
    peft_buf b = {0};
    peft_buf_printf(&b, "{\"messages\": [");
    for (int i = 0; i < n; i++)
        peft_buf_printf(&b, "%s{\"role\": \"%s\", \"content\": \"ab %d\"}", i ? ", " : "", i % 2 ? "assistant" : "user",
                        i % 10);
    peft_buf_append(&b, "]}\n", 3);
    const char *p = tpath("many.jsonl");
    test_write_bytes(p, b.data, b.len);
    peft_buf_free(&b);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl = {60, 60};
        setrlimit(RLIMIT_CPU, &rl);
        data_params dp = data_default_params();
        dp.seq_len = 0;
        data_set d;
        peft_err err = {0};
        int rc = data_load_jsonl(p, t, &dp, &d, &err);
        if (rc) fprintf(stderr, "  %s\n", err.msg);
        else fprintf(stderr, "  %d examples, %lld loss tokens\n", d.n, (long long)d.n_loss_tokens);
        /* every assistant turn trains: "ab N" + <|im_end|> at least */
        _exit(rc == 0 && d.n == 1 && d.n_loss_tokens >= n / 2 * 2 ? 0 : 1);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s %d", WIFEXITED(st) ? "exited" : "killed by signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    bpe_free(t);
}

/* ---- adapters -------------------------------------------------------------------- */

static const char *const adapter_files[] = {"adapter_config.json", "adapter_model.safetensors", NULL};

/* peft_adapter_load of dir on tiny-llama must fail with both needles. */
static void expect_adapter_error(const char *dir, const char *needle1, const char *needle2) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, FIX "models/tiny-llama");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    peft_adapter *a = peft_adapter_load(m, dir);
    CHECK_MSG(a == NULL, "%s loaded but should not", dir);
    if (a) peft_adapter_free(a);
    const char *msg = peft_last_error(ctx);
    if (needle1) CHECK_HAS(msg, needle1);
    if (needle2) CHECK_HAS(msg, needle2);
    peft_model_free(m);
    peft_free(ctx);
}

/* Found 4: a score.weight of shape [4000000, 0] (no bytes) sized a 4M-label
 * head (38 s, 1 GB) before its shape was checked; prompt_embeddings of
 * [65536, 0] likewise. */
static void adapter_head_shape_is_checked_before_allocation(void) {
    char d[700];
    snprintf(d, sizeof d, "%s/bighead", tmpdir);
    mkdir(d, 0755);
    char p[800];
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    write_str(p, "{\"peft_type\": \"BITFIT\"}");
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    write_safetensors(p, "{\"base_model.model.score.weight\":{\"dtype\":\"F32\",\"shape\":[4000000,0],"
                         "\"data_offsets\":[0,0]}}", 0);
    expect_adapter_error(d, "score.weight", "[4000000, 0]");
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    write_str(p, "{\"peft_type\": \"PREFIX_TUNING\"}");
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    write_safetensors(p, "{\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[65536,0],\"data_offsets\":[0,0]}}", 0);
    expect_adapter_error(d, "prompt_embeddings", "[65536, 0]");
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    write_str(p, "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 1e300}");
    expect_adapter_error(d, "adapter_config.json", "num_virtual_tokens");
}

/* Found 6: LoRA configs HF would refuse were accepted. */
static void lora_config_values_are_validated(void) {
    static const struct { const char *from, *to, *needle; } cases[] = {
        {"\"lora_alpha\": 8", "\"lora_alpha\": -8", "lora_alpha"},
        {"\"lora_dropout\": 0.0", "\"lora_dropout\": 1.0", "lora_dropout"},
        {"\"lora_dropout\": 0.0", "\"lora_dropout\": -0.5", "lora_dropout"},
        {"\"target_modules\": [", "\"target_modules\": 5, \"x\": [", "target_modules"},
        {"\"target_modules\": [", "\"target_modules\": [7, ", "target_modules"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *d = copy_dir(FIX "lora/llama_all/adapter", "loracfg", adapter_files);
        test_edit_file(d, "adapter_config.json", cases[i].from, cases[i].to);
        expect_adapter_error(d, "adapter_config.json", cases[i].needle);
    }
    const char *d = copy_dir(FIX "lora/llama_all/adapter", "loracfg", adapter_files);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, FIX "models/tiny-llama");
    peft_adapter *a = m ? peft_adapter_load(m, d) : NULL;
    CHECK_MSG(a != NULL, "the unedited adapter must load: %s", peft_last_error(ctx));
    if (a) peft_adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
}

/* Bottleneck and prompt configs: numbers that become integers are
 * range-checked (bottleneck_size 1.5 used to be ignored silently). */
static void adapter_config_integers_are_range_checked(void) {
    static const struct { const char *cfg, *needle; } cases[] = {
        {"{\"peft_type\": \"BOTTLENECK\", \"bottleneck_size\": 1.5}", "bottleneck_size"},
        {"{\"peft_type\": \"BOTTLENECK\", \"reduction_factor\": 1e300}", "reduction_factor"},
        {"{\"peft_type\": \"PREFIX_TUNING\", \"num_layers\": 1e20}", "num_layers"},
        {"{\"peft_type\": \"PROMPT_TUNING\", \"num_transformer_submodules\": -5}", "num_transformer_submodules"},
    };
    char d[700], p[800];
    snprintf(d, sizeof d, "%s/cfgints", tmpdir);
    mkdir(d, 0755);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    write_safetensors(p, "{}", 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(p, sizeof p, "%s/adapter_config.json", d);
        write_str(p, cases[i].cfg);
        expect_adapter_error(d, "adapter_config.json", cases[i].needle);
    }
    /* a target list too long for the name buffer was cut (maybe mid-name) silently */
    peft_buf b = {0};
    peft_buf_printf(&b, "{\"peft_type\": \"IA3\", \"target_modules\": [");
    for (int i = 0; i < 100; i++) peft_buf_printf(&b, "%s\"q_proj\"", i ? ", " : "");
    peft_buf_printf(&b, "]}");
    snprintf(p, sizeof p, "%s/adapter_config.json", d);
    test_write_bytes(p, b.data, b.len);
    peft_buf_free(&b);
    expect_adapter_error(d, "adapter_config.json", "longer than");
}

/* layers_to_transform names layers of the model (values past it were dropped silently). */
static void adapter_layers_to_transform_is_checked(void) {
    const char *d = copy_dir(FIX "methods/prompt_llama/adapter", "ltt", adapter_files);
    test_edit_file(d, "adapter_config.json", "\"num_virtual_tokens\": 4", "\"num_virtual_tokens\": 4, \"layers_to_transform\": [0, 70]");
    expect_adapter_error(d, "adapter_config.json", "layers_to_transform");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/peft_hostile_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    TEST_RUN(safetensors_duplicate_metadata_is_refused);
    TEST_RUN(safetensors_zero_dim_does_not_hide_huge_dims);
    TEST_RUN(config_layer_count_is_capped);
    TEST_RUN(config_pad_token_id_is_range_checked);
    TEST_RUN(config_numbers_are_range_checked);
    TEST_RUN(config_llama3_rope_factors_are_validated);
    TEST_RUN(config_file_size_is_capped);
    TEST_RUN(fifo_in_place_of_a_file_does_not_block);
    TEST_RUN(tokenizer_post_processor_ids_are_range_checked);
    TEST_RUN(tokenizer_added_token_id_is_bounded);
    TEST_RUN(tokenizer_merges_must_name_tokens);
    TEST_RUN(tokenizer_ids_must_fit_the_model);
    TEST_RUN(chat_template_search_is_linear);
    TEST_RUN(many_added_tokens_load_in_linear_time);
    TEST_RUN(gguf_rope_freqs_byte_size_is_checked);
    TEST_RUN(gguf_arrays_of_arrays_are_bounded);
    TEST_RUN(gguf_zero_dim_does_not_hide_huge_dims);
    TEST_RUN(gguf_kv_count_is_capped);
    TEST_RUN(gguf_tensor_name_with_nul_is_refused);
    TEST_RUN(data_labels_are_capped);
    TEST_RUN(data_empty_text_is_harmless);
    TEST_RUN(data_nul_escape_is_refused);
    TEST_RUN(data_many_messages_load_in_linear_time);
    TEST_RUN(adapter_head_shape_is_checked_before_allocation);
    TEST_RUN(lora_config_values_are_validated);
    TEST_RUN(adapter_layers_to_transform_is_checked);
    TEST_RUN(adapter_config_integers_are_range_checked);
    if (test_rm_rf(tmpdir) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
