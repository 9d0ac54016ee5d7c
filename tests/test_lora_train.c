/* test_lora_train.c — LoRA training against HF peft + PyTorch
 * (tests/fixtures/lora, made by tools/make_lora_fixtures.py): the loss and
 * every LoRA gradient for a fixed batch, and a 30-step AdamW trajectory with
 * warmup + cosine, clipping and accumulation; plus a finite-difference check
 * of the whole graph through a quantized base. */
#include "peft/lora.h"
#include "test.h"
#include "train/graph.h"
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <unistd.h>

#define MFIX "tests/fixtures/models/"
#define LFIX "tests/fixtures/lora/"

typedef struct {
    const char *name, *model;
} lcase;

static const lcase cases[] = {
    {"llama_all", MFIX "tiny-llama"},
    {"llama_qv_rslora", MFIX "tiny-llama"},
    {"gpt2_all", MFIX "tiny-gpt2"},
    {"qwen2_qv", MFIX "tiny-qwen2"},
    {"qwen3_qv", MFIX "tiny-qwen3"},
    {"phi3_qkv", MFIX "tiny-phi3"},
    {"gemma2_qv", MFIX "tiny-gemma2"},
};

/* The fixture batch: rows of input_ids with labels (-100 = not a target). */
typedef struct {
    int B, T;
    int32_t *ids, *labels;
    st_archive *ref;
} fix_batch;

static int load_fix(const char *name, fix_batch *f) {
    char p[512];
    snprintf(p, sizeof p, LFIX "%s/reference.safetensors", name);
    peft_err err = {0};
    if (st_open(p, &f->ref, &err)) { fprintf(stderr, "  %s\n", err.msg); return -1; }
    const st_tensor *ids = st_find(f->ref, "input_ids"), *lab = st_find(f->ref, "labels");
    if (!ids || !lab) return -1;
    f->B = (int)ids->shape[0];
    f->T = (int)ids->shape[1];
    f->ids = (int32_t *)ids->data;
    f->labels = (int32_t *)lab->data;
    return 0;
}

/* data_batch of rows [r0, r0 + nb) with HF's shift: target of position t
 * is labels[t + 1]. Buffers are static (one batch at a time). */
static data_batch make_batch(const fix_batch *f, int r0, int nb) {
    static int32_t buf[6][4096];
    data_batch b = {nb, f->T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], 0, 0, NULL, NULL, 0};
    for (int r = 0; r < nb; r++)
        for (int t = 0; t < f->T; t++) {
            int i = r * f->T + t, src = (r0 + r) * f->T + t;
            b.inputs[i] = f->ids[src];
            b.targets[i] = t + 1 < f->T ? f->labels[src + 1] : -100;
            b.positions[i] = t;
            b.segments[i] = 0;
            b.n_targets += b.targets[i] != -100;
        }
    return b;
}

static void grads_match_peft(const lcase *c) {
    fix_batch f = {0};
    CHECK(load_fix(c->name, &f) == 0);
    if (!f.ref) return;
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, c->model);
    CHECK(m != NULL);
    adapter *a = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, LFIX "%s/adapter", c->name);
    peft_err err = {0};
    CHECK_OK(lora_load(m, dir, &a, &err));
    if (!m || !a) { fprintf(stderr, "  %s\n", err.msg); goto out; }
    train_graph *g = NULL;
    CHECK_OK(tg_new(m, a, f.B, f.T, &g, &err));
    data_batch b = make_batch(&f, 0, f.B);
    double ls = 0;
    int n = 0;
    memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
    CHECK_OK(tg_run(g, &b, true, 1.0f / (float)b.n_targets, 0, &ls, &n, &err));
    const st_tensor *ref_loss = st_find(f.ref, "loss");
    double want = ((const float *)ref_loss->data)[0], got = ls / n;
    CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "%s: loss %.7f vs peft %.7f", c->name, got, want);
    double worst = 0;
    int n_checked = 0;
    for (int i = 0; i < lora_of(a)->n_modules; i++) {
        const lora_module *mod = &lora_of(a)->mods[i];
        char path[256], key[400];
        model_linear_hf_path(m, mod->layer, mod->role, path, sizeof path);
        for (int which = 0; which < 2; which++) {
            snprintf(key, sizeof key, "base_model.model.%s.lora_%s.weight.grad", path, which ? "B" : "A");
            const st_tensor *t = st_find(f.ref, key);
            CHECK_MSG(t != NULL, "no reference for %s", key);
            if (!t) continue;
            const float *r = t->data, *gv = which ? mod->gB : mod->gA;
            int64_t cnt = st_numel(t);
            double maxref = 0, maxdiff = 0;
            for (int64_t k = 0; k < cnt; k++) {
                maxref = fmax(maxref, fabs(r[k]));
                maxdiff = fmax(maxdiff, fabs(r[k] - gv[k]));
            }
            double rel = maxdiff / (maxref > 0 ? maxref : 1);
            worst = fmax(worst, rel);
            CHECK_MSG(rel <= 1e-4, "%s: rel diff %.3g", key, rel);
            n_checked++;
        }
    }
    CHECK_EQ_INT(n_checked, 2 * lora_of(a)->n_modules);
    printf("    %-16s loss %.6f (peft %.6f), %d gradient tensors, worst rel diff %.3g\n", c->name, got, want, n_checked, worst);
    tg_free(g);
