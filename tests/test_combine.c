/* test_combine.c — adapter arithmetic (lora_combine, peft_adapter_combine,
 * `peft combine`) against HF peft's add_weighted_adapter on the fixtures of
 * tools/make_combine_fixtures.py (tests/fixtures/combine/README.md):
 *   - per case, the same inputs combined here give HF's tensors (linear,
 *     cat, ties, dare at density 1, magnitude_prune) or HF's deltas B·A·s
 *     (the svd types: SVD factors are unique only up to the sign of each
 *     singular pair) within 1e-4, with HF's r, lora_alpha, scale and
 *     modules, and the result saved here loads back unchanged;
 *   - the clamp of the svd types on HF's own factors gives HF's clamped ones;
 *   - the combined adapter gives HF's logits here, and loads in HF peft with
 *     our logits (skipped without the reference stack);
 *   - DARE's random masks by their properties (HF draws them with
 *     torch.bernoulli, which cannot be reproduced);
 *   - each bad input is refused with its own message, in the library and in
 *     the CLI, before anything is written. */
#include "formats/safetensors.h"
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"

#include <cjson/cJSON.h>

#define FIX "tests/fixtures/combine"

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
} loaded_model;

static loaded_model load_model(const char *path) {
    loaded_model r = {peft_init(NULL), NULL};
    if (r.ctx) r.m = peft_model_load(r.ctx, path);
    CHECK_MSG(r.m != NULL, "cannot load %s: %s", path, r.ctx ? peft_last_error(r.ctx) : "no context");
    return r;
}

static void free_model(loaded_model *r) {
    peft_model_free(r->m);
    peft_free(r->ctx);
    r->m = NULL;
    r->ctx = NULL;
}

