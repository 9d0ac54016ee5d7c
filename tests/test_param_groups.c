/* test_param_groups.c — the optimizer's parameter groups against Hugging
 * Face's own (tests/fixtures/optim, made by tools/make_optim_fixtures.py):
 * LoRA+ as peft.optimizers.create_loraplus_optimizer builds it (LoRA and
 * DoRA), and the weight-decay split of transformers' Trainer (BitFit, full
 * fine-tuning of llama and GPT-2). For each case every registry tensor's lr
 * and weight decay are HF's group's, and 3 steps through train_run leave
 * every tensor within 1e-5 relative of torch's after each step. Then: the
 * groups' rules on a hand-made registry (the embedding group, group B
 * without decay), one segment is adamw_step bit for bit, LoRA+ is refused
 * where there are no B matrices, and a LoRA+ run resumed from a checkpoint
 * ends byte-identical to the uninterrupted one. */
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"
#include "train/param_groups.h"
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

#define MFIX "tests/fixtures/models/"
#define OFIX "tests/fixtures/optim/"

typedef struct {
    const char *name;
} ocase;

static const ocase cases[] = {
    {"loraplus_llama"}, {"loraplus_dora_gpt2"}, {"decay_bitfit_gpt2"}, {"decay_full_llama"}, {"decay_full_gpt2"},
};

