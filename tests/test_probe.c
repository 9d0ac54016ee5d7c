/* test_probe.c — `peft probe` and the per-module LoRA settings its
 * proposals use:
 *   - the probe's weight gradients and their singular values equal torch
 *     autograd's and numpy's (tests/fixtures/probe, made by
 *     tools/make_probe_fixtures.py) on tiny-llama and tiny-gpt2, over two
 *     batches accumulated;
 *   - finite differences: moving the weight along the top singular pair
 *     changes the loss at rate σ_1 (the measure's first-order claim);
 *   - the proposal stays within its budget, and its config trains with
 *     `peft train --config` into an adapter with those ranks and alphas;
 *   - LoRA with rank_pattern / alpha_pattern / target_modules by name
 *     saves, loads back, and loads in HF peft with our logits;
 *   - the CLI's bad input (budget, data, ranks, model): one line each,
 *     before anything is measured. */
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"
#include "train/graph.h"
#include "train/probe.h"

#include <cjson/cJSON.h>

#define MFIX "tests/fixtures/models/"
#define PFIX "tests/fixtures/probe/"

typedef struct {
    int B, T;
    const int32_t *ids, *labels;
    st_archive *ref;
} fixture;

static int load_fixture(const char *model, fixture *f) {
    char p[512];
    snprintf(p, sizeof p, PFIX "%s/reference.safetensors", model);
    peft_err err = {0};
    if (st_open(p, &f->ref, &err)) { fprintf(stderr, "  %s\n", err.msg); return -1; }
    const st_tensor *ids = st_find(f->ref, "input_ids"), *lab = st_find(f->ref, "labels");
    if (!ids || !lab) return -1;
    f->B = (int)ids->shape[0];
    f->T = (int)ids->shape[1];
    f->ids = (const int32_t *)ids->data;
    f->labels = (const int32_t *)lab->data;
    return 0;
}

/* rows [r0, r0 + nb) as a batch with HF's shift (the target of position t
 * is labels[t + 1]); buffers in bufs (6 x nb·T) */
static data_batch make_batch(const fixture *f, int r0, int nb, int32_t *bufs) {
    const int N = nb * f->T;
    data_batch b = {nb, f->T, bufs, bufs + N, bufs + 2 * N, bufs + 3 * N, bufs + 4 * N, bufs + 5 * N, 0, 0, NULL, NULL, 0};
    for (int r = 0; r < nb; r++) {
        b.labels[r] = -1;
        b.lengths[r] = f->T;
        for (int t = 0; t < f->T; t++) {
            const int i = r * f->T + t, src = (r0 + r) * f->T + t;
            b.inputs[i] = f->ids[src];
            b.targets[i] = t + 1 < f->T ? f->labels[src + 1] : -100;
            b.positions[i] = t;
            b.segments[i] = 0;
            b.n_targets += b.targets[i] != -100;
        }
    }
    return b;
}

static peft_model *load_model(const char *name, peft_ctx **ctx) {
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    *ctx = peft_init(&cp);
    char p[512];
    snprintf(p, sizeof p, MFIX "%s", name);
    peft_model *m = peft_model_load(*ctx, p);
    CHECK_MSG(m != NULL, "%s: %s", p, peft_last_error(*ctx));
    return m;
}

/* The probe adapter over every linear, run on the fixture's rows as two
 * batches of two: the accumulation across batches is part of what is
 * checked. */
static adapter *probe_fixture(peft_model *m, const fixture *f) {
    peft_err err = {0};
    adapter *a = NULL;
    CHECK_OK(probe_adapter_new(m, 0, 0, 0, 42, 0, &a, &err));
    if (!a) { fprintf(stderr, "  %s\n", err.msg); return NULL; }
    train_graph *g = NULL;
    CHECK_OK(tg_new(m, a, 2, f->T, &g, &err));
    static int32_t bufs[6 * 2 * 64];
    for (int r0 = 0; r0 < f->B && g; r0 += 2) {
        data_batch b = make_batch(f, r0, 2, bufs);
        CHECK_OK(probe_batch(g, a, &b, &err));
    }
    tg_free(g);
    CHECK_OK(probe_finish(a, &err));
    return a;
}