static cJSON *read_cases(void) {
    char *text = NULL;
    peft_err err = {0};
    if (peft_read_file(FIX "/cases.json", &text, NULL, &err)) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

/* combine_opts from a case's "type" and "kw". */
static combine_opts case_opts(const cJSON *c) {
    combine_opts o = combine_default_opts();
    peft_err err = {0};
    CHECK_OK(combine_type_parse(cJSON_GetObjectItem(c, "type")->valuestring, &o.type, &err));
    const cJSON *kw = cJSON_GetObjectItem(c, "kw"), *v;
    if ((v = cJSON_GetObjectItem(kw, "density"))) o.density = v->valuedouble;
    if ((v = cJSON_GetObjectItem(kw, "svd_rank"))) o.svd_rank = v->valueint;
    if ((v = cJSON_GetObjectItem(kw, "svd_clamp"))) o.svd_clamp = v->valuedouble;
    if ((v = cJSON_GetObjectItem(kw, "majority_sign_method"))) o.sign_frequency = !strcmp(v->valuestring, "frequency");
    return o;
}

/* Loads a case's inputs (n of them into in/w) for m. */
static int load_inputs(const cJSON *c, const peft_model *m, adapter **in, double *w, int cap) {
    const cJSON *ads = cJSON_GetObjectItem(c, "adapters"), *it;
    int n = 0;
    cJSON_ArrayForEach(it, ads) {
        if (n == cap) break;
        char p[512];
        snprintf(p, sizeof p, FIX "/%s", cJSON_GetArrayItem(it, 0)->valuestring);
        w[n] = cJSON_GetArrayItem(it, 1)->valuedouble;
        peft_err err = {0};
        in[n] = NULL;
        CHECK_MSG(lora_load(m, p, &in[n], &err) == 0, "%s: %s", p, err.msg);
        if (!in[n]) return -1;
        n++;
    }
    return n;
}

/* s·B·A of a module into d (out, in). */
static void delta_of(const lora_module *md, double *d) {
    for (int o = 0; o < md->out; o++)
        for (int i = 0; i < md->in; i++) {
            double s = 0;
            for (int j = 0; j < md->r; j++) s += (double)md->B[(int64_t)o * md->r + j] * md->A[(int64_t)j * md->in + i];
            d[(int64_t)o * md->in + i] = md->scale * s;
        }
}

static double max_abs_f(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* got against want, module by module: tensors element by element, or the
 * deltas; returns the worst relative difference. */
static double compare_adapters(const adapter *got, const adapter *want, bool delta, const char *name) {
    CHECK_EQ_INT(lora_of(got)->n_modules, lora_of(want)->n_modules);
    double worst = 0;
    for (int i = 0; i < lora_of(want)->n_modules && i < lora_of(got)->n_modules; i++) {
        const lora_module *g = NULL, *wm = &lora_of(want)->mods[i];
        for (int j = 0; j < lora_of(got)->n_modules; j++)
            if (lora_of(got)->mods[j].layer == wm->layer && lora_of(got)->mods[j].role == wm->role) g = &lora_of(got)->mods[j];
        CHECK_MSG(g != NULL, "%s: no module at layer %d role %d", name, wm->layer, (int)wm->role);
        if (!g) continue;
        CHECK_EQ_INT(g->r, wm->r);
        CHECK_NEAR(g->scale, wm->scale, 1e-6 * wm->scale);
        if (g->r != wm->r) continue;
        if (!delta) {
            const int64_t na = (int64_t)wm->r * wm->in, nb = (int64_t)wm->out * wm->r;
            const double sa = fmax(1e-12, max_abs_f(wm->A, na)), sb = fmax(1e-12, max_abs_f(wm->B, nb));
            worst = fmax(worst, test_max_abs_diff(g->A, wm->A, (size_t)na) / sa);
            worst = fmax(worst, test_max_abs_diff(g->B, wm->B, (size_t)nb) / sb);
        } else {
            const int64_t ne = (int64_t)wm->out * wm->in;
            double *dg = malloc((size_t)ne * sizeof *dg), *dw = malloc((size_t)ne * sizeof *dw);
            delta_of(g, dg);
            delta_of(wm, dw);
            double md = 0, mw = 1e-12;
            for (int64_t e = 0; e < ne; e++) {
                md = fmax(md, fabs(dg[e] - dw[e]));
                mw = fmax(mw, fabs(dw[e]));
            }
            worst = fmax(worst, md / mw);
            free(dg);
            free(dw);
        }
    }
    return worst;
}

/* Every case but svd_clamp (whose clamp depends on the SVD's signs: see
 * clamp_matches_hf_on_hf_factors): HF's tensors or deltas, config and
 * modules; the result saved and loaded back is the same adapter. */
static void combine_matches_hf_peft(void) {
    cJSON *cases = read_cases();
    if (!cases) TEST_FAIL("cannot read " FIX "/cases.json");
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        if (!strcmp(name, "svd_clamp")) continue;
        loaded_model lm = load_model(cJSON_GetObjectItem(c, "model")->valuestring);
        if (!lm.m) continue;
        adapter *in[8] = {0}, *got = NULL, *want = NULL, *back = NULL;
        double w[8];
        const int n = load_inputs(c, lm.m, in, w, 8);
        combine_opts o = case_opts(c);
        peft_err err = {0};
        char p[512];
        snprintf(p, sizeof p, FIX "/cases/%s", name);
        CHECK_MSG(lora_load(lm.m, p, &want, &err) == 0, "%s: %s", p, err.msg);
        if (n > 0 && want) {
            int rc = lora_combine(lm.m, (const adapter *const *)in, w, n, NULL, &o, &got, &err);
            CHECK_MSG(rc == 0, "%s: %s", name, err.msg);
            if (got) {
                const bool delta = !strcmp(cJSON_GetObjectItem(c, "compare")->valuestring, "delta");
                const double worst = compare_adapters(got, want, delta, name);
                CHECK_MSG(worst <= 1e-4, "%s: worst relative difference %g", name, worst);
                printf("    %-22s %-20s %s max rel diff vs HF peft %.2g\n", name,
                       cJSON_GetObjectItem(c, "type")->valuestring, delta ? "delta  " : "tensors", worst);
                CHECK_EQ_INT(lora_of(got)->cfg.r, lora_of(want)->cfg.r);
                CHECK_NEAR(lora_of(got)->cfg.alpha, lora_of(want)->cfg.alpha, 0);
                CHECK_EQ_INT(lora_of(got)->cfg.rslora, lora_of(want)->cfg.rslora);
                CHECK_EQ_INT(lora_of(got)->cfg.targets, lora_of(want)->cfg.targets);
                CHECK_NEAR(lora_of(got)->mods[0].scale, cJSON_GetObjectItem(c, "scaling")->valuedouble, 1e-6);
                CHECK_MSG(got->base_model && want->base_model && !strcmp(got->base_model, want->base_model),
                          "%s: base %s vs %s", name, got->base_model ? got->base_model : "(null)",
                          want->base_model ? want->base_model : "(null)");
                char dir[] = "/tmp/peft_combine_XXXXXX";
                CHECK(mkdtemp(dir) != NULL);
                snprintf(p, sizeof p, "%s/out", dir);
                CHECK_OK(adapter_save(got, lm.m, p, &err));
                CHECK_MSG(lora_load(lm.m, p, &back, &err) == 0, "%s reloaded: %s", name, err.msg);
                if (back) {
                    CHECK_EQ_INT(back->n_params, got->n_params);
                    if (back->n_params == got->n_params)
                        CHECK(test_max_abs_diff(back->params, got->params, (size_t)got->n_params) == 0);
                    CHECK_EQ_INT(lora_of(back)->cfg.r, lora_of(got)->cfg.r);
                    CHECK_NEAR(lora_of(back)->mods[0].scale, lora_of(got)->mods[0].scale, 0);
                }
                CHECK(test_rm_rf(dir) == 0);
                n_cases++;
            }
        }
        adapter_free(back);
        adapter_free(got);
        adapter_free(want);
        for (int i = 0; i < 8; i++) adapter_free(in[i]);
        free_model(&lm);
    }
    cJSON_Delete(cases);
    CHECK_MSG(n_cases >= 18, "only %d cases ran", n_cases);
}

/* svd_clamp: HF's unclamped factors (svd_clamp_unclamped: same inputs and
 * rank) clamped here give HF's clamped ones; and here, the clamped result is
 * the unclamped one clamped (the same factors, so the same signs). */
static void clamp_matches_hf_on_hf_factors(void) {
    loaded_model lm = load_model("tests/fixtures/models/tiny-llama");
    if (!lm.m) return;
    adapter *un = NULL, *cl = NULL;
    peft_err err = {0};
    CHECK_OK(lora_load(lm.m, FIX "/cases/svd_clamp_unclamped", &un, &err));
    CHECK_OK(lora_load(lm.m, FIX "/cases/svd_clamp", &cl, &err));
    if (un && cl) {
        CHECK_EQ_INT(lora_of(un)->n_modules, lora_of(cl)->n_modules);
        double worst = 0;
        for (int i = 0; i < lora_of(un)->n_modules && i < lora_of(cl)->n_modules; i++) {
            lora_module *u = &lora_of(un)->mods[i];
            const int64_t na = (int64_t)u->r * u->in, nb = (int64_t)u->out * u->r;
            CHECK_OK(combine_clamp_factors(u->A, na, u->B, nb, 0.9, &err));
            worst = fmax(worst, test_max_abs_diff(u->A, lora_of(cl)->mods[i].A, (size_t)na));
            worst = fmax(worst, test_max_abs_diff(u->B, lora_of(cl)->mods[i].B, (size_t)nb));
        }
        CHECK_MSG(worst <= 1e-6, "clamp on HF's factors: max |diff| %g", worst);
        printf("    clamp(0.9) of HF's factors vs HF's clamped factors: max |diff| %.2g\n", worst);
    }
    /* the pipeline: clamp(q) of our unclamped result is our clamped result */
    adapter *in[2] = {0}, *r0 = NULL, *r1 = NULL;
    CHECK_OK(lora_load(lm.m, FIX "/inputs/a_qv_r4", &in[0], &err));
    CHECK_OK(lora_load(lm.m, FIX "/inputs/b_qvo_r4", &in[1], &err));
    const double w[2] = {0.9, 0.3};
    combine_opts o = combine_default_opts();
    o.svd_rank = 3;
    if (in[0] && in[1]) {
        CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w, 2, NULL, &o, &r0, &err));
        o.svd_clamp = 0.9;
        CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w, 2, NULL, &o, &r1, &err));
    }
    if (r0 && r1) {
        bool clamped_some = false;
        for (int i = 0; i < lora_of(r0)->n_modules; i++) {
            lora_module *u = &lora_of(r0)->mods[i];
            const int64_t na = (int64_t)u->r * u->in, nb = (int64_t)u->out * u->r;
            float *a0 = malloc((size_t)na * sizeof(float));
            memcpy(a0, u->A, (size_t)na * sizeof(float));
            CHECK_OK(combine_clamp_factors(u->A, na, u->B, nb, 0.9, &err));
            clamped_some |= test_max_abs_diff(a0, u->A, (size_t)na) > 0;
            CHECK(test_max_abs_diff(u->A, lora_of(r1)->mods[i].A, (size_t)na) == 0);
            CHECK(test_max_abs_diff(u->B, lora_of(r1)->mods[i].B, (size_t)nb) == 0);
            free(a0);
        }
        CHECK_MSG(clamped_some, "the 0.9 quantile clamped nothing");
    }
    adapter_free(r0);
    adapter_free(r1);
    adapter_free(in[0]);
    adapter_free(in[1]);
    adapter_free(un);
    adapter_free(cl);
    free_model(&lm);
}