out:
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    st_close(f.ref);
}

/* Encoder classifiers (HF peft SEQ_CLS, modules_to_save classifier): the
 * padded batch's loss, logits and every gradient, the classifier's too. */
/* Every trainable tensor's gradient against "<key>.grad" of ref: each
 * within 1e-4 of its largest reference value. Returns the tensors checked;
 * *worst gets the largest relative difference. */
static int grads_match_ref(const adapter *a, const st_archive *ref, double *worst) {
    int checked = 0;
    *worst = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        char key[400];
        snprintf(key, sizeof key, "%s.grad", a->tensors[i].key);
        const st_tensor *t = st_find(ref, key);
        CHECK_MSG(t != NULL, "no reference for %s", key);
        if (!t || st_numel(t) != a->tensors[i].n) continue;
        const float *r = t->data;
        double maxref = 0, maxdiff = 0;
        for (int64_t k = 0; k < a->tensors[i].n; k++) {
            maxref = fmax(maxref, fabs(r[k]));
            maxdiff = fmax(maxdiff, fabs(r[k] - a->tensors[i].g[k]));
        }
        const double rel = maxdiff / (maxref > 0 ? maxref : 1);
        *worst = fmax(*worst, rel);
        CHECK_MSG(rel <= 1e-4, "%s: rel diff %.3g", key, rel);
        checked++;
    }
    return checked;
}

static void classifier_grads_match_peft(const char *name, const char *model) {
    char p[512];
    snprintf(p, sizeof p, LFIX "%s/reference.safetensors", name);
    st_archive *ref = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(p, &ref, &err));
    if (!ref) return;
    const st_tensor *ids = st_find(ref, "input_ids"), *mask = st_find(ref, "attention_mask"), *lab = st_find(ref, "labels"),
                    *rl = st_find(ref, "loss"), *rlg = st_find(ref, "logits");
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, model);
    adapter *a = NULL;
    snprintf(p, sizeof p, LFIX "%s/adapter", name);
    if (m) CHECK_OK(adapter_load(m, p, &a, &err));
    if (!a || !ids || !mask || !lab || !rl || !rlg) { fprintf(stderr, "  %s: %s\n", name, err.msg); goto out; }
    {
        const int B = (int)ids->shape[0], T = (int)ids->shape[1];
        static int32_t buf[6][4096];
        data_batch b = {B, T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], 0, 0, NULL, NULL, 0};
        for (int r = 0; r < B; r++) {
            int len = 0;
            for (int t = 0; t < T; t++) {
                const int i = r * T + t;
                b.inputs[i] = ((const int32_t *)ids->data)[i];
                b.targets[i] = -100;
                b.positions[i] = t;
                b.segments[i] = 0;
                len += ((const int32_t *)mask->data)[i] != 0;
            }
            b.lengths[r] = len;
            b.labels[r] = ((const int32_t *)lab->data)[r];
        }
        b.n_targets = B;
        train_graph *g = NULL;
        CHECK_OK(tg_new(m, a, B, T, &g, &err));
        double ls = 0;
        int n = 0;
        memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
        /* one row is a pair: its second text has token type 1 */
        if (g) tg_set_types(g, (const int32_t *)st_find(ref, "token_type_ids")->data);
        if (g) CHECK_OK(tg_run(g, &b, true, 1.0f / (float)B, 0, &ls, &n, &err));
        const double want = ((const float *)rl->data)[0], got = n ? ls / n : 0;
        CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "%s: loss %.7f vs peft %.7f", name, got, want);
        double lgd = g ? test_max_abs_diff(tg_class_logits(g), rlg->data, (size_t)B * 3) : INFINITY;
        CHECK_MSG(lgd <= 1e-4, "%s: logits differ by %g", name, lgd);
        double worst = 0;
        const int checked = grads_match_ref(a, ref, &worst);
        CHECK_EQ_INT(checked, a->n_tensors);
        printf("    %-16s loss %.6f (peft %.6f), logits diff %.2g, %d gradient tensors, worst rel diff %.3g\n", name, got,
               want, lgd, checked, worst);
        tg_free(g);
    }