static void gradients_match_torch(const char *model) {
    fixture f = {0};
    CHECK(load_fixture(model, &f) == 0);
    if (!f.ref) return;
    peft_ctx *ctx;
    peft_model *m = load_model(model, &ctx);
    adapter *a = m ? probe_fixture(m, &f) : NULL;
    const probe_state *st = probe_of(a);
    CHECK(st != NULL);
    if (st) {
        const st_tensor *lt = st_find(f.ref, "loss");
        CHECK_NEAR(st->loss_sum / (double)st->n_targets, ((const float *)lt->data)[0], 2e-5);
        int n_checked = 0;
        for (int i = 0; i < st->n_modules; i++) {
            const probe_module *md = &st->mods[i];
            char path[256], key[300];
            CHECK_OK(model_linear_hf_path(m, md->layer, md->role, path, sizeof path));
            snprintf(key, sizeof key, "%s.grad", path);
            const st_tensor *g = st_find(f.ref, key);
            snprintf(key, sizeof key, "%s.sv", path);
            const st_tensor *sv = st_find(f.ref, key);
            CHECK_MSG(g && sv, "%s: no reference for %s", model, path);
            if (!g || !sv) continue;
            CHECK_EQ_INT(g->shape[0], md->out);
            CHECK_EQ_INT(g->shape[1], md->in);
            if (g->shape[0] != md->out || g->shape[1] != md->in) continue;
            const float *rg = (const float *)g->data, *rs = (const float *)sv->data;
            double gmax = 0, dmax = 0;
            for (int64_t k = 0; k < (int64_t)md->out * md->in; k++) {
                gmax = fmax(gmax, fabs(rg[k]));
                dmax = fmax(dmax, fabs(rg[k] - md->G[k]));
            }
            CHECK_MSG(dmax <= 1e-4 * gmax, "%s %s: max |G - torch's| = %.3g of max %.3g", model, path, dmax, gmax);
            double smax = 0;
            for (int k = 0; k < md->n_sv; k++) smax = fmax(smax, fabs(rs[k] - md->sv[k]));
            CHECK_MSG(smax <= 1e-4 * rs[0], "%s %s: singular values off by %.3g (sigma_1 %.4g)", model, path, smax, rs[0]);
            double f2 = 0;
            for (int k = 0; k < md->n_sv; k++) f2 += md->sv[k] * md->sv[k];
            CHECK_NEAR(f2, md->fro2, 1e-6 * md->fro2);
            n_checked++;
        }
        CHECK_EQ_INT(n_checked, st->n_modules);
        CHECK(n_checked >= 8);
    }
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    st_close(f.ref);
}

static void llama_gradients_match_torch(void) { gradients_match_torch("tiny-llama"); }
static void gpt2_gradients_match_torch(void) { gradients_match_torch("tiny-gpt2"); }

/* The mean loss over the fixture's rows with adapter a (any method). */
static double mean_loss(peft_model *m, adapter *a, const fixture *f) {
    peft_err err = {0};
    train_graph *g = NULL;
    if (tg_new(m, a, 2, f->T, &g, &err)) { fprintf(stderr, "  %s\n", err.msg); return NAN; }
    static int32_t bufs[6 * 2 * 64];
    double sum = 0;
    int64_t n = 0;
    for (int r0 = 0; r0 < f->B; r0 += 2) {
        data_batch b = make_batch(f, r0, 2, bufs);
        double ls = 0;
        int cnt = 0;
        if (tg_run(g, &b, false, 0.0f, 0, &ls, &cnt, &err)) { tg_free(g); return NAN; }
        sum += ls;
        n += cnt;
    }
    tg_free(g);
    return sum / (double)n;
}

/* W - ε·u·vᵀ through a rank-1 LoRA (scale 1: B·A is the update itself):
 * (L(+ε) - L(-ε)) / 2ε must be -σ_1 = -<G, u vᵀ>. */
