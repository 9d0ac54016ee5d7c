/* trainer.c — the training loop, evaluation, metrics and checkpoints.
 *
 * Step s (0-based) takes `accum` micro-batches, accumulates their gradients
 * (scaled so the step's gradient is that of the normalised loss), clips the
 * global norm, and applies AdamW with lr = schedule(s). Checkpoints are
 * folders checkpoint-<step>/ holding the adapter, the optimizer moments and
 * the data loader's position; the file LATEST names the newest complete one
 * and is replaced atomically, so a run killed mid-save resumes from the
 * previous checkpoint. Dropout masks depend only on (seed, step, micro), so
 * a resumed run follows the uninterrupted trajectory exactly. */
#include "train/trainer.h"
#include "peft/method.h"
#include "train/param_groups.h"
#include "train/plot.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

train_params train_default_params(void) {
    train_params p;
    memset(&p, 0, sizeof p);
    p.batch = 4;
    p.seq = 256;
    p.accum = 1;
    p.steps = 100;
    p.opt = optim_default_params();
    p.seed = 42;
    p.pair_scale = 20.0f;
    p.pair_pool = TG_POOL_MEAN;
    p.checkpoint_every = -1;
    return p;
}

/* ---- batches ------------------------------------------------------------- */

typedef struct {
    int B, T;
    int32_t *buf;   /* inputs, targets, positions, segments, labels, lengths */
    data_batch b;
} owned_batch;

/* B rows (examples × texts per example); typed: with a token-type array. */
static int owned_batch_init(owned_batch *o, int B, int T, bool typed, peft_err *err) {
    o->B = B;
    o->T = T;
    o->buf = peft_malloc(sizeof(int32_t) * ((size_t)(typed ? 5 : 4) * B * T + 2 * (size_t)B), err);
    if (!o->buf) return PEFT_ERR_NOMEM;
    const size_t N = (size_t)B * T;
    o->b = (data_batch){B, T, o->buf, o->buf + N, o->buf + 2 * N, o->buf + 3 * N, o->buf + 4 * N,
                        o->buf + 4 * N + B, 0, 0, NULL, typed ? o->buf + 4 * N + 2 * (size_t)B : NULL, 1};
    return 0;
}


/* Copies src, trimming the padding columns that no row uses: rows are
 * right-padded, so the batch shrinks to the longest row (as HF's collators
 * pad to the longest sequence). */
static void owned_batch_copy(owned_batch *o, const data_batch *src) {
    int T = 2;
    for (int r = 0; r < src->B; r++) T = PEFT_MAX(T, src->lengths ? src->lengths[r] : src->T);
    T = PEFT_MIN(T, src->T);
    data_batch *b = &o->b;
    b->B = src->B;
    b->T = T;
    const int32_t *from[5] = {src->inputs, src->targets, src->positions, src->segments, src->types};
    int32_t *to[5] = {b->inputs, b->targets, b->positions, b->segments, b->types};
    for (int k = 0; k < 5; k++)
        if (from[k] && to[k])
        for (int r = 0; r < src->B; r++)
            memcpy(to[k] + (size_t)r * T, from[k] + (size_t)r * src->T, (size_t)T * sizeof(int32_t));
    for (int r = 0; r < src->B; r++) {
        b->labels[r] = src->labels ? src->labels[r] : -1;
        b->lengths[r] = src->lengths ? src->lengths[r] : src->T;
    }
    b->n_targets = src->n_targets;
    b->pad_id = src->pad_id;
    b->n_cols = src->n_cols;
    if (b->types && !src->types) memset(b->types, 0, (size_t)src->B * T * sizeof(int32_t));
}

/* Rows of examples [first, first + B / C) of d, right-padded, C texts per
 * example: text c of example first + i in row c·(B / C) + i (data.h); rows
 * past the end are empty (no targets, no part in a contrastive loss). */
static void fill_eval_batch(owned_batch *o, const data_set *d, int first, int pad) {
    data_batch *b = &o->b;
    const int C = data_cols(d), nex = o->B / C;
    int T = 2, n; /* the longest row, not the capacity */
    for (int r = 0; r < nex && first + r < d->n; r++)
        for (int c = 0; c < C; c++) {
            data_example_text(&d->ex[first + r], c, &n);
            T = PEFT_MAX(T, PEFT_MIN(n, o->T));
        }
    b->T = T;
    b->n_targets = 0;
    b->n_cols = C;
    for (int r = 0; r < o->B; r++) {
        const int ex = r % nex, col = r / nex;
        const data_example *e = first + ex < d->n ? &d->ex[first + ex] : NULL;
        const int32_t *ids = e ? data_example_text(e, col, &n) : NULL;
        n = e ? PEFT_MIN(n, T) : 0;
        for (int t = 0; t < T; t++) {
            const size_t i = (size_t)r * T + t;
            b->inputs[i] = t < n ? ids[t] : pad;
            b->targets[i] = (C == 1 && t + 1 < n && e->loss[t + 1]) ? e->ids[t + 1] : -100;
            b->positions[i] = t;
            b->segments[i] = 0;
            if (b->types) b->types[i] = t < n && e->types ? e->types[t] : 0;
            b->n_targets += b->targets[i] != -100;
        }
        b->labels[r] = C > 1 ? (e && col == 0 ? ex : -1) : e ? e->label : -1;
        b->lengths[r] = n;
        b->n_targets += C == 1 && e && e->label >= 0;   /* classification: one target per labelled row */
        b->n_targets += C > 1 && e && col == 0;          /* contrastive: one per anchor */
    }
}

