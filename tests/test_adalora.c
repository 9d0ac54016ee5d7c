/* test_adalora.c — AdaLoRA (src/peft/methods/adalora.c) against HF peft's
 * ADALORA on the fixtures of tools/make_adalora_fixtures.py
 * (tests/fixtures/adalora: tiny-llama; tiny-gpt2 with its Conv1D linears,
 * deltaT 2 and a module that ends with no rank):
 *   - HF's starting adapter loads here with HF's logits;
 *   - the first step's loss (cross-entropy + orth_reg_weight · R) and every
 *     gradient (the regulariser's included) equal HF's;
 *   - the loss of the regularised objective has the gradients the backward
 *     gives (central differences);
 *   - train_run over the fixture's steps follows HF's losses and leaves, after
 *     every step, exactly HF's masks (which E are 0): the budget schedule,
 *     the importance EMAs and the final rank pattern;
 *   - the adapter train_run saves holds HF's rank_pattern and HF's cut
 *     tensors, and HF peft loads it with our logits (tools/check_interop.py,
 *     skipped without the Python stack); HF's trained adapter loads here
 *     with HF's logits;
 *   - bad settings fail with clear errors before training. */
#include "formats/safetensors.h"
#include "peft/method.h"
#include "test.h"
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#define AFIX "tests/fixtures/adalora/"
#define MFIX "tests/fixtures/models/"

typedef struct {
    const char *name, *model;
} acase;

static const acase cases[] = {{"adalora_llama", "tiny-llama"}, {"adalora_gpt2", "tiny-gpt2"}};

static double rel_diff(const float *a, const float *b, int64_t n) {
    double mr = 0, md = 0;
    for (int64_t k = 0; k < n; k++) {
        mr = fmax(mr, fabs(b[k]));
        md = fmax(md, fabs((double)a[k] - b[k]));
        if (a[k] != a[k]) md = INFINITY;
    }
    return md / (mr > 0 ? mr : 1);
}

static cJSON *read_json(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return cJSON_Parse(buf);
}

static double num(const cJSON *o, const char *k) { return cJSON_GetNumberValue(cJSON_GetObjectItem(o, k)); }

/* the fixture's batch (2 x 16, labels masked): as a data_batch for the graph and as examples for train_run */
typedef struct {
    int B, T;
    int32_t buf[6][64];
    data_batch b;
    data_example ex[2];
    uint8_t loss[2][32];
    data_set ds;
} fix_batch;

static bool batch_of(const st_archive *ref, fix_batch *fb) {
    const st_tensor *ids = st_find(ref, "input_ids"), *lab = st_find(ref, "labels");
    if (!ids || !lab || ids->shape[0] != 2 || ids->shape[1] > 32) return false;
    fb->B = 2;
    fb->T = (int)ids->shape[1];
    const int B = fb->B, T = fb->T;
    const int32_t *id = ids->data, *lb = lab->data;
    fb->b = (data_batch){B, T, fb->buf[0], fb->buf[1], fb->buf[2], fb->buf[3], fb->buf[4], fb->buf[5], 0, 0, NULL, NULL, 0};
    for (int r = 0; r < B; r++) {
        fb->b.lengths[r] = T;
        fb->b.labels[r] = -1;
        for (int t = 0; t < T; t++) {
            const int i = r * T + t;
            fb->b.inputs[i] = id[i];
            fb->b.positions[i] = t;
            fb->b.segments[i] = 0;
            fb->b.targets[i] = t + 1 < T ? lb[i + 1] : -100;
            fb->b.n_targets += fb->b.targets[i] != -100;
            fb->loss[r][t] = lb[i] != -100;
        }
        fb->ex[r] = (data_example){0};
        fb->ex[r].ids = (int32_t *)id + r * T;
        fb->ex[r].loss = fb->loss[r];
        fb->ex[r].n = T;
        fb->ex[r].label = -1;
    }
    fb->ds = (data_set){0};
    fb->ds.kind = DATA_TEXT;
    fb->ds.ex = fb->ex;
    fb->ds.n = B;
    return true;
}

