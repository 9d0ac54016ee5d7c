/* test_methods.c — every PEFT method (adapter.h) on the tiny Llama and GPT-2
 * fixtures:
 *   - gradients of every trainable tensor against central finite differences
 *     of the training graph's loss (causal LM and classification);
 *   - the adapter leaves the base output unchanged at initialisation where
 *     the method promises it (LoRA, DoRA, bottleneck with zero up-projection,
 *     IA3 with ones);
 *   - the inference forward (KV cache, prompt rows, prefix rows) gives the
 *     training graph's loss, in one call and token by token;
 *   - save → load round trips give the same loss;
 *   - methods an architecture cannot take fail clearly.
 * The comparison with HF PEFT's own numbers is test_methods_ref.c. */
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"
#include "train/graph.h"

#include <math.h>
#include <unistd.h>

/* Under AddressSanitizer (an unoptimised build, ~100x slower) the finite
 * differences probe one entry of every tensor instead of three. */
#if defined(__SANITIZE_ADDRESS__)
#define FD_PROBES 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FD_PROBES 1
#endif
#endif
#ifndef FD_PROBES
#define FD_PROBES 3
#endif

#define MFIX "tests/fixtures/models/"

typedef struct {
    const char *name;
    const char *model;
    method_config mc;
    bool identity;      /* output unchanged at initialisation */
} mcase;

static method_config mk(const method_ops *ops) {
    method_config c;
    memset(&c, 0, sizeof c);
    c.ops = ops;
    c.r = 4;
    c.alpha = 8;
    c.seed = 7;
    return c;
}

/* A plug-in method (method.h) by name, with mk's rank and seed. */
static method_config mk_plug(const char *name, const char *options) {
    method_config c = mk(method_find(name));
    if (!c.ops) fprintf(stderr, "  no method %s in the registry\n", name);
    snprintf(c.options, sizeof c.options, "%s", options ? options : "");
    return c;
}

static const char *models[] = {MFIX "tiny-llama", MFIX "tiny-gpt2"};

static int32_t g_buf[8][64];

/* 2 rows of 12 tokens from a seeded generator; row 1 has 9 real tokens. */
static data_batch make_batch(int n_labels) {
    data_batch b = {2, 12, g_buf[0], g_buf[1], g_buf[2], g_buf[3], g_buf[4], g_buf[5], 0, 0, NULL, NULL, 0};
    peft_rng rng;
    peft_rng_seed(&rng, 11);
    b.lengths[0] = 12;
    b.lengths[1] = 9;
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 12; t++) {
            int i = r * 12 + t;
            b.inputs[i] = t < b.lengths[r] ? (int32_t)(peft_rng_u64(&rng) % 300) : 0;
            b.positions[i] = t;
            b.segments[i] = 0;
        }
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 12; t++) {
            int i = r * 12 + t;
            b.targets[i] = (n_labels == 0 && t + 1 < b.lengths[r] && t >= 2) ? b.inputs[i + 1] : -100;
            b.n_targets += b.targets[i] != -100;
        }
    if (n_labels) {
        b.labels[0] = 1;
        b.labels[1] = n_labels - 1;
        b.n_targets = 2;
    }
    return b;
}

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
} env;

static int open_model(env *e, const char *path) {
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    e->ctx = peft_init(&cp);
    e->m = e->ctx ? peft_model_load(e->ctx, path) : NULL;
    if (!e->m) fprintf(stderr, "  cannot load %s\n", path);
    return e->m ? 0 : -1;
}

static void close_model(env *e) {
    peft_model_free(e->m);
    peft_free(e->ctx);
}

static double loss_of(train_graph *g, const data_batch *b) {
    double ls = 0;
    int n = 0;
    peft_err err = {0};
    if (tg_run(g, b, false, 0, 0, &ls, &n, &err)) { fprintf(stderr, "  %s\n", err.msg); return NAN; }
    return ls / (n ? n : 1);
}

/* Perturbs every trainable value so that no gradient is trivially zero. */
static void perturb(adapter *a, const peft_model *m, uint64_t seed) {
    peft_rng rng;
    peft_rng_seed(&rng, seed);
    for (int64_t k = 0; k < a->n_params; k++) a->params[k] += 0.1f * peft_rng_normal(&rng);
    peft_err err = {0};
    adapter_refresh(a, m, &err);
}

/* Central differences on a few entries of every tensor (the largest
 * gradient and random ones). DoRA's weight norm is a constant of the
 * backward (HF PEFT detaches it), so it is not refreshed between probes. */
static void fd_check(const char *name, const peft_model *m, adapter *a, train_graph *g, const data_batch *b) {
    peft_err err = {0};
    memset(a->grads, 0, (size_t)a->n_params * sizeof(float));
    double ls = 0;
    int n = 0;
    CHECK_OK(tg_run(g, b, true, 1.0f / (float)b->n_targets, 0, &ls, &n, &err));
    /* tg_run's backward moved the projected prefix gradient into the MLP */
    peft_rng rng;
    peft_rng_seed(&rng, 5);
    /* plug-ins' derived values (a projected prefix table) follow each probe */
    const bool refresh = !lora_of(a);   /* DoRA's norm is a constant of the backward */
    double worst = 0;
    int probes = 0;
    for (int ti = 0; ti < a->n_tensors; ti++) {
        const adapter_tensor *t = &a->tensors[ti];
        if (t->frozen) continue;   /* a buffer: never trained */
        int64_t kmax = 0;
        for (int64_t k = 0; k < t->n; k++)
            if (fabsf(t->g[k]) > fabsf(t->g[kmax])) kmax = k;
        float gmax = fabsf(t->g[kmax]);
        for (int probe = 0; probe < FD_PROBES; probe++) {
            int64_t k = probe == 0 ? kmax : (int64_t)(peft_rng_u64(&rng) % (uint64_t)t->n);
            const float save = t->p[k];
            const double an = t->g[k];
            double e = INFINITY, fd = 0;
            /* two step sizes: a step across a ReLU kink spoils one of them
             * (the second is tried only when the first disagrees) */
            for (int hs = 0; hs < 2 && e >= 3e-2; hs++) {
                const float h = hs ? 3e-3f : 1e-2f;
                t->p[k] = save + h;
                if (refresh) adapter_refresh(a, m, &err);
                double lp = loss_of(g, b);
                t->p[k] = save - h;
                if (refresh) adapter_refresh(a, m, &err);
                double lm = loss_of(g, b);
                t->p[k] = save;
                if (refresh) adapter_refresh(a, m, &err);
                double f = (lp - lm) / (2 * h);
                double eh = fabs(f - an) / (fabs(f) + 1e-2 * gmax + 1e-3);
                if (eh < e) { e = eh; fd = f; }
            }
            worst = fmax(worst, e);
            CHECK_MSG(e < 3e-2, "%s: %s[%lld]: analytic %.6g vs finite difference %.6g", name, t->key, (long long)k, an, fd);
            probes++;
        }
    }
    printf("    %-28s %3d tensors, %4d probes, worst rel err %.3g, %lld params\n", name, a->n_tensors, probes, worst,
           (long long)a->n_params);
}

