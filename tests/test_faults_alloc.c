/* test_faults_alloc.c — allocation failure injection. The executable is
 * linked with -Wl,--wrap=malloc,calloc,realloc,free,strdup,strndup,getline
 * (CMakeLists.txt), so every allocation libpeft's objects make comes through
 * the counters below; cJSON (a shared library) gets the same counters
 * through cJSON_InitHooks. A clean run of each path counts its allocations,
 * then the path is run again once for each N, with only the N-th
 * allocation failing: every run must fail cleanly (an error status and a
 * message, no crash), free everything it allocated (tracked here, and by
 * LeakSanitizer in the ASan build) and leave no temporary file behind.
 * A run that succeeds although an allocation failed is a failure too: the
 * failure was swallowed (a config written without a key, a chart without
 * its points).
 *
 * Paths: peft_adapter_load of LoRA and every other method's fixtures; a new
 * adapter of every method, saved; merging (LoRA into HF and GGUF, DoRA,
 * IA3) and the GGUF LoRA export; load a model (HF folder, GGUF) -> new
 * LoRA -> two training steps with validation and a checkpoint -> resume for
 * a third -> save.
 *
 * Out of scope: allocations inside shared libraries other than cJSON
 * (libc's fopen/opendir, PCRE2, OpenBLAS, OpenMP).
 *
 * The sweep runs every N with one allocation failing, and every third N
 * with that allocation and every later one failing. PEFT_FAULT_STRIDE=k
 * runs every k-th N only (the ASan build defaults to a stride that keeps the
 * test short; Release runs every N). To debug one failure:
 * PEFT_FAULT_ONLY=<part of the path's name> PEFT_FAULT_N=<N>
 * [PEFT_FAULT_STICKY=1], and break on fault_injected_here in gdb;
 * PEFT_FAULT_MESSAGES=1 prints every run's error message. */
#include "peft.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#if defined(__SANITIZE_ADDRESS__)
#define FAULT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FAULT_ASAN 1
#endif
#endif
#ifndef FAULT_ASAN
#define FAULT_ASAN 0
#endif

void *__real_malloc(size_t n);
void *__real_calloc(size_t c, size_t n);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
ssize_t __real_getline(char **line, size_t *cap, FILE *f);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t c, size_t n);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
ssize_t __wrap_getline(char **line, size_t *cap, FILE *f);

/* ---- counting and tracking --------------------------------------------------- */

/* Live allocations made while armed: an open-addressing set of pointers,
 * reset for each run (tombstones are fine for one run). */
#define TRACK_CAP (1u << 20)
static uintptr_t *track_slots;   /* 0 empty, 1 tombstone */
static long track_live, track_overflow;

static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static int fault_armed, fault_sticky;
static long fault_count, fault_fail_at, fault_injected;

static size_t track_hash(uintptr_t p) { return (size_t)((p >> 4) * 0x9e3779b97f4a7c15ULL >> 44) & (TRACK_CAP - 1); }

static void track_add(void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    for (size_t i = track_hash(p), k = 0; k < TRACK_CAP; i = (i + 1) & (TRACK_CAP - 1), k++)
        if (track_slots[i] <= 1) {
            track_slots[i] = p;
            track_live++;
            return;
        }
    track_overflow++;
}

/* Removes ptr; returns whether it was tracked. */
static int track_del(void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    for (size_t i = track_hash(p), k = 0; k < TRACK_CAP; i = (i + 1) & (TRACK_CAP - 1), k++) {
        if (track_slots[i] == 0) return 0;
        if (track_slots[i] == p) {
            track_slots[i] = 1;
            track_live--;
            return 1;
        }
    }
    return 0;
}

/* A place for a debugger's breakpoint. */
__attribute__((noinline)) static void fault_injected_here(void) { __asm__ volatile(""); }

/* Called with the lock held: counts one allocation, says whether it fails. */
static int fault_hit(void) {
    if (!fault_armed) return 0;
    ++fault_count;
    if (fault_fail_at && (fault_count == fault_fail_at || (fault_sticky && fault_count > fault_fail_at))) {
        fault_injected++;
        fault_injected_here();
        return 1;
    }
    return 0;
}

void *__wrap_malloc(size_t n) {
    pthread_mutex_lock(&fault_mu);
    void *p = NULL;
    if (fault_hit()) errno = ENOMEM;
    else if ((p = __real_malloc(n)) && fault_armed) track_add(p);
    pthread_mutex_unlock(&fault_mu);
    return p;
}