static void loss_falls_at_sigma1_along_the_top_direction(void) {
    fixture f = {0};
    CHECK(load_fixture("tiny-llama", &f) == 0);
    if (!f.ref) return;
    peft_ctx *ctx;
    peft_model *m = load_model("tiny-llama", &ctx);
    adapter *pa = m ? probe_fixture(m, &f) : NULL;
    const probe_state *st = probe_of(pa);
    CHECK(st != NULL);
    static const struct { int layer; model_linear_role role; } mods[] = {{0, ROLE_Q}, {1, ROLE_DOWN}, {1, ROLE_V}};
    for (size_t c = 0; st && c < sizeof mods / sizeof *mods; c++) {
        const probe_module *md = st->slot[mods[c].layer * ROLE_N_LINEAR + mods[c].role];
        CHECK(md != NULL);
        if (!md) continue;
        float *u = malloc(sizeof(float) * (size_t)md->out), *v = malloc(sizeof(float) * (size_t)md->in);
        double s1 = 0;
        peft_err err = {0};
        CHECK_OK(probe_top_pair(md, u, v, &s1, &err));
        CHECK_NEAR(s1, md->sv[0], 1e-9 * md->sv[0] + 1e-12);
        lora_config lc = lora_default_config();
        lc.r = 1;
        lc.alpha = 1;
        lc.targets = 1u << md->role;
        lc.layers = (uint64_t)1 << md->layer;
        adapter *la = NULL;
        CHECK_OK(lora_new(m, &lc, &la, &err));
        lora_module *lm = la ? lora_find(la, md->layer, md->role) : NULL;
        CHECK(lm != NULL && lm->scale == 1.0f);
        const double eps = 3e-3;
        double L[2] = {0, 0};
        for (int sgn = 0; lm && sgn < 2; sgn++) {
            const double e = sgn ? -eps : eps;
            memcpy(lm->A, v, sizeof(float) * (size_t)md->in);
            for (int i = 0; i < md->out; i++) lm->B[i] = (float)(-e * u[i]);
            L[sgn] = mean_loss(m, la, &f);
        }
        const double slope = (L[0] - L[1]) / (2 * eps);
        printf("    layer %d role %d: sigma_1 %.6f, finite difference %.6f\n", md->layer, md->role, md->sv[0], -slope);
        CHECK_MSG(fabs(-slope - md->sv[0]) <= 1e-3 * md->sv[0], "layer %d role %d: loss slope %.6g, sigma_1 %.6g",
                  md->layer, md->role, -slope, md->sv[0]);
        /* and the rank-1 direction beats a random one of the same norm */
        if (lm) {
            peft_rng rng;
            peft_rng_seed(&rng, 7);
            double na = 0, nb = 0;
            for (int i = 0; i < md->in; i++) { lm->A[i] = peft_rng_normal(&rng); na += (double)lm->A[i] * lm->A[i]; }
            for (int i = 0; i < md->out; i++) { lm->B[i] = peft_rng_normal(&rng); nb += (double)lm->B[i] * lm->B[i]; }
            for (int i = 0; i < md->in; i++) lm->A[i] = (float)(lm->A[i] / sqrt(na));
            for (int i = 0; i < md->out; i++) lm->B[i] = (float)(-eps * lm->B[i] / sqrt(nb));
            const double Lr = mean_loss(m, la, &f);
            CHECK_MSG(L[0] < Lr, "the top direction (%.6f) should lower the loss more than a random one (%.6f)", L[0], Lr);
        }
        adapter_free(la);
        free(u);
        free(v);
    }
    adapter_free(pa);
    peft_model_free(m);
    peft_free(ctx);
    st_close(f.ref);
}

/* ---- LoRA with per-module settings ------------------------------------------------------ */

static adapter *pattern_adapter(peft_model *m, bool dora, const char *tm, const char *rp, const char *ap, peft_err *err) {
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.ops = dora ? &method_dora : &method_lora;
    mc.r = 4;
    mc.alpha = 8;
    mc.seed = 5;
    if (tm) CHECK_OK(method_option_add(&mc, "target_modules", tm, err));
    if (rp) CHECK_OK(method_option_add(&mc, "rank_pattern", rp, err));
    if (ap) CHECK_OK(method_option_add(&mc, "alpha_pattern", ap, err));
    adapter *a = NULL;
    if (adapter_new(m, &mc, &a, err)) return NULL;
    return a;
}