static void method_case(const char *model, const char *name, method_config mc, bool identity) {
    env e;
    if (open_model(&e, model)) { CHECK(0); return; }
    peft_err err = {0};
    adapter *a = NULL;
    CHECK_OK(adapter_new(e.m, &mc, &a, &err));
    if (!a) { fprintf(stderr, "  %s: %s\n", name, err.msg); close_model(&e); return; }
    data_batch b = make_batch(mc.n_labels);
    train_graph *g = NULL, *g0 = NULL;
    CHECK_OK(tg_new(e.m, a, b.B, b.T, &g, &err));
    CHECK_OK(tg_new(e.m, NULL, b.B, b.T, &g0, &err));
    if (!g || !g0) { fprintf(stderr, "  %s\n", err.msg); goto out; }
    if (identity && mc.n_labels == 0) {
        double l0 = loss_of(g0, &b), l1 = loss_of(g, &b);
        CHECK_MSG(fabs(l0 - l1) <= 1e-6 * fabs(l0), "%s: at initialisation loss %.8f, base %.8f", name, l1, l0);
    }
    perturb(a, e.m, 99);
    fd_check(name, e.m, a, g, &b);

    /* the inference forward agrees with the training graph (causal LM) */
    if (mc.n_labels == 0) {
        const int V = e.m->cfg.vocab, T = b.lengths[0];
        float *lg = malloc(sizeof(float) * (size_t)T * V), *lg2 = malloc(sizeof(float) * (size_t)T * V);
        data_batch b1 = b;
        b1.B = 1;
        b1.n_targets = 0;
        for (int t = 0; t < T; t++) b1.n_targets += b.targets[t] != -100;
        train_graph *g1 = NULL;
        CHECK_OK(tg_new(e.m, a, 1, b.T, &g1, &err));
        double want = g1 ? loss_of(g1, &b1) : NAN;
        tg_free(g1);
        model_state st;
        model_state_init(&st, a);
        CHECK_OK(model_forward(e.m, &st, b.inputs, T, lg, true, &err));
        /* token by token through the cache */
        model_state_reset(&st);
        for (int t = 0; t < T; t++) CHECK_OK(model_forward(e.m, &st, b.inputs + t, 1, lg2 + (size_t)t * V, false, &err));
        model_state_free(&st);
        double s = 0, maxd = 0;
        int cnt = 0;
        for (int t = 0; t < T; t++) {
            for (int v = 0; v < V; v++) maxd = fmax(maxd, fabs(lg[(size_t)t * V + v] - lg2[(size_t)t * V + v]));
            if (b.targets[t] == -100) continue;
            double mx = -INFINITY, z = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, lg[(size_t)t * V + v]);
            for (int v = 0; v < V; v++) z += exp(lg[(size_t)t * V + v] - mx);
            s += log(z) + mx - lg[(size_t)t * V + b.targets[t]];
            cnt++;
        }
        CHECK_MSG(fabs(s / cnt - want) <= 2e-5 * fabs(want), "%s: inference loss %.7f vs training graph %.7f", name,
                  s / cnt, want);
        CHECK_MSG(maxd <= 1e-4, "%s: cached token-by-token logits differ by %g", name, maxd);
        free(lg);
        free(lg2);
    }

    /* save → load → same loss (full fine-tuning saves a model: loaded as one) */
    char dir[256];
    snprintf(dir, sizeof dir, "%s/peft_methods_%d_%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid(), name);
    test_rm_rf(dir);
    CHECK_OK(adapter_save(a, e.m, dir, &err));
    if (err.msg[0] && err.code) fprintf(stderr, "  %s\n", err.msg);
    double want = loss_of(g, &b);
    if (a->ops && (a->ops->flags & METHOD_SAVES_MODEL)) {
        char mp[300];
        snprintf(mp, sizeof mp, "%s%s", dir, e.m->gguf ? "/model.gguf" : "");
        peft_model *m2 = peft_model_load(e.ctx, mp);
        CHECK(m2 != NULL);
        if (m2) {
            train_graph *g2 = NULL;
            CHECK_OK(tg_new(m2, NULL, b.B, b.T, &g2, &err));
            if (g2) {
                double got = loss_of(g2, &b);
                CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "%s: reloaded model loss %.7f vs %.7f", name, got, want);
            }
            tg_free(g2);
            peft_model_free(m2);
        }
    } else {
        adapter *a2 = NULL;
        CHECK_OK(adapter_load(e.m, dir, &a2, &err));
        if (!a2) fprintf(stderr, "  %s: %s\n", name, err.msg);
        if (a2) {
            CHECK(a2->ops == a->ops);
            train_graph *g2 = NULL;
            CHECK_OK(tg_new(e.m, a2, b.B, b.T, &g2, &err));
            if (g2) {
                double got = loss_of(g2, &b);
                CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "%s: reloaded adapter loss %.7f vs %.7f", name, got, want);
            }
            tg_free(g2);
        }
        adapter_free(a2);
    }
    test_rm_rf(dir);

    /* merge: LoRA, DoRA and IA3 fold into the base; the others refuse */
    if (mc.n_labels == 0) {
        int mrc = lora_merge_save(a, e.m, dir, &err);
        if (a->ops && a->ops->merge_row) {
            CHECK_OK(mrc);
            peft_model *m2 = mrc ? NULL : peft_model_load(e.ctx, dir);
            CHECK(mrc || m2 != NULL);
            train_graph *g2 = NULL;
            if (m2 && !tg_new(m2, NULL, b.B, b.T, &g2, &err)) {
                double got = loss_of(g2, &b);
                CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "%s: merged model loss %.7f vs adapter %.7f", name, got, want);
            }
            tg_free(g2);
            peft_model_free(m2);
        } else {
            CHECK_EQ_INT(mrc, PEFT_ERR_UNSUPPORTED);
            CHECK_MSG(strstr(err.msg, "cannot be merged"), "%s", err.msg);
        }
        test_rm_rf(dir);
    }
