/* test_interop.c — adapters cross between HF peft and peft.c with the same
 * logits, both ways:
 *   peft → here: adapters saved by peft (tests/fixtures/lora/<case>/adapter)
 *     applied here give peft's logits (fixture reference.safetensors);
 *   here → peft: an adapter saved here, loaded by HF peft in Python
 *     (tools/check_interop.py), gives our logits; skipped, saying so, when
 *     the reference stack is not installed. */
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"
#include "train/graph.h"

#include <sys/wait.h>
#include <unistd.h>

static const char *const cases[][2] = {
    {"llama_all", "tests/fixtures/models/tiny-llama"},
    {"llama_qv_rslora", "tests/fixtures/models/tiny-llama"},
    {"gpt2_all", "tests/fixtures/models/tiny-gpt2"},
    {"qwen2_qv", "tests/fixtures/models/tiny-qwen2"},
    {"qwen3_qv", "tests/fixtures/models/tiny-qwen3"},
    {"phi3_qkv", "tests/fixtures/models/tiny-phi3"},
    {"gemma2_qv", "tests/fixtures/models/tiny-gemma2"},
};

static void peft_adapters_give_peft_logits_here(void) {
    for (int c = 0; c < (int)(sizeof cases / sizeof *cases); c++) {
        for (int src = 0; src < 2; src++) {
            /* the HF folder, and for llama the GGUF too: the adapter's HF
             * names must land on the un-permuted GGUF rows */
            if (src == 1 && strcmp(cases[c][0], "llama_all") != 0) continue;
            const char *model = src ? "tests/fixtures/models/tiny-llama.f32.gguf" : cases[c][1];
            char p[512];
            snprintf(p, sizeof p, "tests/fixtures/lora/%s/reference.safetensors", cases[c][0]);
            st_archive *ref = NULL;
            peft_err err = {0};
            CHECK_OK(st_open(p, &ref, &err));
            if (!ref) continue;
            const st_tensor *ids = st_find(ref, "input_ids"), *lg = st_find(ref, "logits");
            peft_ctx *ctx = peft_init(NULL);
            peft_model *m = peft_model_load(ctx, model);
            adapter *a = NULL;
            snprintf(p, sizeof p, "tests/fixtures/lora/%s/adapter", cases[c][0]);
            CHECK_OK(lora_load(m, p, &a, &err));
            if (m && a && ids && lg) {
                m->attached = a;
                const int B = (int)ids->shape[0], T = (int)ids->shape[1], V = m->cfg.vocab;
                float *out = malloc(sizeof(float) * (size_t)T * V);
                double worst = 0;
                for (int b = 0; b < B; b++) {
                    CHECK_OK(peft_model_logits(m, (const int32_t *)ids->data + b * T, T, out));
                    worst = fmax(worst, test_max_abs_diff(out, (const float *)lg->data + (size_t)b * T * V, (size_t)T * V));
                }
                CHECK_MSG(worst <= 1e-4, "%s on %s: max |diff| %g", cases[c][0], model, worst);
                printf("    %-16s on %-42s max |logit diff| vs peft %.3g\n", cases[c][0], model, worst);
                free(out);
                m->attached = NULL;
            }
            adapter_free(a);
            peft_model_free(m);
            peft_free(ctx);
            st_close(ref);
        }
    }
}

static int python_ok(void) {
    int rc = system("python3 -c 'import torch, transformers, peft, safetensors' >/dev/null 2>&1");
    return rc == 0;
}

/* Runs tools/check_interop.py once over the n cases listed in list (torch
 * starts once) and checks that every case printed its "case K: ... ok"
 * line; names[k] labels case k in the output. */
