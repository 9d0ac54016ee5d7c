/* test_load_errors.c — bad model input gives one clear error naming the
 * file and the problem, through the library and through the CLI (non-zero
 * exit, no crash). Each case copies a good fixture into a temp folder and
 * breaks one thing. */
#include "peft.h"
#include "core/core.h"
#include "test.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIX "tests/fixtures/models/"

static char tmpdir[256];

static char *find_bytes(char *hay, size_t n, const char *needle, size_t k) {
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

static void copy_file(const char *src, const char *dst) {
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    if (peft_read_file(src, &data, &len, &err) == 0) {
        FILE *f = fopen(dst, "wb");
        if (f) { fwrite(data, 1, len, f); fclose(f); }
    }
    free(data);
}

/* A fresh copy of tiny-llama in tmpdir/<name>; returns its path. */
static const char *copy_model(const char *name) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    mkdir(dir, 0755);
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        char s[512], d[600];
        snprintf(s, sizeof s, FIX "tiny-llama/%s", files[i]);
        snprintf(d, sizeof d, "%s/%s", dir, files[i]);
        copy_file(s, d);
    }
    return dir;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (f) { fputs(text, f); fclose(f); }
}


/* Loading must fail with `code` and a message containing each needle. */
static void expect_load_error(const char *path, int code, const char *needle1, const char *needle2) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, path);
    CHECK_MSG(m == NULL, "%s loaded but should not", path);
    if (m) peft_model_free(m);
    const char *msg = peft_last_error(ctx);
    CHECK_MSG(code == 0 || strstr(peft_status_name(code), "") != NULL, "%d", code);
    if (needle1) CHECK_MSG(strstr(msg, needle1) != NULL, "message \"%s\" lacks \"%s\"", msg, needle1);
    if (needle2) CHECK_MSG(strstr(msg, needle2) != NULL, "message \"%s\" lacks \"%s\"", msg, needle2);
    peft_free(ctx);
}

static void missing_config_key_is_named(void) {
    const char *d = copy_model("nokey");
    test_edit_file(d, "config.json", "\"hidden_size\"", "\"hidden_size_renamed\"");
    expect_load_error(d, PEFT_ERR_FORMAT, "config.json", "hidden_size");
}

static void unsupported_architecture_is_named(void) {
    const char *d = copy_model("arch");
    test_edit_file(d, "config.json", "\"model_type\": \"llama\"", "\"model_type\": \"mamba\"");
    expect_load_error(d, PEFT_ERR_UNSUPPORTED, "config.json", "mamba");
}

static void config_that_is_not_json(void) {
    const char *d = copy_model("badjson");
    write_text(d, "config.json", "{ \"model_type\": \"llama\", ");
    expect_load_error(d, PEFT_ERR_FORMAT, "config.json", "JSON");
}

static void tokenizer_that_does_not_parse(void) {
    const char *d = copy_model("badtok");
    write_text(d, "tokenizer.json", "{\"model\": [1, 2");
    expect_load_error(d, PEFT_ERR_FORMAT, "tokenizer.json", NULL);
}

/* It holds the special tokens and the chat template: a broken one is not
 * silently ignored. */
static void tokenizer_config_that_does_not_parse(void) {
    const char *d = copy_model("badtokcfg");
    write_text(d, "tokenizer_config.json", "{\"bos_token\": \"<s>\", ");
    expect_load_error(d, PEFT_ERR_FORMAT, "tokenizer_config.json", "JSON");
}

static void weight_shape_mismatch_is_named(void) {
    const char *d = copy_model("shape");
    test_edit_file(d, "config.json", "\"intermediate_size\": 128", "\"intermediate_size\": 256");
    expect_load_error(d, PEFT_ERR_SHAPE, "mlp.", "shape");
}

static void absurd_dimensions_are_refused(void) {
    const char *d = copy_model("absurd");
    test_edit_file(d, "config.json", "\"vocab_size\": 320", "\"vocab_size\": 4000000000");
    expect_load_error(d, PEFT_ERR_FORMAT, "config.json", "vocab_size");
}