out:
    tg_free(g);
    tg_free(g0);
    adapter_free(a);
    close_model(&e);
}

static void every_method_on_llama_and_gpt2(void) {
    for (int mi = 0; mi < 2; mi++) {
        const char *model = models[mi];
        const bool gpt2 = mi == 1;
        char name[64];
#define RUN(label, cfg, ident)                                                      \
    do {                                                                            \
        snprintf(name, sizeof name, "%s_%s", gpt2 ? "gpt2" : "llama", label);       \
        method_case(model, name, cfg, ident);                                       \
    } while (0)
        method_config c = mk(&method_lora);
        c.targets = 0;
        RUN("lora", c, true);
        c = mk(&method_dora);
        RUN("dora", c, true);
        RUN("pfeiffer", mk_plug("adapter-pfeiffer", "reduction_factor=8"), true);
        RUN("houlsby", mk_plug("adapter-houlsby", "reduction_factor=8"), true);
        RUN("houlsby_gelu_bert_init", mk_plug("adapter-houlsby", "reduction_factor=8;adapter_init=bert;non_linearity=gelu_new"), false);
        RUN("prompt", mk_plug("prompt", "num_virtual_tokens=3"), false);
        RUN("prefix", mk_plug("prefix", "num_virtual_tokens=3"), false);
        RUN("prefix_projection", mk_plug("prefix", "num_virtual_tokens=3;prefix_projection=true;encoder_hidden_size=16"), false);
        RUN("ia3", mk_plug("ia3", NULL), true);
        if (gpt2) RUN("bitfit", mk_plug("bitfit", NULL), false);
        RUN("full", mk_plug("full", NULL), false);
        c = mk_plug("vera", NULL);
        c.targets = gpt2 ? (1u << ROLE_QKV) | (1u << ROLE_DOWN) : (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
        RUN("vera", c, true);
        RUN("adalora", mk_plug("adalora", "init_r=4;target_r=2"), true);
        if (!gpt2) {
            /* r 4: the factored path (x·B'ᵀ·A'ᵀ) everywhere; r 8: the dense
             * one (ΔW formed) in the graph, factored token by token */
            c = mk_plug("loha", NULL);
            c.targets = (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
            RUN("loha", c, true);
            c.r = 8;
            RUN("loha_r8_dense", c, true);
            c = mk_plug("loha", "rank_pattern={\"^model.layers.0.self_attn.q_proj\": 2, \"down_proj\": 6};"
                                "alpha_pattern={\"layers\\\\.1\\\\.self_attn\\\\.v_proj\": 3}");
            c.targets = (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
            RUN("loha_patterns", c, true);
            /* LoKr: defaults (W1 full; W2 full on q/v, low-rank on down), decompose_both with a factor (W1
             * low-rank, W2 full), both low-rank (r 2), the lycoris init (W2 = 0: also the identity) */
            const uint32_t qvd = (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
            c = mk_plug("lokr", NULL);
            c.targets = qvd;
            RUN("lokr", c, true);
            c = mk_plug("lokr", "decompose_both=true;decompose_factor=16");
            c.targets = qvd;
            RUN("lokr_decompose16", c, true);
            c = mk_plug("lokr", "decompose_both=true");
            c.r = 2;
            c.alpha = 4;
            c.targets = qvd | (1u << ROLE_UP) | (1u << ROLE_O);
            RUN("lokr_r2_lowrank", c, true);
            c = mk_plug("lokr", "init_weights=lycoris;decompose_factor=4");
            c.targets = qvd;
            RUN("lokr_lycoris", c, true);
        }
        /* a classification head on every method */
        static const char *const cls_plug[] = {"lora", "dora", "adapter-pfeiffer", "adapter-houlsby", "prompt", "prefix", "ia3", "bitfit", "full", "adalora"};
        for (size_t k = 0; k < sizeof cls_plug / sizeof *cls_plug; k++) {
            if (!strcmp(cls_plug[k], "bitfit") && !gpt2) continue;
            char label[48];
            c = mk_plug(cls_plug[k], k < 2 ? NULL : "reduction_factor=8;num_virtual_tokens=3");
            snprintf(label, sizeof label, "%s_cls", c.ops->name);
            c.n_labels = 3;
            RUN(label, c, false);
        }
#undef RUN
    }
}

/* Biases (qwen2: IA3 scales q/v biases when merged, BitFit trains them) and
 * a GGUF base (merged Q/K rows go back to llama.cpp's order). */
static void qwen2_and_gguf_bases(void) {
    method_case(MFIX "tiny-qwen2", "qwen2_ia3", mk_plug("ia3", NULL), true);
    method_case(MFIX "tiny-qwen2", "qwen2_bitfit", mk_plug("bitfit", NULL), false);
    method_case(MFIX "tiny-qwen2", "qwen2_dora", mk(&method_dora), true);
    method_case(MFIX "tiny-llama.f32.gguf", "gguf_ia3", mk_plug("ia3", NULL), true);
    method_case(MFIX "tiny-llama.f32.gguf", "gguf_dora", mk(&method_dora), true);
    method_case(MFIX "tiny-llama.q8_0.gguf", "gguf_q8_prefix", mk_plug("prefix", "num_virtual_tokens=3"), false);
    method_case(MFIX "tiny-llama.q8_0.gguf", "gguf_q8_full", mk_plug("full", NULL), false);
    method_case(MFIX "tiny-gpt2.f32.gguf", "gguf_gpt2_full", mk_plug("full", NULL), false);
    /* LoKr on a base with q/v biases and on a GGUF base (merge puts Q/K rows back in llama.cpp's order) */
    method_config c = mk_plug("lokr", NULL);
    c.targets = (1u << ROLE_Q) | (1u << ROLE_K) | (1u << ROLE_V) | (1u << ROLE_DOWN);
    method_case(MFIX "tiny-qwen2", "qwen2_lokr", c, true);
    method_case(MFIX "tiny-llama.f32.gguf", "gguf_lokr", c, true);
}

/* Prefix tuning initialised from a text: the adapter's model on X equals the
 * base model on [text tokens, X] (the table holds those tokens' keys and
 * values, the text's positions come first). */
/* The architectures added as descriptors: every norm, hook and head the
 * block recipe gives them has its gradient checked. */
static void newer_architectures(void) {
    method_case(MFIX "tiny-qwen3", "qwen3_full", mk_plug("full", NULL), false);
    method_case(MFIX "tiny-qwen3.f32.gguf", "qwen3_gguf_ia3", mk_plug("ia3", NULL), true);
    method_case(MFIX "tiny-qwen3", "qwen3_prefix", mk_plug("prefix", "num_virtual_tokens=3"), false);
    method_case(MFIX "tiny-qwen3", "qwen3_houlsby", mk_plug("adapter-houlsby", NULL), true);
    method_case(MFIX "tiny-phi3", "phi3_full", mk_plug("full", NULL), false);
    method_case(MFIX "tiny-phi3.f32.gguf", "phi3_gguf_prompt", mk_plug("prompt", "num_virtual_tokens=3"), false);
    method_case(MFIX "tiny-gemma2", "gemma2_full", mk_plug("full", NULL), false);
    method_case(MFIX "tiny-gemma2", "gemma2_prompt", mk_plug("prompt", "num_virtual_tokens=3"), false);
    method_case(MFIX "tiny-gemma2.f32.gguf", "gemma2_gguf_houlsby", mk_plug("adapter-houlsby", NULL), true);
    method_case(MFIX "tiny-gemma2", "gemma2_ia3", mk_plug("ia3", NULL), true);
}

/* Encoders have no LM head: every method with a classification head
 * (BERT's on the pooler, RoBERTa's dense + out_proj), the padding of
 * row 1 kept out of the bidirectional attention. */
static method_config cls3(method_config c) {
    c.n_labels = 3;
    return c;
}

static void encoders_every_method(void) {
    static const char *const names[] = {"lora", "dora", "ia3", "bitfit", "full", "adapter-houlsby", "adapter-pfeiffer",
                                        "vera", "loha", "lokr"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        char nm[64];
        snprintf(nm, sizeof nm, "bert_%s_cls", names[k]);
        method_case(MFIX "tiny-bert", nm, cls3(mk_plug(names[k], NULL)), false);
    }
    method_case(MFIX "tiny-bert", "bert_prompt_cls", cls3(mk_plug("prompt", "num_virtual_tokens=3")), false);
    method_case(MFIX "tiny-bert", "bert_prefix_cls", cls3(mk_plug("prefix", "num_virtual_tokens=3")), false);
    method_case(MFIX "tiny-roberta", "roberta_lora_cls", cls3(mk_plug("lora", NULL)), false);
    method_case(MFIX "tiny-roberta", "roberta_full_cls", cls3(mk_plug("full", NULL)), false);
    method_case(MFIX "tiny-roberta", "roberta_prompt_cls", cls3(mk_plug("prompt", "num_virtual_tokens=3")), false);
}

static void prefix_init_from_text_is_the_text_as_context(void) {
    for (int mi = 0; mi < 2; mi++) {
        env e;
        if (open_model(&e, models[mi])) { CHECK(0); return; }
        peft_err err = {0};
        static const char text[] = "the cat sat";
        method_config c = mk_plug("prefix", "num_virtual_tokens=5;prompt_init=the cat sat");
        adapter *a = NULL;
        CHECK_OK(adapter_new(e.m, &c, &a, &err));
        int32_t *tids = NULL;
        int nt = 0;
        CHECK_OK(bpe_encode(e.m->tok, text, strlen(text), true, false, &tids, &nt, &err));
        if (!a || !tids || nt == 0) { adapter_free(a); free(tids); close_model(&e); continue; }
        const int P = 5, T = 8, V = e.m->cfg.vocab;
        int32_t all[13];
        for (int p = 0; p < P; p++) all[p] = tids[p % nt];
        for (int t = 0; t < T; t++) all[P + t] = (int32_t)(7 + 13 * t) % 300;
        float *want = malloc(sizeof(float) * (size_t)(P + T) * V), *got = malloc(sizeof(float) * (size_t)T * V);
        model_state st;
        model_state_init(&st, NULL);
        CHECK_OK(model_forward(e.m, &st, all, P + T, want, true, &err));
        model_state_free(&st);
        model_state_init(&st, a);
        CHECK_OK(model_forward(e.m, &st, all + P, T, got, true, &err));
        model_state_free(&st);
        double md = 0;
        for (int64_t k = 0; k < (int64_t)T * V; k++) md = fmax(md, fabs(got[k] - want[(size_t)P * V + k]));
        CHECK_MSG(md <= 1e-4, "%s: prefix from text vs base with the text: %g", models[mi], md);
        printf("    %-36s prefix from \"%s\" vs base model reading it first: max |diff| %.2g\n", models[mi],
               text, md);
        free(want);
        free(got);
        free(tids);
        adapter_free(a);
        close_model(&e);
    }
}

/* LoHa's rank and module dropout (training only): the gradients are those
 * of the training loss with the same masks (finite differences through
 * tg_run with backward and grad_scale 0, which draws the masks without
 * accumulating); the masks change the training loss but not the eval loss;
 * module_dropout 1 leaves the base model. */
static void loha_dropout_is_training_only(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); return; }
    static const char *const opts[] = {"rank_dropout=0.4", "rank_dropout=0.3;module_dropout=0.5", "module_dropout=1"};
    for (int oi = 0; oi < 3; oi++) {
        for (int r = 4; r <= 8; r += 4) {
            peft_err err = {0};
            method_config c = mk_plug("loha", opts[oi]);
            c.r = r;
            c.targets = (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
            adapter *a = NULL;
            train_graph *g = NULL, *g0 = NULL;
            CHECK_OK(adapter_new(e.m, &c, &a, &err));
            data_batch b = make_batch(0);
            if (a) CHECK_OK(tg_new(e.m, a, b.B, b.T, &g, &err));
            CHECK_OK(tg_new(e.m, NULL, b.B, b.T, &g0, &err));
            if (!g || !g0) { tg_free(g); tg_free(g0); adapter_free(a); continue; }
            perturb(a, e.m, 98);
            const uint64_t seed = 1234;
            double ls = 0, eval = loss_of(g, &b), base = loss_of(g0, &b);
            int n = 0;
            memset(a->grads, 0, (size_t)a->n_params * sizeof(float));
            CHECK_OK(tg_run(g, &b, true, 1.0f / (float)b.n_targets, seed, &ls, &n, &err));
            const double train = ls / n;
            if (oi == 2) {
                CHECK_MSG(fabs(train - base) <= 1e-6 * fabs(base), "%s: training loss %.8f, base %.8f", opts[oi], train, base);
                for (int64_t k = 0; k < a->n_params; k++) CHECK(a->grads[k] == 0.0f);
            } else {
                CHECK_MSG(fabs(train - eval) > 1e-6, "%s: training loss %.8f equals eval loss", opts[oi], train);
            }
            double worst = 0;
            peft_rng rng;
            peft_rng_seed(&rng, 3);
            for (int ti = 0; ti < a->n_tensors && oi < 2; ti++) {
                adapter_tensor *t = &a->tensors[ti];
                for (int probe = 0; probe < 2; probe++) {
                    const int64_t k = (int64_t)(peft_rng_u64(&rng) % (uint64_t)t->n);
                    const float save = t->p[k], h = 1e-2f;
                    double lp = 0, lm = 0;
                    t->p[k] = save + h;
                    CHECK_OK(tg_run(g, &b, true, 0.0f, seed, &lp, &n, &err));
                    t->p[k] = save - h;
                    CHECK_OK(tg_run(g, &b, true, 0.0f, seed, &lm, &n, &err));
                    t->p[k] = save;
                    const double fd = (lp - lm) / n / (2 * h), an = t->g[k];
                    const double rel = fabs(fd - an) / (fabs(fd) + 1e-3);
                    worst = fmax(worst, rel);
                    CHECK_MSG(rel < 3e-2, "%s r=%d: %s[%lld]: analytic %.6g vs finite difference %.6g", opts[oi], r, t->key,
                              (long long)k, an, fd);
                }
            }
            CHECK_MSG(fabs(loss_of(g, &b) - eval) <= 1e-7 * fabs(eval), "%s: eval loss changed", opts[oi]);
            printf("    loha %-36s r=%d train %.6f eval %.6f base %.6f, fd worst %.3g\n", opts[oi], r, train, eval, base,
                   worst);
            tg_free(g);
            tg_free(g0);
            adapter_free(a);
        }
    }
    close_model(&e);
}

static void methods_the_base_cannot_take_fail_clearly(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); return; }
    peft_err err = {0};
    adapter *a = NULL;
    method_config c = mk_plug("bitfit", NULL);
    CHECK_EQ_INT(adapter_new(e.m, &c, &a, &err), PEFT_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "no bias"), "%s", err.msg);
    printf("    bitfit on llama: %s\n", err.msg);
    c = mk_plug("prompt", "num_virtual_tokens=200");
    CHECK_EQ_INT(adapter_new(e.m, &c, &a, &err), PEFT_ERR_INVALID);
    printf("    200 virtual tokens: %s\n", err.msg);
    /* virtual tokens + data longer than the context */
    c = mk_plug("prompt", "num_virtual_tokens=20");
    CHECK_OK(adapter_new(e.m, &c, &a, &err));
    train_graph *g = NULL;
    CHECK_EQ_INT(tg_new(e.m, a, 1, 120, &g, &err), PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "virtual"), "%s", err.msg);
    printf("    seq 120 + 20 virtual tokens: %s\n", err.msg);
    adapter_free(a);
    /* an adapter made for another model of the same depth */
    env e2;
    if (!open_model(&e2, MFIX "tiny-gpt2")) {
        c = mk_plug("prefix", "num_virtual_tokens=3");
        CHECK_OK(adapter_new(e.m, &c, &a, &err));
        CHECK_EQ_INT(peft_adapter_attach(e2.m, (peft_adapter *)a), PEFT_ERR_SHAPE);
        CHECK_MSG(strstr(peft_last_error(e2.ctx), "key/value width"), "%s", peft_last_error(e2.ctx));
        printf("    llama prefix adapter on gpt2: %s\n", peft_last_error(e2.ctx));
        train_graph *g2 = NULL;
        CHECK_EQ_INT(tg_new(e2.m, a, 1, 8, &g2, &err), PEFT_ERR_SHAPE);
        adapter_free(a);
        a = NULL;
        /* LoHa takes nn.Linear only: GPT-2's Conv1D is refused, as HF PEFT does */
        c = mk_plug("loha", NULL);
        CHECK_EQ_INT(adapter_new(e2.m, &c, &a, &err), PEFT_ERR_UNSUPPORTED);
        CHECK_MSG(a == NULL && strstr(err.msg, "Conv1D"), "%s", err.msg);
        printf("    loha on gpt2: %s\n", err.msg);
        close_model(&e2);
    }
    c = mk_plug("adapter-pfeiffer", "reduction_factor=128");
    CHECK_EQ_INT(adapter_new(e.m, &c, &a, &err), PEFT_ERR_INVALID);
    printf("    reduction factor 128 on d=64: %s\n", err.msg);
    close_model(&e);
}

