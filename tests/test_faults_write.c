/* test_faults_write.c — writes that fail midway, as on a full disk. A forked
 * child lowers RLIMIT_FSIZE (with SIGXFSZ ignored, so a write past the limit
 * returns EFBIG) and then saves over an existing result: an adapter, a
 * training run with its checkpoint, a merged model (HF folder and GGUF), a
 * GGUF LoRA export.
 * The limit is swept from 0 to past the largest file written, so the
 * failure lands in each file and at several offsets in it. Then each write,
 * fsync and rename call of the save fails in turn (linked with --wrap: a
 * short write followed by ENOSPC, or EIO), which reaches the files that
 * come after a larger one. Each failed save must
 *   - say what failed: a non-zero status, a message naming the file and the
 *     OS error ("File too large", "No space left on device" or
 *     "Input/output error");
 *   - leave every file either as it was before or as a complete save writes
 *     it, byte for byte (no partial file, no temporary left behind);
 *   - for a training run: leave metrics.jsonl with complete lines only, and
 *     a folder from which a resume (with the space back) ends with exactly
 *     the adapter of an uninterrupted run.
 * All library work runs in forked children; the parent only compares
 * files. */
#include "peft.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define MFIX "tests/fixtures/models/"
#define LFIX "tests/fixtures/lora/"

/* ---- folder snapshots ----------------------------------------------------------- */

typedef struct {
    char *rel;     /* path under the root */
    char *data;
    size_t len;
} snap_file;

typedef struct {
    snap_file *f;
    int n, cap;
} snap;

static void snap_walk(snap *s, const char *root, const char *rel) {
    char dir[2048];
    snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char r[1024], p[3100];
        snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        snprintf(p, sizeof p, "%s/%s", root, r);
        struct stat st;
        if (lstat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            snap_walk(s, root, r);
            continue;
        }
        if (s->n == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 16;
            s->f = realloc(s->f, (size_t)s->cap * sizeof *s->f);
        }
        snap_file *f = &s->f[s->n++];
        f->rel = strdup(r);
        f->len = 0;
        f->data = test_read_file(p, &f->len);
    }
    closedir(d);
}

static snap snap_take(const char *root) {
    snap s = {0};
    snap_walk(&s, root, "");
    return s;
}

static void snap_free(snap *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->f[i].rel);
        free(s->f[i].data);
    }
    free(s->f);
    memset(s, 0, sizeof *s);
}

static const snap_file *snap_find(const snap *s, const char *rel) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->f[i].rel, rel)) return &s->f[i];
    return NULL;
}

static size_t snap_largest(const snap *s) {
    size_t m = 0;
    for (int i = 0; i < s->n; i++) if (s->f[i].len > m) m = s->f[i].len;
    return m;
}

static bool same_file(const snap_file *a, const snap_file *b) {
    if (!a || !b) return !a && !b;
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}


/* Puts root back to exactly the snapshot's files. */
static void snap_restore(const snap *s, const char *root) {
    test_rm_rf(root);
    mkdir(root, 0755);
    for (int i = 0; i < s->n; i++) {
        char p[3100];
        snprintf(p, sizeof p, "%s/%s", root, s->f[i].rel);
        for (char *q = p + strlen(root) + 1; (q = strchr(q, '/')); q++) {
            *q = 0;
            mkdir(p, 0755);
            *q = '/';
        }
        test_write_bytes(p, s->f[i].data, s->f[i].len);
    }
}

/* ---- injected I/O errors ----------------------------------------------------------- */

/* The executable is linked with --wrap=write,fsync,rename (CMakeLists.txt):
 * libpeft's calls come here. A child counts them; with io_fail_at = N the
 * N-th call fails: a write writes half its bytes (a short write, legal) and
 * every later write fails with ENOSPC, the disk being full; an fsync or a
 * rename fails with EIO. */