static cJSON *read_json(const char *path) {
    char *text = NULL;
    peft_err err = {0};
    if (peft_read_file(path, &text, NULL, &err)) { fprintf(stderr, "  %s\n", err.msg); return NULL; }
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* What the progress callback compares after each step. */
typedef struct {
    const adapter *a;
    const st_archive *ref;
    const char *name;
    const optim_segment *seg;
    int n_seg;
    int steps_seen, tensors_checked, noise_values;
    double worst;
} step_check;

static const optim_segment *segment_at(const optim_segment *seg, int n, int64_t off);

static void compare_step(const train_progress *pr, void *user) {
    step_check *sc = user;
    if (pr->is_eval) return;
    sc->steps_seen++;
    for (int i = 0; i < sc->a->n_tensors; i++) {
        const adapter_tensor *t = &sc->a->tensors[i];
        char key[300];
        snprintf(key, sizeof key, "stride/%s", t->key);
        const st_tensor *st = st_find(sc->ref, key);
        snprintf(key, sizeof key, "step%d/%s", pr->step, t->key);
        const st_tensor *want = st_find(sc->ref, key);
        CHECK_MSG(st && want, "%s: the reference has no %s", sc->name, key);
        if (!st || !want) continue;
        const int stride = ((const int32_t *)st->data)[0];
        const int64_t n = st_numel(want);
        CHECK_MSG(stride >= 1 && (t->n + stride - 1) / stride == n, "%s: %s has %lld values, the reference %lld every %d",
                  sc->name, t->key, (long long)t->n, (long long)n, stride);
        if (stride < 1 || (t->n + stride - 1) / stride != n) continue;
        const float *w = want->data;
        /* values the fixture marks as moved by rounding noise (a gradient
         * that is zero in exact arithmetic, GPT-2's key bias): within what
         * Adam can move a value, |update| <= lr·(1-b1)/sqrt(1-b2) < 3.2·lr
         * per step, on either side */
        snprintf(key, sizeof key, "noise/%s", t->key);
        const st_tensor *nz = st_find(sc->ref, key);
        const uint8_t *noise = nz && st_numel(nz) == n ? nz->data : NULL;
        const optim_segment *sg = segment_at(sc->seg, sc->n_seg, t->p - sc->a->params);
        const double bound = 2 * 3.2 * (sg ? sg->lr : 1) * pr->step;
        double mr = 0, md = 0;
        for (int64_t k = 0; k < n; k++) {
            const double d = fabs((double)t->p[k * stride] - w[k]);
            if (noise && noise[k]) {
                CHECK_MSG(d <= bound, "%s: step %d: %s[%lld] (rounding-noise gradient) moved %.3g from torch's, more than "
                          "Adam can (%.3g)", sc->name, pr->step, t->key, (long long)(k * stride), d, bound);
                sc->noise_values++;
                continue;
            }
            mr = fmax(mr, fabs(w[k]));
            md = fmax(md, d);
        }
        const double rel = md / (mr > 0 ? mr : 1);
        sc->worst = fmax(sc->worst, rel);
        CHECK_MSG(rel <= 1e-5, "%s: step %d: %s differs from torch by %.3g relative", sc->name, pr->step, t->key, rel);
        sc->tensors_checked++;
    }
}

/* The segment holding value `off`. */
static const optim_segment *segment_at(const optim_segment *seg, int n, int64_t off) {
    for (int k = 0; k < n; k++)
        if (off >= seg[k].off && off < seg[k].off + seg[k].n) return &seg[k];
    return NULL;
}

static void one_case(const ocase *c) {
    char p[512];
    snprintf(p, sizeof p, OFIX "%s/groups.json", c->name);
    cJSON *gj = read_json(p);
    CHECK_MSG(gj != NULL, "%s unreadable", p);
    if (!gj) return;
    snprintf(p, sizeof p, OFIX "%s/reference.safetensors", c->name);
    st_archive *ref = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(p, &ref, &err));
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    snprintf(p, sizeof p, MFIX "%s", cJSON_GetObjectItem(gj, "model")->valuestring);
    peft_model *m = peft_model_load(ctx, p);
    CHECK(m != NULL);
    adapter *a = NULL;
    optim_segment *seg = NULL;
    int n_seg = 0;
    const char *kind = cJSON_GetObjectItem(gj, "kind")->valuestring;
    if (m && !strcmp(kind, "full")) {
        method_config mc;
        memset(&mc, 0, sizeof mc);
        mc.ops = method_find("full");
        CHECK_OK(adapter_new(m, &mc, &a, &err));
    } else if (m) {
        snprintf(p, sizeof p, OFIX "%s/adapter", c->name);
        CHECK_OK(adapter_load(m, p, &a, &err));
    }
    if (!a || !ref) { fprintf(stderr, "  %s: %s\n", c->name, err.msg); goto out; }

    train_params tp = train_default_params();
    tp.opt.lr = (float)num(gj, "lr");
    tp.opt.weight_decay = (float)num(gj, "weight_decay");
    tp.opt.loraplus_lr_ratio = (float)num(gj, "loraplus_lr_ratio");
    tp.opt.max_grad_norm = (float)num(gj, "max_grad_norm");
    tp.opt.eps = (float)num(gj, "eps");
    tp.opt.sched = SCHED_LINEAR;
    tp.opt.warmup_steps = 0;

    /* 1. each tensor in HF's group */
    const cJSON *groups = cJSON_GetObjectItem(gj, "tensors");
    CHECK_EQ_INT(cJSON_GetArraySize(groups), a->n_tensors);
    CHECK_OK(param_groups_build(a, &tp.opt, &seg, &n_seg, &err));
    int64_t off = 0;
    for (int i = 0; seg && i < a->n_tensors; off += a->tensors[i].n, i++) {
        const cJSON *g = cJSON_GetObjectItem(groups, a->tensors[i].key);
        CHECK_MSG(g != NULL, "%s: HF has no parameter %s", c->name, a->tensors[i].key);
        const optim_segment *s = segment_at(seg, n_seg, off);
        CHECK(s != NULL && s->off + s->n >= off + a->tensors[i].n);
        if (!g || !s) continue;
        const double lr = num(g, "lr"), wd = num(g, "weight_decay");
        CHECK_MSG(fabs(s->lr - lr) <= 1e-6 * lr && fabs(s->weight_decay - wd) <= 1e-7,
                  "%s: %s: lr %g weight decay %g, HF's %s has lr %g weight decay %g", c->name, a->tensors[i].key, s->lr,
                  (double)s->weight_decay, cJSON_GetObjectItem(g, "group")->valuestring, lr, wd);
    }

    /* 2. three steps, compared after each */
    const st_tensor *ids = st_find(ref, "input_ids"), *lab = st_find(ref, "labels");
    CHECK(ids && lab);
    if (!ids || !lab) goto out;
    const int B = (int)ids->shape[0], T = (int)ids->shape[1];
    CHECK_EQ_INT(B, 2); /* the fixtures' batch: ex[] below */
    if (B != 2) goto out;
    data_example ex[2] = {{0}};
    data_set ds = {0};
    ds.kind = DATA_TEXT;
    ds.ex = ex;
    ds.n = B;
    for (int r = 0; r < B; r++) {
        ex[r].ids = (int32_t *)ids->data + r * T;
        ex[r].loss = malloc((size_t)T);
        for (int t = 0; t < T; t++) ex[r].loss[t] = ((const int32_t *)lab->data)[r * T + t] != -100;
        ex[r].n = T;
        ex[r].label = -1;
    }
    char out[] = "/tmp/peft_pg_XXXXXX";
    CHECK(mkdtemp(out) != NULL);
    tp.batch = B;
    tp.seq = T;
    tp.accum = 1;
    tp.steps = (int)num(gj, "n_steps");
    tp.norm = LOSS_NORM_TOKENS;
    tp.out_dir = out;
    step_check sc = {a, ref, c->name, seg, n_seg, 0, 0, 0, 0};
    tp.progress = compare_step;
    tp.user = &sc;
    train_result res;
    CHECK_OK(train_run(m, a, &ds, NULL, &tp, &res, &err));
    if (err.code) fprintf(stderr, "  %s: %s\n", c->name, err.msg);
    CHECK_EQ_INT(sc.steps_seen, tp.steps);
    const cJSON *steps = cJSON_GetObjectItem(gj, "steps");
    const double l0 = num(cJSON_GetArrayItem(steps, 0), "loss");
    CHECK_MSG(fabs(res.first_loss - l0) <= 1e-5 * fabs(l0), "%s: first loss %.7f vs torch %.7f", c->name, res.first_loss, l0);
    printf("    %-20s %d tensors in HF's groups; %d steps, %d tensor comparisons, worst rel diff %.3g", c->name,
           a->n_tensors, sc.steps_seen, sc.tensors_checked, sc.worst);
    if (sc.noise_values) printf(" (%d values with a rounding-noise gradient: within Adam's bound)", sc.noise_values);
    printf("\n");
    CHECK(test_rm_rf(out) == 0);
    for (int r = 0; r < B; r++) free(ex[r].loss);
out:
    free(seg);
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    st_close(ref);
    cJSON_Delete(gj);
}