void *__wrap_calloc(size_t c, size_t n) {
    pthread_mutex_lock(&fault_mu);
    void *p = NULL;
    if (fault_hit()) errno = ENOMEM;
    else if ((p = __real_calloc(c, n)) && fault_armed) track_add(p);
    pthread_mutex_unlock(&fault_mu);
    return p;
}

void *__wrap_realloc(void *old, size_t n) {
    pthread_mutex_lock(&fault_mu);
    void *p = NULL;
    if (fault_hit()) {
        errno = ENOMEM;
    } else {
        p = __real_realloc(old, n);
        /* only blocks allocated while armed are followed: a block made
         * before (by a model loaded outside the armed region) is not ours */
        if (p || n == 0) {
            int ours = old ? track_del(old) : fault_armed;
            if (p && ours) track_add(p);
        }
    }
    pthread_mutex_unlock(&fault_mu);
    return p;
}

void __wrap_free(void *p) {
    if (!p) return;
    pthread_mutex_lock(&fault_mu);
    track_del(p);
    pthread_mutex_unlock(&fault_mu);
    __real_free(p);
}

char *__wrap_strdup(const char *s) {
    pthread_mutex_lock(&fault_mu);
    char *p = NULL;
    if (fault_hit()) errno = ENOMEM;
    else if ((p = __real_strdup(s)) && fault_armed) track_add(p);
    pthread_mutex_unlock(&fault_mu);
    return p;
}

char *__wrap_strndup(const char *s, size_t n) {
    pthread_mutex_lock(&fault_mu);
    char *p = NULL;
    if (fault_hit()) errno = ENOMEM;
    else if ((p = __real_strndup(s, n)) && fault_armed) track_add(p);
    pthread_mutex_unlock(&fault_mu);
    return p;
}

/* getline may grow its buffer: each call counts as one allocation, and
 * fails as POSIX says when out of memory: -1, errno ENOMEM and the stream's
 * error indicator set, which a reader must not take for the end of the file.
 * (The indicator is set by writing to the read-only stream.) */
ssize_t __wrap_getline(char **line, size_t *cap, FILE *f) {
    pthread_mutex_lock(&fault_mu);
    int fail = fault_hit();
    pthread_mutex_unlock(&fault_mu);
    if (fail) {
        fputc(0, f);
        errno = ENOMEM;
        return -1;
    }
    char *old = *line;
    ssize_t r = __real_getline(line, cap, f);
    if (*line != old) {
        pthread_mutex_lock(&fault_mu);
        int ours = old ? track_del(old) : fault_armed;
        if (*line && ours) track_add(*line);
        pthread_mutex_unlock(&fault_mu);
    }
    return r;
}

static void fault_arm(long fail_at, int sticky) {
    pthread_mutex_lock(&fault_mu);
    fault_sticky = sticky;
    memset(track_slots, 0, sizeof *track_slots * TRACK_CAP);
    track_live = track_overflow = 0;
    fault_count = fault_injected = 0;
    fault_fail_at = fail_at;
    fault_armed = 1;
    pthread_mutex_unlock(&fault_mu);
}

static void fault_disarm(void) {
    pthread_mutex_lock(&fault_mu);
    fault_armed = 0;
    pthread_mutex_unlock(&fault_mu);
}

/* The N being run, for a crash report. */
static volatile long fault_cur_n = -1;
static const char *volatile fault_cur_path = "";

static volatile int fault_cur_sticky;

static void say_where(void) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "test_faults_alloc: died in \"%s\" with allocation %ld%s failing\n",
                     fault_cur_path, fault_cur_n, fault_cur_sticky ? " and every later one" : "");
    if (n > 0) (void)!write(2, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
}

#if FAULT_ASAN
#include <sanitizer/common_interface_defs.h>
#else
#include <signal.h>
static void on_signal(int sig) {
    say_where();
    signal(sig, SIG_DFL);
    raise(sig);
}
#endif

/* ---- helpers ----------------------------------------------------------------- */


/* A file whose name holds ".tmp." under dir: a temporary that a failed
 * write left behind. Writes its path to out. */