ssize_t __real_write(int fd, const void *p, size_t n);
int __real_fsync(int fd);
int __real_rename(const char *from, const char *to);
ssize_t __wrap_write(int fd, const void *p, size_t n);
int __wrap_fsync(int fd);
int __wrap_rename(const char *from, const char *to);

static int io_armed, io_full;
static long io_count, io_fail_at;

static int io_hit(void) { return io_armed && ++io_count == io_fail_at; }

ssize_t __wrap_write(int fd, const void *p, size_t n) {
    if (io_armed && io_full) {
        io_count++;
        errno = ENOSPC;
        return -1;
    }
    if (io_hit()) {
        io_full = 1;
        if (n / 2 == 0) {
            errno = ENOSPC;
            return -1;
        }
        return __real_write(fd, p, n / 2);
    }
    return __real_write(fd, p, n);
}

int __wrap_fsync(int fd) {
    if (io_hit()) {
        errno = EIO;
        return -1;
    }
    return __real_fsync(fd);
}

int __wrap_rename(const char *from, const char *to) {
    if (io_hit()) {
        errno = EIO;
        return -1;
    }
    return __real_rename(from, to);
}

/* ---- children ------------------------------------------------------------------ */

typedef struct {
    int rc;
    long io_calls;   /* write/fsync/rename calls the operation made */
    char msg[1100];
} op_result;

/* An operation run in a child: returns a status, the message in msg. */
typedef int (*op_fn)(const void *arg, char *msg, size_t cap);

/* Runs op in a child, its file size limited to `limit` bytes (< 0: no
 * limit) and its fail_at-th I/O call failing (0: none). Returns -1 when the
 * child crashed or did not report. */
static int run_child(op_fn op, const void *arg, long limit, long fail_at, op_result *r) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fds[0]);
        if (limit >= 0) {
            signal(SIGXFSZ, SIG_IGN);
            struct rlimit rl = {(rlim_t)limit, (rlim_t)limit};
            if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(3);
        }
        op_result res;
        memset(&res, 0, sizeof res);
        io_fail_at = fail_at;
        io_armed = 1;
        res.rc = op(arg, res.msg, sizeof res.msg);
        io_armed = 0;
        res.io_calls = io_count;
        if (write(fds[1], &res, sizeof res) != (ssize_t)sizeof res) _exit(4);
        close(fds[1]);
        exit(0); /* exit, not _exit: LeakSanitizer checks the child */
    }
    close(fds[1]);
    memset(r, 0, sizeof *r);
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t k = read(fds[0], (char *)r + got, sizeof *r - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || got != sizeof *r) {
        fprintf(stderr, "  child %s %d (limit %ld, I/O call %ld failing)\n", WIFSIGNALED(st) ? "killed by signal" : "exited with",
                WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), limit, fail_at);
        return -1;
    }
    return 0;
}

static peft_ctx *new_ctx(void) {
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    return peft_init(&cp);
}

static int fail_with(peft_ctx *ctx, int rc, char *msg, size_t cap) {
    snprintf(msg, cap, "%s", rc ? peft_last_error(ctx) : "");
    return rc;
}

/* ---- the sweep ------------------------------------------------------------------ */

/* Limits: 0, powers of two, and for each file of the finished result its
 * size minus one and half of it (a write cut in that file). */
static int make_limits(const snap *done, long *lim, int cap) {
    int n = 0;
    const size_t top = snap_largest(done);
    for (long v = 0; n < cap && (size_t)v <= top; v = v ? 2 * v : 1) lim[n++] = v;
    lim[n++] = (long)top + 4096; /* everything fits */
    for (int i = 0; i < done->n && n + 2 <= cap; i++) {
        lim[n++] = (long)done->f[i].len / 2;
        if (done->f[i].len > 0) lim[n++] = (long)done->f[i].len - 1;
    }
    /* sorted, unique */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (lim[j] < lim[i]) { long t = lim[i]; lim[i] = lim[j]; lim[j] = t; }
    int u = 0;
    for (int i = 0; i < n; i++)
        if (!u || lim[u - 1] != lim[i]) lim[u++] = lim[i];
    return u;
}