static void groups_and_trajectories_match_hf(void) {
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) one_case(&cases[i]);
}

/* ---- the rules on a hand-made registry ------------------------------------ */

static void segments_follow_the_group_rules(void) {
    peft_err err = {0};
    adapter *a = peft_calloc(1, sizeof *a, &err);
    CHECK(a != NULL);
    if (!a) return;
    /* A, B, a 1-D B without decay, an embedding LoRA's A and B, another A */
    const unsigned flags[] = {0, PG_LORA_B, PG_LORA_B | PG_NO_DECAY, PG_EMBEDDING, PG_EMBEDDING, PG_NO_DECAY};
    for (int i = 0; i < 6; i++) {
        /* a frozen buffer in the middle: outside params, not a segment */
        if (i == 3) CHECK_EQ_INT(adapter_add_buffer(a, "frozen", 1, 5, 1, true, &err), 3);
        int idx = adapter_add_tensor(a, "t", 2, 3, 2, true, &err);
        CHECK_EQ_INT(idx, i + (i >= 3));
        adapter_tensor_set_group(a, idx, flags[i]);
    }
    adapter_tensor_set_group(a, -1, PG_LORA_B); /* a failed add: nothing */
    CHECK_OK(adapter_finish_alloc(a, &err));
    optim_params op = optim_default_params();
    op.lr = 1e-3f;
    op.weight_decay = 0.1f;
    optim_segment *seg = NULL;
    int n = 0;
    /* plain AdamW: one lr, decay off where PG_NO_DECAY */
    CHECK_OK(param_groups_build(a, &op, &seg, &n, &err));
    const float wd_plain[] = {0.1f, 0.1f, 0, 0.1f, 0.1f, 0};
    for (int i = 0; seg && i < 6; i++) {
        const optim_segment *s = segment_at(seg, n, 6 * i);
        CHECK(s && s->lr == (double)op.lr && s->weight_decay == wd_plain[i]);
    }
    CHECK_EQ_INT(n, 4); /* neighbours of one lr and decay merge: [0,1] [2] [3,4] [5] */
    free(seg);
    /* LoRA+: A lr, B lr x ratio (no decay only in group B), embedding its lr */
    op.loraplus_lr_ratio = 16;
    op.loraplus_lr_embedding = 5e-6f;
    CHECK_OK(param_groups_build(a, &op, &seg, &n, &err));
    const double lr_plus[] = {1e-3, 16e-3, 16e-3, 5e-6, 5e-6, 1e-3};
    const float wd_plus[] = {0.1f, 0.1f, 0, 0.1f, 0.1f, 0.1f};
    for (int i = 0; seg && i < 6; i++) {
        const optim_segment *s = segment_at(seg, n, 6 * i);
        CHECK_MSG(s && fabs(s->lr - lr_plus[i]) <= 1e-6 * lr_plus[i] && s->weight_decay == wd_plus[i],
                  "tensor %d: lr %g wd %g", i, s ? s->lr : -1, s ? (double)s->weight_decay : -1);
    }
    free(seg);
    /* 0 in a zeroed parameter struct: HF's default 1e-6 */
    op.loraplus_lr_embedding = 0;
    CHECK_OK(param_groups_build(a, &op, &seg, &n, &err));
    const optim_segment *s = seg ? segment_at(seg, n, 18) : NULL;
    CHECK(s && fabs(s->lr - 1e-6) < 1e-12);
    free(seg);
    /* no B matrices: LoRA+ is refused, naming itself */
    for (int i = 0; i < a->n_tensors; i++) a->tensors[i].group = 0;
    a->ops = method_find("bitfit");   /* named in the message; no state (priv NULL) */
    op.loraplus_lr_embedding = 1e-6f;
    CHECK(param_groups_build(a, &op, &seg, &n, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "LoRA+") && strstr(err.msg, "bitfit"), "%s", err.msg);
    CHECK(seg == NULL);
adapter_free(a);
}