static int pad_id_of(const peft_model *m) {
    int p = m->tok ? bpe_pad_id(m->tok) : -1;
    if (p < 0 && m->tok) p = bpe_eos_id(m->tok);
    return p < 0 ? 0 : p;
}

int train_eval_pairs(peft_model *m, adapter *a, const data_set *d, int batch, int seq, int max_batches,
                     float scale, int pool, double *mean_loss, int64_t *n_targets, double *accuracy, peft_err *err) {
    train_graph *g = NULL;
    owned_batch ob = {0};
    const int C = data_cols(d);
    /* no backward: one layer's activations at a time are enough (the
     * forward is the same code, its losses the same bitwise) */
    const tg_options forward_only = {.checkpoint_every = 1};
    int rc = tg_new_opts(m, a, batch * C, seq, &forward_only, &g, err);
    if (!rc && C > 1 && tg_set_pairs(g, scale, pool))
        rc = peft_fail(err, PEFT_ERR_INVALID, "contrastive scale %g is not in (0, 10000)", (double)scale);
    if (!rc) rc = owned_batch_init(&ob, batch * C, seq, data_has_types(d), err);
    double total = 0;
    int64_t count = 0, correct = 0, labelled = 0;
    const int pad = pad_id_of(m);
    for (int first = 0, nb = 0; !rc && first < d->n && (max_batches <= 0 || nb < max_batches); first += batch, nb++) {
        fill_eval_batch(&ob, d, first, pad);
        if (ob.b.n_targets == 0) continue;
        double ls;
        int cnt;
        tg_set_types(g, ob.b.types);
        rc = tg_run(g, &ob.b, false, 0.0f, 0, &ls, &cnt, err);
        total += ls;
        count += cnt;
        const float *cl = rc ? NULL : tg_class_logits(g);
        for (int r = 0; cl && r < batch; r++) {
            if (ob.b.labels[r] < 0) continue;
            const int K = tg_class_width(g);
            int best = 0;
            for (int k = 1; k < K; k++)
                if (cl[(size_t)r * K + k] > cl[(size_t)r * K + best]) best = k;
            correct += best == ob.b.labels[r];
            labelled++;
        }
    }
    tg_free(g);
    free(ob.buf);
    if (rc) return rc;
    if (count == 0) return peft_fail(err, PEFT_ERR_INVALID, "no target tokens to evaluate");
    *mean_loss = total / (double)count;
    if (n_targets) *n_targets = count;
    if (accuracy) *accuracy = labelled ? (double)correct / (double)labelled : NAN;
    return 0;
}

int train_eval_acc(peft_model *m, adapter *a, const data_set *d, int batch, int seq, int max_batches,
                   double *mean_loss, int64_t *n_targets, double *accuracy, peft_err *err) {
    return train_eval_pairs(m, a, d, batch, seq, max_batches, 20.0f, TG_POOL_MEAN, mean_loss, n_targets, accuracy, err);
}

int train_eval(peft_model *m, adapter *a, const data_set *d, int batch, int seq, int max_batches,
               double *mean_loss, int64_t *n_targets, peft_err *err) {
    return train_eval_acc(m, a, d, batch, seq, max_batches, mean_loss, n_targets, NULL, err);
}

/* ---- metrics -------------------------------------------------------------- */

/* The loss history and its chart (loss.svg, loss.png): plot.c. */
typedef plot_history history;

/* Appends one line, or nothing: a write that fails midway (a full disk) is
 * cut back off, so the file keeps only complete lines. */
static int append_line(const char *path, const char *line, peft_err *err) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return peft_fail(err, PEFT_ERR_IO, "%s: cannot append: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return peft_fail(err, PEFT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    const size_t n = strlen(line);
    size_t done = 0;
    int e = 0;
    while (done <= n && !e) {
        /* the line, then its newline */
        const char *p = done < n ? line + done : "\n";
        ssize_t w = write(fd, p, done < n ? n - done : 1);
        if (w < 0 && errno != EINTR) e = errno;
        else if (w == 0) e = EIO;
        else if (w > 0) done += (size_t)w;
    }
    if (e) {
        /* if even this fails, the error below still names the file */
        int t = ftruncate(fd, st.st_size);
        (void)t;
    }
    if (close(fd) != 0 && !e) e = errno;
    if (e) return peft_fail(err, PEFT_ERR_IO, "%s: write failed: %s", path, strerror(e));
    return 0;
}

/* ---- checkpoints ------------------------------------------------------------ */