static const cJSON *find_case(const cJSON *cases, const char *name) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) if (!strcmp(cJSON_GetObjectItem(c, "name")->valuestring, name)) return c;
    return NULL;
}

static int python_ok(void) {
    return system("python3 -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1") == 0;
}

/* The adapters combined here give HF's logits (fixture logits.safetensors,
 * HF's combined adapter active); saved, they load in HF peft with our
 * logits (tools/check_interop.py). */
static void combined_adapter_gives_hf_logits_both_ways(void) {
    static const char *const names[] = {"svd", "cat_union", "gpt2_svd"};
    cJSON *cases = read_cases();
    if (!cases) TEST_FAIL("cannot read " FIX "/cases.json");
    st_archive *ref = NULL;
    peft_err err = {0};
    CHECK_OK(st_open(FIX "/logits.safetensors", &ref, &err));
    const st_tensor *ids = ref ? st_find(ref, "input_ids") : NULL;
    CHECK(ids != NULL);
    char dir[] = "/tmp/peft_combine_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char list[600];
    snprintf(list, sizeof list, "%s/cases.txt", dir);
    FILE *lf = fopen(list, "w");
    CHECK(lf != NULL);
    int n_listed = 0;
    for (int k = 0; k < 3 && ids && lf; k++) {
        const cJSON *c = find_case(cases, names[k]);
        const st_tensor *lg = st_find(ref, names[k]);
        CHECK_MSG(c && lg, "case %s or its logits missing", names[k]);
        if (!c || !lg) continue;
        const char *model = cJSON_GetObjectItem(c, "model")->valuestring;
        loaded_model lm = load_model(model);
        adapter *in[8] = {0}, *got = NULL;
        double w[8];
        const int n = lm.m ? load_inputs(c, lm.m, in, w, 8) : -1;
        combine_opts o = case_opts(c);
        if (n > 0) CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w, n, NULL, &o, &got, &err));
        if (got) {
            const int T = (int)ids->shape[1], V = lm.m->cfg.vocab;
            float *out = malloc(sizeof(float) * (size_t)T * V);
            lm.m->attached = got;
            CHECK_OK(peft_model_logits(lm.m, (const int32_t *)ids->data, T, out));
            lm.m->attached = NULL;
            const double d = test_max_abs_diff(out, (const float *)lg->data, (size_t)T * V);
            CHECK_MSG(d <= 1e-4, "%s: logits with our combined adapter vs HF's: max |diff| %g", names[k], d);
            printf("    %-10s logits here vs HF peft's combined adapter: max |diff| %.2g\n", names[k], d);
            char ad[700], lp[700];
            snprintf(ad, sizeof ad, "%s/%s", dir, names[k]);
            snprintf(lp, sizeof lp, "%s/%s.safetensors", dir, names[k]);
            CHECK_OK(adapter_save(got, lm.m, ad, &err));
            st_write_tensor ts[2] = {{"input_ids", PEFT_DT_I32, 2, {1, T}, ids->data},
                                     {"logits", PEFT_DT_F32, 3, {1, T, V}, out}};
            CHECK_OK(st_write(lp, ts, 2, NULL, &err));
            fprintf(lf, "%s %s %s\n", model, ad, lp);
            n_listed++;
            free(out);
        }
        adapter_free(got);
        for (int i = 0; i < 8; i++) adapter_free(in[i]);
        free_model(&lm);
    }
    if (lf) fclose(lf);
    st_close(ref);
    cJSON_Delete(cases);
    if (!python_ok()) {
        test_rm_rf(dir);
        TEST_SKIP("python3 with torch, transformers, peft and safetensors is not installed: the HF side of the check");
    }
    char cmd[1024];
    static char out[1 << 14];
    snprintf(cmd, sizeof cmd, "python3 tools/check_interop.py --cases %s 2>/dev/null", list);
    const int st = test_run_shell(cmd, out, sizeof out);
    printf("%s", out);
    CHECK_MSG(st == 0, "check_interop.py exited %d", st);
    int ok = 0;
    for (const char *p = out; (p = strstr(p, " ok")); p++) ok++;
    CHECK_MSG(ok >= n_listed && n_listed == 3, "%d of %d cases ok in HF peft", ok, n_listed);
    CHECK(test_rm_rf(dir) == 0);
}