static adapter *pattern_lora(peft_model *m, const char *tm, const char *rp, const char *ap, peft_err *err) {
    return pattern_adapter(m, false, tm, rp, ap, err);
}

static void lora_patterns_make_save_and_load(void) {
    peft_ctx *ctx;
    peft_model *m = load_model("tiny-llama", &ctx);
    if (!m) return;
    peft_err err = {0};
    /* explicit modules (not a kinds x layers product), a rank and an alpha by full name, one by suffix */
    adapter *a = pattern_lora(m, "[\"model.layers.0.self_attn.q_proj\", \"model.layers.1.mlp.down_proj\", \"v_proj\"]",
                              "{\"model.layers.1.mlp.down_proj\": 8, \"v_proj\": 2}",
                              "model.layers.0.self_attn.q_proj=3", &err);
    CHECK_MSG(a != NULL, "%s", err.msg);
    if (a) {
        const lora_state *ls = lora_of(a);
        CHECK_EQ_INT(ls->n_modules, 4);   /* q_proj@0, v_proj@0, v_proj@1, down_proj@1 */
        lora_module *q0 = lora_find(a, 0, ROLE_Q), *v1 = lora_find(a, 1, ROLE_V), *d1 = lora_find(a, 1, ROLE_DOWN);
        CHECK(q0 && v1 && d1 && !lora_find(a, 1, ROLE_Q) && !lora_find(a, 0, ROLE_DOWN));
        if (q0 && v1 && d1) {
            CHECK_EQ_INT(q0->r, 4);
            CHECK_NEAR(q0->scale, 3.0 / 4, 1e-7);
            CHECK_EQ_INT(v1->r, 2);
            CHECK_NEAR(v1->scale, 8.0 / 2, 1e-7);
            CHECK_EQ_INT(d1->r, 8);
            CHECK_NEAR(d1->scale, 1.0, 1e-7);
        }
        char dir[] = "/tmp/peft_probe_pat_XXXXXX";
        CHECK(mkdtemp(dir) != NULL);
        for (int64_t i = 0; i < a->n_params; i++) a->params[i] = 0.01f * (float)((i * 7919) % 13 - 6);
        CHECK_OK(adapter_save(a, m, dir, &err));
        adapter *b = NULL;
        CHECK_OK(adapter_load(m, dir, &b, &err));
        if (b) {
            const lora_state *lb = lora_of(b);
            CHECK_EQ_INT(lb->n_modules, 4);
            for (int i = 0; i < lb->n_modules && i < ls->n_modules; i++) {
                CHECK_EQ_INT(lb->mods[i].r, ls->mods[i].r);
                CHECK_NEAR(lb->mods[i].scale, ls->mods[i].scale, 0);
                CHECK_NEAR(lb->mods[i].alpha, ls->mods[i].alpha, 0);
            }
            adapter_free(b);
        }
        /* the file names the modules, since kinds x layers would add q_proj@1 and down_proj@0 */
        char p[600];
        snprintf(p, sizeof p, "%s/adapter_config.json", dir);
        char *text = NULL;
        size_t len = 0;
        CHECK_OK(peft_read_file(p, &text, &len, &err));
        cJSON *o = cJSON_Parse(text);
        const cJSON *tm = cJSON_GetObjectItem(o, "target_modules");
        CHECK(cJSON_IsArray(tm) && cJSON_GetArraySize(tm) == 4);
        CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "alpha_pattern"), "model.layers.0.self_attn.q_proj") != NULL);
        cJSON_Delete(o);
        free(text);
        CHECK(test_rm_rf(dir) == 0);
        adapter_free(a);
    }
    /* a name that matches nothing is an error, not a silent no-op */
    a = pattern_lora(m, NULL, "{\"model.layers.0.self_attn.qproj\": 8}", NULL, &err);
    CHECK(a == NULL);
    CHECK_MSG(strstr(err.msg, "rank_pattern") && strstr(err.msg, "qproj") && strstr(err.msg, "matches no"), "%s", err.msg);
    adapter_free(a);
    {
        method_config mc;
        memset(&mc, 0, sizeof mc);
        mc.ops = &method_lora;
        mc.targets = 1u << ROLE_Q;
        CHECK_OK(method_option_add(&mc, "target_modules", "v_proj", &err));
        a = NULL;
        CHECK(adapter_new(m, &mc, &a, &err) != 0);
        CHECK_MSG(strstr(err.msg, "not both"), "%s", err.msg);
        adapter_free(a);
    }
    a = pattern_lora(m, NULL, "{\"v_proj\": 0}", NULL, &err);
    CHECK(a == NULL);
    CHECK_MSG(strstr(err.msg, "rank 0"), "%s", err.msg);
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
}