/* Every line complete JSON. */
static bool complete_lines(const snap_file *f) {
    if (!f || f->len == 0) return true;
    if (f->data[f->len - 1] != '\n') return false;
    char *copy = malloc(f->len + 1);
    memcpy(copy, f->data, f->len);
    copy[f->len] = 0;
    bool ok = true;
    for (char *line = copy, *next; ok && *line; line = next) {
        next = strchr(line, '\n');
        *next++ = 0;
        cJSON *j = cJSON_Parse(line);
        ok = j != NULL;
        cJSON_Delete(j);
    }
    free(copy);
    return ok;
}

typedef struct {
    const char *name;
    const char *root;        /* the folder the operation writes in (or holding its file) */
    op_fn setup, op;         /* setup writes the previous result; op saves over it */
    const void *arg;
    op_fn resume;            /* training: finishes the run after a failure */
    const char *final_file;  /* training: the file resume must end with, as the clean op does */
} scenario;

/* Checks what one failed (or successful) save left in sc->root. `how` says
 * which fault it was; os_error is the strerror the message must carry. */
static void check_left_behind(const scenario *sc, const snap *before, const snap *after, const op_result *r,
                              const char *how, const char *os_error) {
    snap now = snap_take(sc->root);
    if (getenv("PEFT_FAULT_MESSAGES")) fprintf(stderr, "  %s: %s: %s\n", sc->name, how, r->rc ? r->msg : "ok");
    const int bad0 = test_failures_;
    if (r->rc != 0) {
        CHECK_MSG(strstr(r->msg, os_error) != NULL, "%s: %s: the message lacks the OS error (%s): %s", sc->name, how,
                  os_error, r->msg);
        CHECK_MSG(strstr(r->msg, sc->root) != NULL, "%s: %s: the message names no file under %s: %s", sc->name, how,
                  sc->root, r->msg);
    } else {
        for (int i = 0; i < after->n; i++)
            if (strcmp(after->f[i].rel, "metrics.jsonl"))
                CHECK_MSG(same_file(&after->f[i], snap_find(&now, after->f[i].rel)), "%s: %s: succeeded but %s differs",
                          sc->name, how, after->f[i].rel);
    }
    /* each file as before or as a complete save writes it */
    const snap *sets[3] = {&now, before, after};
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < sets[s]->n; i++) {
            const char *rel = sets[s]->f[i].rel;
            if (s > 0 && snap_find(&now, rel)) continue; /* checked from now's side */
            CHECK_MSG(!strstr(rel, ".tmp."), "%s: %s: a temporary file is left behind: %s", sc->name, how, rel);
            if (!strcmp(rel, "metrics.jsonl")) {
                CHECK_MSG(complete_lines(snap_find(&now, rel)), "%s: %s: metrics.jsonl has a partial line", sc->name, how);
                continue;
            }
            /* the run's state: "started at step S" between the two ends, replaced whole */
            if (!strcmp(rel, "run.json") && snap_find(&now, rel)) {
                const snap_file *f = snap_find(&now, rel);
                cJSON *j = cJSON_ParseWithLength(f->data, f->len);
                CHECK_MSG(cJSON_IsObject(j), "%s: %s: run.json is not a whole JSON object", sc->name, how);
                cJSON_Delete(j);
                continue;
            }
            const snap_file *f = snap_find(&now, rel);
            CHECK_MSG(same_file(f, snap_find(before, rel)) || same_file(f, snap_find(after, rel)), "%s: %s (%s): %s is %s",
                      sc->name, how, r->rc ? r->msg : "no error", rel,
                      f ? "neither the previous file nor the new one" : "gone");
        }
    /* no half-saved checkpoint: each checkpoint folder has its optimizer state */
    for (int i = 0; sc->resume && i < now.n; i++) {
        const char *slash = strchr(now.f[i].rel, '/');
        if (strncmp(now.f[i].rel, "checkpoint-", 11) || !slash) continue;
        char opt[300];
        snprintf(opt, sizeof opt, "%.*s/optimizer.safetensors", (int)(slash - now.f[i].rel), now.f[i].rel);
        CHECK_MSG(snap_find(&now, opt) != NULL, "%s: %s: %s is left without %s", sc->name, how, now.f[i].rel, opt);
    }
    /* a training run that failed can be resumed to the same end */
    if (sc->resume && r->rc != 0 && test_failures_ == bad0) {
        op_result rr;
        CHECK_MSG(run_child(sc->resume, sc->arg, -1, 0, &rr) == 0 && rr.rc == 0, "%s: %s: resume failed: %s", sc->name,
                  how, rr.msg);
        snap end = snap_take(sc->root);
        CHECK_MSG(same_file(snap_find(&end, sc->final_file), snap_find(after, sc->final_file)),
                  "%s: %s: the resumed run ends with another %s", sc->name, how, sc->final_file);
        snap_free(&end);
    }
    snap_free(&now);
}