/* DARE's masks: each value of A' is 0 or the rescaled input value; about
 * density of them are kept; the same seed gives the same adapter, another
 * seed another one; density 1 is the undropped type exactly. */
static void dare_masks_have_the_documented_law(void) {
    loaded_model lm = load_model("tests/fixtures/models/tiny-llama");
    if (!lm.m) return;
    adapter *in[2] = {0};
    peft_err err = {0};
    CHECK_OK(lora_load(lm.m, FIX "/inputs/a_qv_r4", &in[0], &err));
    CHECK_OK(lora_load(lm.m, FIX "/inputs/b_qvo_r4", &in[1], &err));
    if (!in[0] || !in[1]) { adapter_free(in[0]); adapter_free(in[1]); free_model(&lm); return; }
    /* weight 0 on the second: A' = sqrt(w·s)·mask·A_a / d wherever a has a module */
    const double w[2] = {0.5, 0.0};
    const double d = 0.3;
    combine_opts o = combine_default_opts();
    o.type = COMBINE_DARE_LINEAR;
    o.density = d;
    o.seed = 7;
    adapter *r1 = NULL, *r2 = NULL, *r3 = NULL;
    CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w, 2, NULL, &o, &r1, &err));
    CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w, 2, NULL, &o, &r2, &err));
    o.seed = 8;
    CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w, 2, NULL, &o, &r3, &err));
    if (r1 && r2 && r3) {
        CHECK(r1->n_params == r2->n_params && test_max_abs_diff(r1->params, r2->params, (size_t)r1->n_params) == 0);
        CHECK(test_max_abs_diff(r1->params, r3->params, (size_t)r1->n_params) > 0);
        int64_t kept = 0, total = 0, bad = 0;
        for (int i = 0; i < lora_of(in[0])->n_modules; i++) {
            const lora_module *a = &lora_of(in[0])->mods[i], *g = NULL;
            for (int j = 0; j < lora_of(r1)->n_modules; j++)
                if (lora_of(r1)->mods[j].layer == a->layer && lora_of(r1)->mods[j].role == a->role) g = &lora_of(r1)->mods[j];
            if (!g) { CHECK(g != NULL); continue; }
            const float f = (float)sqrt(w[0] * a->scale);
            for (int64_t e = 0; e < (int64_t)a->r * a->in; e++) {
                total++;
                if (g->A[e] == 0) continue;
                kept++;
                const float want = (a->A[e] / (float)d) * f;
                bad += fabsf(g->A[e] - want) > 1e-6f * fabsf(want);
            }
        }
        const double frac = (double)kept / (double)total, sd = sqrt(d * (1 - d) / (double)total);
        CHECK_MSG(bad == 0, "%lld kept values are not A/density (times the weight)", (long long)bad);
        CHECK_MSG(fabs(frac - d) <= 5 * sd, "kept %.4f of %lld values, density %.2f", frac, (long long)total, d);
        printf("    dare_linear density %.2f: kept %.4f of %lld values (5 sigma: %.4f)\n", d, frac, (long long)total, 5 * sd);
    }
    /* density 1: DARE is the type without dropping, bit for bit */
    static const combine_type pairs[][2] = {{COMBINE_DARE_LINEAR, COMBINE_LINEAR},
                                            {COMBINE_DARE_TIES, COMBINE_TIES},
                                            {COMBINE_DARE_LINEAR_SVD, COMBINE_SVD},
                                            {COMBINE_DARE_TIES_SVD, COMBINE_TIES_SVD}};
    const double w2[2] = {0.7, -0.3};
    for (int k = 0; k < 4; k++) {
        adapter *x = NULL, *y = NULL;
        combine_opts a = combine_default_opts(), b = combine_default_opts();
        a.type = pairs[k][0];
        b.type = pairs[k][1];
        a.density = b.density = 1.0;
        CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w2, 2, NULL, &a, &x, &err));
        CHECK_OK(lora_combine(lm.m, (const adapter *const *)in, w2, 2, NULL, &b, &y, &err));
        CHECK_MSG(x && y && x->n_params == y->n_params &&
                      test_max_abs_diff(x->params, y->params, (size_t)x->n_params) == 0,
                  "%s at density 1 differs from %s", combine_type_name(pairs[k][0]), combine_type_name(pairs[k][1]));
        adapter_free(x);
        adapter_free(y);
    }
    adapter_free(r1);
    adapter_free(r2);
    adapter_free(r3);
    adapter_free(in[0]);
    adapter_free(in[1]);
    free_model(&lm);
}

