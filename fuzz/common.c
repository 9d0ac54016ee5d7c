/* common.c — temporary files, multi-file inputs and the model walk shared by
 * the fuzz harnesses. Harness code, not library code: it keeps its state in
 * statics (one folder and one context per process). */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif

static char g_dir[256];
static char g_path[512];
static char g_fixture[1024];

static void remove_dir_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0) {
            /* a folder (a library save): one level is all we ever make */
            remove_dir_files(p);
            rmdir(p);
        }
    }
    closedir(d);
}

static void cleanup(void) {
    if (!g_dir[0]) return;
    remove_dir_files(g_dir);
    rmdir(g_dir);
}

const char *fuzz_dir(void) {
    if (!g_dir[0]) {
        const char *base = getenv("TMPDIR");
        struct stat st;
        if (!base || !*base) base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
        snprintf(g_dir, sizeof g_dir, "%s/peft-fuzz.XXXXXX", base);
        if (!mkdtemp(g_dir)) { g_dir[0] = 0; return NULL; }
        atexit(cleanup);
    } else {
        remove_dir_files(g_dir);
    }
    return g_dir;
}

const char *fuzz_dir_path(void) { return g_dir; }

const char *fuzz_path(const char *name) {
    snprintf(g_path, sizeof g_path, "%s/%s", g_dir, name);
    return g_path;
}

int fuzz_write(const char *name, const void *data, size_t n) {
    FILE *f = fopen(fuzz_path(name), "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return fclose(f) == 0 && w == n ? 0 : -1;
}

int fuzz_has(const char *name) {
    struct stat st;
    return stat(fuzz_path(name), &st) == 0;
}

static int good_name(const uint8_t *s, size_t n) {
    if (n == 0 || n > 64 || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Start of the next "\n%%peft-file " at or after from, or size. */
static size_t next_mark(const uint8_t *d, size_t size, size_t from) {
    static const char mark[] = "\n" FUZZ_PART_MARK;
    size_t ml = sizeof mark - 1;
    for (size_t i = from; i + ml <= size; i++)
        if (d[i] == '\n' && !memcmp(d + i, mark, ml)) return i;
    return size;
}

int fuzz_write_parts(const uint8_t *d, size_t size, const char *single) {
    size_t ml = strlen(FUZZ_PART_MARK);
    if (size < ml || memcmp(d, FUZZ_PART_MARK, ml) != 0)
        return fuzz_write(single, d, size) == 0 ? 1 : 0;
    int n = 0;
    size_t pos = 0;   /* at a header's "%%peft-file " */
    while (pos < size && n < 32) {
        size_t name = pos + ml, eol = name;
        while (eol < size && d[eol] != '\n') eol++;
        size_t body = eol < size ? eol + 1 : size;
        size_t end = next_mark(d, size, eol);
        if (body > end) body = end;
        if (good_name(d + name, eol - name)) {
            char nm[65];
            memcpy(nm, d + name, eol - name);
            nm[eol - name] = 0;
            if (fuzz_write(nm, d + body, end - body) == 0) n++;
        }
        if (end >= size) break;
        pos = end + 1;
    }
    return n;
}

peft_ctx *fuzz_ctx(void) {
    static peft_ctx *ctx;
    if (!ctx) {
        peft_ctx_params p = peft_ctx_default_params();
        p.n_threads = 1;
        p.log = NULL;
        ctx = peft_init(&p);
    }
    return ctx;
}

const char *fuzz_fixture(const char *rel) {
    snprintf(g_fixture, sizeof g_fixture, "%s/tests/fixtures/%s", PEFT_SOURCE_DIR, rel);
    return g_fixture;
}

void fuzz_note(const char *what, const char *msg) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("PEFT_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "fuzz: %s: %s\n", what, msg);
}

int fuzz_err_msg(const peft_err *e) {
    fuzz_note("error", e->msg[0] ? e->msg : "(none)");
    if (e->msg[0]) return 0;
    fprintf(stderr, "fuzz: failure %d (%s) without a message\n", e->code, peft_status_name(e->code));
    return -1;
}

int fuzz_check_error(int rc, const peft_ctx *ctx) {
    if (rc >= 0) return 0;
    const char *e = peft_last_error(ctx);
    fuzz_note("error", e ? e : "(none)");
    if (!e || !*e) {
        fprintf(stderr, "fuzz: failure %d (%s) without a message\n", rc, peft_status_name(rc));
        return -1;
    }
    return 0;
}

static int on_token(const char *piece, int len, void *user) {
    size_t *sum = user;
    for (int i = 0; i < len; i++) *sum += (unsigned char)piece[i];
    return 0;
}

int fuzz_exercise_model(peft_model *m) {
    peft_ctx *ctx = fuzz_ctx();
    peft_model_info info;
    int bad = 0;
    if (peft_model_get_info(m, &info) != 0) return 0;
    for (int i = 0; i < info.n_tensors; i++) {
        peft_tensor_info ti;
        peft_model_tensor_info(m, i, &ti);
    }
    int32_t *ids = NULL;
    int n = 0;
    int rc = peft_tokenize(m, "Hello, world! <|im_start|>user\n caf\xc3\xa9 \xf0\x9f\x98\x80", 1, 1, &ids, &n);
    bad |= fuzz_check_error(rc, ctx);
    if (rc == 0) {
        char piece[64];
        volatile size_t sum = 0;
        for (int i = 0; i < n; i++) {
            int l = peft_token_to_piece(m, ids[i], piece, sizeof piece);
            for (int j = 0; j < l && j < (int)sizeof piece; j++) sum += (unsigned char)piece[j];
        }
        int probe[] = {-1, peft_token_bos(m), peft_token_eos(m), info.vocab - 1, info.vocab};
        for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++)
            peft_token_to_piece(m, probe[i], piece, sizeof piece);
        int T = n < 6 ? n : 6;
        if (T > 0 && info.vocab > 0 && (size_t)info.vocab < ((size_t)1 << 24)) {
            float *logits = malloc((size_t)T * (size_t)info.vocab * sizeof(float));
            if (logits) {
                bad |= fuzz_check_error(peft_model_logits(m, ids, T, logits), ctx);
                free(logits);
            }
        }
        free(ids);
    }
    peft_sample_params sp = peft_sample_default_params();
    sp.max_tokens = 3;
    sp.temperature = 0;
    size_t sum = 0;
    bad |= fuzz_check_error(peft_generate(m, "The king", &sp, on_token, &sum, NULL), ctx);
    sp.chat = 1;
    sp.temperature = 0.8f;
    sp.top_k = 5;
    sp.top_p = 0.9f;
    sp.max_tokens = 2;
    bad |= fuzz_check_error(peft_generate(m, "Hi", &sp, on_token, &sum, NULL), ctx);
    return bad;
}