/* Plain runs keep their trajectory: one segment is adamw_step exactly. */
static void one_segment_is_adamw_step_bit_for_bit(void) {
    enum { N = 257 };
    float p1[N], p2[N], g[N];
    peft_rng rng;
    peft_rng_seed(&rng, 7);
    for (int i = 0; i < N; i++) {
        p1[i] = p2[i] = peft_rng_normal(&rng);
        g[i] = 0.01f * peft_rng_normal(&rng);
    }
    optim_params op = optim_default_params();
    op.weight_decay = 0.05f;
    op.sched = SCHED_COSINE;
    op.warmup_steps = 2;
    op.total_steps = 7;
    adamw_state s1 = {0}, s2 = {0};
    peft_err err = {0};
    CHECK_OK(adamw_init(&s1, N, &err));
    CHECK_OK(adamw_init(&s2, N, &err));
    const optim_segment seg = {0, N, op.lr, op.weight_decay};
    for (int step = 0; step < 7; step++) {
        adamw_step(&s1, p1, g, sched_lr(&op, step), &op);
        adamw_step_segments(&s2, p2, g, &seg, 1, sched_factor(&op, step), &op);
    }
    CHECK(memcmp(p1, p2, sizeof p1) == 0 && memcmp(s1.m, s2.m, sizeof p1) == 0 && memcmp(s1.v, s2.v, sizeof p1) == 0);
    CHECK(s1.t == s2.t);
    adamw_free(&s1);
    adamw_free(&s2);
}

/* ---- resume ------------------------------------------------------------------- */

static void keep_warning(peft_log_level level, const char *msg, void *user) {
    if (level == PEFT_LOG_WARN) snprintf(user, 512, "%s", msg);
}

static int train_lora_plus(peft_model *m, const data_set *ds, const char *out, const char *resume, int steps,
                           float ratio, peft_err *err) {
    lora_config cfg = lora_default_config();
    cfg.r = 4;
    cfg.alpha = 8;
    cfg.dora = true;   /* group B holds a 1-D tensor too */
    int rc = lora_parse_targets(m, "q_proj,v_proj", &cfg.targets, err);
    adapter *a = NULL;
    if (!rc) rc = lora_new(m, &cfg, &a, err);
    if (rc) return rc;
    train_params tp = train_default_params();
    tp.batch = 1;
    tp.seq = 16;
    tp.steps = steps;
    tp.save_every = 3;
    tp.opt.lr = 2e-3f;
    tp.opt.weight_decay = 0.1f;
    tp.opt.loraplus_lr_ratio = ratio;
    tp.opt.warmup_steps = 1;
    tp.out_dir = out;
    tp.resume = resume;
    train_result res;
    rc = train_run(m, a, ds, NULL, &tp, &res, err);
    adapter_free(a);
    return rc;
}