/* A fresh adapter of method (lora: q_proj,v_proj or targets, on layers)
 * with random weights, saved to dir; NULL-safe. */
static adapter *make_adapter(const peft_model *m, const char *method, const char *targets, uint64_t layers, int r,
                             const char *dir) {
    peft_err err = {0};
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.ops = method_find(method);
    CHECK_MSG(mc.ops != NULL, "no method %s", method);
    mc.r = r;
    mc.alpha = 16;
    mc.layers = layers;
    if (targets) CHECK_OK(lora_parse_targets(m, targets, &mc.targets, &err));
    mc.seed = 5;
    adapter *a = NULL;
    CHECK_MSG(adapter_new(m, &mc, &a, &err) == 0, "%s: %s", method, err.msg);
    if (!a) return NULL;
    peft_rng rng;
    peft_rng_seed(&rng, 11);
    for (int64_t i = 0; i < a->n_params; i++) a->params[i] += 0.1f * peft_rng_normal(&rng);
    if (dir) CHECK_MSG(adapter_save(a, m, dir, &err) == 0, "%s: %s", dir, err.msg);
    return a;
}

/* lora_combine fails with msg (a substring of the error), producing nothing. */
static void expect_refused(const peft_model *m, adapter **in, const double *w, int n, const combine_opts *o,
                           const char *msg, const char *what) {
    peft_err err = {0};
    adapter *out = (adapter *)1;
    const int rc = lora_combine(m, (const adapter *const *)in, w, n, NULL, o, &out, &err);
    CHECK_MSG(rc < 0, "%s: accepted", what);
    CHECK_MSG(out == NULL, "%s: an adapter came back", what);
    CHECK_MSG(strstr(err.msg, msg) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err.msg, msg);
    if (rc < 0) printf("    %-34s -> %s\n", what, err.msg);
    if (rc == 0 && out != (adapter *)1) adapter_free(out);
}