static int python_ok(void) {
    return system("python3 -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1") == 0;
}

/* HF peft builds the same modules from our adapter_config.json (ranks,
 * alphas, modules by name) and gives our logits. */
static void lora_patterns_load_in_hf_peft(void) {
    if (!python_ok()) TEST_SKIP("python3 with torch, transformers, peft and safetensors is not installed (the reference stack)");
    static const struct { const char *model; bool dora; const char *tm, *rp, *ap; } cases[] = {
        {"tiny-llama", false, "[\"model.layers.0.self_attn.q_proj\", \"model.layers.1.mlp.down_proj\", \"v_proj\"]",
         "{\"model.layers.1.mlp.down_proj\": 8, \"v_proj\": 2}", "{\"model.layers.0.self_attn.q_proj\": 3, \"down_proj\": 20}"},
        {"tiny-gpt2", false, "[\"transformer.h.1.attn.c_attn\", \"mlp.c_fc\"]", "{\"transformer.h.0.mlp.c_fc\": 6}",
         "{\"c_attn\": 2}"},
        /* DoRA shares LoRA's code: its row norms follow each module's scale */
        {"tiny-llama", true, NULL, "{\"model.layers.1.self_attn.v_proj\": 6}", "{\"q_proj\": 3}"},
    };
    char dir[] = "/tmp/peft_probe_hf_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char list[600];
    snprintf(list, sizeof list, "%s/cases.txt", dir);
    FILE *lf = fopen(list, "w");
    CHECK(lf != NULL);
    if (!lf) return;
    int nc = 0;
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        peft_ctx *ctx;
        peft_model *m = load_model(cases[k].model, &ctx);
        if (!m) continue;
        peft_err err = {0};
        adapter *a = pattern_adapter(m, cases[k].dora, cases[k].tm, cases[k].rp, cases[k].ap, &err);
        CHECK_MSG(a != NULL, "%s", err.msg);
        if (a) {
            peft_rng rng;
            peft_rng_seed(&rng, 31 + k);
            for (int64_t i = 0; i < a->n_params; i++) a->params[i] = 0.2f * peft_rng_normal(&rng);
            if (cases[k].dora) {
                /* magnitudes near the row norms, as after training */
                const lora_state *ls = lora_of(a);
                for (int i = 0; i < ls->n_modules; i++)
                    for (int j = 0; j < ls->mods[i].out; j++) ls->mods[i].mag[j] = 1.0f + 0.1f * peft_rng_normal(&rng);
            }
            CHECK_OK(adapter_refresh(a, m, &err));
            free(a->base_model);
            char base[300];
            snprintf(base, sizeof base, MFIX "%s", cases[k].model);
            a->base_model = strdup(base);
            char ad[700], lp[700];
            snprintf(ad, sizeof ad, "%s/adapter%zu", dir, k);
            CHECK_OK(adapter_save(a, m, ad, &err));
            int32_t ids[12];
            for (int t = 0; t < 12; t++) ids[t] = (int32_t)(peft_rng_u64(&rng) % 317);
            float *lg = malloc(sizeof(float) * 12 * (size_t)m->cfg.vocab);
            m->attached = a;
            CHECK_OK(peft_model_logits(m, ids, 12, lg));
            m->attached = NULL;
            st_write_tensor ts[2] = {{"input_ids", PEFT_DT_I32, 2, {1, 12}, ids},
                                     {"logits", PEFT_DT_F32, 3, {1, 12, m->cfg.vocab}, lg}};
            snprintf(lp, sizeof lp, "%s/logits%zu.safetensors", dir, k);
            CHECK_OK(st_write(lp, ts, 2, NULL, &err));
            fprintf(lf, "%s %s %s\n", base, ad, lp);
            nc++;
            free(lg);
            adapter_free(a);
        }
        peft_model_free(m);
        peft_free(ctx);
    }
    fclose(lf);
    char cmd[900];
    snprintf(cmd, sizeof cmd, "python3 tools/check_interop.py --cases %s 2>&1", list);
    FILE *pp = popen(cmd, "r");
    static char out[1 << 15];
    size_t got = pp ? fread(out, 1, sizeof out - 1, pp) : 0;
    out[got] = 0;
    const int rc = pp ? pclose(pp) : -1;
    for (int k = 0; k < nc; k++) {
        char tag[32];
        snprintf(tag, sizeof tag, "case %d: ", k);
        const char *line = strstr(out, tag);
        const size_t n = line ? strcspn(line, "\n") : 0;
        printf("    %.*s\n", (int)n, line ? line : "(no output)");
        CHECK_MSG(line && n >= 3 && !strncmp(line + n - 3, " ok", 3), "HF peft disagrees: %.*s", (int)n, line ? line : out);
    }
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "check_interop.py: %s", out);
    CHECK(test_rm_rf(dir) == 0);
}