out:
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    st_close(ref);
}

static void encoder_classifiers_match_peft(void) {
    classifier_grads_match_peft("bert_qv_cls", MFIX "tiny-bert");
    classifier_grads_match_peft("roberta_qv_cls", MFIX "tiny-roberta");
}

static void lora_loss_and_gradients_match_peft(void) {
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) grads_match_peft(&cases[i]);
}

/* ---- the 30-step trajectory through train_run ---------------------------- */

typedef struct { double loss[64], lr[64]; int n; } traj;

static void record(const train_progress *p, void *user) {
    traj *t = user;
    if (!p->is_eval && t->n < 64) { t->loss[t->n] = p->loss; t->lr[t->n] = p->lr; t->n++; }
}

static void adamw_trajectory_follows_peft(void) {
    const lcase *c = &cases[0];
    fix_batch f = {0};
    CHECK(load_fix(c->name, &f) == 0);
    if (!f.ref) return;
    char *text = NULL;
    peft_err err = {0};
    CHECK_OK(peft_read_file(LFIX "llama_all/train.json", &text, NULL, &err));
    cJSON *tj = cJSON_Parse(text);
    free(text);
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, c->model);
    adapter *a = NULL;
    CHECK_OK(lora_load(m, LFIX "llama_all/adapter", &a, &err));
    /* the two rows as a dataset: loss mask from the labels */
    data_example ex[2] = {{0}};
    data_set ds = {0};
    ds.kind = DATA_TEXT;
    ds.ex = ex;
    ds.n = 2;
    for (int r = 0; r < 2; r++) {
        ex[r].ids = f.ids + r * f.T;
        ex[r].loss = malloc((size_t)f.T);
        for (int t = 0; t < f.T; t++) ex[r].loss[t] = f.labels[r * f.T + t] != -100;
        ex[r].n = f.T;
        ex[r].label = -1;
    }
    char out[] = "/tmp/peft_traj_XXXXXX";
    CHECK(mkdtemp(out) != NULL);
    train_params p = train_default_params();
    p.batch = 1;
    p.seq = f.T;
    p.accum = 2;
    p.steps = 30;
    p.norm = LOSS_NORM_MICRO;
    p.opt.lr = 1e-3f;
    p.opt.weight_decay = 0.01f;
    p.opt.max_grad_norm = 1.0f;
    p.opt.sched = SCHED_COSINE;
    p.opt.warmup_steps = 5;
    p.out_dir = out;
    traj t = {0};
    p.progress = record;
    p.user = &t;
    train_result res;
    CHECK_OK(train_run(m, a, &ds, NULL, &p, &res, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    const cJSON *steps = cJSON_GetObjectItem(tj, "steps");
    CHECK_EQ_INT(t.n, cJSON_GetArraySize(steps));
    double worst = 0;
    for (int i = 0; i < t.n && i < cJSON_GetArraySize(steps); i++) {
        const cJSON *s = cJSON_GetArrayItem(steps, i);
        double want = cJSON_GetObjectItem(s, "loss")->valuedouble, lr = cJSON_GetObjectItem(s, "lr")->valuedouble;
        worst = fmax(worst, fabs(t.loss[i] - want));
        CHECK_MSG(fabs(t.loss[i] - want) <= 1e-3, "step %d: loss %.6f vs %.6f", i, t.loss[i], want);
        CHECK_MSG(fabs(t.lr[i] - lr) <= 1e-9 + 1e-6 * lr, "step %d: lr %g vs %g", i, t.lr[i], lr);
    }
    /* final weights vs peft's final adapter */
    adapter *fin = NULL;
    CHECK_OK(lora_load(m, LFIX "llama_all/final_adapter", &fin, &err));
    double wdiff = 0;
    if (fin && a && fin->n_params == a->n_params)
        for (int64_t k = 0; k < a->n_params; k++) wdiff = fmax(wdiff, fabs(fin->params[k] - a->params[k]));
    CHECK_MSG(wdiff <= 1e-4, "final weights differ by %g", wdiff);
    printf("    30 steps: max |loss diff| %.3g, final weights max |diff| %.3g\n", worst, wdiff);
    CHECK(test_rm_rf(out) == 0);
    for (int r = 0; r < 2; r++) free(ex[r].loss);
    adapter_free(fin);
    adapter_free(a);
    cJSON_Delete(tj);
    peft_model_free(m);
    peft_free(ctx);
    st_close(f.ref);
}

/* ---- finite differences through a quantized base --------------------------- */

static void graph_gradient_matches_finite_differences_on_q8_0(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-llama.q8_0.gguf");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    lora_config cfg = lora_default_config();
    cfg.r = 2;
    cfg.alpha = 4;
    cfg.init = LORA_INIT_GAUSSIAN;
    peft_err err = {0};
    CHECK_OK(lora_parse_targets(m, "all-linear", &cfg.targets, &err));
    adapter *a = NULL;
    CHECK_OK(lora_new(m, &cfg, &a, &err));
    if (!a) { peft_model_free(m); peft_free(ctx); return; }
    peft_rng rng;
    peft_rng_seed(&rng, 3);
    for (int64_t k = 0; k < a->n_params; k++) a->params[k] = 0.3f * peft_rng_normal(&rng); /* B != 0 */
    const int B = 2, T = 8;
    static int32_t buf[6][16];
    data_batch b = {B, T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], 0, 0, NULL, NULL, 0};
    for (int i = 0; i < B * T; i++) {
        b.inputs[i] = (int32_t)(peft_rng_u64(&rng) % 320);
        b.positions[i] = i % T;
        b.segments[i] = (i % T) >= 5; /* two packed segments in each row */
    }
    for (int i = 0; i < B * T; i++) {
        b.targets[i] = (i % T == T - 1 || i % T == 4) ? -100 : b.inputs[i + 1];
        b.n_targets += b.targets[i] != -100;
    }
    /* segment 1 restarts positions */
    for (int i = 0; i < B * T; i++) if (b.segments[i]) b.positions[i] = i % T - 5;
    train_graph *g = NULL;
    CHECK_OK(tg_new(m, a, B, T, &g, &err));
    double l0;
    int n;
    memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
    CHECK_OK(tg_run(g, &b, true, 1.0f, 0, &l0, &n, &err));
    double worst = 0;
    for (int probe = 0; probe < 40; probe++) {
        int64_t k = (int64_t)(peft_rng_u64(&rng) % (uint64_t)a->n_params);
        float save = a->params[k];
        /* fourth-order central difference: the truncation error of the
         * plain one is comparable to the tolerance at this curvature */
        const float h = 1e-2f;
        double l[4];
        const float off[4] = {2 * h, h, -h, -2 * h};
        for (int e = 0; e < 4; e++) {
            a->params[k] = save + off[e];
            tg_run(g, &b, false, 0, 0, &l[e], &n, &err);
        }
        a->params[k] = save;
        double fd = (8 * (l[1] - l[2]) - (l[0] - l[3])) / (12 * h), an = a->grads[k];
        double rel = fabs(fd - an) / fmax(1e-2, fabs(fd));
        worst = fmax(worst, rel);
    }
    CHECK_MSG(worst < 2e-2, "worst relative FD error %g", worst);
    printf("    40 probes, worst relative error vs central differences %.3g\n", worst);
    tg_free(g);
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
}