static int find_tmp(const char *dir, char *out, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    char p[4096];
    while (!found && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (strstr(e->d_name, ".tmp.")) {
            snprintf(out, cap, "%s", p);
            found = 1;
        } else {
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) found = find_tmp(p, out, cap);
        }
    }
    closedir(d);
    return found;
}

typedef struct {
    int rc;          /* 0: success */
    char msg[1100];  /* the error message */
} run_result;

/* One path under test, run with the counters armed. */
typedef void (*path_fn)(void *arg, run_result *r);

typedef struct {
    const char *name;
    long count;        /* allocations in a clean run */
    int runs, failures;
} sweep_stats;

/* Runs fn once clean (must succeed; counts its allocations), then once per
 * N in 1..count (every stride-th) with the N-th allocation failing, then
 * once per N (every 3·stride-th) with the N-th and every later allocation
 * failing, which tests that the cleanup does not depend on allocating. */
static void sweep(const char *name, path_fn fn, void *arg, const char *work, long stride, sweep_stats *s) {
    memset(s, 0, sizeof *s);
    s->name = name;
    const char *only = getenv("PEFT_FAULT_ONLY"), *one = getenv("PEFT_FAULT_N"), *sticky_only = getenv("PEFT_FAULT_STICKY");
    if (only && !strstr(name, only)) return;
    fault_cur_path = name;
    run_result r;
    fault_cur_n = 0;
    fault_arm(0, 0);
    fn(arg, &r);
    fault_disarm();
    s->count = fault_count;
    CHECK_MSG(r.rc == 0, "%s: the clean run failed: %s", name, r.msg);
    CHECK_MSG(track_live == 0 && track_overflow == 0, "%s: the clean run leaks %ld allocations", name, track_live);
    if (r.rc) return;
    int reported = 0, runs[2] = {0, 0};
    for (int sticky = sticky_only ? 1 : 0; sticky < 2; sticky++) {
        const long step = sticky ? 3 * stride : stride;
        for (long n = one ? atol(one) : 1; n <= s->count; n += one ? s->count : step) {
            if (work) test_rm_rf(work);
            if (work) mkdir(work, 0755);
            fault_cur_n = n;
            fault_cur_sticky = sticky;
            fault_arm(n, sticky);
            fn(arg, &r);
            fault_disarm();
            runs[sticky]++;
            char tmp[4096] = "";
            const char *why = NULL;
            if (fault_injected == 0) why = "allocation was never reached (the path is not deterministic)";
            else if (r.rc == 0) why = "the path succeeded although an allocation failed";
            else if (!r.msg[0]) why = "failed without a message";
            else if (track_live || track_overflow) why = "leaked";
            else if (work && find_tmp(work, tmp, sizeof tmp)) why = "left a temporary file behind";
            if (getenv("PEFT_FAULT_MESSAGES")) fprintf(stderr, "%s\t%ld%s\t%d\t%s\n", name, n, sticky ? "+" : "", r.rc, r.msg);
            if (why) {
                s->failures++;
                test_failures_++;
                if (reported++ < 20 || getenv("PEFT_FAULT_VERBOSE"))
                    fprintf(stderr, "  %s: allocation %ld%s of %ld failing: %s (rc %d, %ld blocks live%s%s): %s\n", name,
                            n, sticky ? " and every later one" : "", s->count, why, r.rc, track_live, tmp[0] ? ", " : "",
                            tmp, r.msg);
            }
        }
    }
    fault_cur_sticky = 0;
    s->runs = runs[0] + runs[1];
    if (work) test_rm_rf(work);
    printf("    %-44s %5ld allocations, %5d + %4d runs, %d bad\n", name, s->count, runs[0], runs[1], s->failures);
    fflush(stdout);
}

static long env_stride(long dflt) {
    const char *e = getenv("PEFT_FAULT_STRIDE");
    long v = e ? atol(e) : 0;
    return v > 0 ? v : dflt;
}

static void *cjson_malloc(size_t n) { return __wrap_malloc(n); }
static void cjson_free(void *p) { __wrap_free(p); }

/* ---- (a) load -> new LoRA -> train (two steps, a checkpoint, validation)
 *      -> resume from the checkpoint for a third step -> save */

typedef struct {
    const char *model, *data, *work;
    char run[512], saved[512];
} train_arg;