/* Corrupt or mismatched adapter files of the new methods: one clear error
 * naming the file, never a crash. */
static void bad_adapter_files_fail_clearly(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); return; }
    char dir[] = "/tmp/peft_badad_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char cfg[300], stp[300];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", dir);
    static float buf[4096];
    peft_err err = {0};
    static const struct {
        const char *config, *tensor;
        int64_t r, c;
        int want;
        const char *msg;
    } cases[] = {
        {"{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 5}", "prompt_embeddings", 3, 64, PEFT_ERR_SHAPE, "[5, 64]"},
        {"{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 4}", "prompt_embeddings", 4, 100, PEFT_ERR_SHAPE, "prompt_embeddings"},
        {"{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 4, \"num_layers\": 7}", "prompt_embeddings", 4, 128, PEFT_ERR_SHAPE, "7 layers"},
        {"{\"peft_type\": \"IA3\", \"target_modules\": [\"k_proj\"], \"feedforward_modules\": []}",
         "base_model.model.model.layers.0.self_attn.k_proj.ia3_l", 64, 1, PEFT_ERR_SHAPE, "ia3_l"},
        {"{\"peft_type\": \"IA3\", \"target_modules\": [\"foo_proj\"]}", "x", 1, 1, PEFT_ERR_INVALID, "foo_proj"},
        {"{\"peft_type\": \"BOTTLENECK\", \"reduction_factor\": 0}", "x", 1, 1, PEFT_ERR_FORMAT, "reduction_factor"},
        {"{\"peft_type\": \"BOTTLENECK\", \"reduction_factor\": 8}", "base_model.model.model.layers.0.output_adapter.adapter_down.weight",
         8, 64, PEFT_ERR_FORMAT, "missing tensor"},
        {"{\"peft_type\": \"BITFIT\"}", "base_model.model.transformer.h.0.attn.c_attn.bias", 192, 1, PEFT_ERR_UNSUPPORTED, "no bias"},
        {"{\"peft_type\": \"OFT\"}", "x", 1, 1, PEFT_ERR_UNSUPPORTED, "OFT"},
        {"{\"peft_type\": \"LOHA\", \"r\": 4, \"target_modules\": [\"q_proj\"], \"layers_to_transform\": [0]}",
         "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a", 64, 3, PEFT_ERR_SHAPE, "hada_w1_a has shape [64, 3]"},
        {"{\"peft_type\": \"LOHA\", \"r\": 4, \"target_modules\": [\"q_proj\"], \"layers_to_transform\": [0]}",
         "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a", 64, 4, PEFT_ERR_FORMAT, "missing tensor"},
        {"{\"peft_type\": \"LOHA\", \"rank_pattern\": {\"q_proj(\": 2}}", "x", 1, 1, PEFT_ERR_INVALID,
         "not a regular expression"},
        {"{\"peft_type\": \"LOHA\", \"rank_pattern\": {\"q_proj\": 2.5}}", "x", 1, 1, PEFT_ERR_INVALID, "integer"},
        {"{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": -3}", "prompt_embeddings", 3, 64, PEFT_ERR_FORMAT, "num_virtual_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        FILE *f = fopen(cfg, "w");
        if (f) { fputs(cases[i].config, f); fclose(f); }
        st_write_tensor t = {cases[i].tensor, PEFT_DT_F32, 2, {cases[i].r, cases[i].c}, buf};
        CHECK_OK(st_write(stp, &t, 1, NULL, &err));
        adapter *a = NULL;
        int rc = adapter_load(e.m, dir, &a, &err);
        CHECK_MSG(rc == cases[i].want && strstr(err.msg, cases[i].msg), "case %zu: rc %d: %s", i, rc, err.msg);
        CHECK(a == NULL);
        adapter_free(a);
        printf("    %s\n", err.msg);
    }
    /* a truncated tensor file */
    FILE *f = fopen(cfg, "w");
    if (f) { fputs("{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 3}", f); fclose(f); }
    st_write_tensor t = {"prompt_embeddings", PEFT_DT_F32, 2, {3, 64}, buf};
    CHECK_OK(st_write(stp, &t, 1, NULL, &err));
    CHECK_EQ_INT(truncate(stp, 100), 0);
    adapter *a = NULL;
    CHECK(adapter_load(e.m, dir, &a, &err) != 0 && strstr(err.msg, "adapter_model.safetensors"));
    printf("    truncated: %s\n", err.msg);
    test_rm_rf(dir);
    close_model(&e);
}