/* Logits of a on the batch's rows, (B, T, V). */
static float *logits_of(peft_model *m, adapter *a, const fix_batch *fb, peft_err *err) {
    const int V = m->cfg.vocab;
    float *lg = malloc(sizeof(float) * (size_t)fb->B * fb->T * V);
    model_state st;
    model_state_init(&st, a);
    for (int r = 0; r < fb->B && lg; r++) {
        model_state_reset(&st);
        if (model_forward(m, &st, fb->b.inputs + r * fb->T, fb->T, lg + (size_t)r * fb->T * V, true, err)) {
            free(lg);
            lg = NULL;
        }
    }
    model_state_free(&st);
    return lg;
}

/* The regularised loss of the batch and, with grads, its gradient in a->grads. */
static double objective(peft_model *m, adapter *a, train_graph *g, const fix_batch *fb, bool grads, peft_err *err) {
    memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
    double ls = 0, xl = 0;
    int n = 0;
    if (tg_run(g, &fb->b, grads, 1.0f / (float)fb->b.n_targets, 0, &ls, &n, err)) return NAN;
    if (a->ops->extra_loss(a, m, &xl, err)) return NAN;
    return ls / n + xl;
}

typedef struct {
    const acase *c;
    adapter *a;
    const st_archive *ref;
    int steps_seen, masks_checked;
    double worst_loss;
} step_check;

static void compare_step(const train_progress *p, void *user) {
    step_check *sc = user;
    if (p->is_eval) return;
    const int s = p->step - 1;
    const st_tensor *lt = st_find(sc->ref, "loss");
    if (!lt || s >= st_numel(lt)) return;
    const double want = ((const float *)lt->data)[s];
    sc->worst_loss = fmax(sc->worst_loss, fabs(p->loss - want) / fabs(want));
    CHECK_MSG(fabs(p->loss - want) <= 2e-6 * fabs(want), "%s: step %d loss %.8f, HF %.8f", sc->c->name, s, p->loss, want);
    for (int i = 0; i < sc->a->n_tensors; i++) {
        const adapter_tensor *t = &sc->a->tensors[i];
        const size_t kl = strlen(t->key);
        if (kl < 7 || strcmp(t->key + kl - 7, ".lora_E")) continue;
        char key[300];
        snprintf(key, sizeof key, "mask%d/%s", s, t->key);
        const st_tensor *mt = st_find(sc->ref, key);
        CHECK_MSG(mt && st_numel(mt) == t->n, "%s: no reference %s", sc->c->name, key);
        if (!mt || st_numel(mt) != t->n) continue;
        int differ = 0;
        for (int64_t k = 0; k < t->n; k++) differ += (t->p[k] != 0.0f) != (((const uint8_t *)mt->data)[k] != 0);
        CHECK_MSG(!differ, "%s: after step %d, %d of the %lld triplets of %s are masked otherwise than in HF", sc->c->name,
                  s, differ, (long long)t->n, t->key);
        sc->masks_checked++;
    }
    sc->steps_seen++;
}

/* our trained adapters, for one run of tools/check_interop.py --cases */
static char interop_list[] = "/tmp/peft_adalora_cases_XXXXXX";
static char interop_dirs[4][64];
static int n_interop;