static void path_train(void *argp, run_result *r) {
    train_arg *t = argp;
    r->rc = 0;
    r->msg[0] = 0;
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    peft_ctx *ctx = peft_init(&cp);
    if (!ctx) {
        r->rc = PEFT_ERR_NOMEM;
        snprintf(r->msg, sizeof r->msg, "peft_init: out of memory");
        return;
    }
    peft_model *m = peft_model_load(ctx, t->model);
    peft_adapter *a = NULL;
    int rc = m ? 0 : PEFT_ERR_IO;
    if (!rc) {
        peft_lora_params lp = peft_lora_default_params();
        lp.r = 2;
        lp.alpha = 4;
        lp.dropout = 0.1f;
        a = peft_adapter_new(m, &lp);
        if (!a) rc = PEFT_ERR_INVALID;
    }
    if (!rc) {
        peft_train_params tp = peft_train_default_params();
        tp.data = t->data;
        tp.out_dir = t->run;
        tp.val_split = 0.25;
        tp.steps = 2;
        tp.batch = 2;
        tp.seq = 24;
        tp.save_every = 1;
        tp.eval_every = 1;
        tp.lr = 1e-3f;
        peft_train_result res;
        rc = peft_train(m, a, &tp, &res);
        if (!rc) {
            tp.resume = t->run;
            tp.steps = 3;
            rc = peft_train(m, a, &tp, &res);
        }
    }
    if (!rc) rc = peft_adapter_save(m, a, t->saved);
    if (rc) {
        r->rc = rc;
        snprintf(r->msg, sizeof r->msg, "%s", peft_last_error(ctx));
    }
    peft_adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
}

static void write_data(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    for (int i = 0; i < 8; i++) fprintf(f, "{\"prompt\": \"Q%d: what is %d?\", \"completion\": \" it is %d\"}\n", i, i, i + 1);
    fclose(f);
}

static void sweep_train(const char *model, const char *label) {
    /* tmpfs where there is one: each run fsyncs a dozen files */
    char dir[64];
    snprintf(dir, sizeof dir, "%s/peft_fault_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    char data[256], work[256];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    snprintf(work, sizeof work, "%s/work", dir);
    write_data(data);
    train_arg t = {model, data, work, "", ""};
    snprintf(t.run, sizeof t.run, "%s/run", work);
    snprintf(t.saved, sizeof t.saved, "%s/saved", work);
    mkdir(work, 0755);
    sweep_stats s;
    sweep(label, path_train, &t, work, env_stride(FAULT_ASAN ? 7 : 1), &s);
    CHECK(s.count > 100 || getenv("PEFT_FAULT_ONLY"));
    test_rm_rf(dir);
}

static void train_path_fails_cleanly_at_every_allocation_hf(void) {
    sweep_train("tests/fixtures/models/tiny-gpt2", "load HF, LoRA, train, save");
}

static void train_path_fails_cleanly_at_every_allocation_gguf(void) {
    sweep_train("tests/fixtures/models/tiny-llama.q8_0.gguf", "load GGUF, LoRA, train, save");
}

/* ---- (b) peft_adapter_load, every adapter fixture ------------------------------ */

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
    const char *dir;
} load_arg;

static void path_load(void *argp, run_result *r) {
    load_arg *l = argp;
    r->rc = 0;
    r->msg[0] = 0;
    peft_adapter *a = peft_adapter_load(l->m, l->dir);
    if (!a) {
        r->rc = -1;
        snprintf(r->msg, sizeof r->msg, "%s", peft_last_error(l->ctx));
    }
    peft_adapter_free(a);
}

typedef struct {
    const char *dir, *model;
} load_case;