/* Contrastive: sentence-transformers' MultipleNegativesRankingLoss over a
 * mean-pooled tiny BERT with an HF peft FEATURE_EXTRACTION LoRA
 * (tools/make_contrastive_fixtures.py; anchors, positives and hard
 * negatives): the adapter (keys of the bare BertModel) loads, the scores,
 * the loss and every LoRA gradient agree; saved again, it keeps the bare
 * encoder's key spelling. */
static void contrastive_grads_match_sentence_transformers(void) {
    st_archive *ref = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(LFIX "bert_qv_mnrl/reference.safetensors", &ref, &err));
    if (!ref) return;
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, MFIX "tiny-bert");
    adapter *a = NULL;
    train_graph *g = NULL;
    if (m) CHECK_OK(adapter_load(m, LFIX "bert_qv_mnrl/adapter", &a, &err));
    if (!a) goto out;
    static const char *const cols[3] = {"anchor", "positive", "negative"};
    const st_tensor *ids[3], *mask[3];
    int nA = 0, T = 2;
    for (int c = 0; c < 3; c++) {
        char k[64];
        snprintf(k, sizeof k, "%s_input_ids", cols[c]);
        ids[c] = st_find(ref, k);
        snprintf(k, sizeof k, "%s_attention_mask", cols[c]);
        mask[c] = st_find(ref, k);
        CHECK(ids[c] && mask[c]);
        if (!ids[c] || !mask[c]) goto out;
        nA = (int)ids[c]->shape[0];
        T = T > (int)ids[c]->shape[1] ? T : (int)ids[c]->shape[1];
    }
    {
        const int B = 3 * nA;
        static int32_t buf[6][4096];
        data_batch b = {B, T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], nA, 0, NULL, NULL, 3};
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < nA; i++) {
                const int r = c * nA + i, Tc = (int)ids[c]->shape[1];
                int len = 0;
                for (int t = 0; t < T; t++) {
                    const size_t k = (size_t)r * T + t;
                    const bool in = t < Tc && ((const int32_t *)mask[c]->data)[i * Tc + t];
                    b.inputs[k] = in ? ((const int32_t *)ids[c]->data)[i * Tc + t] : 0;
                    b.targets[k] = -100;
                    b.positions[k] = t;
                    b.segments[k] = 0;
                    len += in;
                }
                b.lengths[r] = len;
                b.labels[r] = c == 0 ? i : -1;
            }
        CHECK_OK(tg_new(m, a, B, T, &g, &err));
        if (!g) goto out;
        double ls = 0;
        int n = 0;
        memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
        CHECK_OK(tg_run(g, &b, true, 1.0f / (float)nA, 0, &ls, &n, &err));
        CHECK_EQ_INT(n, nA);
        const double want = ((const float *)st_find(ref, "loss")->data)[0], got = n ? ls / n : 0;
        CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "MNRL loss %.7f vs sentence-transformers %.7f", got, want);
        CHECK_EQ_INT(tg_class_width(g), 2 * nA);
        const double sd = test_max_abs_diff(tg_class_logits(g), st_find(ref, "scores")->data, (size_t)nA * 2 * nA);
        CHECK_MSG(sd <= 1e-4, "scores differ by %g", sd);
        double worst = 0;
        const int checked = grads_match_ref(a, ref, &worst);
        CHECK_EQ_INT(checked, a->n_tensors);
        printf("    MNRL loss %.6f (sentence-transformers %.6f), scores diff %.2g, %d gradient tensors, worst rel %.3g\n",
               got, want, sd, checked, worst);
        /* saved, the keys are the bare encoder's again */
        char dir[] = "/tmp/peft_mnrl_XXXXXX";
        CHECK(mkdtemp(dir) != NULL);
        CHECK_OK(adapter_save(a, m, dir, &err));
        char path[300];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        st_archive *mine = NULL, *theirs = NULL;
        CHECK_OK(st_open(path, &mine, &err));
        CHECK_OK(st_open(LFIX "bert_qv_mnrl/adapter/adapter_model.safetensors", &theirs, &err));
        if (mine && theirs) {
            CHECK_EQ_INT(st_count(mine), st_count(theirs));
            for (int i = 0; i < st_count(theirs); i++)
                CHECK_MSG(st_find(mine, st_at(theirs, i)->name) != NULL, "saved adapter lacks %s", st_at(theirs, i)->name);
        }
        st_close(mine);
        st_close(theirs);
        snprintf(path, sizeof path, "rm -rf %s", dir);
        CHECK(system(path) == 0);
    }
out:
    tg_free(g);
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    st_close(ref);
}

int main(void) {
    TEST_RUN(lora_loss_and_gradients_match_peft);
    TEST_RUN(encoder_classifiers_match_peft);
    TEST_RUN(contrastive_grads_match_sentence_transformers);
    TEST_RUN(adamw_trajectory_follows_peft);
    TEST_RUN(graph_gradient_matches_finite_differences_on_q8_0);
    TEST_MAIN_END();
}