static void rm_rf_dir(const char *dir) {
    const char *files[] = {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json",
                           "run.json"};
    char p[4200];
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* dir/run.json: where the run is and the caller's description of it, so
 * that a resume can say what the run was (peft_run_folder_inspect). */
static int write_run_json(const char *dir, const cJSON *config, int step, int total, bool finished, peft_err *err) {
    char p[4200];
    snprintf(p, sizeof p, "%s/run.json", dir);
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddNumberToObject(o, "peft_run", 1) && cJSON_AddNumberToObject(o, "step", step) &&
              cJSON_AddNumberToObject(o, "total_steps", total) && cJSON_AddBoolToObject(o, "finished", finished);
    if (ok && config) ok = cJSON_AddItemReferenceToObject(o, "config", (cJSON *)config);
    char *js = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!js) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", p);
    const int rc = peft_write_file_atomic(p, js, strlen(js), err);
    free(js);
    return rc;
}

static int save_checkpoint(const char *out_dir, int step, const adapter *a, const peft_model *m,
                           const adamw_state *opt, const optim_params *op, const data_loader *ld, int prev_step,
                           int ckpt_every, int total, int accum, const cJSON *config, peft_err *err) {
    char dir[4096], p[4200];
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", out_dir, step);
    /* a checkpoint that fails to save (a full disk) is removed again unless
     * it was there before: LATEST still names the previous one */
    const bool existed = peft_is_dir(dir);
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    /* the adapter as a user would load it (not for full fine-tuning: the
     * parameters below are the whole model already) */
    if (!(a->ops && (a->ops->flags & METHOD_SAVES_MODEL)) && (rc = adapter_save(a, m, dir, err))) goto fail;
    size_t ls = data_loader_state_size(ld);
    uint8_t *state = peft_malloc(ls ? ls : 1, err);
    if (!state) { rc = PEFT_ERR_NOMEM; goto fail; }
    data_loader_get_state(ld, state);
    char step_s[32], t_s[32], lp_s[32], ck_s[32], tot_s[32], acc_s[32];
    snprintf(step_s, sizeof step_s, "%d", step);
    snprintf(tot_s, sizeof tot_s, "%d", total);
    snprintf(acc_s, sizeof acc_s, "%d", accum);
    snprintf(ck_s, sizeof ck_s, "%d", ckpt_every);
    snprintf(t_s, sizeof t_s, "%lld", (long long)opt->t);
    snprintf(lp_s, sizeof lp_s, "%.9g", (double)op->loraplus_lr_ratio);
    /* the compute precision and the LoRA+ ratio, so a resume with others
     * can say so; the checkpointing granularity, so a resume keeps it */
    const char *meta[] = {"step", step_s, "adam_t", t_s, "compute",
                          peft_model_compute(m) == PEFT_COMPUTE_BF16 ? "bf16" : "f32", "loraplus_lr_ratio", lp_s,
                          "checkpoint_layers", ck_s, "total_steps", tot_s, "accum", acc_s, NULL};
    st_write_tensor ts[4] = {
        {"params", PEFT_DT_F32, 1, {a->n_params}, a->params},
        {"exp_avg", PEFT_DT_F32, 1, {opt->n}, opt->m},
        {"exp_avg_sq", PEFT_DT_F32, 1, {opt->n}, opt->v},
        {"loader_state", PEFT_DT_U8, 1, {(int64_t)ls}, state},
    };
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    rc = st_write(p, ts, 4, meta, err);
    free(state);
    if (rc || (rc = write_run_json(dir, config, step, total, false, err))) goto fail;
    /* the checkpoint is complete: point LATEST at it, then drop the old one */
    char latest[4200], name[64];
    snprintf(latest, sizeof latest, "%s/LATEST", out_dir);
    int n = snprintf(name, sizeof name, "checkpoint-%d\n", step);
    if ((rc = peft_write_file_atomic(latest, name, (size_t)n, err))) goto fail;
    if (prev_step >= 0 && prev_step != step) {
        snprintf(dir, sizeof dir, "%s/checkpoint-%d", out_dir, prev_step);
        rm_rf_dir(dir);
    }
    return 0;
fail:
    if (!existed) rm_rf_dir(dir);
    return rc;
}

int train_checkpoint_dir(const char *resume, char *out, size_t cap, peft_err *err) {
    char latest[4200];
    snprintf(latest, sizeof latest, "%s/LATEST", resume);
    if (peft_file_exists(latest)) {
        char *name = NULL;
        int rc = peft_read_file(latest, &name, NULL, err);
        if (rc) return rc;
        name[strcspn(name, "\r\n")] = 0;
        snprintf(out, cap, "%s/%s", resume, name);
        free(name);
        return 0;
    }
    snprintf(out, cap, "%s", resume);
    snprintf(latest, sizeof latest, "%s/optimizer.safetensors", resume);
    if (!peft_file_exists(latest))
        return peft_fail(err, PEFT_ERR_IO, "%s: no checkpoint to resume (neither LATEST nor optimizer.safetensors)", resume);
    return 0;
}

/* *k = the checkpointing granularity the checkpoint to resume was trained
 * with (0: off, or a checkpoint from before the option). */