static void adapter_load_fails_cleanly_at_every_allocation(void) {
    static const load_case cases[] = {
        {"tests/fixtures/lora/llama_all/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/lora/llama_all/adapter", "tests/fixtures/models/tiny-llama.q8_0.gguf"},
        {"tests/fixtures/lora/llama_qv_rslora/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/lora/gpt2_all/adapter", "tests/fixtures/models/tiny-gpt2"},
        {"tests/fixtures/lora/qwen2_qv/adapter", "tests/fixtures/models/tiny-qwen2"},
        {"tests/fixtures/methods/dora_llama/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/methods/dora_gpt2/adapter", "tests/fixtures/models/tiny-gpt2"},
        {"tests/fixtures/methods/ia3_llama/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/methods/ia3_gpt2/adapter", "tests/fixtures/models/tiny-gpt2"},
        {"tests/fixtures/methods/prompt_llama/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/methods/prefix_gpt2/adapter", "tests/fixtures/models/tiny-gpt2"},
        {"tests/fixtures/methods/prefix_proj_llama/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/methods/bottleneck_pfeiffer_llama/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/methods/bottleneck_houlsby_gpt2/adapter", "tests/fixtures/models/tiny-gpt2"},
        {"tests/fixtures/methods/bitfit_qwen2/adapter", "tests/fixtures/models/tiny-qwen2"},
        {"tests/fixtures/methods/seqcls_lora_gpt2/adapter", "tests/fixtures/models/tiny-gpt2"},
        {"tests/fixtures/methods/seqcls_prompt_llama/adapter", "tests/fixtures/models/tiny-llama"},
        {"tests/fixtures/methods/lokr_llama_decompose/adapter", "tests/fixtures/models/tiny-llama"},
    };
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        peft_ctx *ctx = peft_init(&cp);
        peft_model *m = ctx ? peft_model_load(ctx, cases[i].model) : NULL;
        CHECK_MSG(m != NULL, "%s: %s", cases[i].model, peft_last_error(ctx));
        if (m) {
            load_arg l = {ctx, m, cases[i].dir};
            char label[200];
            const char *fix = strstr(cases[i].dir, "fixtures/") ? strstr(cases[i].dir, "fixtures/") + 9 : cases[i].dir;
            snprintf(label, sizeof label, "load %.*s%s", (int)(strlen(fix) - strlen("/adapter")), fix,
                     strstr(cases[i].model, ".gguf") ? " (GGUF)" : "");
            sweep_stats s;
            sweep(label, path_load, &l, NULL, env_stride(1), &s);
        }
        peft_model_free(m);
        peft_free(ctx);
    }
}

/* ---- (c) a new adapter of every method, saved ------------------------------------ */

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
    const char *method, *out;
    int num_labels, projection;
} new_arg;

static void path_new(void *argp, run_result *r) {
    new_arg *n = argp;
    r->rc = 0;
    r->msg[0] = 0;
    peft_method_params mp = peft_method_default_params(n->method);
    mp.lora.r = 2;
    mp.num_virtual_tokens = 3;
    mp.reduction_factor = 8;
    mp.num_labels = n->num_labels;
    mp.prefix_projection = n->projection;
    peft_adapter *a = peft_adapter_new_method(n->m, &mp);
    int rc = a ? peft_adapter_save(n->m, a, n->out) : -1;
    if (rc) {
        r->rc = rc;
        snprintf(r->msg, sizeof r->msg, "%s", peft_last_error(n->ctx));
    }
    peft_adapter_free(a);
}

static void new_adapter_of_every_method_fails_cleanly_at_every_allocation(void) {
    static const struct {
        const char *method, *model;
        int num_labels, projection;
    } cases[] = {
        {"lora", "tests/fixtures/models/tiny-llama", 3, 0},
        {"dora", "tests/fixtures/models/tiny-gpt2", 0, 0},
        {"ia3", "tests/fixtures/models/tiny-llama.q8_0.gguf", 0, 0},
        {"prompt", "tests/fixtures/models/tiny-llama", 0, 0},
        {"prefix", "tests/fixtures/models/tiny-gpt2", 0, 1},
        {"adapter-pfeiffer", "tests/fixtures/models/tiny-llama", 0, 0},
        {"adapter-houlsby", "tests/fixtures/models/tiny-gpt2", 2, 0},
        {"bitfit", "tests/fixtures/models/tiny-qwen2", 0, 0},
        {"full", "tests/fixtures/models/tiny-llama", 0, 0},
        {"full", "tests/fixtures/models/tiny-gpt2.q8_0.gguf", 0, 0},
        {"lokr", "tests/fixtures/models/tiny-qwen2", 2, 0},
    };
    char dir[64];
    snprintf(dir, sizeof dir, "%s/peft_fault_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    char work[128], out[160];
    snprintf(work, sizeof work, "%s/work", dir);
    snprintf(out, sizeof out, "%s/out", work);
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        peft_ctx *ctx = peft_init(&cp);
        peft_model *m = ctx ? peft_model_load(ctx, cases[i].model) : NULL;
        CHECK_MSG(m != NULL, "%s: %s", cases[i].model, peft_last_error(ctx));
        if (m) {
            new_arg n = {ctx, m, cases[i].method, out, cases[i].num_labels, cases[i].projection};
            char label[200];
            snprintf(label, sizeof label, "new %s%s%s on %s, save", cases[i].method, cases[i].num_labels ? " + head" : "",
                     cases[i].projection ? " (projection)" : "", strrchr(cases[i].model, '/') + 1);
            mkdir(work, 0755);
            sweep_stats s;
            sweep(label, path_new, &n, work, env_stride(1), &s);
        }
        peft_model_free(m);
        peft_free(ctx);
    }
    test_rm_rf(dir);
}

