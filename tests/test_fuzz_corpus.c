/* test_fuzz_corpus.c — replays every file of fuzz/corpus/<harness>/ and
 * fuzz/regressions/<harness>/ through the fuzz harness bodies (fuzz/fuzz_NAME.c),
 * built without libFuzzer: the seeds keep working and each fixed finding
 * stays fixed, in the normal and the ASan suites. */
#include "test.h"
#include "fuzz.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct { const char *name; int (*fn)(const uint8_t *, size_t); } harness;

static const harness harnesses[] = {
    {"gguf", fuzz_gguf_one},           {"model_gguf", fuzz_model_gguf_one},
    {"safetensors", fuzz_safetensors_one}, {"hf", fuzz_hf_one},
    {"tokenizer", fuzz_tokenizer_one}, {"adapter", fuzz_adapter_one},
    {"jsonl", fuzz_jsonl_one},         {"embed", fuzz_embed_one},
};

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Runs fn on every file of dir, in name order; returns the count, or -1
 * when dir is missing. */
static int replay_dir(const char *dir, int (*fn)(const uint8_t *, size_t), const char *what, bool seeds) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    for (int i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(f != NULL, "%s: cannot open", path);
        if (f) {
            fseek(f, 0, SEEK_END);
            long sz = ftell(f);
            rewind(f);
            uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
            size_t got = sz > 0 ? fread(buf, 1, (size_t)sz, f) : 0;
            fclose(f);
            CHECK_EQ_INT(got, sz > 0 ? sz : 0);
            /* an exact-size copy, as libFuzzer passes it */
            uint8_t *exact = malloc(got ? got : 1);
            memcpy(exact, buf, got);
            free(buf);
            int rc = fn(exact, got);
            CHECK_MSG(rc >= 0, "%s %s: the library failed without an error message", what, path);
            /* the committed seeds are valid inputs: each must be accepted,
             * or the harness no longer reaches past the loader */
            if (seeds) CHECK_MSG(rc == 1, "%s %s: seed rejected (PEFT_FUZZ_VERBOSE=1 says why)", what, path);
            free(exact);
        }
        free(names[i]);
    }
    return n;
}

static void every_seed_and_regression_runs_clean(void) {
    for (size_t h = 0; h < sizeof harnesses / sizeof harnesses[0]; h++) {
        char dir[512];
        snprintf(dir, sizeof dir, "fuzz/corpus/%s", harnesses[h].name);
        int n = replay_dir(dir, harnesses[h].fn, harnesses[h].name, true);
        CHECK_MSG(n > 0, "%s: no seed corpus", dir);
        snprintf(dir, sizeof dir, "fuzz/regressions/%s", harnesses[h].name);
        int r = replay_dir(dir, harnesses[h].fn, harnesses[h].name, false);
        printf("  %-12s %3d seeds, %3d regressions\n", harnesses[h].name, n, r < 0 ? 0 : r);
    }
}

static long file_size(const char *name) {
    FILE *f = fopen(fuzz_path(name), "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static void multi_file_inputs_split_at_part_headers(void) {
    static const char in[] = "%%peft-file config.json\n{\"a\":1}\n%%peft-file ../evil\nx\n"
                             "%%peft-file w.bin\n\n\n%%peft-file config.json\n{}";
    CHECK(fuzz_dir() != NULL);
    /* the traversal name is dropped; the second config.json replaces the first */
    CHECK_EQ_INT(fuzz_write_parts((const uint8_t *)in, sizeof in - 1, "single"), 3);
    CHECK_EQ_INT(file_size("config.json"), 2);
    CHECK_EQ_INT(file_size("w.bin"), 1);
    CHECK(!fuzz_has("single"));
    CHECK(fuzz_dir() != NULL);
    CHECK_EQ_INT(fuzz_write_parts((const uint8_t *)"plain", 5, "single"), 1);
    CHECK_EQ_INT(file_size("single"), 5);
    CHECK(!fuzz_has("config.json"));
}

int main(void) {
    TEST_RUN(multi_file_inputs_split_at_part_headers);
    TEST_RUN(every_seed_and_regression_runs_clean);
    TEST_MAIN_END();
}