/* ---- the public run and the CLI ------------------------------------------------------------ */

static void write_text_data(const char *path, int rows) {
    FILE *f = fopen(path, "w");
    static const char *const w[] = {"the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "home"};
    peft_rng r;
    peft_rng_seed(&r, 3);
    for (int i = 0; f && i < rows; i++) {
        fprintf(f, "{\"text\": \"");
        const int len = 6 + (int)(peft_rng_u64(&r) % 20);
        for (int k = 0; k < len; k++) fprintf(f, "%s%s", k ? " " : "", w[peft_rng_u64(&r) % 11]);
        fprintf(f, "\"}\n");
    }
    if (f) fclose(f);
}

/* The greedy proposal: within budget, every choice one of the ranks, and
 * no single step that fits the rest of the budget left out with a better
 * ratio than the worst taken (the greedy invariant, checked from the JSON). */
static void proposal_fits_its_budget(void) {
    char dir[] = "/tmp/peft_probe_run_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char data[600];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    write_text_data(data, 24);
    peft_ctx *ctx;
    peft_model *m = load_model("tiny-llama", &ctx);
    if (!m) return;
    peft_probe_params p = peft_probe_default_params();
    p.batches = 3;
    p.batch = 4;
    p.seq = 32;
    const int ranks[] = {2, 4, 8};
    p.ranks = ranks;
    p.n_ranks = 3;
    p.budget_params = 5000;
    peft_probe *pr = peft_probe_run(m, data, &p);
    CHECK_MSG(pr != NULL, "%s", peft_last_error(ctx));
    char *js = pr ? peft_probe_json(pr) : NULL;
    cJSON *o = js ? cJSON_Parse(js) : NULL;
    CHECK(o != NULL);
    const cJSON *prop = cJSON_GetObjectItem(o, "proposal"), *mods = cJSON_GetObjectItem(o, "modules");
    CHECK(prop && mods);
    if (prop && mods) {
        const double used = cJSON_GetObjectItem(prop, "params")->valuedouble;
        CHECK(used <= 5000 && used > 0);
        double sum = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, mods) {
            const int r = cJSON_GetObjectItem(e, "proposed_r")->valueint;
            CHECK(r == 0 || r == 2 || r == 4 || r == 8);
            sum += (double)r * (cJSON_GetObjectItem(e, "in")->valueint + cJSON_GetObjectItem(e, "out")->valueint);
            /* scores are sqrt of cumulative energy: non-decreasing in r */
            const cJSON *rk = cJSON_GetObjectItem(e, "ranks");
            double last = 0;
            const cJSON *c;
            cJSON_ArrayForEach(c, rk) {
                const double s = cJSON_GetObjectItem(c, "score")->valuedouble;
                CHECK(s >= last);
                last = s;
                CHECK(cJSON_GetObjectItem(c, "energy_fraction")->valuedouble <= 1.0 + 1e-9);
            }
        }
        CHECK_NEAR(sum, used, 0);
        CHECK_EQ_INT(cJSON_GetArraySize(mods), 14);
    }
    cJSON_Delete(o);
    free(js);
    /* another budget without measuring again: a smaller proposal, and a
     * budget below every candidate refused with the proposal kept */
    if (pr) {
        CHECK_OK(peft_probe_set_budget(pr, 1500));
        char *j2 = peft_probe_json(pr);
        cJSON *o2 = j2 ? cJSON_Parse(j2) : NULL;
        const cJSON *p2 = cJSON_GetObjectItem(o2, "proposal");
        CHECK(p2 && cJSON_GetObjectItem(p2, "params")->valuedouble <= 1500 &&
              cJSON_GetObjectItem(p2, "params")->valuedouble > 0);
        cJSON_Delete(o2);
        free(j2);
        CHECK(peft_probe_set_budget(pr, 10) != 0);
        CHECK_MSG(strstr(peft_last_error(ctx), "smaller than the smallest candidate"), "%s", peft_last_error(ctx));
        CHECK_OK(peft_probe_set_budget(pr, 5000));
    }
    /* the config trains: peft_probe_save's file through the CLI */
    char cfg[700], jsn[700], svg[700];
    snprintf(cfg, sizeof cfg, "%s/probe_config.json", dir);
    snprintf(jsn, sizeof jsn, "%s/probe.json", dir);
    snprintf(svg, sizeof svg, "%s/probe.svg", dir);
    if (pr) CHECK_OK(peft_probe_save(pr, jsn, svg, cfg));
    CHECK(peft_file_exists(jsn) && peft_file_exists(svg) && peft_file_exists(cfg));
    peft_probe_free(pr);
    if (getenv("PEFT_CLI") && peft_file_exists(cfg)) {
        char cmd[3000];
        snprintf(cmd, sizeof cmd,
                 "%s train --config %s --model " MFIX "tiny-llama --data %s --out %s/run --steps 2 --batch 2 --seq 32 "
                 "--quiet >/dev/null 2>&1", getenv("PEFT_CLI"), cfg, data, dir);
        CHECK(system(cmd) == 0);
        char ad[700];
        snprintf(ad, sizeof ad, "%s/run", dir);
        peft_err err = {0};
        adapter *a = NULL;
        CHECK_OK(adapter_load(m, ad, &a, &err));
        /* the trained adapter's modules and ranks are the proposal's */
        char *text = NULL;
        size_t len = 0;
        CHECK_OK(peft_read_file(cfg, &text, &len, &err));
        cJSON *c = cJSON_Parse(text);
        const lora_state *ls = lora_of(a);
        const cJSON *rp = cJSON_GetObjectItem(c, "rank_pattern");
        const int r0 = cJSON_GetObjectItem(c, "r") ? cJSON_GetObjectItem(c, "r")->valueint : -1;
        int n_prop = 0;
        cJSON *jo = NULL;
        {
            char *jt = NULL;
            size_t jl = 0;
            if (!peft_read_file(jsn, &jt, &jl, &err)) jo = cJSON_Parse(jt);
            free(jt);
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(jo, "modules")) n_prop += cJSON_GetObjectItem(e, "proposed_r")->valueint > 0;
        CHECK(ls != NULL);
        if (ls) {
            CHECK_EQ_INT(ls->n_modules, n_prop);
            for (int i = 0; i < ls->n_modules; i++) {
                char path[256];
                model_linear_hf_path(m, ls->mods[i].layer, ls->mods[i].role, path, sizeof path);
                const cJSON *pr_r = cJSON_GetObjectItem(rp, path);
                CHECK_EQ_INT(ls->mods[i].r, pr_r ? pr_r->valueint : r0);
                CHECK_NEAR(ls->mods[i].scale, 2.0, 1e-6);   /* alpha = 2·r per module */
            }
        }
        cJSON_Delete(jo);
        cJSON_Delete(c);
        free(text);
        adapter_free(a);
    }
    peft_model_free(m);
    peft_free(ctx);
    CHECK(test_rm_rf(dir) == 0);
}