static int checkpoint_layers_of(const char *resume, int *k, peft_err *err) {
    char dir[4096], p[4200];
    int rc = train_checkpoint_dir(resume, dir, sizeof dir, err);
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    st_archive *st = NULL;
    if ((rc = st_open(p, &st, err))) return rc;
    const char *v = st_metadata(st, "checkpoint_layers");
    char *end = NULL;
    const long n = v ? strtol(v, &end, 10) : 0;
    if (v && (end == v || *end || n < 0 || n > 1000000))
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: metadata \"checkpoint_layers\" (\"%.20s\") is not a layer count", p, v);
    *k = (int)n;
    st_close(st);
    return rc;
}

static int load_checkpoint(const char *dir, adapter *a, const peft_model *m, adamw_state *opt,
                           const optim_params *op, data_loader *ld, int *step, int ckpt_every, int total, int accum,
                           peft_err *err) {
    char p[4200];
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    st_archive *st = NULL;
    int rc = st_open(p, &st, err);
    if (rc) return rc;
    const st_tensor *pt = st_find(st, "params");
    if (!pt || pt->dtype != PEFT_DT_F32 || st_numel(pt) != a->n_params) {
        long long have = pt ? (long long)st_numel(pt) : -1;
        st_close(st);
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: the checkpoint's parameters (%lld) do not match this run's %s adapter (%lld)",
                         p, have, adapter_method_name(a), (long long)a->n_params);
    }
    memcpy(a->params, pt->data, (size_t)a->n_params * sizeof(float));
    if ((rc = adapter_refresh(a, m, err))) { st_close(st); return rc; }
    const st_tensor *em = st_find(st, "exp_avg"), *ev = st_find(st, "exp_avg_sq"), *ls = st_find(st, "loader_state");
    const char *s_step = st_metadata(st, "step"), *s_t = st_metadata(st, "adam_t"), *s_c = st_metadata(st, "compute");
    const char *now = peft_model_compute(m) == PEFT_COMPUTE_BF16 ? "bf16" : "f32";
    if (s_c && strcmp(s_c, now))
        peft_log(m->ctx, PEFT_LOG_WARN,
                 "%s: the run was trained with --compute %s and resumes with %s: it continues, but its losses will "
                 "differ slightly from an uninterrupted run (resume with --compute %s for an identical trajectory)",
                 p, s_c, now, s_c);
    /* a checkpoint from before LoRA+ existed has no ratio: it was off */
    const char *s_lp = st_metadata(st, "loraplus_lr_ratio");
    char lp_now[32];
    snprintf(lp_now, sizeof lp_now, "%.9g", (double)op->loraplus_lr_ratio);
    if (strcmp(s_lp ? s_lp : "0", lp_now))
        peft_log(m->ctx, PEFT_LOG_WARN,
                 "%s: the run was trained with loraplus_lr_ratio %s and resumes with %s: it continues, but not on the "
                 "uninterrupted run's trajectory (resume with --loraplus-lr-ratio %s)",
                 p, s_lp ? s_lp : "0 (off)", lp_now, s_lp ? s_lp : "0");
    const char *s_ck = st_metadata(st, "checkpoint_layers");
    char ck_now[32];
    snprintf(ck_now, sizeof ck_now, "%d", ckpt_every);
    if (strcmp(s_ck ? s_ck : "0", ck_now))
        peft_log(m->ctx, PEFT_LOG_WARN,
                 "%s: the run was trained with --checkpoint-layers %s and resumes with %s: the losses are the same, "
                 "only memory and time differ",
                 p, s_ck ? s_ck : "0 (off)", ckpt_every ? ck_now : "0 (off)");
    if (!em || !ev || !ls || !s_step || !s_t || em->dtype != PEFT_DT_F32 || ev->dtype != PEFT_DT_F32 ||
        st_numel(em) != opt->n || st_numel(ev) != opt->n) {
        st_close(st);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: incomplete or mismatched optimizer state", p);
    }
    /* atoi/atoll are undefined past their range; strtoll saturates and says where it stopped. */
    char *e1 = NULL, *e2 = NULL;
    errno = 0;
    long long t = strtoll(s_t, &e1, 10), sv = strtoll(s_step, &e2, 10);
    if (errno || e1 == s_t || *e1 || e2 == s_step || *e2 || t < 0 || sv < 0 || sv > INT32_MAX) {
        st_close(st);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: metadata \"step\" / \"adam_t\" (\"%.20s\" / \"%.20s\") are not "
                         "non-negative integers", p, s_step, s_t);
    }
    /* absent in checkpoints from before they were recorded */
    const char *s_acc = st_metadata(st, "accum"), *s_tot = st_metadata(st, "total_steps");
    if (s_acc && atoi(s_acc) != accum) {
        st_close(st);
        return peft_fail(err, PEFT_ERR_INVALID, "%s: the run was saved with accum %.12s (now %d): resume with the run's "
                         "accumulation", p, s_acc, accum);
    }
    if (s_tot && atoi(s_tot) != total)
        peft_log(m->ctx, PEFT_LOG_WARN, "%s: the run had %.12s steps and resumes with %d: it continues, but its schedule "
                 "is not the uninterrupted run's", p, s_tot, total);
    memcpy(opt->m, em->data, (size_t)opt->n * sizeof(float));
    memcpy(opt->v, ev->data, (size_t)opt->n * sizeof(float));
    opt->t = t;
    *step = (int)sv;
    rc = data_loader_set_state(ld, ls->data, ls->nbytes);
    if (rc) {
        char why[256];
        data_loader_state_mismatch(ld, ls->data, ls->nbytes, why, sizeof why);
        rc = peft_fail(err, PEFT_ERR_INVALID, "%s: the checkpoint does not fit this run's data: %s", p,
                       why[0] ? why : "its data position lies outside this data (a corrupt or edited checkpoint)");
    }
    st_close(st);
    if (rc) return rc;
    return 0;
}