static void bad_inputs_are_refused(void) {
    loaded_model lm = load_model("tests/fixtures/models/tiny-llama");
    if (!lm.m) return;
    peft_err err = {0};
    adapter *a = NULL, *b = NULL, *c = NULL;
    CHECK_OK(lora_load(lm.m, FIX "/inputs/a_qv_r4", &a, &err));
    CHECK_OK(lora_load(lm.m, FIX "/inputs/b_qvo_r4", &b, &err));
    CHECK_OK(lora_load(lm.m, FIX "/inputs/c_qv_r8_rslora", &c, &err));
    adapter *ia3 = make_adapter(lm.m, "ia3", NULL, 0, 4, NULL);
    adapter *dora = make_adapter(lm.m, "dora", "q_proj,v_proj", 0, 4, NULL);
    adapter *l1 = make_adapter(lm.m, "lora", "q_proj", 2u, 4, NULL);        /* layer 1 only */
    adapter *l1o = make_adapter(lm.m, "lora", "o_proj", 2u, 4, NULL);       /* o_proj on layer 1 only */
    if (a && b && c && ia3 && dora && l1 && l1o) {
        const double w[2] = {0.5, 0.5};
        combine_opts o = combine_default_opts();
        adapter *p[2];
        p[0] = a; p[1] = ia3;
        expect_refused(lm.m, p, w, 2, &o, "is an adapter of method ia3; only LoRA adapters combine", "LoRA + IA3");
        p[1] = dora;
        expect_refused(lm.m, p, w, 2, &o, "DoRA adapter", "LoRA + DoRA");
        p[0] = dora; p[1] = a;
        expect_refused(lm.m, p, w, 1, &o, "DoRA adapter", "DoRA alone");
        char *saved = b->base_model;
        b->base_model = "some/other-model";
        p[0] = a; p[1] = b;
        expect_refused(lm.m, p, w, 2, &o, "adapters of different bases do not combine", "different bases");
        /* the same folder by another path is the same base */
        char abs[4096];
        CHECK(realpath("tests/fixtures/models/tiny-llama", abs) != NULL);
        b->base_model = abs;
        adapter *same = NULL;
        CHECK_MSG(lora_combine(lm.m, (const adapter *const *)p, w, 2, NULL, &o, &same, &err) == 0, "%s", err.msg);
        adapter_free(same);
        b->base_model = saved;
        o.type = COMBINE_LINEAR;
        p[1] = c;
        expect_refused(lm.m, p, w, 2, &o, "needs adapters of one rank", "linear, r 4 + r 8");
        o.type = COMBINE_TIES;
        o.density = 0.5;
        expect_refused(lm.m, p, w, 2, &o, "needs adapters of one rank", "ties, r 4 + r 8");
        o.density = 0;
        p[1] = b;
        expect_refused(lm.m, p, w, 2, &o, "ties needs a density", "ties without a density");
        o.density = 1.5;
        expect_refused(lm.m, p, w, 2, &o, "density must be in (0, 1]", "density 1.5");
        o.density = NAN;
        expect_refused(lm.m, p, w, 2, &o, "density must be in (0, 1]", "density NaN");
        o.density = -0.1;
        o.type = COMBINE_DARE_LINEAR;
        expect_refused(lm.m, p, w, 2, &o, "density must be in (0, 1]", "density -0.1");
        o = combine_default_opts();
        const double wn[2] = {0.5, NAN}, wi[2] = {INFINITY, 1};
        expect_refused(lm.m, p, wn, 2, &o, "not a finite number", "weight NaN");
        expect_refused(lm.m, p, wi, 2, &o, "not a finite number", "weight inf");
        o.svd_rank = 33;   /* v_proj is 32 x 64 */
        expect_refused(lm.m, p, w, 2, &o, "svd rank 33 is larger than", "svd rank 33 on a 32-row v_proj");
        o.svd_rank = -1;
        expect_refused(lm.m, p, w, 2, &o, "svd rank must be in", "svd rank -1");
        o.svd_rank = 0;
        o.svd_clamp = 1.5;
        expect_refused(lm.m, p, w, 2, &o, "svd clamp must be a quantile", "svd clamp 1.5");
        o.svd_clamp = -1;
        o.type = COMBINE_CAT;
        p[0] = l1; p[1] = a;   /* the result takes l1's layer 1: a's layer-0 modules would be dropped */
        expect_refused(lm.m, p, w, 2, &o, "which is not on the layers of", "first adapter on fewer layers");
        p[0] = a; p[1] = l1o;  /* o_proj joins the targets on every layer, layer 0 has no source */
        expect_refused(lm.m, p, w, 2, &o, "but no input adapter has a module there", "a target no input covers");
        expect_refused(lm.m, p, w, 0, &o, "no adapters given", "no adapters");
        /* and the public API says the same through peft_last_error */
        peft_combine_params pp = peft_combine_default_params();
        pp.type = "tie";
        const peft_adapter *pa[2] = {(const peft_adapter *)a, (const peft_adapter *)b};
        CHECK(peft_adapter_combine(lm.m, pa, w, 2, &pp) == NULL);
        CHECK_MSG(strstr(peft_last_error(lm.ctx), "unknown combination type \"tie\"") != NULL, "%s",
                  peft_last_error(lm.ctx));
        pp.type = "ties";
        pp.density = 0.5;
        pp.majority_sign = "most";
        CHECK(peft_adapter_combine(lm.m, pa, w, 2, &pp) == NULL);
        CHECK(strstr(peft_last_error(lm.ctx), "majority sign method \"most\"") != NULL);
        pp.majority_sign = "frequency";
        peft_adapter *ok = peft_adapter_combine(lm.m, pa, w, 2, &pp);
        CHECK_MSG(ok != NULL, "%s", peft_last_error(lm.ctx));
        peft_adapter_free(ok);
    }
    adapter_free(a);
    adapter_free(b);
    adapter_free(c);
    adapter_free(ia3);
    adapter_free(dora);
    adapter_free(l1);
    adapter_free(l1o);
    free_model(&lm);
}