static void run_interop_cases(const char *list, int n, char names[][96]) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 tools/check_interop.py --cases %s 2>/dev/null", list);
    FILE *pp = popen(cmd, "r");
    CHECK(pp != NULL);
    if (!pp) return;
    static char out[1 << 16];
    size_t got = fread(out, 1, sizeof out - 1, pp);
    out[got] = 0;
    int st = pclose(pp);
    for (int k = 0; k < n; k++) {
        char tag[32];
        snprintf(tag, sizeof tag, "case %d: ", k);
        const char *line = strstr(out, tag);
        char msg[256] = "(no output)";
        if (line) {
            size_t len = strcspn(line + strlen(tag), "\n");
            snprintf(msg, sizeof msg, "%.*s", (int)len, line + strlen(tag));
        }
        const size_t ml = strlen(msg);
        const bool ok = ml >= 3 && strcmp(msg + ml - 3, " ok") == 0;
        printf("    %-44s %s\n", names[k], msg);
        CHECK_MSG(ok, "HF peft disagrees on %s: %s", names[k], msg);
    }
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "check_interop.py exited %d", WEXITSTATUS(st));
}

static void our_adapters_load_in_peft(void) {
    if (!python_ok()) TEST_SKIP("python3 with torch, transformers, peft and safetensors is not installed (the reference stack)");
    char dir[] = "/tmp/peft_interop_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char list[600], names[6][96];
    int nc = 0;
    snprintf(list, sizeof list, "%s/cases.txt", dir);
    FILE *lf = fopen(list, "w");
    CHECK(lf != NULL);
    if (!lf) return;
    const char *models[] = {"tests/fixtures/models/tiny-llama", "tests/fixtures/models/tiny-gpt2", "tests/fixtures/models/tiny-qwen2",
                            "tests/fixtures/models/tiny-qwen3", "tests/fixtures/models/tiny-phi3",
                            "tests/fixtures/models/tiny-gemma2"};
    const char *targets[] = {"q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "c_attn,c_proj,c_fc", "q_proj,v_proj",
                             "all-linear", "qkv_proj,o_proj,gate_up_proj,down_proj", "all-linear"};
    for (int k = 0; k < 6; k++) {
        peft_ctx *ctx = peft_init(NULL);
        peft_model *m = peft_model_load(ctx, models[k]);
        lora_config cfg = lora_default_config();
        cfg.r = 4;
        cfg.alpha = 16;
        cfg.rslora = k == 2;
        cfg.layers = k == 1 ? 2u : 0u; /* GPT-2: layer 1 only */
        peft_err err = {0};
        adapter *a = NULL;
        CHECK_OK(lora_parse_targets(m, targets[k], &cfg.targets, &err));
        CHECK_OK(lora_new(m, &cfg, &a, &err));
        if (!a) { peft_model_free(m); peft_free(ctx); continue; }
        peft_rng rng;
        peft_rng_seed(&rng, 99 + (uint64_t)k);
        for (int64_t i = 0; i < a->n_params; i++) a->params[i] = 0.2f * peft_rng_normal(&rng);
        free(a->base_model);
        a->base_model = strdup(models[k]);
        char ad[600], lp[600];
        snprintf(ad, sizeof ad, "%s/adapter%d", dir, k);
        CHECK_OK(adapter_save(a, m, ad, &err));
        /* our logits for a fixed sequence */
        const int T = 12;
        int32_t ids[12];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)(peft_rng_u64(&rng) % 320);
        float *lg = malloc(sizeof(float) * (size_t)T * m->cfg.vocab);
        m->attached = a;
        CHECK_OK(peft_model_logits(m, ids, T, lg));
        st_write_tensor ts[2] = {{"input_ids", PEFT_DT_I32, 2, {1, T}, ids},
                                 {"logits", PEFT_DT_F32, 3, {1, T, m->cfg.vocab}, lg}};
        snprintf(lp, sizeof lp, "%s/logits%d.safetensors", dir, k);
        CHECK_OK(st_write(lp, ts, 2, NULL, &err));
        fprintf(lf, "%s %s %s\n", models[k], ad, lp);
        snprintf(names[nc], sizeof names[nc], "lora %s", models[k] + 22);
        nc++;
        free(lg);
        m->attached = NULL;
        adapter_free(a);
        peft_model_free(m);
        peft_free(ctx);
    }
    fclose(lf);
    run_interop_cases(list, nc, names);
    CHECK(test_rm_rf(dir) == 0);
}

/* Every other HF PEFT method saved here loads in HF peft with our logits:
 * DoRA, IA3, prompt tuning, prefix tuning (also trained through a
 * projection: the table is saved), and classification heads. */