static long env_stride(void) {
    const char *e = getenv("PEFT_FAULT_STRIDE");
    long v = e ? atol(e) : 0;
    return v > 0 ? v : 1;
}

static void sweep_write_failures(const scenario *sc) {
    op_result r;
    test_rm_rf(sc->root);
    mkdir(sc->root, 0755);
    CHECK_MSG(run_child(sc->setup, sc->arg, -1, 0, &r) == 0 && r.rc == 0, "%s: setup failed: %s", sc->name, r.msg);
    if (r.rc) return;
    snap before = snap_take(sc->root);
    CHECK_MSG(run_child(sc->op, sc->arg, -1, 0, &r) == 0 && r.rc == 0, "%s: the clean save failed: %s", sc->name, r.msg);
    const long io_calls = r.io_calls;
    snap after = snap_take(sc->root);
    int changed = 0;
    for (int i = 0; i < after.n; i++) changed += !same_file(&after.f[i], snap_find(&before, after.f[i].rel));
    CHECK_MSG(changed > 0, "%s: the save changes no file, nothing to test", sc->name);
    /* 1: the file size limit (the kernel's EFBIG) */
    long lim[96];
    const int n_lim = make_limits(&after, lim, 96);
    int failed[2] = {0, 0}, bad = 0;
    char how[128];
    for (int k = 0; k < n_lim; k++) {
        snap_restore(&before, sc->root);
        snprintf(how, sizeof how, "file size limit %ld", lim[k]);
        const int bad0 = test_failures_;
        if (run_child(sc->op, sc->arg, lim[k], 0, &r) != 0) CHECK_MSG(0, "%s: %s: the save crashed", sc->name, how);
        else {
            failed[0] += r.rc != 0;
            check_left_behind(sc, &before, &after, &r, how, strerror(EFBIG));
        }
        bad += test_failures_ != bad0;
    }
    CHECK_MSG(failed[0] >= 3 && failed[0] < n_lim, "%s: %d of %d file size limits made the save fail", sc->name, failed[0],
              n_lim);
    /* 2: each write, fsync and rename in turn failing (a disk that fills up) */
    for (long n = 1; n <= io_calls; n += env_stride()) {
        snap_restore(&before, sc->root);
        snprintf(how, sizeof how, "I/O call %ld of %ld failing", n, io_calls);
        const int bad0 = test_failures_;
        if (run_child(sc->op, sc->arg, -1, n, &r) != 0) CHECK_MSG(0, "%s: %s: the save crashed", sc->name, how);
        else {
            failed[1] += r.rc != 0;
            CHECK_MSG(r.rc != 0, "%s: %s: the save succeeded", sc->name, how);
            check_left_behind(sc, &before, &after, &r, how, strstr(r.msg, strerror(EIO)) ? strerror(EIO) : strerror(ENOSPC));
        }
        bad += test_failures_ != bad0;
    }
    printf("    %-34s %d files; %2d size limits (%2d failed), %3ld I/O calls failed in turn; %d bad\n", sc->name, after.n,
           n_lim, failed[0], io_calls, bad);
    snap_free(&before);
    snap_free(&after);
    test_rm_rf(sc->root);
}