static void missing_weights_file(void) {
    const char *d = copy_model("noweights");
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    unlink(p);
    expect_load_error(d, PEFT_ERR_IO, d, NULL);
}

static void truncated_safetensors_in_folder(void) {
    const char *d = copy_model("trunc");
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CHECK(truncate(p, 5000) == 0);
    expect_load_error(d, PEFT_ERR_FORMAT, "model.safetensors", NULL);
}

static void truncated_gguf(void) {
    char p[600];
    snprintf(p, sizeof p, "%s/trunc.gguf", tmpdir);
    copy_file(FIX "tiny-llama.q8_0.gguf", p);
    CHECK(truncate(p, 50000) == 0);
    expect_load_error(p, PEFT_ERR_FORMAT, "trunc.gguf", NULL);
}

static void gguf_with_unsupported_architecture(void) {
    char p[600];
    snprintf(p, sizeof p, "%s/arch.gguf", tmpdir);
    copy_file(FIX "tiny-llama.f32.gguf", p);
    /* "llama" -> "llxma" in general.architecture (same length keeps offsets) */
    char *data = NULL;
    size_t len = 0;
    peft_err err = {0};
    CHECK_OK(peft_read_file(p, &data, &len, &err));
    char *at = data ? find_bytes(data, len, "general.architecture", 20) : NULL;
    CHECK(at != NULL);
    if (at) {
        char *v = find_bytes(at, 64, "llama", 5);
        if (v) v[2] = 'x';
        FILE *f = fopen(p, "wb");
        fwrite(data, 1, len, f);
        fclose(f);
    }
    free(data);
    expect_load_error(p, PEFT_ERR_UNSUPPORTED, "arch.gguf", "llxma");
}

static void nonexistent_path(void) { expect_load_error("/nonexistent/model", PEFT_ERR_IO, "/nonexistent/model", NULL); }

/* The CLI reports the library's message and exits 1; usage errors exit 2. */

static void cli_reports_errors_with_exit_codes(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char out[8192], args[700];
    const char *d = copy_model("cli");
    test_edit_file(d, "config.json", "\"model_type\": \"llama\"", "\"model_type\": \"mamba\"");
    snprintf(args, sizeof args, "info %s", d);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "mamba") && strstr(out, "config.json"), "%s", out);
    snprintf(args, sizeof args, "generate --model %s/trunc.gguf --prompt hi", tmpdir);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 1);
    CHECK_MSG(strstr(out, "trunc.gguf") != NULL, "%s", out);
    CHECK_EQ_INT(test_run_cli("generate --prompt hi", out, sizeof out), 2);
    CHECK_EQ_INT(test_run_cli("generate --model x --prompt hi --top-p 3", out, sizeof out), 2);
    CHECK_EQ_INT(test_run_cli("frobnicate", out, sizeof out), 2);
    CHECK_EQ_INT(test_run_cli("info " FIX "tiny-qwen2 --json", out, sizeof out), 0);
    CHECK_MSG(strstr(out, "\"architecture\": \"qwen2\"") && strstr(out, "\"n_params\""), "%s", out);
    CHECK_EQ_INT(test_run_cli("generate --model " FIX "tiny-gpt2.q8_0.gguf --prompt ROMEO: --max-tokens 5 --stats", out, sizeof out), 0);
    CHECK_MSG(strstr(out, "tokens/s") != NULL, "%s", out);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/peft_load_errors_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    TEST_RUN(missing_config_key_is_named);
    TEST_RUN(unsupported_architecture_is_named);
    TEST_RUN(config_that_is_not_json);
    TEST_RUN(tokenizer_that_does_not_parse);
    TEST_RUN(tokenizer_config_that_does_not_parse);
    TEST_RUN(weight_shape_mismatch_is_named);
    TEST_RUN(absurd_dimensions_are_refused);
    TEST_RUN(missing_weights_file);
    TEST_RUN(truncated_safetensors_in_folder);
    TEST_RUN(truncated_gguf);
    TEST_RUN(gguf_with_unsupported_architecture);
    TEST_RUN(nonexistent_path);
    TEST_RUN(cli_reports_errors_with_exit_codes);
    if (test_rm_rf(tmpdir) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