/* VeRA's shared matrices are torch's draws for projection_prng_key (a
 * fresh adapter has exactly the matrices of HF's vera_llama fixture), and
 * a file whose matrices are missing or misshapen is refused by name. */
static void vera_projections_and_bad_files(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); return; }
    peft_err err = {0};
    method_config c = mk_plug("vera", "projection_prng_key=0");
    c.r = 8;
    c.targets = (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
    adapter *a = NULL, *ref = NULL;
    CHECK_OK(adapter_new(e.m, &c, &a, &err));
    CHECK_OK(adapter_load(e.m, "tests/fixtures/methods/vera_llama/adapter", &ref, &err));
    for (int k = 0; a && ref && k < 2; k++) {
        const char *key = k ? "base_model.vera_B" : "base_model.vera_A";
        const adapter_tensor *x = adapter_find_tensor(a, key), *y = adapter_find_tensor(ref, key);
        CHECK(x && y && x->frozen && x->n == y->n);
        if (x && y && x->n == y->n) CHECK_MSG(!memcmp(x->p, y->p, sizeof(float) * (size_t)x->n), "%s differs from HF's draw", key);
    }
    adapter_free(ref);
    ref = NULL;
    /* a copy of the fixture without vera_B, and one with a short vera_A */
    char dir[256], cmd[800];
    snprintf(dir, sizeof dir, "%s/peft_vera_bad_%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    for (int k = 0; k < 2; k++) {
        test_rm_rf(dir);
        CHECK_OK(adapter_save(a, e.m, dir, &err));
        adapter_tensor *t = adapter_find_tensor(a, k ? "base_model.vera_A" : "base_model.vera_B");
        if (!t) continue;
        adapter_tensor keep = *t;
        if (k) t->shape[1] -= 1, t->n -= t->shape[0];   /* [r, in_max - 1] */
        else t->saved = false;                          /* left out */
        CHECK_OK(adapter_save(a, e.m, dir, &err));
        *t = keep;
        CHECK(adapter_load(e.m, dir, &ref, &err) != 0);
        CHECK_MSG(strstr(err.msg, k ? "base_model.vera_A" : "base_model.vera_B") != NULL, "%s", err.msg);
        printf("    %s: %s\n", k ? "short vera_A" : "no vera_B", err.msg);
        adapter_free(ref);
        ref = NULL;
    }
    (void)cmd;
    test_rm_rf(dir);
    adapter_free(a);
    close_model(&e);
}