/* ---- adapters ------------------------------------------------------------------- */

typedef struct {
    const char *model, *dir;
} adapter_arg;

static int save_adapter_seed(const adapter_arg *a, uint64_t seed, char *msg, size_t cap) {
    peft_ctx *ctx = new_ctx();
    peft_model *m = peft_model_load(ctx, a->model);
    int rc = m ? 0 : PEFT_ERR_IO;
    peft_adapter *ad = NULL;
    if (!rc) {
        peft_lora_params lp = peft_lora_default_params();
        lp.r = 4;
        lp.targets = "all-linear";
        lp.seed = seed;
        ad = peft_adapter_new(m, &lp);
        rc = ad ? 0 : PEFT_ERR_INVALID;
    }
    if (!rc) rc = peft_adapter_save(m, ad, a->dir);
    fail_with(ctx, rc, msg, cap);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}

static int adapter_setup(const void *arg, char *msg, size_t cap) { return save_adapter_seed(arg, 1, msg, cap); }
static int adapter_op(const void *arg, char *msg, size_t cap) { return save_adapter_seed(arg, 2, msg, cap); }

static char tmpdir_[64];

static void adapter_save_over_a_full_disk_keeps_the_previous_files(void) {
    char dir[128];
    snprintf(dir, sizeof dir, "%s/adapter", tmpdir_);
    adapter_arg a = {MFIX "tiny-llama", dir};
    scenario sc = {"adapter save (LoRA)", dir, adapter_setup, adapter_op, &a, NULL, NULL};
    sweep_write_failures(&sc);
}

/* ---- training checkpoints -------------------------------------------------------- */

typedef struct {
    const char *model, *data, *dir;
} train_arg;

/* steps training steps with a checkpoint after each, resuming when the
 * folder has one */
static int train_to(const train_arg *t, int steps, bool resume, char *msg, size_t cap) {
    peft_ctx *ctx = new_ctx();
    peft_model *m = peft_model_load(ctx, t->model);
    int rc = m ? 0 : PEFT_ERR_IO;
    peft_adapter *ad = NULL;
    if (!rc) {
        peft_lora_params lp = peft_lora_default_params();
        lp.r = 4;
        lp.dropout = 0.1f;
        ad = peft_adapter_new(m, &lp);
        rc = ad ? 0 : PEFT_ERR_INVALID;
    }
    if (!rc) {
        peft_train_params tp = peft_train_default_params();
        tp.data = t->data;
        tp.out_dir = t->dir;
        tp.steps = steps;
        tp.batch = 2;
        tp.seq = 32;
        tp.lr = 1e-2f;
        tp.save_every = 1;
        char latest[300];
        snprintf(latest, sizeof latest, "%s/LATEST", t->dir);
        if (resume && access(latest, F_OK) == 0) tp.resume = t->dir;
        peft_train_result res;
        rc = peft_train(m, ad, &tp, &res);
    }
    fail_with(ctx, rc, msg, cap);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}

static int train_setup(const void *arg, char *msg, size_t cap) { return train_to(arg, 2, false, msg, cap); }
static int train_op(const void *arg, char *msg, size_t cap) { return train_to(arg, 3, true, msg, cap); }

static void checkpoint_over_a_full_disk_keeps_the_run_resumable(void) {
    char dir[128], data[128];
    snprintf(dir, sizeof dir, "%s/run", tmpdir_);
    snprintf(data, sizeof data, "%s/d.jsonl", tmpdir_);
    FILE *f = fopen(data, "w");
    for (int i = 0; f && i < 16; i++) fprintf(f, "{\"prompt\": \"Q%d:\", \"completion\": \" answer %d\"}\n", i % 5, i % 5);
    if (f) fclose(f);
    train_arg t = {MFIX "tiny-gpt2", data, dir};
    /* the run has checkpoint-1 (LATEST) and its final adapter at step 2;
     * resuming to step 3 writes checkpoint-2, LATEST, drops checkpoint-1,
     * then the final adapter, metrics.jsonl and loss.svg */
    scenario sc = {"checkpoint + final save (resume)", dir, train_setup, train_op, &t, train_op,
                   "adapter_model.safetensors"};
    sweep_write_failures(&sc);
}