/* Keeps the lines of metrics.jsonl up to `step`, and rebuilds the history. */
static int trim_metrics(const char *path, int step, history *h, peft_err *err) {
    char *text = NULL;
    size_t len = 0;
    if (!peft_file_exists(path)) return 0;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    peft_buf keep = {0};
    long lineno = 0;
    for (char *line = text, *next; !rc && line && *line; line = next) {
        next = strchr(line, '\n');
        lineno++;
        /* only a last line without its newline (a run killed while
         * appending it) is dropped: a complete line that does not parse
         * (out of memory, an edit) is an error, not a lost record */
        const bool complete = next != NULL;
        if (next) *next++ = 0;
        cJSON *j = cJSON_Parse(line);
        if (!j && complete) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s:%ld: not valid JSON (or out of memory)", path, lineno);
            break;
        }
        const cJSON *s = cJSON_GetObjectItem(j, "step");
        if (cJSON_IsNumber(s) && s->valueint <= step) {
            const cJSON *l = cJSON_GetObjectItem(j, "loss"), *v = cJSON_GetObjectItem(j, "val_loss"),
                        *va = cJSON_GetObjectItem(j, "val_accuracy");
            if (peft_buf_printf(&keep, "%s\n", line)) rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);
            if (!rc && cJSON_IsNumber(l)) rc = plot_hist_add(h, s->valueint, l->valuedouble, NAN, false, err);
            if (!rc && cJSON_IsNumber(v)) rc = plot_hist_add(h, s->valueint, v->valuedouble,
                                                                cJSON_IsNumber(va) ? va->valuedouble : NAN, true, err);
        }
        cJSON_Delete(j);
    }
    free(text);
    if (!rc) rc = peft_write_file_atomic(path, keep.data ? keep.data : "", keep.len, err);
    peft_buf_free(&keep);
    return rc;
}

/* ---- the loop ---------------------------------------------------------------- */