/* ---- LoKr ---------------------------------------------------------------------------- */

/* lokr.c's factorization (HF PEFT's lycoris_utils.factorization) */
void lokr_factorization(int dim, int factor, int *m_out, int *n_out);

static void lokr_factorization_matches_hf(void) {
    /* tests/fixtures/methods/README.md's examples, from HF PEFT 0.21.2 */
    static const struct { int dim, factor, m, n; } t[] = {
        {64, -1, 8, 8},  {128, -1, 8, 16}, {32, -1, 4, 8}, {192, -1, 12, 16}, {127, -1, 1, 127},
        {64, 16, 16, 4}, {32, 16, 16, 2},  {128, 16, 16, 8}, {576, -1, 24, 24}, {1536, -1, 32, 48},
        {1, -1, 1, 1},   {64, 1, 1, 64},    {64, 64, 64, 1},
        /* a factor that does not divide: the balanced pair whose smaller part is <= factor */
        {64, 3, 2, 32},  {128, 5, 4, 32},  {100, 6, 5, 20},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        int m = 0, n = 0;
        lokr_factorization(t[i].dim, t[i].factor, &m, &n);
        CHECK_MSG(m == t[i].m && n == t[i].n, "factorization(%d, %d) = (%d, %d), HF gives (%d, %d)", t[i].dim, t[i].factor,
                  m, n, t[i].m, t[i].n);
    }
    /* the full vs low-rank rule on the created tensors (README table, lokr_llama_r2) */
    env e;
    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); return; }
    method_config c = mk_plug("lokr", "decompose_both=true");
    c.r = 2;
    c.targets = (1u << ROLE_V) | (1u << ROLE_DOWN);
    adapter *a = NULL;
    peft_err err = {0};
    CHECK_OK(adapter_new(e.m, &c, &a, &err));
    static const struct { const char *key; int64_t r, c; } want[] = {
        {"base_model.model.model.layers.0.self_attn.v_proj.lokr_w1_a", 4, 2},
        {"base_model.model.model.layers.0.self_attn.v_proj.lokr_w1_b", 2, 8},
        {"base_model.model.model.layers.0.self_attn.v_proj.lokr_w2_a", 8, 2},
        {"base_model.model.model.layers.0.self_attn.v_proj.lokr_w2_b", 2, 8},
        {"base_model.model.model.layers.1.mlp.down_proj.lokr_w2_b", 2, 16},
    };
    for (size_t i = 0; a && i < sizeof want / sizeof *want; i++) {
        const adapter_tensor *t2 = adapter_find_tensor(a, want[i].key);
        CHECK_MSG(t2 && t2->shape[0] == want[i].r && t2->shape[1] == want[i].c, "%s: shape [%lld, %lld], want [%lld, %lld]",
                  want[i].key, t2 ? (long long)t2->shape[0] : -1LL, t2 ? (long long)t2->shape[1] : -1LL,
                  (long long)want[i].r, (long long)want[i].c);
    }
    CHECK(a && a->n_tensors == 16);
    adapter_free(a);
    close_model(&e);
}