/* `peft combine`: one case gives HF's delta; each bad input its own message
 * and exit code, with nothing written. */
static void cli_combines_and_refuses_bad_input(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI is not set (run through ctest)");
    char dir[] = "/tmp/peft_combine_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    static char out[1 << 14];
    char args[4096], res[600];
    const char *I = FIX "/inputs";
    snprintf(res, sizeof res, "%s/res", dir);
    snprintf(args, sizeof args,
             "combine --model tests/fixtures/models/tiny-llama --adapter %s/a_qv_r4:1.0 --adapter %s/b_qvo_r4:0.5 "
             "--adapter %s/c_qv_r8_rslora:-0.8 --type svd --svd-rank 6 --out %s", I, I, I, res);
    int st = test_run_cli(args, out, sizeof out);
    CHECK_MSG(st == 0, "exit %d: %s", st, out);
    CHECK(strstr(out, "combined 3 adapters (svd)") != NULL);
    loaded_model lm = load_model("tests/fixtures/models/tiny-llama");
    adapter *got = NULL, *want = NULL;
    peft_err err = {0};
    if (lm.m && st == 0) {
        CHECK_OK(lora_load(lm.m, res, &got, &err));
        CHECK_OK(lora_load(lm.m, FIX "/cases/svd", &want, &err));
        if (got && want) {
            const double worst = compare_adapters(got, want, true, "cli svd");
            CHECK_MSG(worst <= 1e-4, "CLI svd: worst relative delta difference %g", worst);
        }
    }
    /* the base defaults to the first adapter's base_model_name_or_path */
    snprintf(args, sizeof args, "combine --adapter %s/a_qv_r4:1 --adapter %s/b_qvo_r4:1 --type cat --out %s/cat", I, I, dir);
    st = test_run_cli(args, out, sizeof out);
    CHECK_MSG(st == 0 && strstr(out, "r = 8"), "exit %d: %s", st, out);

    char ia3[600], dora[600];
    snprintf(ia3, sizeof ia3, "%s/ia3", dir);
    snprintf(dora, sizeof dora, "%s/dora", dir);
    if (lm.m) {
        adapter_free(make_adapter(lm.m, "ia3", NULL, 0, 4, ia3));
        adapter_free(make_adapter(lm.m, "dora", "q_proj,v_proj", 0, 4, dora));
    }
    struct {
        const char *adapters, *opts, *msg;
        int code;
    } bad[] = {
        {"A:abc", "", "the weight \"abc\" is not a number", 2},
        {"A:nan", "", "the weight \"nan\" is not a finite number", 2},
        {"A:inf", "", "the weight \"inf\" is not a finite number", 2},
        {"A:1e999", "", "the weight \"1e999\" is out of range", 2},
        {"A:", "", "the weight after ':' is missing", 2},
        {"A", "", "expected DIR:WEIGHT", 2},
        {":0.5", "", "the folder before ':' is missing", 2},
        {"A:1", "--svd-rank 0", "--svd-rank must be an integer in [1, 65536], got \"0\"", 2},
        {"A:1", "--svd-rank -3", "--svd-rank must be an integer in [1, 65536]", 2},
        {"A:1", "--density 0", "--density must be a number in (0, 1], got \"0\"", 2},
        {"A:1", "--density 1.5", "--density must be a number in (0, 1], got \"1.5\"", 2},
        {"A:1", "--density abc", "--density must be a number in (0, 1]", 2},
        {"A:1", "--svd-clamp 2", "--svd-clamp must be a quantile in [0, 1]", 2},
        {"A:1", "--type sum", "unknown combination type \"sum\"", 2},
        {"A:1", "--majority-sign-method most", "--majority-sign-method must be total or frequency", 2},
        {"A:1 --adapter B:1", "--type ties", "peft combine: ties needs a density in (0, 1]", 1},
        {"A:1 --adapter C:1", "--type linear", "linear needs adapters of one rank", 1},
        {"A:1 --adapter IA3:1", "--type svd", "is an adapter of method ia3; only LoRA adapters combine", 1},
        {"A:1 --adapter DORA:1", "--type cat", "is a DoRA adapter", 1},
        {"A:1", "--out A", "is the input adapter", 2},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        /* A, B, C, IA3, DORA stand for the folders */
        char ads[2048] = "", tmp[2048];
        snprintf(tmp, sizeof tmp, "%s", bad[k].adapters);
        for (char *t = strtok(tmp, " "); t; t = strtok(NULL, " ")) {
            char one[700];
            if (!strcmp(t, "--adapter")) continue;
            const char *col = strrchr(t, ':');
            const size_t nlen = col ? (size_t)(col - t) : strlen(t);
            const char *path = NULL;
            if (nlen == 1 && t[0] == 'A') path = FIX "/inputs/a_qv_r4";
            else if (nlen == 1 && t[0] == 'B') path = FIX "/inputs/b_qvo_r4";
            else if (nlen == 1 && t[0] == 'C') path = FIX "/inputs/c_qv_r8_rslora";
            else if (nlen == 3 && !strncmp(t, "IA3", 3)) path = ia3;
            else if (nlen == 4 && !strncmp(t, "DORA", 4)) path = dora;
            snprintf(one, sizeof one, " --adapter %s%s", path ? path : "", path ? (col ? col : "") : t);
            strncat(ads, one, sizeof ads - strlen(ads) - 1);
        }
        char opts[700];
        if (!strcmp(bad[k].opts, "--out A")) snprintf(opts, sizeof opts, "--out " FIX "/inputs/a_qv_r4/");
        else snprintf(opts, sizeof opts, "%s --out %s/bad%zu", bad[k].opts, dir, k);
        snprintf(args, sizeof args, "combine --model tests/fixtures/models/tiny-llama%s %s", ads, opts);
        st = test_run_cli(args, out, sizeof out);
        CHECK_MSG(st == bad[k].code && strstr(out, bad[k].msg), "%s %s: exit %d, wanted %d and \"%s\": %s",
                  bad[k].adapters, bad[k].opts, st, bad[k].code, bad[k].msg, out);
        char p[700];
        snprintf(p, sizeof p, "%s/bad%zu", dir, k);
        CHECK_MSG(access(p, F_OK) != 0, "%s was written for a refused input", p);
        char *nl = strchr(out, '\n');
        if (nl) *nl = 0;
        printf("    %-36s -> %s\n", bad[k].adapters[0] ? bad[k].adapters : "(none)", out);
    }
    /* the input the --out check protected is intact */
    adapter *a = NULL;
    if (lm.m) CHECK_OK(lora_load(lm.m, FIX "/inputs/a_qv_r4", &a, &err));
    adapter_free(a);
    adapter_free(got);
    adapter_free(want);
    free_model(&lm);
    CHECK(test_rm_rf(dir) == 0);
}

int main(void) {
    TEST_RUN(combine_matches_hf_peft);
    TEST_RUN(clamp_matches_hf_on_hf_factors);
    TEST_RUN(combined_adapter_gives_hf_logits_both_ways);
    TEST_RUN(dare_masks_have_the_documented_law);
    TEST_RUN(bad_inputs_are_refused);
    TEST_RUN(cli_combines_and_refuses_bad_input);
    TEST_MAIN_END();
}