int train_run(peft_model *m, adapter *a, const data_set *train, const data_set *val,
              const train_params *p, train_result *res, peft_err *err) {
    const int n_labels = adapter_n_labels(a, m);
    /* pairs train an encoder, a fine-tuned classifier's too, past its own head */
    if (train->kind == DATA_PAIRS && a->mc.n_labels > 0)
        return peft_fail(err, PEFT_ERR_INVALID, "contrastive pairs ({anchor, positive}) train no classification head, but "
                         "this %s adapter has one (%d labels)", adapter_method_name(a), a->mc.n_labels);
    if (train->kind != DATA_PAIRS && (train->kind == DATA_CLASSIFICATION) != (n_labels > 0))
        return peft_fail(err, PEFT_ERR_INVALID,
                         n_labels > 0 ? "the %s adapter has a %d-label classification head but the data is not {text, label}"
                                      : "classification data ({text, label}) needs an adapter with a classification head (%s, %d labels)",
                         adapter_method_name(a), n_labels);
    if (train->kind == DATA_PAIRS && !m->cfg.desc->encoder)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: contrastive pairs ({anchor, positive}) train embedding models: "
                         "this is a decoder (%s), which peft.c does not pool into embeddings", m->path, m->cfg.arch_name);
    if (train->kind == DATA_CLASSIFICATION && train->n_labels > n_labels)
        return peft_fail(err, PEFT_ERR_INVALID, "the data has label %d but the classification head has %d labels",
                         train->n_labels - 1, n_labels);
    if (a->ops && a->ops->train_check) {
        const int rc = a->ops->train_check(a, err);
        if (rc) return rc;
    }
    if (p->pack && (adapter_prompt_rows(a) || adapter_prefix_rows(a)))
        return peft_fail(err, PEFT_ERR_INVALID, "packing does not apply to %s tuning (virtual tokens belong to one sequence)",
                         adapter_method_name(a));
    memset(res, 0, sizeof *res);
    res->val_loss_before = res->val_loss_after = res->val_accuracy = NAN;
    if (p->batch <= 0 || p->seq < 2 || p->accum <= 0) return peft_fail(err, PEFT_ERR_INVALID, "batch, seq and accumulation must be positive");
    if (!p->out_dir) return peft_fail(err, PEFT_ERR_INVALID, "no output folder");
    /* the groups first: LoRA+ on an adapter without B matrices fails before
     * anything is written */
    optim_segment *seg = NULL;
    int n_seg = 0;
    int rc = param_groups_build(a, &p->opt, &seg, &n_seg, err);
    if (rc) return rc;
    cJSON *config = p->run_config ? cJSON_Parse(p->run_config) : NULL;
    if (p->run_config && !cJSON_IsObject(config)) {
        free(seg);
        cJSON_Delete(config);
        return peft_fail(err, PEFT_ERR_INVALID, "the run's description (run_config) is not a JSON object");
    }
    /* a run that fails before its first step (a checkpoint that does not
     * fit) leaves no folder it created behind */
    const bool out_created = !peft_is_dir(p->out_dir);
    bool stepped = false;
    if ((rc = peft_mkdir_p(p->out_dir, err))) { free(seg); cJSON_Delete(config); return rc; }
    if (access(p->out_dir, W_OK) != 0) {
        free(seg);
        cJSON_Delete(config);
        return peft_fail(err, PEFT_ERR_IO, "%s: not writable", p->out_dir);
    }

    data_loader *ld = NULL;
    train_graph *g = NULL;
    adamw_state opt = {0};
    owned_batch *micro = NULL;
    history hist = {0};
    char metrics[4200], line[1024];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", p->out_dir);

    /* The graph first: it checks the shape against the model's context
     * before anything is sized by batch x seq. */
    const int C = data_cols(train);
    const bool typed = data_has_types(train) || (val && data_has_types(val));
    int ck = PEFT_MAX(p->checkpoint_every, 0);
    if (p->checkpoint_every < 0 && p->resume && (rc = checkpoint_layers_of(p->resume, &ck, err))) goto done;
    const tg_options gopt = {.checkpoint_every = ck};
    if ((rc = tg_new_opts(m, a, p->batch * C, p->seq, &gopt, &g, err))) goto done;
    if (C > 1 && tg_set_pairs(g, p->pair_scale, p->pair_pool)) {
        rc = peft_fail(err, PEFT_ERR_INVALID, "contrastive scale %g is not in (0, 10000)", (double)p->pair_scale);
        goto done;
    }
    res->checkpoint_every = ck;
    res->graph_bytes = tg_arena_bytes(g);
    if ((rc = data_loader_new(train, p->batch, p->seq, p->pack, p->seed, pad_id_of(m), &ld, err))) goto done;
    int total = p->steps;
    if (total <= 0) total = PEFT_MAX(1, (PEFT_MAX(1, p->epochs) * data_loader_batches_per_epoch(ld)) / p->accum);
    optim_params op = p->opt;
    op.total_steps = total;
    if ((rc = adamw_init(&opt, a->n_params, err))) goto done;
    micro = peft_calloc((size_t)p->accum, sizeof *micro, err);
    if (!micro) { rc = PEFT_ERR_NOMEM; goto done; }
    for (int i = 0; i < p->accum; i++)
        if ((rc = owned_batch_init(&micro[i], p->batch * C, p->seq, typed, err))) goto done;

    int step = 0, last_ckpt = -1;
    if (p->resume) {
        char dir[4096];
        if ((rc = train_checkpoint_dir(p->resume, dir, sizeof dir, err)) ||
            (rc = load_checkpoint(dir, a, m, &opt, &op, ld, &step, ck, total, p->accum, err)) ||
            (rc = trim_metrics(metrics, step, &hist, err)))
            goto done;
        last_ckpt = step;
    } else {
        unlink(metrics);
    }

    if (a->ops->train_begin && (rc = a->ops->train_begin(a, m, total, step, err))) goto done;
    if ((rc = write_run_json(p->out_dir, config, step, total, false, err))) goto done;

    const int eval_b = p->batch;
    if (val && val->n > 0 && step == 0) {
        double acc0 = NAN;
        if ((rc = train_eval_pairs(m, a, val, eval_b, p->seq, p->eval_max_batches, p->pair_scale, p->pair_pool,
                                    &res->val_loss_before, NULL, &acc0, err)))
            goto done;
        if (isnan(acc0))
            snprintf(line, sizeof line, "{\"step\": 0, \"val_loss\": %.6f, \"val_ppl\": %.6f}", res->val_loss_before,
                     exp(res->val_loss_before));
        else
            snprintf(line, sizeof line, "{\"step\": 0, \"val_loss\": %.6f, \"val_accuracy\": %.6f}", res->val_loss_before, acc0);
        if ((rc = append_line(metrics, line, err))) goto done;
        if ((rc = plot_hist_add(&hist, 0, res->val_loss_before, acc0, true, err))) goto done;
        if (p->progress) {
            train_progress pr = {.step = 0, .total_steps = total, .is_eval = true, .val_loss = res->val_loss_before,
                                 .val_ppl = exp(res->val_loss_before), .val_acc = acc0};
            p->progress(&pr, p->user);
        }
    }

    const double t0 = peft_time_s();
    double t_other = 0;   /* evaluation and checkpoints: not training time */
    int64_t tokens = 0;
    const int start_step = step;
    for (; step < total; step++) {
        /* gather the step's micro-batches first: token normalisation needs
         * their target counts */
        int step_targets = 0;
        int64_t step_tokens = 0;
        for (int i = 0; i < p->accum; i++) {
            data_batch b;
            if ((rc = data_loader_next(ld, &b))) { rc = peft_fail(err, rc, "data loader failed"); goto done; }
            owned_batch_copy(&micro[i], &b);
            step_targets += b.n_targets;
            for (int r = 0; r < b.B; r++) step_tokens += b.lengths[r];
        }
        memset(a->grads, 0, (size_t)a->n_params * sizeof(float));
        double step_loss = 0;
        for (int i = 0; i < p->accum; i++) {
            const int nt = micro[i].b.n_targets;
            if (nt == 0) continue;
            float scale = p->norm == LOSS_NORM_TOKENS ? 1.0f / (float)step_targets : 1.0f / ((float)nt * (float)p->accum);
            double ls;
            int cnt;
            uint64_t dseed = p->seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(step * p->accum + i + 1));
            tg_set_types(g, micro[i].b.types);
            rc = tg_run(g, &micro[i].b, true, scale, dseed, &ls, &cnt, err);
            if (rc == PEFT_ERR_NUMERIC) {
                rc = peft_fail(err, PEFT_ERR_NUMERIC,
                               "step %d: the loss is not finite; stopping (the last checkpoint, if any, is %s/LATEST)",
                               step + 1, p->out_dir);
                goto done;
            }
            if (rc) goto done;
            step_loss += p->norm == LOSS_NORM_TOKENS ? ls / (double)step_targets : ls / ((double)nt * p->accum);
        }
        tokens += step_tokens;
        /* the method's own term (AdaLoRA's orthogonal regulariser): once a step, clipped with the rest */
        if (a->ops->extra_loss) {
            double xl = 0;
            if ((rc = a->ops->extra_loss(a, m, &xl, err))) goto done;
            step_loss += xl;
        }
        double gn = grad_norm(a->grads, a->n_params);
        if (!isfinite(gn)) {
            rc = peft_fail(err, PEFT_ERR_NUMERIC, "step %d: the gradient is not finite; stopping", step + 1);
            goto done;
        }
        grad_clip(a->grads, a->n_params, gn, op.max_grad_norm);
        const float lr = sched_lr(&op, step);
        adamw_step_segments(&opt, a->params, a->grads, seg, n_seg, sched_factor(&op, step), &op);
        /* DoRA norms, a projected prefix table: follow the new parameters */
        if ((rc = adapter_refresh(a, m, err))) goto done;
        /* AdaLoRA's rank allocator: after the step, before the gradients are cleared */
        if (a->ops->step_end) {
            if ((rc = a->ops->step_end(a, m, step, total, err))) goto done;
            if ((rc = adapter_refresh(a, m, err))) goto done;
        }

        if (step == start_step) res->first_loss = step_loss;
        res->last_loss = step_loss;
        const double el = peft_time_s() - t0 - t_other;
        const double tps = el > 0 ? (double)tokens / el : 0;
        snprintf(line, sizeof line,
                 "{\"step\": %d, \"epoch\": %d, \"loss\": %.6f, \"lr\": %.6e, \"grad_norm\": %.6f, \"tokens\": %lld, \"targets\": %d, \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}",
                 step + 1, data_loader_epoch(ld), step_loss, lr, gn, (long long)step_tokens, step_targets, tps, el);
        if ((rc = append_line(metrics, line, err))) goto done;
        stepped = true;
        if ((rc = plot_hist_add(&hist, step + 1, step_loss, NAN, false, err))) goto done;
        if (p->progress) {
            train_progress pr = {.step = step + 1, .total_steps = total, .epoch = data_loader_epoch(ld), .loss = step_loss,
                                 .lr = lr, .grad_norm = gn, .tokens_per_s = tps, .elapsed_s = el,
                                 .eta_s = (step + 1 - start_step) > 0 ? el / (step + 1 - start_step) * (total - step - 1) : 0,
                                 .tokens = tokens, .val_acc = NAN};
            p->progress(&pr, p->user);
        }
        const bool last = step + 1 == total;
        const double t_side = peft_time_s();
        if (val && val->n > 0 && ((p->eval_every > 0 && (step + 1) % p->eval_every == 0) || last)) {
            double vl;
            double acc = NAN;
            if ((rc = train_eval_pairs(m, a, val, eval_b, p->seq, p->eval_max_batches, p->pair_scale, p->pair_pool, &vl,
                                        NULL, &acc, err))) goto done;
            res->val_loss_after = vl;
            res->val_accuracy = acc;
            if (isnan(acc))
                snprintf(line, sizeof line, "{\"step\": %d, \"val_loss\": %.6f, \"val_ppl\": %.6f}", step + 1, vl, exp(vl));
            else
                snprintf(line, sizeof line, "{\"step\": %d, \"val_loss\": %.6f, \"val_accuracy\": %.6f}", step + 1, vl, acc);
            if ((rc = append_line(metrics, line, err))) goto done;
            if ((rc = plot_hist_add(&hist, step + 1, vl, acc, true, err))) goto done;
            if (p->progress) {
                train_progress pr = {.step = step + 1, .total_steps = total, .is_eval = true, .val_loss = vl, .val_ppl = exp(vl),
                                     .val_acc = acc};
                p->progress(&pr, p->user);
            }
            if ((rc = plot_write(&hist, p->out_dir, err))) goto done;
        }
        if (p->save_every > 0 && (step + 1) % p->save_every == 0 && !last) {
            if ((rc = save_checkpoint(p->out_dir, step + 1, a, m, &opt, &op, ld, last_ckpt, ck, total, p->accum, config,
                                      err)))
                goto done;
            last_ckpt = step + 1;
        }
        /* a stop request ends the run here, resumable: the step is done,
         * its checkpoint is what a resume needs */
        const bool stop = !last && p->should_stop && p->should_stop(p->stop_user);
        if (stop && last_ckpt != step + 1) {
            if ((rc = save_checkpoint(p->out_dir, step + 1, a, m, &opt, &op, ld, last_ckpt, ck, total, p->accum, config,
                                      err)))
                goto done;
            last_ckpt = step + 1;
        }
        t_other += peft_time_s() - t_side;
        if (stop) {
            res->interrupted = true;
            step++;
            break;
        }
    }
    res->steps_done = step - start_step;
    res->step = step;
    res->total_steps = total;
    res->seconds = peft_time_s() - t0 - t_other;
    res->tokens = tokens;
    res->tokens_per_s = res->seconds > 0 ? (double)tokens / res->seconds : 0;
    if ((rc = plot_write(&hist, p->out_dir, err))) goto done;
    if ((rc = adapter_save(a, m, p->out_dir, err))) goto done;
    rc = write_run_json(p->out_dir, config, step, total, !res->interrupted, err);