/* Training-only dropout, on the hook itself: with the same seed the
 * backward is the gradient of the forward (finite differences on x and on
 * parameters); a rank-dropout row is either the evaluation row times the
 * mask scale or zero; module dropout near 1 drops the whole term. */
static void lokr_dropout_is_consistent(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); return; }
    static const char *opts[] = {"rank_dropout=0.5", "rank_dropout=0.5;rank_dropout_scale=true;decompose_both=true",
                                 "module_dropout=0.9999"};
    for (size_t oi = 0; oi < sizeof opts / sizeof *opts; oi++) {
        method_config c = mk_plug("lokr", opts[oi]);
        c.targets = 1u << ROLE_DOWN;
        adapter *a = NULL;
        peft_err err = {0};
        CHECK_OK(adapter_new(e.m, &c, &a, &err));
        if (!a) { fprintf(stderr, "  %s\n", err.msg); continue; }
        perturb(a, e.m, 3);
        const int N = 5, l = 1;
        const kern_weight *W = &e.m->layers[l].lin[ROLE_DOWN].w;
        const int in = (int)W->cols, out = (int)W->rows;
        float *x = malloc(sizeof(float) * (size_t)N * in), *y = calloc((size_t)N * out, sizeof(float));
        float *ye = calloc((size_t)N * out, sizeof(float)), *R = malloc(sizeof(float) * (size_t)N * out);
        float *dx = calloc((size_t)N * in, sizeof(float));
        float *scr = malloc(sizeof(float) * (a->ops->scratch_floats(a, e.m, N) + 1));
        peft_rng rng;
        peft_rng_seed(&rng, 17);
        for (int i = 0; i < N * in; i++) x[i] = peft_rng_normal(&rng);
        for (int i = 0; i < N * out; i++) R[i] = peft_rng_normal(&rng);
        lin_call lc;
        memset(&lc, 0, sizeof lc);
        lc.m = e.m;
        lc.l = l;
        lc.r = ROLE_DOWN;
        lc.W = W;
        lc.in = in;
        lc.out = out;
        lc.N = N;
        lc.x = x;
        lc.ldy = out;
        lc.scr = scr;
        lc.seed = 12345;
        lc.nt = 2;
        /* f = Σ R ⊙ delta(x) */
#define F_OF(res)                                                        \
    do {                                                                 \
        memset(y, 0, sizeof(float) * (size_t)N * out);                   \
        lc.y = y;                                                        \
        CHECK_OK(a->ops->lin_fwd(a, &lc));                               \
        res = 0;                                                         \
        for (int i = 0; i < N * out; i++) res += (double)R[i] * y[i];    \
    } while (0)
        lc.y = ye;
        CHECK_OK(a->ops->lin_fwd(a, &lc));   /* evaluation: no dropout */
        lc.train = true;
        double f0;
        F_OF(f0);
        int dropped = 0, kept = 0;
        bool rows_ok = true;
        for (int o = 0; o < out; o++) {
            double ratio = NAN;
            bool zero = true;
            for (int n = 0; n < N; n++) {
                const float v = y[(size_t)n * out + o], w = ye[(size_t)n * out + o];
                if (v != 0.0f) zero = false;
                if (fabsf(w) > 1e-3f) {
                    const double q = v / w;
                    if (isnan(ratio)) ratio = q;
                    else if (fabs(q - ratio) > 1e-4 * fabs(ratio) + 1e-6) rows_ok = false;
                }
            }
            dropped += zero;
            kept += !zero;
        }
        CHECK_MSG(rows_ok, "%s: a rank-dropout row is not the evaluation row times one factor", opts[oi]);
        if (oi < 2) CHECK_MSG(dropped > out / 5 && kept > out / 5, "%s: %d rows dropped, %d kept", opts[oi], dropped, kept);
        else CHECK_MSG(kept == 0, "%s: module dropout 0.9999 kept %d rows", opts[oi], kept);
        memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
        CHECK_OK(a->ops->lin_bwd(a, &lc, R, out, dx));
        double worst = 0;
        int probes = 0;
        /* dx, then a few entries of every tensor */
        for (int pi = 0; pi < 6; pi++) {
            const int i = (int)(peft_rng_u64(&rng) % (uint64_t)(N * in));
            const float sv = x[i];
            double fp, fm;
            x[i] = sv + 1e-2f;
            F_OF(fp);
            x[i] = sv - 1e-2f;
            F_OF(fm);
            x[i] = sv;
            const double fd = (fp - fm) / 2e-2, e2 = fabs(fd - dx[i]) / (fabs(fd) + 1e-2);
            worst = fmax(worst, e2);
            CHECK_MSG(e2 < 1e-2, "%s: dx[%d] %.6g vs finite difference %.6g", opts[oi], i, dx[i], fd);
            probes++;
        }
        for (int ti = 0; ti < a->n_tensors; ti++) {
            adapter_tensor *t = &a->tensors[ti];
            if (!strstr(t->key, "layers.1.")) continue;
            for (int pi = 0; pi < 3; pi++) {
                const int64_t k2 = (int64_t)(peft_rng_u64(&rng) % (uint64_t)t->n);
                const float sv = t->p[k2];
                double fp, fm;
                t->p[k2] = sv + 1e-2f;
                F_OF(fp);
                t->p[k2] = sv - 1e-2f;
                F_OF(fm);
                t->p[k2] = sv;
                const double fd = (fp - fm) / 2e-2, e2 = fabs(fd - t->g[k2]) / (fabs(fd) + 1e-2);
                worst = fmax(worst, e2);
                CHECK_MSG(e2 < 1e-2, "%s: %s[%lld] %.6g vs finite difference %.6g", opts[oi], t->key, (long long)k2,
                          t->g[k2], fd);
                probes++;
            }
        }
#undef F_OF
        printf("    lokr %-58s %3d of %d rows dropped, %2d probes, worst rel err %.2g\n", opts[oi], dropped, out, probes,
               worst);
        free(x);
        free(y);
        free(ye);
        free(R);
        free(dx);
        free(scr);
        adapter_free(a);
    }
    close_model(&e);
}