/* ---- (d) merge and GGUF export of a loaded adapter ------------------------------- */

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
    peft_adapter *a;
    const char *out;
    int export_gguf;
} merge_arg;

static void path_merge(void *argp, run_result *r) {
    merge_arg *g = argp;
    r->rc = g->export_gguf ? peft_adapter_export_gguf(g->m, g->a, g->out) : peft_adapter_merge(g->m, g->a, g->out);
    snprintf(r->msg, sizeof r->msg, "%s", r->rc ? peft_last_error(g->ctx) : "");
}

static void merge_and_export_fail_cleanly_at_every_allocation(void) {
    static const struct {
        const char *model, *adapter;
        int export_gguf;
    } cases[] = {
        {"tests/fixtures/models/tiny-gpt2", "tests/fixtures/lora/gpt2_all/final_adapter", 0},
        {"tests/fixtures/models/tiny-llama.q8_0.gguf", "tests/fixtures/lora/llama_all/final_adapter", 0},
        {"tests/fixtures/models/tiny-llama", "tests/fixtures/methods/dora_llama/adapter", 0},
        {"tests/fixtures/models/tiny-gpt2", "tests/fixtures/methods/ia3_gpt2/adapter", 0},
        {"tests/fixtures/models/tiny-llama", "tests/fixtures/methods/lokr_llama_r2/adapter", 0},
        {"tests/fixtures/models/tiny-llama.q8_0.gguf", "tests/fixtures/lora/llama_all/final_adapter", 1},
    };
    char dir[64];
    snprintf(dir, sizeof dir, "%s/peft_fault_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    char work[128], out[160];
    snprintf(work, sizeof work, "%s/work", dir);
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        peft_ctx *ctx = peft_init(&cp);
        peft_model *m = ctx ? peft_model_load(ctx, cases[i].model) : NULL;
        peft_adapter *a = m ? peft_adapter_load(m, cases[i].adapter) : NULL;
        CHECK_MSG(a != NULL, "%s on %s: %s", cases[i].adapter, cases[i].model, peft_last_error(ctx));
        if (a) {
            snprintf(out, sizeof out, "%s/%s", work,
                     cases[i].export_gguf ? "lora.gguf" : strstr(cases[i].model, ".gguf") ? "merged.gguf" : "merged");
            merge_arg g = {ctx, m, a, out, cases[i].export_gguf};
            char label[200];
            const char *fix = strstr(cases[i].adapter, "fixtures/") + 9;
            snprintf(label, sizeof label, "%s %.*s into %s", cases[i].export_gguf ? "export" : "merge",
                     (int)(strrchr(fix, '/') - fix), fix, strrchr(cases[i].model, '/') + 1);
            mkdir(work, 0755);
            sweep_stats s;
            sweep(label, path_merge, &g, work, env_stride(1), &s);
        }
        peft_adapter_free(a);
        peft_model_free(m);
        peft_free(ctx);
    }
    test_rm_rf(dir);
}

int main(void) {
    track_slots = __real_calloc(TRACK_CAP, sizeof *track_slots);
    if (!track_slots) return 1;
    cJSON_Hooks hooks = {cjson_malloc, cjson_free};
    cJSON_InitHooks(&hooks);
#if FAULT_ASAN
    __sanitizer_set_death_callback(say_where);
#else
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGABRT, on_signal);
    signal(SIGFPE, on_signal);
#endif
    TEST_RUN(adapter_load_fails_cleanly_at_every_allocation);
    TEST_RUN(new_adapter_of_every_method_fails_cleanly_at_every_allocation);
    TEST_RUN(merge_and_export_fail_cleanly_at_every_allocation);
    TEST_RUN(train_path_fails_cleanly_at_every_allocation_hf);
    TEST_RUN(train_path_fails_cleanly_at_every_allocation_gguf);
    __real_free(track_slots);
    TEST_MAIN_END();
}