/* Runs the CLI with args, stderr into buf; the exit status. */
static int run_cli(const char *args, char *buf, size_t cap) {
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1 >/dev/null", getenv("PEFT_CLI"), args);
    FILE *pp = popen(cmd, "r");
    size_t got = pp ? fread(buf, 1, cap - 1, pp) : 0;
    buf[got] = 0;
    const int st = pp ? pclose(pp) : -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void cli_bad_input_is_one_line_before_measuring(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char dir[] = "/tmp/peft_probe_cli_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char data[600];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    write_text_data(data, 6);
    static const struct { const char *args, *want; int code; } cases[] = {
        {"--budget-params 10", "smaller than the smallest candidate", 2},
        {"--budget 0.0001%", "smaller than the smallest candidate", 2},
        {"--batches 8 --batch 4", "needs 32", 1},
        {"--ranks 8,4", "must increase", 2},
        {"--ranks 4,x", "expected up to 16 increasing integers", 2},
        {"--ranks 4,100000", "expected up to 16 increasing integers", 2},
        {"--ranks 4,128", "larger than any probed module allows", 2},
        {"--config-out /tmp/x.json", "needs a budget", 2},
        {"--budget 5", "percentage", 2},
        {"--max-memory 1K", "full weight gradient", 2},
    };
    char buf[4096], args[2000];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        snprintf(args, sizeof args, "probe --model " MFIX "tiny-llama --data %s --batches 1 --batch 2 %s", data,
                 cases[k].args);
        const int code = run_cli(args, buf, sizeof buf);
        CHECK_MSG(code == cases[k].code, "%s: exit %d, expected %d: %s", cases[k].args, code, cases[k].code, buf);
        CHECK_MSG(strstr(buf, cases[k].want), "%s: expected \"%s\" in: %s", cases[k].args, cases[k].want, buf);
        CHECK_MSG(count_lines(buf) == 1, "%s: %d lines: %s", cases[k].args, count_lines(buf), buf);
        CHECK_MSG(!strstr(buf, "batch 1/"), "%s: measured before failing: %s", cases[k].args, buf);
    }
    snprintf(args, sizeof args, "probe --model %s/no-such-model --data %s", dir, data);
    const int code = run_cli(args, buf, sizeof buf);
    CHECK_MSG(code != 0 && count_lines(buf) == 1 && strstr(buf, "no-such-model"), "exit %d: %s", code, buf);
    /* and a good run prints the table to stdout and writes the files */
    snprintf(args, sizeof args,
             "probe --model " MFIX "tiny-gpt2 --data %s --batches 2 --batch 2 --budget 2%% --config-out %s/c.json --quiet",
             data, dir);
    CHECK_EQ_INT(run_cli(args, buf, sizeof buf), 0);
    snprintf(args, sizeof args, "%s/c.json", dir);
    CHECK(peft_file_exists(args));
    CHECK(test_rm_rf(dir) == 0);
}

int main(void) {
    TEST_RUN(llama_gradients_match_torch);
    TEST_RUN(gpt2_gradients_match_torch);
    TEST_RUN(loss_falls_at_sigma1_along_the_top_direction);
    TEST_RUN(lora_patterns_make_save_and_load);
    TEST_RUN(lora_patterns_load_in_hf_peft);
    TEST_RUN(proposal_fits_its_budget);
    TEST_RUN(cli_bad_input_is_one_line_before_measuring);
    TEST_MAIN_END();
}