static void one_case(const acase *c) {
    char p[512], dir[600];
    peft_err err = {0};
    st_archive *ref = NULL;
    snprintf(p, sizeof p, AFIX "%s/reference.safetensors", c->name);
    CHECK_OK(st_open(p, &ref, &err));
    snprintf(p, sizeof p, AFIX "%s/case.json", c->name);
    cJSON *cj = read_json(p);
    CHECK_MSG(ref && cj, "%s: fixture missing (%s)", c->name, err.msg);
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    snprintf(p, sizeof p, MFIX "%s", c->model);
    peft_model *m = peft_model_load(ctx, p);
    CHECK(m != NULL);
    adapter *a = NULL, *hf_trained = NULL, *ours = NULL;
    train_graph *g = NULL;
    float *lg = NULL;
    static fix_batch fb;
    char out[] = "/tmp/peft_adalora_XXXXXX";
    bool have_out = false, keep_out = false;
    if (!ref || !cj || !m || !batch_of(ref, &fb)) goto done;
    const int V = m->cfg.vocab;
    const size_t NL = (size_t)fb.B * fb.T * V;

    /* 1. HF's starting adapter, its logits */
    snprintf(dir, sizeof dir, AFIX "%s/adapter", c->name);
    CHECK_OK(adapter_load(m, dir, &a, &err));
    if (!a) { fprintf(stderr, "  %s: %s\n", c->name, err.msg); goto done; }
    CHECK(!strcmp(adapter_method_name(a), "adalora"));
    const st_tensor *ls0 = st_find(ref, "logits_start");
    lg = logits_of(m, a, &fb, &err);
    CHECK(lg && ls0 && st_numel(ls0) == (int64_t)NL);
    const double lrel = lg && ls0 ? rel_diff(lg, ls0->data, (int64_t)NL) : 1;
    CHECK_MSG(lrel <= 2e-6, "%s: starting logits differ by %.3g", c->name, lrel);
    free(lg);
    lg = NULL;

    /* 2. the first step: loss and every gradient */
    CHECK_OK(tg_new(m, a, fb.B, fb.T, &g, &err));
    if (!g) goto done;
    const double L0 = objective(m, a, g, &fb, true, &err);
    const double want0 = ((const float *)st_find(ref, "loss")->data)[0];
    CHECK_MSG(fabs(L0 - want0) <= 2e-6 * fabs(want0), "%s: first loss %.8f, HF %.8f", c->name, L0, want0);
    /* against HF's float32 gradient and against the float64 one (relative to
     * each tensor's largest value). A and B: within 2e-6 of HF's, or where
     * the two float32 sides differ by more, within 2e-6 of float64 (HF's
     * rounding, then). E (r values, each a sum over the tokens that cancels)
     * carries the float32 rounding of the gradient arriving at the linear on
     * both sides — HF's own E gradients are up to 4.7e-6 from float64 here,
     * ours up to 6.4e-6, and computing ours in double from there changes
     * nothing — so E is held to 1e-5, against HF and against float64 both. */
    double gworst = 0, g64 = 0, hf64 = 0, eworst = 0, e64 = 0;
    int ngrad = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        char key[300], key64[300];
        snprintf(key, sizeof key, "%s.grad", a->tensors[i].key);
        snprintf(key64, sizeof key64, "%s.grad64", a->tensors[i].key);
        const st_tensor *t = st_find(ref, key), *t64 = st_find(ref, key64);
        CHECK_MSG(t && t64 && st_numel(t) == a->tensors[i].n && st_numel(t64) == a->tensors[i].n,
                  "%s: no reference %s", c->name, key);
        if (!t || !t64 || st_numel(t) != a->tensors[i].n || st_numel(t64) != a->tensors[i].n) continue;
        const double r = rel_diff(a->tensors[i].g, t->data, a->tensors[i].n);
        const double r64 = rel_diff(a->tensors[i].g, t64->data, a->tensors[i].n);
        const double h64 = rel_diff(t->data, t64->data, a->tensors[i].n);
        const size_t kl = strlen(key);
        const bool is_e = kl > 12 && !strcmp(key + kl - 12, ".lora_E.grad");
        CHECK_MSG(is_e ? r <= 1e-5 && r64 <= 1e-5 : r <= 2e-6 || r64 <= 2e-6,
                  "%s: %s differs from HF's by %.3g and from float64 by %.3g (HF's from float64: %.3g)", c->name, key, r,
                  r64, h64);
        if (!is_e) {
            gworst = fmax(gworst, r);
            g64 = fmax(g64, r64);
            hf64 = fmax(hf64, h64);
        } else {
            eworst = fmax(eworst, r);
            e64 = fmax(e64, r64);
        }
        if (getenv("ADALORA_VERBOSE")) printf("      %-70s HF %.2g  f64: ours %.2g HF %.2g\n", key, r, r64, h64);
        ngrad++;
    }
    CHECK_EQ_INT(ngrad, a->n_tensors);

    /* 3. central differences of the regularised loss on a few values of each tensor */
    float *g0 = malloc(sizeof(float) * (size_t)a->n_params);
    memcpy(g0, a->grads, sizeof(float) * (size_t)a->n_params);
    double fd_worst = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        adapter_tensor *t = &a->tensors[i];
        for (int k = 0; k < 2; k++) {
            const int64_t q = (k * 7919 + i * 31) % t->n;
            const float v = t->p[q], h = 1e-2f;
            t->p[q] = v + h;
            const double lp = objective(m, a, g, &fb, false, &err);
            t->p[q] = v - h;
            const double lm = objective(m, a, g, &fb, false, &err);
            t->p[q] = v;
            const double fd = (lp - lm) / (2.0 * h), an = g0[t->p - a->params + q];
            const double e = fabs(fd - an) / fmax(1e-2, fabs(an));
            fd_worst = fmax(fd_worst, e);
            CHECK_MSG(e <= 2e-2, "%s: d loss / d %s[%lld]: backward %.6g, central difference %.6g", c->name, t->key,
                      (long long)q, an, fd);
        }
    }
    free(g0);
    tg_free(g);
    g = NULL;

    /* 4. train_run over HF's steps: losses and masks after every step */
    CHECK(mkdtemp(out) != NULL);
    have_out = true;
    train_params tp = train_default_params();
    tp.opt.lr = (float)num(cj, "lr");
    tp.opt.beta1 = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(cj, "betas"), 0)->valuedouble;
    tp.opt.beta2 = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(cj, "betas"), 1)->valuedouble;
    tp.opt.eps = (float)num(cj, "eps");
    tp.opt.weight_decay = (float)num(cj, "weight_decay");
    tp.opt.max_grad_norm = (float)num(cj, "max_grad_norm");
    tp.opt.sched = SCHED_CONSTANT;
    tp.opt.warmup_steps = 0;
    tp.batch = fb.B;
    tp.seq = fb.T;
    tp.accum = 1;
    tp.steps = (int)num(cj, "steps");
    tp.norm = LOSS_NORM_TOKENS;
    tp.out_dir = out;
    step_check sc = {c, a, ref, 0, 0, 0};
    tp.progress = compare_step;
    tp.user = &sc;
    train_result res;
    CHECK_OK(train_run(m, a, &fb.ds, NULL, &tp, &res, &err));
    if (err.code) fprintf(stderr, "  %s: %s\n", c->name, err.msg);
    CHECK_EQ_INT(sc.steps_seen, tp.steps);

    /* 5. what train_run saved: HF's rank pattern, HF's cut tensors */
    snprintf(p, sizeof p, "%s/adapter_config.json", out);
    cJSON *ocfg = read_json(p);
    snprintf(p, sizeof p, AFIX "%s/trained/adapter_config.json", c->name);
    cJSON *hcfg = read_json(p);
    CHECK(ocfg && hcfg);
    const cJSON *orp = cJSON_GetObjectItem(ocfg, "rank_pattern"), *hrp = cJSON_GetObjectItem(hcfg, "rank_pattern");
    CHECK_MSG(orp && hrp && cJSON_Compare(orp, hrp, true), "%s: rank_pattern differs from HF's", c->name);
    CHECK_EQ_INT((int)num(ocfg, "total_step"), tp.steps);
    cJSON_Delete(ocfg);
    cJSON_Delete(hcfg);
    st_archive *mine = NULL, *theirs = NULL;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
    CHECK_OK(st_open(p, &mine, &err));
    snprintf(p, sizeof p, AFIX "%s/trained/adapter_model.safetensors", c->name);
    CHECK_OK(st_open(p, &theirs, &err));
    double tworst = 0;
    int compared = 0, empty = 0;
    for (int i = 0; mine && theirs && i < st_count(theirs); i++) {
        const st_tensor *ht = st_at(theirs, i), *mt = st_find(mine, ht->name);
        if (st_numel(ht) == 0) {
            CHECK_MSG(!mt || st_numel(mt) == 0, "%s: %s kept triplets HF's did not", c->name, ht->name);
            empty++;
            continue;
        }
        CHECK_MSG(mt && st_numel(mt) == st_numel(ht) && mt->shape[0] == ht->shape[0], "%s: %s: shape differs from HF's",
                  c->name, ht->name);
        if (!mt || st_numel(mt) != st_numel(ht)) continue;
        const double r = rel_diff(mt->data, ht->data, st_numel(ht));
        tworst = fmax(tworst, r);
        compared++;
    }
    CHECK_MSG(tworst <= 1e-4, "%s: trained tensors differ from HF's by %.3g (relative to each tensor's largest)", c->name,
              tworst);
    CHECK(compared > 0);
    st_close(mine);
    st_close(theirs);

    /* 6. HF's trained adapter loads here with HF's logits; ours gives its own */
    const st_tensor *lt = st_find(ref, "logits_trained");
    snprintf(dir, sizeof dir, AFIX "%s/trained", c->name);
    CHECK_OK(adapter_load(m, dir, &hf_trained, &err));
    if (!hf_trained) fprintf(stderr, "  %s: %s\n", c->name, err.msg);
    double hrel = 1, orel = 1;
    if (hf_trained && lt) {
        lg = logits_of(m, hf_trained, &fb, &err);
        hrel = lg ? rel_diff(lg, lt->data, (int64_t)NL) : 1;
        CHECK_MSG(hrel <= 2e-6, "%s: HF's trained adapter: logits differ by %.3g", c->name, hrel);
        free(lg);
        lg = NULL;
        CHECK(hf_trained->ops->train_check(hf_trained, &err) == PEFT_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(err.msg, "rank_pattern"), "%s", err.msg);
    }
    CHECK_OK(adapter_load(m, out, &ours, &err));
    if (ours && lt) {
        lg = logits_of(m, ours, &fb, &err);
        orel = lg ? rel_diff(lg, lt->data, (int64_t)NL) : 1;
        CHECK_MSG(orel <= 1e-4, "%s: our trained adapter's logits differ from HF's by %.3g", c->name, orel);
        /* 7. HF peft loads ours (checked once for every case, at the end: torch starts once) */
        if (lg) {
            char lp[700];
            snprintf(lp, sizeof lp, "%s/logits.safetensors", out);
            st_write_tensor ts[2] = {{"input_ids", PEFT_DT_I32, 2, {fb.B, fb.T}, fb.b.inputs},
                                     {"logits", PEFT_DT_F32, 3, {fb.B, fb.T, V}, lg}};
            CHECK_OK(st_write(lp, ts, 2, NULL, &err));
            FILE *cf = fopen(interop_list, "a");
            CHECK(cf != NULL);
            if (cf) {
                fprintf(cf, MFIX "%s %s %s\n", c->model, out, lp);
                fclose(cf);
            }
            snprintf(interop_dirs[n_interop++], sizeof interop_dirs[0], "%s", out);
            keep_out = true;
        }
    }
    printf("    %-14s start logits %.2g; step-1 loss %.8f (HF %.8f), %d gradients: A, B worst %.2g (from float64: ours %.2g, "
           "HF's %.2g), E worst %.2g (from float64 %.2g); central differences "
           "worst %.2g; %d steps, losses worst %.2g, %d masks equal; trained tensors worst %.2g (%d, %d empty); "
           "logits of HF's trained %.2g, of ours %.2g\n",
           c->name, lrel, L0, want0, ngrad, gworst, g64, hf64, eworst, e64, fd_worst, sc.steps_seen, sc.worst_loss, sc.masks_checked, tworst,
           compared, empty, hrel, orel);