static void loraplus_resume_is_byte_identical(void) {
    char warning[512] = "";
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    cp.log = keep_warning;
    cp.log_user = warning;
    cp.log_level = PEFT_LOG_WARN;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-llama");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    int32_t ids[3][16];
    uint8_t loss[3][16];
    data_example ex[3] = {{0}};
    peft_rng rng;
    peft_rng_seed(&rng, 11);
    for (int r = 0; r < 3; r++) {
        for (int t = 0; t < 16; t++) {
            ids[r][t] = (int32_t)(peft_rng_u64(&rng) % 300);
            loss[r][t] = t > 2;
        }
        ex[r] = (data_example){0};
        ex[r].ids = ids[r];
        ex[r].loss = loss[r];
        ex[r].n = 16;
        ex[r].label = -1;
    }
    data_set ds = {0};
    ds.kind = DATA_TEXT;
    ds.ex = ex;
    ds.n = 3;
    char a_dir[] = "/tmp/peft_pga_XXXXXX", b_dir[] = "/tmp/peft_pgb_XXXXXX";
    CHECK(mkdtemp(a_dir) && mkdtemp(b_dir));
    peft_err err = {0};
    CHECK_OK(train_lora_plus(m, &ds, a_dir, NULL, 6, 16, &err));
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cp -r %s/checkpoint-3 %s/LATEST %s/", a_dir, a_dir, b_dir);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_OK(train_lora_plus(m, &ds, b_dir, b_dir, 6, 16, &err));
    CHECK_MSG(!warning[0], "an exact resume warned: %s", warning);
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    snprintf(cmd, sizeof cmd, "cmp -s %s/adapter_model.safetensors %s/adapter_model.safetensors", a_dir, b_dir);
    CHECK_MSG(system(cmd) == 0, "the resumed LoRA+ run's adapter differs from the uninterrupted one");
    /* the checkpoint records the ratio (a resume with another one warns) */
    snprintf(cmd, sizeof cmd, "%s/checkpoint-3/optimizer.safetensors", b_dir);
    st_archive *st = NULL;
    CHECK_OK(st_open(cmd, &st, &err));
    const char *r = st ? st_metadata(st, "loraplus_lr_ratio") : NULL;
    CHECK_MSG(r && !strcmp(r, "16"), "loraplus_lr_ratio in the checkpoint: %s", r ? r : "(none)");
    st_close(st);
    /* resuming it without LoRA+ carries on, saying so */
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && cp -r %s/checkpoint-3 %s/LATEST %s/", b_dir, b_dir, a_dir, a_dir, b_dir);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_OK(train_lora_plus(m, &ds, b_dir, b_dir, 6, 0, &err));
    CHECK_MSG(strstr(warning, "loraplus_lr_ratio 16 and resumes with 0"), "warning: \"%s\"", warning);
    const char *w = strstr(warning, "the run") ? strstr(warning, "the run") : warning;
    printf("    resumed at step 3: byte-identical; resumed without the ratio: \"%.100s...\"\n", w);
    CHECK(test_rm_rf(a_dir) == 0 && test_rm_rf(b_dir) == 0);
    peft_model_free(m);
    peft_free(ctx);
}

/* LoRA+ on a method without B matrices: one error, nothing written. */
static void loraplus_is_refused_before_anything_is_written(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-llama");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.ops = method_find("ia3");
    CHECK(mc.ops != NULL);
    adapter *a = NULL;
    peft_err err = {0};
    CHECK_OK(adapter_new(m, &mc, &a, &err));
    int32_t ids[16];
    uint8_t loss[16];
    for (int t = 0; t < 16; t++) { ids[t] = t + 5; loss[t] = 1; }
    data_example ex = {.ids = ids, .loss = loss, .n = 16, .label = -1, .n_cols = 1};
    data_set ds = {0};
    ds.kind = DATA_TEXT;
    ds.ex = &ex;
    ds.n = 1;
    char parent[] = "/tmp/peft_pgr_XXXXXX", out[300];
    CHECK(mkdtemp(parent) != NULL);
    snprintf(out, sizeof out, "%s/run", parent);
    train_params tp = train_default_params();
    tp.batch = 1;
    tp.seq = 16;
    tp.steps = 1;
    tp.opt.loraplus_lr_ratio = 16;
    tp.out_dir = out;
    train_result res;
    CHECK(a && train_run(m, a, &ds, NULL, &tp, &res, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "LoRA+") && strstr(err.msg, "ia3"), "%s", err.msg);
    CHECK_MSG(access(out, F_OK) != 0, "%s was created", out);
    printf("    %s\n", err.msg);
    CHECK(test_rm_rf(parent) == 0);
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
}

int main(void) {
    TEST_RUN(groups_and_trajectories_match_hf);
    TEST_RUN(segments_follow_the_group_rules);
    TEST_RUN(one_segment_is_adamw_step_bit_for_bit);
    TEST_RUN(loraplus_resume_is_byte_identical);
    TEST_RUN(loraplus_is_refused_before_anything_is_written);
    TEST_MAIN_END();
}