static void lokr_bad_input_fails_clearly(void) {
    env e;
    if (open_model(&e, MFIX "tiny-gpt2")) { CHECK(0); return; }
    peft_err err = {0};
    adapter *a = NULL;
    method_config c = mk_plug("lokr", NULL);
    CHECK_EQ_INT(adapter_new(e.m, &c, &a, &err), PEFT_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "Conv1D"), "%s", err.msg);
    printf("    lokr on gpt2: %s\n", err.msg);
    /* an HF-style LoKr file for GPT-2 */
    char dir[] = "/tmp/peft_lokrbad_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char cfg[300], stp[300];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", dir);
    static float buf[4096];
    FILE *f = fopen(cfg, "w");
    if (f) { fputs("{\"peft_type\": \"LOKR\", \"r\": 4, \"target_modules\": [\"c_attn\"]}", f); fclose(f); }
    st_write_tensor t0 = {"base_model.model.transformer.h.0.attn.c_attn.lokr_w1", PEFT_DT_F32, 2, {8, 12}, buf};
    CHECK_OK(st_write(stp, &t0, 1, NULL, &err));
    CHECK_EQ_INT(adapter_load(e.m, dir, &a, &err), PEFT_ERR_UNSUPPORTED);
    CHECK_MSG(a == NULL && strstr(err.msg, "adapter_config.json") && strstr(err.msg, "Conv1D"), "%s", err.msg);
    printf("    %s\n", err.msg);
    close_model(&e);

    if (open_model(&e, MFIX "tiny-llama")) { CHECK(0); test_rm_rf(dir); return; }
    static const char *bad_opts[] = {"decompose_factor=0", "decompose_factor=-3", "decompose_factor=2.5",
                                     "decompose_factor=1e9", "rank_dropout=1", "init_weights=gaussian"};
    for (size_t i = 0; i < sizeof bad_opts / sizeof *bad_opts; i++) {
        c = mk_plug("lokr", bad_opts[i]);
        CHECK_EQ_INT(adapter_new(e.m, &c, &a, &err), PEFT_ERR_INVALID);
        CHECK_MSG(a == NULL && strstr(err.msg, "lokr"), "%s: %s", bad_opts[i], err.msg);
        printf("    %-22s %s\n", bad_opts[i], err.msg);
    }
    static const struct {
        const char *config, *tensor;
        int64_t r, c;
        int want;
        const char *msg;
    } cases[] = {
        /* q_proj 64 -> 64, r 4: W1 [8, 8] full */
        {"{\"peft_type\": \"LOKR\", \"r\": 4, \"target_modules\": [\"q_proj\"]}",
         "base_model.model.model.layers.0.self_attn.q_proj.lokr_w1", 8, 4, PEFT_ERR_SHAPE, "lokr_w1 has shape [8, 4]"},
        /* a low-rank W1 where the rule says full */
        {"{\"peft_type\": \"LOKR\", \"r\": 4, \"target_modules\": [\"q_proj\"]}",
         "base_model.model.model.layers.0.self_attn.q_proj.lokr_w1_a", 8, 4, PEFT_ERR_FORMAT, "missing tensor"},
        {"{\"peft_type\": \"LOKR\", \"decompose_factor\": 0}", "x", 1, 1, PEFT_ERR_FORMAT, "decompose_factor"},
        {"{\"peft_type\": \"LOKR\", \"decompose_factor\": 1e12}", "x", 1, 1, PEFT_ERR_FORMAT, "decompose_factor"},
        {"{\"peft_type\": \"LOKR\", \"r\": 0}", "x", 1, 1, PEFT_ERR_FORMAT, "\"r\""},
        {"{\"peft_type\": \"LOKR\", \"init_weights\": \"pissa\"}", "x", 1, 1, PEFT_ERR_FORMAT, "init_weights"},
        {"{\"peft_type\": \"LOKR\", \"rank_pattern\": {\"q_proj\": 2}}", "x", 1, 1, PEFT_ERR_UNSUPPORTED, "rank_pattern"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        f = fopen(cfg, "w");
        if (f) { fputs(cases[i].config, f); fclose(f); }
        st_write_tensor t = {cases[i].tensor, PEFT_DT_F32, 2, {cases[i].r, cases[i].c}, buf};
        CHECK_OK(st_write(stp, &t, 1, NULL, &err));
        int rc = adapter_load(e.m, dir, &a, &err);
        CHECK_MSG(rc == cases[i].want && strstr(err.msg, cases[i].msg), "case %zu: rc %d: %s", i, rc, err.msg);
        CHECK(a == NULL);
        printf("    %s\n", err.msg);
    }
    test_rm_rf(dir);
    close_model(&e);
}

int main(void) {
    TEST_RUN(every_method_on_llama_and_gpt2);
    TEST_RUN(qwen2_and_gguf_bases);
    TEST_RUN(newer_architectures);
    TEST_RUN(encoders_every_method);
    TEST_RUN(prefix_init_from_text_is_the_text_as_context);
    TEST_RUN(loha_dropout_is_training_only);
    TEST_RUN(methods_the_base_cannot_take_fail_clearly);
    TEST_RUN(bad_adapter_files_fail_clearly);
    TEST_RUN(vera_projections_and_bad_files);
    TEST_RUN(lokr_factorization_matches_hf);
    TEST_RUN(lokr_dropout_is_consistent);
    TEST_RUN(lokr_bad_input_fails_clearly);
    TEST_MAIN_END();
}