static void our_method_adapters_load_in_peft(void) {
    if (!python_ok()) TEST_SKIP("python3 with torch, transformers, peft and safetensors is not installed (the reference stack)");
    char dir[] = "/tmp/peft_interop_m_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char list[600], names[32][96];
    int nc = 0;
    snprintf(list, sizeof list, "%s/cases.txt", dir);
    FILE *lf = fopen(list, "w");
    CHECK(lf != NULL);
    if (!lf) return;
    static const struct {
        const char *model;
        const char *method;   /* lora, dora, or NULL: plug */
        bool proj;
        int n_labels;
        const char *plug, *opts;   /* a plug-in method (method.h) and its options */
        int r;                      /* 0: 4 */
        uint32_t targets;           /* 0: the default */
    } cases[] = {
        {"tests/fixtures/models/tiny-llama", "dora", false, 0, NULL, NULL, 0, 0},
        {"tests/fixtures/models/tiny-gpt2", "dora", false, 0, NULL, NULL, 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "ia3", "", 0, 0},
        {"tests/fixtures/models/tiny-gpt2", NULL, false, 0, "ia3", "", 0, 0},
        {"tests/fixtures/models/tiny-qwen2", NULL, false, 0, "ia3", "", 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "prompt", "num_virtual_tokens=5", 0, 0},
        {"tests/fixtures/models/tiny-gpt2", NULL, false, 0, "prompt", "num_virtual_tokens=5", 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "prefix", "num_virtual_tokens=5", 0, 0},
        {"tests/fixtures/models/tiny-gpt2", NULL, false, 0, "prefix", "num_virtual_tokens=5", 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, true, 0, "prefix", "num_virtual_tokens=5;prefix_projection=true", 0, 0},
        {"tests/fixtures/models/tiny-llama", "lora", false, 3, NULL, NULL, 0, 0},
        {"tests/fixtures/models/tiny-gpt2", "lora", false, 3, NULL, NULL, 0, 0},
        /* encoders: BERT's classifier on its pooler, RoBERTa's dense + out_proj */
        {"tests/fixtures/models/tiny-bert", "lora", false, 3, NULL, NULL, 0, 0},
        {"tests/fixtures/models/tiny-roberta", "lora", false, 3, NULL, NULL, 0, 0},
        {"tests/fixtures/models/tiny-bert", NULL, false, 3, "ia3", "", 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 2, "prompt", "num_virtual_tokens=5", 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "vera", "", 0, 0},
        {"tests/fixtures/models/tiny-gpt2", NULL, false, 0, "vera", "", 0, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "vera", "save_projection=false;projection_prng_key=5", 0, 0},
        /* LoKr: W1 full, W2 full on q/v and low-rank on down; W1 low-rank (factor 16); both low-rank; a head */
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "lokr", "", 4,
         (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN)},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "lokr", "decompose_both=true;decompose_factor=16", 4,
         (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN)},
        {"tests/fixtures/models/tiny-qwen2", NULL, false, 0, "lokr", "decompose_both=true", 2,
         (1u << ROLE_Q) | (1u << ROLE_K) | (1u << ROLE_V) | (1u << ROLE_O) | (1u << ROLE_UP) | (1u << ROLE_DOWN)},
        {"tests/fixtures/models/tiny-llama", NULL, false, 3, "lokr", "", 4, 0},
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "loha", "", 0, 0},
        {"tests/fixtures/models/tiny-qwen2", NULL, false, 0, "loha", "", 0, 0},
        /* HF's rank_pattern / alpha_pattern matching, read back by HF */
        {"tests/fixtures/models/tiny-llama", NULL, false, 0, "loha",
         "rank_pattern={\"layers.0.self_attn.q_proj\": 2, \"v_proj\": 6};alpha_pattern={\"layers.1.self_attn.v_proj\": 3}", 0, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        peft_ctx *ctx = peft_init(NULL);
        peft_model *m = peft_model_load(ctx, cases[k].model);
        method_config mc;
        memset(&mc, 0, sizeof mc);
        mc.ops = method_find(cases[k].plug ? cases[k].plug : cases[k].method);
        CHECK(mc.ops != NULL);
        mc.r = 4;
        mc.alpha = 16;
        mc.n_labels = cases[k].n_labels;
        mc.seed = 3;
        if (cases[k].plug) {
            snprintf(mc.options, sizeof mc.options, "%s", cases[k].opts);
            if (cases[k].r) mc.r = cases[k].r;
            if (cases[k].targets) {
                mc.alpha = 8;
                mc.targets = cases[k].targets;
            }
        }
        peft_err err = {0};
        adapter *a = NULL;
        CHECK_OK(adapter_new(m, &mc, &a, &err));
        if (!a) { fprintf(stderr, "  %s\n", err.msg); peft_model_free(m); peft_free(ctx); continue; }
        peft_rng rng;
        peft_rng_seed(&rng, 7 + (uint64_t)k);
        for (int64_t i = 0; i < a->n_params; i++) a->params[i] += 0.1f * peft_rng_normal(&rng);
        CHECK_OK(adapter_refresh(a, m, &err));
        free(a->base_model);
        a->base_model = strdup(cases[k].model);
        char ad[600], lp[600], extra[32] = "";
        snprintf(ad, sizeof ad, "%s/adapter%zu", dir, k);
        CHECK_OK(adapter_save(a, m, ad, &err));
        const int T = 12;
        int32_t ids[12];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)(peft_rng_u64(&rng) % 300);
        float *lg = malloc(sizeof(float) * (size_t)T * m->cfg.vocab);
        st_write_tensor ts[2] = {{"input_ids", PEFT_DT_I32, 2, {1, T}, ids}, {"logits", PEFT_DT_F32, 3, {1, T, m->cfg.vocab}, lg}};
        if (mc.n_labels) {
            /* pooled logits from the training graph's forward */
            int32_t b_in[12], b_tg[12], b_pos[12], b_seg[12], b_lab[1] = {0}, b_len[1] = {T};
            for (int t = 0; t < T; t++) { b_in[t] = ids[t]; b_tg[t] = -100; b_pos[t] = t; b_seg[t] = 0; }
            data_batch b = {1, T, b_in, b_tg, b_pos, b_seg, b_lab, b_len, 1, 0, NULL, NULL, 0};
            train_graph *g = NULL;
            double ls;
            int n;
            CHECK_OK(tg_new(m, a, 1, T, &g, &err));
            if (g) CHECK_OK(tg_run(g, &b, false, 0, 0, &ls, &n, &err));
            if (g) memcpy(lg, tg_class_logits(g), sizeof(float) * (size_t)mc.n_labels);
            tg_free(g);
            ts[1].ndim = 2;
            ts[1].shape[1] = mc.n_labels;
            snprintf(extra, sizeof extra, " seqcls:%d", mc.n_labels);
        } else {
            CHECK_OK(peft_adapter_attach(m, (peft_adapter *)a));
            CHECK_OK(peft_model_logits(m, ids, T, lg));
            peft_adapter_attach(m, NULL);
        }
        snprintf(lp, sizeof lp, "%s/logits%zu.safetensors", dir, k);
        CHECK_OK(st_write(lp, ts, 2, NULL, &err));
        fprintf(lf, "%s %s %s%s\n", cases[k].model, ad, lp, extra);
        snprintf(names[nc], sizeof names[nc], "%s%s%s%s%s %s", adapter_method_name(a), cases[k].opts && *cases[k].opts ? "(" : "",
                 cases[k].opts ? cases[k].opts : "", cases[k].opts && *cases[k].opts ? ")" : "", mc.n_labels ? "+head" : "",
                 cases[k].model + 22);
        nc++;
        free(lg);
        adapter_free(a);
        peft_model_free(m);
        peft_free(ctx);
    }
    fclose(lf);
    run_interop_cases(list, nc, names);
    CHECK(test_rm_rf(dir) == 0);
}

int main(void) {
    TEST_RUN(peft_adapters_give_peft_logits_here);
    TEST_RUN(our_adapters_load_in_peft);
    TEST_RUN(our_method_adapters_load_in_peft);
    TEST_MAIN_END();
}