/* ---- merged models --------------------------------------------------------------- */

/* A merge (or, with export_gguf, a GGUF LoRA export) of old_adapter, then
 * of new_adapter over it. */
typedef struct {
    const char *model, *old_adapter, *new_adapter, *out;
    bool export_gguf;
} merge_arg;

static int merge_one(const merge_arg *a, const char *adapter_dir, char *msg, size_t cap) {
    peft_ctx *ctx = new_ctx();
    peft_model *m = peft_model_load(ctx, a->model);
    peft_adapter *ad = m ? peft_adapter_load(m, adapter_dir) : NULL;
    int rc = !ad             ? PEFT_ERR_IO
             : a->export_gguf ? peft_adapter_export_gguf(m, ad, a->out)
                              : peft_adapter_merge(m, ad, a->out);
    fail_with(ctx, rc, msg, cap);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}

static int merge_setup(const void *arg, char *msg, size_t cap) {
    const merge_arg *a = arg;
    return merge_one(a, a->old_adapter, msg, cap);
}

static int merge_op(const void *arg, char *msg, size_t cap) {
    const merge_arg *a = arg;
    return merge_one(a, a->new_adapter, msg, cap);
}

static void merge_over_a_full_disk_keeps_the_previous_model_hf(void) {
    char dir[128], out[160];
    snprintf(dir, sizeof dir, "%s/merged_hf", tmpdir_);
    snprintf(out, sizeof out, "%s/model", dir);
    merge_arg a = {MFIX "tiny-gpt2", LFIX "gpt2_all/adapter", LFIX "gpt2_all/final_adapter", out, false};
    scenario sc = {"merge into an HF folder", dir, merge_setup, merge_op, &a, NULL, NULL};
    sweep_write_failures(&sc);
}

static void merge_over_a_full_disk_keeps_the_previous_model_gguf(void) {
    char dir[128], out[160];
    snprintf(dir, sizeof dir, "%s/merged_gguf", tmpdir_);
    snprintf(out, sizeof out, "%s/merged.gguf", dir);
    merge_arg a = {MFIX "tiny-llama.f32.gguf", LFIX "llama_all/adapter", LFIX "llama_all/final_adapter", out, false};
    scenario sc = {"merge into a GGUF file", dir, merge_setup, merge_op, &a, NULL, NULL};
    sweep_write_failures(&sc);
}

static void gguf_lora_export_over_a_full_disk_keeps_the_previous_file(void) {
    char dir[128], out[160];
    snprintf(dir, sizeof dir, "%s/export", tmpdir_);
    snprintf(out, sizeof out, "%s/lora.gguf", dir);
    merge_arg a = {MFIX "tiny-llama.q8_0.gguf", LFIX "llama_all/adapter", LFIX "llama_all/final_adapter", out, true};
    scenario sc = {"GGUF LoRA export", dir, merge_setup, merge_op, &a, NULL, NULL};
    sweep_write_failures(&sc);
}

int main(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "%s/peft_wfault_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(tmpdir_)) return 1;
    TEST_RUN(adapter_save_over_a_full_disk_keeps_the_previous_files);
    TEST_RUN(checkpoint_over_a_full_disk_keeps_the_run_resumable);
    TEST_RUN(merge_over_a_full_disk_keeps_the_previous_model_hf);
    TEST_RUN(merge_over_a_full_disk_keeps_the_previous_model_gguf);
    TEST_RUN(gguf_lora_export_over_a_full_disk_keeps_the_previous_file);
    test_rm_rf(tmpdir_);
    TEST_MAIN_END();
}
