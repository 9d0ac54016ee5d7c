/* test.h — a minimal test harness for CTest. Each tests/test_*.c is one
 * executable; TEST_RUN runs a named test function and counts failures, and
 * TEST_MAIN_END prints "N passed, N failed" and returns the exit code.
 * A test that cannot run here (missing optional model or reference stack)
 * calls TEST_SKIP with the reason: if every test of the file skipped, the
 * executable exits 77 and CTest reports it as skipped, with the reason.
 * With PEFT_TEST_STRICT=1 in the environment (CI sets it: CI installs every
 * model, package and data set the tests use) a TEST_SKIP fails instead, so
 * a missing install step cannot hide behind a skip; only TEST_SKIP_HW, for
 * hardware this machine lacks (AMX), still skips. A test that failed a
 * CHECK before it skipped counts as failed. */
#ifndef PEFT_TEST_H
#define PEFT_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int test_failures_ = 0, test_passed_ = 0, test_failed_ = 0, test_skipped_ = 0;
static int test_cur_skipped_ = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            test_failures_++;                                                         \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                 \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, "\n");                                           \
            test_failures_++;                                                \
        }                                                                    \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                              \
    do {                                                                                \
        long long a_ = (long long)(a), b_ = (long long)(b);                             \
        if (a_ != b_) {                                                                 \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, \
                    #a, #b, a_, b_);                                                    \
            test_failures_++;                                                           \
        }                                                                               \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                 \
    do {                                                                                      \
        double a_ = (double)(a), b_ = (double)(b);                                            \
        if (!(fabs(a_ - b_) <= (tol))) {                                                      \
            fprintf(stderr, "  %s:%d: |%s - %s| <= %g failed: %.9g vs %.9g (diff %.3g)\n",     \
                    __FILE__, __LINE__, #a, #b, (double)(tol), a_, b_, fabs(a_ - b_));        \
            test_failures_++;                                                                 \
        }                                                                                     \
    } while (0)

/* A status-returning call expected to succeed (0). */
#define CHECK_OK(expr)                                                                 \
    do {                                                                               \
        int rc_ = (expr);                                                              \
        if (rc_ != 0) {                                                                \
            fprintf(stderr, "  %s:%d: %s returned %d\n", __FILE__, __LINE__, #expr, rc_); \
            test_failures_++;                                                          \
        }                                                                              \
    } while (0)

static inline int test_strict_(void) {
    const char *s = getenv("PEFT_TEST_STRICT");
    return s && *s && strcmp(s, "0") != 0;
}

/* Skips for hardware this machine lacks: a skip even under PEFT_TEST_STRICT. */
#define TEST_SKIP_HW(...)                          \
    do {                                           \
        fprintf(stdout, "  SKIPPED: ");            \
        fprintf(stdout, __VA_ARGS__);              \
        fprintf(stdout, "\n");                     \
        test_cur_skipped_ = 1;                     \
        return;                                    \
    } while (0)

/* Skips the current test; fails it under PEFT_TEST_STRICT (the reason is
 * always a string literal, so it joins the prefix). */
#define TEST_SKIP(...)                                                           \
    do {                                                                         \
        if (test_strict_()) TEST_FAIL("would skip, but PEFT_TEST_STRICT is set: " __VA_ARGS__); \
        TEST_SKIP_HW(__VA_ARGS__);                                               \
    } while (0)

/* Fails the current test with a message and returns (a committed fixture
 * that is missing is a failure, not a skip). */
#define TEST_FAIL(...)                                                   \
    do {                                                                 \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                \
        fprintf(stderr, __VA_ARGS__);                                    \
        fprintf(stderr, "\n");                                           \
        test_failures_++;                                                \
        return;                                                          \
    } while (0)

#define TEST_RUN(fn)                                                     \
    do {                                                                 \
        int before_ = test_failures_;                                    \
        test_cur_skipped_ = 0;                                           \
        fn();                                                            \
        if (test_failures_ != before_) {                                 \
            test_failed_++;                                              \
            printf("FAIL %s\n", #fn);                                    \
        } else if (test_cur_skipped_) {                                  \
            test_skipped_++;                                             \
            printf("skip %s\n", #fn);                                    \
        } else {                                                         \
            test_passed_++;                                              \
            printf("ok   %s\n", #fn);                                    \
        }                                                                \
        fflush(stdout);                                                  \
    } while (0)

#define TEST_MAIN_END()                                                                  \
    do {                                                                                 \
        printf("%d passed, %d failed, %d skipped\n", test_passed_, test_failed_, test_skipped_); \
        if (test_failed_) return 1;                                                      \
        if (test_passed_ == 0 && test_skipped_ > 0) return 77;                           \
        return 0;                                                                        \
    } while (0)

/* Max absolute difference of two float arrays. */
static inline double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

/* A fresh empty temporary file (malloc'ed path), NULL on failure. */
static inline char *test_tmp_file(void) {
    char tmpl[] = "/tmp/peft_test_XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) return NULL;
    close(fd);
    return strdup(tmpl);
}

/* Writes len bytes to path (replacing it). */
static inline void test_write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    if (len) fwrite(data, 1, len, f);
    fclose(f);
}

/* The whole of path (malloc'ed, NUL-terminated; *len may be NULL), or NULL. */
static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = (n + 65536 + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
        }
        const size_t got = fread(buf + n, 1, 65536, f);
        n += got;
        if (got < 65536) break;
    }
    const int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* Removes a file or a folder and everything in it (without a shell, so it
 * also works where the test has wrapped libc calls); 0 when it is gone. */
static inline int test_rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return unlink(dir) == 0 || access(dir, F_OK) != 0 ? 0 : -1;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) test_rm_rf(p);
        else unlink(p);
    }
    closedir(d);
    return rmdir(dir);
}

/* Replaces the first `from` in dir/name with `to` (a CHECK fails when the
 * file has no `from`). */
static inline void test_edit_file(const char *dir, const char *name, const char *from, const char *to) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f) { CHECK_MSG(0, "cannot read %s", p); return; }
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = len >= 0 ? (char *)malloc((size_t)len + 1) : NULL;
    const size_t got = data ? fread(data, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!data) return;
    data[got] = 0;
    char *at = strstr(data, from);
    CHECK_MSG(at != NULL, "%s has no \"%s\" to edit", p, from);
    if (at && (f = fopen(p, "wb"))) {
        fwrite(data, 1, (size_t)(at - data), f);
        fputs(to, f);
        fputs(at + strlen(from), f);
        fclose(f);
    }
    free(data);
}

/* Runs a shell command line, its stdout (and whatever it redirects) into
 * out; returns its exit status (-1 if it did not exit). */
static inline int test_run_shell(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Runs the CLI named by $PEFT_CLI (set by CTest) with args, stdout and
 * stderr into out; returns its exit status (-1 if it did not exit). */
static inline int test_run_cli(const char *args, char *out, size_t cap) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", getenv("PEFT_CLI"), args);
    return test_run_shell(cmd, out, cap);
}

#endif