done:
    free(lg);
    tg_free(g);
    adapter_free(a);
    adapter_free(hf_trained);
    adapter_free(ours);
    if (have_out && !keep_out) CHECK(test_rm_rf(out) == 0);
    peft_model_free(m);
    peft_free(ctx);
    st_close(ref);
    cJSON_Delete(cj);
}

static void training_matches_hf_peft(void) {
    const int fd = mkstemp(interop_list);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) one_case(&cases[i]);
    /* HF peft loads the adapters train_run saved, with our logits */
    char cmd[300];
    snprintf(cmd, sizeof cmd, "python3 tools/check_interop.py --cases %s 2>/dev/null", interop_list);
    FILE *pp = n_interop ? popen(cmd, "r") : NULL;
    static char outp[1 << 14];
    size_t got = pp ? fread(outp, 1, sizeof outp - 1, pp) : 0;
    outp[got] = 0;
    const int st = pp ? pclose(pp) : -1;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
        printf("    (python3 with torch, transformers, peft is not installed: our adapters not loaded in HF peft)\n");
    } else {
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "HF peft does not reproduce our trained adapters' logits:\n%s",
                  outp);
        for (int k = 0; k < n_interop; k++) {
            char tag[32];
            snprintf(tag, sizeof tag, "case %d: ", k);
            const char *line = strstr(outp, tag);
            const size_t len = line ? strcspn(line, "\n") : 0;
            CHECK_MSG(line && len >= 3 && !strncmp(line + len - 3, " ok", 3), "case %d: %.*s", k, (int)len,
                      line ? line : "(no output)");
            printf("    HF peft loads our trained %s: %.*s\n", cases[k].name, (int)len, line ? line : "");
        }
    }
    for (int k = 0; k < n_interop; k++) CHECK(test_rm_rf(interop_dirs[k]) == 0);
    unlink(interop_list);
}