done:
    if (rc && out_created && !stepped) {
        char q[4200];
        snprintf(q, sizeof q, "%s/run.json", p->out_dir);
        unlink(q);
        unlink(metrics);
        rmdir(p->out_dir);
    }
    cJSON_Delete(config);
    if (micro)
        for (int i = 0; i < p->accum; i++) free(micro[i].buf);
    free(micro);
    plot_hist_free(&hist);
    adamw_free(&opt);
    free(seg);
    tg_free(g);
    data_loader_free(ld);
    return rc;
}

/* ---- the memory plan ------------------------------------------------------------ */

/* The longest row a padded batch of d can have (a contrastive example's
 * longest text). */
static int longest_row(const data_set *d) {
    int n = 0, len;
    for (int i = 0; i < d->n; i++)
        for (int c = 0; c < data_cols(d); c++) {
            data_example_text(&d->ex[i], c, &len);
            n = PEFT_MAX(n, len);
        }
    return n;
}

int train_memory_plan(peft_model *m, adapter *a, const data_set *train, const data_set *val, const train_params *p,
                      int checkpoint_every, train_memplan *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    size_t mapped_res = 0;
    out->weights = model_mapped_bytes(m, &mapped_res);
    const size_t now = peft_rss_now();
    out->base = now > mapped_res ? now - mapped_res : 0;
    /* the parameters exist already (in base); their gradients and the
     * moments are touched by the first step */
    out->grads = (size_t)a->n_params * sizeof(float);
    out->optimizer = 2 * (size_t)a->n_params * sizeof(float);
    const int C = data_cols(train);
    const tg_options go = {.checkpoint_every = PEFT_MAX(checkpoint_every, 0)};
    /* padded batches are cut to their longest row: the graph's buffers are
     * touched (resident) only that far; packed rows are full */
    const int t_train = p->pack ? p->seq : PEFT_MAX(2, PEFT_MIN(p->seq, longest_row(train)));
    int rc = tg_plan(m, a, p->batch * C, t_train, &go, &out->graph, err);
    if (rc) return rc;
    if (val && val->n > 0) {
        tg_memory ev;
        const tg_options eo = {.checkpoint_every = 1};
        if ((rc = tg_plan(m, a, p->batch * C, PEFT_MAX(2, PEFT_MIN(p->seq, longest_row(val))), &eo, &ev, err)))
            return rc;
        out->eval_graph = ev.total;
    }
    /* a method that saves a model writes f32 copies of what it trained */
    const size_t save = (a->ops->flags & METHOD_SAVES_MODEL) ? (size_t)a->n_params * sizeof(float) : 0;
    out->peak = out->base + out->weights + out->grads + out->optimizer + out->graph.total + PEFT_MAX(out->eval_graph, save);
    return 0;
}

int train_fit_memory(peft_model *m, adapter *a, const data_set *train, const data_set *val, const train_params *p,
                     size_t budget, int *checkpoint_every, train_memplan *out, peft_err *err) {
    static const int choices[2] = {0, 1};
    for (int i = 0; i < 2; i++) {
        const int rc = train_memory_plan(m, a, train, val, p, choices[i], out, err);
        if (rc) return rc;
        if (out->peak <= budget) {
            *checkpoint_every = choices[i];
            return 0;
        }
    }
    const double mib = 1048576.0;
    return peft_fail(err, PEFT_ERR_NOMEM,
                     "does not fit in %.0f MiB: even with gradient checkpointing of every layer it needs %.0f MiB "
                     "(weights %.0f, graph %.0f for batch %d x %d, optimizer and gradients %.0f, the rest %.0f); "
                     "lower --batch or --seq",
                     budget / mib, out->peak / mib, out->weights / mib, (out->graph.total + out->eval_graph) / mib,
                     p->batch, p->seq, (out->grads + out->optimizer) / mib, out->base / mib);
}