/* ---- bad input ---------------------------------------------------------------------- */

static int make(peft_model *m, const char *opts, adapter **a, peft_err *err) {
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.ops = method_find("adalora");
    mc.alpha = NAN;
    mc.seed = 1;
    snprintf(mc.options, sizeof mc.options, "%s", opts);
    const int rc = mc.ops->check(&mc, err);
    return rc ? rc : adapter_new(m, &mc, a, err);
}

static void bad_settings_are_refused(void) {
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-llama");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    static const struct {
        const char *opts, *says;
    } bad[] = {
        {"init_r=4;target_r=6", "target_r (6) is larger than init_r (4)"},
        {"init_r=0", "init_r must be a number in [1"},
        {"init_r=2.5", "init_r must be an integer"},
        {"adalora_beta1=1", "beta1 and beta2 must be in (0, 1)"},
        {"orth_reg_weight=-1", "orth_reg_weight must be a number in [0"},
        {"deltaT=0", "deltaT must be a number in [1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        peft_err err = {0};
        adapter *a = NULL;
        CHECK(make(m, bad[i].opts, &a, &err) != 0);
        CHECK_MSG(strstr(err.msg, bad[i].says), "%s: \"%s\" does not say \"%s\"", bad[i].opts, err.msg, bad[i].says);
        adapter_free(a);
    }
    /* --r is not AdaLoRA's rank: the CLI says so (HF ignores r; so does the library) */
    if (getenv("PEFT_CLI")) {
        static char out[1 << 13];
        const int rc = test_run_cli("train --model " MFIX "tiny-llama --data tests/fixtures/data/pc.jsonl --method adalora "
                                    "--r 4 --steps 2 --out /tmp/peft_adalora_never",
                                    out, sizeof out);
        CHECK_MSG(rc == 2 && strstr(out, "--r does not apply to --method adalora"), "exit %d: %s", rc, out);
    }
    /* a schedule without a budgeting phase: refused before the first step */
    peft_err err = {0};
    adapter *a = NULL;
    CHECK_OK(make(m, "init_r=4;target_r=2;tinit=3;tfinal=2", &a, &err));
    static const int32_t ids[16] = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61};
    uint8_t loss[16];
    memset(loss, 1, sizeof loss);
    data_example ex = {0};
    ex.ids = (int32_t *)ids;
    ex.loss = loss;
    ex.n = 16;
    ex.label = -1;
    data_set ds = {0};
    ds.kind = DATA_TEXT;
    ds.ex = &ex;
    ds.n = 1;
    char out[] = "/tmp/peft_adalora_bad_XXXXXX";
    CHECK(mkdtemp(out) != NULL);
    train_params tp = train_default_params();
    tp.batch = 1;
    tp.seq = 16;
    tp.steps = 5;
    tp.out_dir = out;
    train_result res;
    if (a) {
        CHECK(train_run(m, a, &ds, NULL, &tp, &res, &err) == PEFT_ERR_INVALID);
        CHECK_MSG(strstr(err.msg, "tinit (3) + tfinal (2) must be less than the run's 5 steps"), "%s", err.msg);
        /* the run that has one trains, and the fresh adapter starts as HF's: E = 0 (no change to the base) */
        tp.steps = 6;
        for (int i = 0; i < a->n_tensors; i++)
            if (strstr(a->tensors[i].key, ".lora_E"))
                for (int64_t k = 0; k < a->tensors[i].n; k++) CHECK(a->tensors[i].p[k] == 0.0f);
        err = (peft_err){0};
        tp.save_every = 3;
        CHECK_OK(train_run(m, a, &ds, NULL, &tp, &res, &err));
        if (err.code) fprintf(stderr, "  %s\n", err.msg);
        /* resuming: refused (the allocator's importance scores are not in checkpoints) */
        adapter *b = NULL;
        CHECK_OK(make(m, "init_r=4;target_r=2;tinit=3;tfinal=2", &b, &err));
        tp.resume = out;
        if (b) {
            CHECK(train_run(m, b, &ds, NULL, &tp, &res, &err) == PEFT_ERR_UNSUPPORTED);
            CHECK_MSG(strstr(err.msg, "adalora: resuming is not supported"), "%s", err.msg);
        }
        adapter_free(b);
        tp.resume = NULL;
    }
    adapter_free(a);
    CHECK(test_rm_rf(out) == 0);
    /* a config whose rank pattern names a module the adapter lacks */
    char dir[] = "/tmp/peft_adalora_cfg_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char p[600];
    snprintf(p, sizeof p, "cp " AFIX "adalora_llama/trained/adapter_model.safetensors %s/", dir);
    CHECK(system(p) == 0);
    snprintf(p, sizeof p, AFIX "adalora_llama/trained/adapter_config.json");
    cJSON *cfg = read_json(p);
    CHECK(cfg != NULL);
    if (cfg) {
        cJSON *rp = cJSON_GetObjectItem(cfg, "rank_pattern");
        cJSON *first = rp ? rp->child : NULL;
        if (first) {
            free(first->string);
            first->string = strdup("model.layers.0.mlp.up_proj.lora_E");
        }
        char *js = cJSON_Print(cfg);
        snprintf(p, sizeof p, "%s/adapter_config.json", dir);
        FILE *f = fopen(p, "wb");
        CHECK(f && js);
        if (f && js) fputs(js, f);
        if (f) fclose(f);
        free(js);
        cJSON_Delete(cfg);
        adapter *b = NULL;
        CHECK(adapter_load(m, dir, &b, &err) != 0);
        CHECK_MSG(strstr(err.msg, "rank_pattern key \"model.layers.0.mlp.up_proj.lora_E\" names no adapted module"), "%s",
                  err.msg);
        adapter_free(b);
    }
    CHECK(test_rm_rf(dir) == 0);
    peft_model_free(m);
    peft_free(ctx);
}

/* peft merge folds B·(E⊙A)·s into the weights (GPT-2: into the Conv1D layout) and its own check agrees */
static void merge_keeps_the_adapters_effect(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI is not set (run through ctest)");
    char dir[] = "/tmp/peft_adalora_merge_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[1024];
        static char out[1 << 14];
        snprintf(args, sizeof args, "merge --model " MFIX "%s --adapter " AFIX "%s/trained --out %s/%s --threads 1",
                 cases[i].model, cases[i].name, dir, cases[i].name);
        const int rc = test_run_cli(args, out, sizeof out);
        CHECK_MSG(rc == 0 && strstr(out, "adalora modules") && strstr(out, " 0.0% of the adapter's effect lost"),
                  "%s: exit %d\n%s", cases[i].name, rc, out);
        const char *v = strstr(out, "verify: ");
        printf("    %-14s %.*s\n", cases[i].name, v ? (int)strcspn(v, "\n") : 0, v ? v : "");
    }
    CHECK(test_rm_rf(dir) == 0);
}

int main(void) {
    TEST_RUN(training_matches_hf_peft);
    TEST_RUN(bad_settings_are_refused);
    TEST_RUN(merge_keeps_the_adapters_effect);
    TEST_MAIN_END();
}
