/* test_session.c — one read-only model, many sessions (peft_session_*,
 * peft_batch_*):
 *   - a mixed-adapter batch (rows of different methods, the base, scaled
 *     and summed LoRAs, prompts of different lengths, virtual tokens) gives
 *     each session's logits as running it alone, at prefill and over
 *     several decode steps;
 *   - a LoRA at scale s is the LoRA with s·B; two scaled LoRAs are HF's
 *     "cat" combination of them (the exact sum of the deltas);
 *   - what cannot share a batch or be scaled is refused, and a refused or
 *     failed batch leaves every cache as it was;
 *   - threads generating from one model with different adapters get
 *     exactly what running them one after another gives, and so do ten
 *     methods' sessions decoding at once (this file also runs under
 *     ThreadSanitizer in CI: scripts/test.sh --tsan);
 *   - an adapter freed by its owner while a session uses it lives until the
 *     session lets go. */
#include "peft/lora.h"
#include "peft/method.h"
#include "test.h"

#include <math.h>
#include <pthread.h>

#define MFIX "tests/fixtures/models/"

typedef struct {
    peft_ctx *ctx;
    peft_model *m;
} env;

/* libgomp is not built with ThreadSanitizer, which then takes the joins of
 * an OpenMP team for races: under it every product runs on the calling
 * thread, and the threads of the test are the only ones. */
#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#else
#define TSAN 0
#endif

static int open_model(env *e, const char *path, int threads) {
    peft_ctx_params cp = peft_ctx_default_params();
    if (TSAN) threads = 1;
    cp.n_threads = threads;
    e->ctx = peft_init(&cp);
    e->m = e->ctx ? peft_model_load(e->ctx, path) : NULL;
    if (!e->m) fprintf(stderr, "  cannot load %s: %s\n", path, e->ctx ? peft_last_error(e->ctx) : "no context");
    return e->m ? 0 : -1;
}

static void close_model(env *e) {
    peft_model_free(e->m);
    peft_free(e->ctx);
}

/* A method's adapter for m with every trainable value moved off its
 * initialisation, so that its effect on the logits is not zero. */
static adapter *make_adapter(const peft_model *m, const char *method, const char *options, uint32_t targets,
                             uint64_t seed) {
    method_config c;
    memset(&c, 0, sizeof c);
    c.ops = method_find(method);
    c.r = 4;
    c.alpha = 8;
    c.seed = seed;
    c.targets = targets;
    snprintf(c.options, sizeof c.options, "%s", options ? options : "");
    adapter *a = NULL;
    peft_err err = {0};
    if (!c.ops || adapter_new(m, &c, &a, &err)) {
        fprintf(stderr, "  %s: %s\n", method, c.ops ? err.msg : "not in the registry");
        return NULL;
    }
    peft_rng rng;
    peft_rng_seed(&rng, seed * 31 + 5);
    for (int64_t k = 0; k < a->n_params; k++) a->params[k] += 0.1f * peft_rng_normal(&rng);
    adapter_refresh(a, m, &err);
    return a;
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

#define N_CASE 15
#define STEPS 4

/* The case list: a name, the adapters and scales of one session. */
typedef struct {
    const char *name;
    adapter *ad[2];
    float scale[2];
    int n;
} scase;

static void batch_case(const char *model) {
    env e;
    if (open_model(&e, model, 2)) { CHECK(0); return; }
    peft_model *m = e.m;
    const bool gpt2 = m->cfg.desc->fused_gate_up || strstr(model, "gpt2");
    const uint32_t qvd = gpt2 ? (1u << ROLE_QKV) | (1u << ROLE_DOWN) : (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
    adapter *lora = make_adapter(m, "lora", NULL, 0, 1), *lora2 = make_adapter(m, "lora", NULL, qvd, 2);
    adapter *made[] = {lora, lora2,
                       make_adapter(m, "dora", NULL, 0, 3),
                       make_adapter(m, "ia3", NULL, 0, 4),
                       gpt2 ? NULL : make_adapter(m, "loha", NULL, qvd, 5),
                       gpt2 ? NULL : make_adapter(m, "lokr", NULL, qvd, 6),
                       make_adapter(m, "vera", NULL, qvd, 7),
                       make_adapter(m, "adapter-pfeiffer", "reduction_factor=8", 0, 8),
                       make_adapter(m, "adapter-houlsby", "reduction_factor=8", 0, 9),
                       make_adapter(m, "prompt", "num_virtual_tokens=3", 0, 10),
                       make_adapter(m, "prefix", "num_virtual_tokens=3", 0, 11),
                       make_adapter(m, "adalora", NULL, 0, 12)};
    const int n_made = (int)(sizeof made / sizeof *made);
    /* the same adapter in two places, and the base between sessions of one
     * adapter, so that groups are not simply the distinct adapters */
    scase cs[N_CASE] = {{"lora", {lora}, {1}, 1},
                        {"base", {NULL}, {1}, 0},
                        {"lora again", {lora}, {1}, 1},
                        {"lora again, adjacent", {lora}, {1}, 1},
                        {"dora", {made[2]}, {1}, 1},
                        {"ia3", {made[3]}, {1}, 1},
                        {"loha", {made[4]}, {1}, made[4] ? 1 : -1},
                        {"lokr", {made[5]}, {1}, made[5] ? 1 : -1},
                        {"vera", {made[6]}, {1}, 1},
                        {"pfeiffer", {made[7]}, {1}, 1},
                        {"houlsby", {made[8]}, {1}, 1},
                        {"prompt", {made[9]}, {1}, 1},
                        {"prefix", {made[10]}, {1}, 1},
                        {"adalora", {made[11]}, {1}, 1},
                        {"0.5 lora + 1.5 lora2", {lora, lora2}, {0.5f, 1.5f}, 2}};
    for (int i = 0; i < n_made; i++)
        if (!made[i] && !(gpt2 && (i == 4 || i == 5))) CHECK_MSG(0, "adapter %d of %s not made", i, model);
    const int V = m->cfg.vocab;
    peft_session *solo[N_CASE] = {0}, *bat[N_CASE] = {0};
    int n = 0, idx[N_CASE];
    peft_error pe;
    for (int c = 0; c < N_CASE; c++) {
        if (cs[c].n < 0) continue;
        idx[n] = c;
        solo[n] = peft_session_new(m, &pe);
        bat[n] = peft_session_new(m, &pe);
        CHECK(solo[n] && bat[n]);
        if (!solo[n] || !bat[n]) break;
        CHECK_OK(peft_session_set_adapters(solo[n], (peft_adapter *const *)cs[c].ad, cs[c].scale, cs[c].n));
        CHECK_OK(peft_session_set_adapters(bat[n], (peft_adapter *const *)cs[c].ad, cs[c].scale, cs[c].n));
        n++;
    }
    /* prompts of 1 to 7 tokens, then STEPS single tokens */
    int32_t ids[N_CASE * 8 + N_CASE * STEPS];
    int n_ids[N_CASE], tot = 0;
    peft_rng rng;
    peft_rng_seed(&rng, 5);
    for (int i = 0; i < n; i++) {
        n_ids[i] = 1 + (i * 3) % 7;
        for (int t = 0; t < n_ids[i]; t++) ids[tot++] = (int32_t)(peft_rng_u64(&rng) % (uint64_t)V);
    }
    float *want = malloc(sizeof(float) * (size_t)n * V), *got = malloc(sizeof(float) * (size_t)n * V);
    double worst[N_CASE] = {0};
    for (int step = 0; step <= STEPS && want && got; step++) {
        for (int i = 0, off = 0; i < n; off += n_ids[i], i++)
            if (peft_session_decode(solo[i], ids + off, n_ids[i], want + (size_t)i * V)) {
                CHECK_MSG(0, "%s alone: %s", cs[idx[i]].name, peft_session_error(solo[i]));
                goto out;
            }
        peft_batch *b = peft_batch_new(m, &pe);
        CHECK(b != NULL);
        if (!b) goto out;
        const int rc = peft_batch_decode(b, bat, n, ids, n_ids, got);
        CHECK_MSG(rc == 0, "%s step %d: %s", model, step, peft_batch_error(b));
        peft_batch_free(b);
        if (rc) goto out;
        for (int i = 0; i < n; i++) {
            const double scale = fmax(1.0, max_abs(want + (size_t)i * V, (size_t)V));
            worst[i] = fmax(worst[i], test_max_abs_diff(got + (size_t)i * V, want + (size_t)i * V, (size_t)V) / scale);
            CHECK_EQ_INT(peft_session_n_past(bat[i]), peft_session_n_past(solo[i]));
        }
        /* the next token of every session: the solo run's greedy choice */
        tot = 0;
        for (int i = 0; i < n; i++) {
            int best = 0;
            for (int v = 1; v < V; v++)
                if (want[(size_t)i * V + v] > want[(size_t)i * V + best]) best = v;
            ids[tot++] = best;
            n_ids[i] = 1;
        }
    }
    for (int i = 0; i < n; i++) {
        CHECK_MSG(worst[i] <= 1e-5, "%s, %s: batch vs alone, max |diff| %.3g of the largest logit", model,
                  cs[idx[i]].name, worst[i]);
        printf("    %-34s %-22s batch of %d vs alone: max |diff| %.2g (relative)\n", model + strlen(MFIX),
               cs[idx[i]].name, n, worst[i]);
    }
out:
    free(want);
    free(got);
    for (int i = 0; i < n; i++) {
        peft_session_free(solo[i]);
        peft_session_free(bat[i]);
    }
    for (int i = 0; i < n_made; i++) adapter_free(made[i]);
    close_model(&e);
}

static void mixed_batch_equals_each_session_alone(void) {
    batch_case(MFIX "tiny-llama");
    batch_case(MFIX "tiny-gpt2");
    batch_case(MFIX "tiny-qwen2.q8_0.gguf");
}

/* Logits of T tokens from position 0 on a session with adapters a, scales. */
static int logits_with(peft_model *m, adapter *const *a, const float *scales, int n, const int32_t *ids, int T,
                       float *out) {
    peft_error pe;
    peft_session *s = peft_session_new(m, &pe);
    if (!s) return pe.status;
    int rc = peft_session_set_adapters(s, (peft_adapter *const *)a, scales, n);
    if (!rc) rc = peft_session_logits(s, ids, T, out);
    if (rc) fprintf(stderr, "  %s\n", peft_session_error(s));
    peft_session_free(s);
    return rc;
}

static void scaled_loras_are_scaled_deltas(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama", 2)) { CHECK(0); return; }
    peft_model *m = e.m;
    adapter *a = make_adapter(m, "lora", NULL, 0, 21), *a2 = make_adapter(m, "lora", NULL, 0, 21);
    adapter *b = make_adapter(m, "lora", NULL, (1u << ROLE_Q) | (1u << ROLE_UP), 22);
    const int T = 9, V = m->cfg.vocab;
    int32_t ids[9];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 37 + 11) % V);
    float *x = malloc(sizeof(float) * (size_t)T * V), *y = malloc(sizeof(float) * (size_t)T * V);
    if (a && a2 && b && x && y) {
        /* a2 = a with every lora_B times s */
        const float s = 0.37f;
        for (int k = 0; k < a2->n_tensors; k++)
            if (strstr(a2->tensors[k].key, "lora_B"))
                for (int64_t j = 0; j < a2->tensors[k].n; j++) a2->tensors[k].p[j] *= s;
        CHECK_OK(logits_with(m, &a, &s, 1, ids, T, x));
        CHECK_OK(logits_with(m, &a2, NULL, 1, ids, T, y));
        double d = test_max_abs_diff(x, y, (size_t)T * V) / fmax(1, max_abs(y, (size_t)T * V));
        CHECK_MSG(d <= 1e-5, "LoRA at scale %g vs B times %g: %.3g", s, s, d);
        printf("    LoRA at scale 0.37 vs its B x 0.37: max |diff| %.2g (relative)\n", d);
        /* 0.6·a + 1.7·b against HF's cat combination (the exact sum of the deltas) */
        adapter *in[2] = {a, b}, *cat = NULL;
        const double w[2] = {0.6, 1.7};
        const float wf[2] = {0.6f, 1.7f};
        combine_opts o = combine_default_opts();
        o.type = COMBINE_CAT;
        peft_err err = {0};
        CHECK_OK(lora_combine(m, (const adapter *const *)in, w, 2, NULL, &o, &cat, &err));
        if (cat) {
            CHECK_OK(logits_with(m, in, wf, 2, ids, T, x));
            CHECK_OK(logits_with(m, &cat, NULL, 1, ids, T, y));
            d = test_max_abs_diff(x, y, (size_t)T * V) / fmax(1, max_abs(y, (size_t)T * V));
            CHECK_MSG(d <= 1e-5, "0.6 a + 1.7 b vs their cat combination: %.3g", d);
            printf("    0.6 LoRA a + 1.7 LoRA b vs HF-style cat combination: max |diff| %.2g (relative)\n", d);
            adapter_free(cat);
        }
    }
    free(x);
    free(y);
    adapter_free(a);
    adapter_free(a2);
    adapter_free(b);
    close_model(&e);
}

static void what_cannot_mix_is_refused(void) {
    env e;
    if (open_model(&e, MFIX "tiny-gpt2", 2)) { CHECK(0); return; }
    peft_model *m = e.m;
    adapter *bitfit = make_adapter(m, "bitfit", NULL, 0, 31), *lora = make_adapter(m, "lora", NULL, 0, 32);
    adapter *ia3 = make_adapter(m, "ia3", NULL, 0, 33), *prompt = make_adapter(m, "prompt", "num_virtual_tokens=2", 0, 34);
    peft_error pe;
    peft_session *s[3] = {peft_session_new(m, &pe), peft_session_new(m, &pe), peft_session_new(m, &pe)};
    peft_batch *b = peft_batch_new(m, &pe);
    const int V = m->cfg.vocab;
    float *lg = malloc(sizeof(float) * 3 * (size_t)V), *ref = malloc(sizeof(float) * (size_t)V);
    if (bitfit && lora && ia3 && prompt && s[0] && s[1] && s[2] && b && lg && ref) {
        /* scaling or summing needs deltas on linear outputs */
        const float half = 0.5f;
        CHECK_EQ_INT(peft_session_set_adapters(s[0], (peft_adapter *const *)&ia3, &half, 1), PEFT_ERR_UNSUPPORTED);
        CHECK(strstr(peft_session_error(s[0]), "ia3") != NULL);
        adapter *two[2] = {lora, prompt};
        CHECK_EQ_INT(peft_session_set_adapters(s[0], (peft_adapter *const *)two, NULL, 2), PEFT_ERR_UNSUPPORTED);
        /* BitFit changes biases: it shares a batch only with its own sessions */
        CHECK_OK(peft_session_set_adapter(s[0], (peft_adapter *)bitfit));
        CHECK_OK(peft_session_set_adapter(s[1], (peft_adapter *)lora));
        CHECK_OK(peft_session_set_adapter(s[2], (peft_adapter *)bitfit));
        int32_t ids[3] = {5, 17, 40};
        int n_ids[3] = {1, 1, 1};
        CHECK_OK(peft_batch_decode(b, s, 1, ids, n_ids, lg));
        CHECK_EQ_INT(peft_batch_decode(b, s, 2, ids, n_ids, lg), PEFT_ERR_UNSUPPORTED);
        CHECK(strstr(peft_batch_error(b), "bitfit") != NULL);
        CHECK_EQ_INT(peft_session_n_past(s[0]), 1);
        CHECK_EQ_INT(peft_session_n_past(s[1]), 0);
        peft_session *same[2] = {s[0], s[2]};
        CHECK_OK(peft_batch_decode(b, same, 2, ids, n_ids, lg));
        peft_session *twice[2] = {s[1], s[1]};
        CHECK_EQ_INT(peft_batch_decode(b, twice, 2, ids, n_ids, lg), PEFT_ERR_INVALID);
        /* a sequence past the context fails the batch and changes no cache */
        CHECK_OK(peft_session_decode(s[1], ids, 3, NULL));
        int32_t *many = calloc((size_t)m->cfg.n_ctx, sizeof *many);
        int n_big[2] = {m->cfg.n_ctx - 2, 1};   /* s[1] holds 3 already */
        peft_session *u = peft_session_new(m, &pe);
        if (u) CHECK_OK(peft_session_set_adapter(u, (peft_adapter *)lora));
        peft_session *pair[2] = {s[1], u};
        if (many) {
            many[0] = 7;
            CHECK_EQ_INT(peft_batch_decode(b, pair, 2, many, n_big, lg), PEFT_ERR_INVALID);
            CHECK(strstr(peft_batch_error(b), "context length") != NULL);
        }
        free(many);
        CHECK_EQ_INT(peft_session_n_past(u), 0);
        peft_session_free(u);
        CHECK_EQ_INT(peft_session_n_past(s[1]), 3);
        CHECK_EQ_INT(peft_session_n_past(s[0]), 2);
        /* and the session goes on as if the failed batch had not been */
        peft_session *t = peft_session_new(m, &pe);
        int32_t seq[4] = {5, 17, 40, 7};
        if (t) {
            CHECK_OK(peft_session_set_adapter(t, (peft_adapter *)lora));
            CHECK_OK(peft_session_decode(t, seq, 4, ref));
        }
        CHECK_OK(peft_session_decode(s[1], seq + 3, 1, lg));
        CHECK(test_max_abs_diff(lg, ref, (size_t)V) <= 1e-5 * fmax(1, max_abs(ref, (size_t)V)));
        peft_session_free(t);
        /* an adapter of another model */
        env e2;
        if (!open_model(&e2, MFIX "tiny-llama", 1)) {
            adapter *other = make_adapter(e2.m, "lora", NULL, 0, 35);
            if (other) CHECK_EQ_INT(peft_session_set_adapter(s[0], (peft_adapter *)other), PEFT_ERR_SHAPE);
            adapter_free(other);
            close_model(&e2);
        }
    } else
        CHECK(0);
    free(lg);
    free(ref);
    peft_batch_free(b);
    for (int i = 0; i < 3; i++) peft_session_free(s[i]);
    adapter_free(bitfit);
    adapter_free(lora);
    adapter_free(ia3);
    adapter_free(prompt);
    close_model(&e);
}

/* ---- threads -------------------------------------------------------------------- */

#define N_THREADS 5
#define GEN 12

typedef struct {
    peft_model *m;
    peft_adapter *ad;
    const char *prompt;
    char text[1024];
    int len, rc;
    float logits_sum;
} job;

static int collect(const char *piece, int len, void *user) {
    job *j = user;
    if (j->len + len < (int)sizeof j->text) {
        memcpy(j->text + j->len, piece, (size_t)len);
        j->len += len;
        j->text[j->len] = 0;
    }
    return 0;
}

static void *run_job(void *u) {
    job *j = u;
    peft_error pe;
    j->len = 0;
    j->text[0] = 0;
    peft_session *s = peft_session_new(j->m, &pe);
    if (!s) { j->rc = pe.status; return NULL; }
    peft_session_set_threads(s, 1);
    j->rc = peft_session_set_adapter(s, j->ad);
    peft_sample_params sp = peft_sample_default_params();
    sp.max_tokens = GEN;
    if (!j->rc) j->rc = peft_session_generate(s, j->prompt, &sp, collect, j, NULL);
    /* and sampled, with a seed of its own */
    sp.temperature = 0.8f;
    sp.seed = 1234;
    if (!j->rc) j->rc = peft_session_generate(s, j->prompt, &sp, collect, j, NULL);
    peft_session_free(s);
    return NULL;
}

static void threads_share_one_model(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama", 1)) { CHECK(0); return; }
    peft_adapter *a[N_THREADS] = {peft_adapter_load(e.m, "tests/fixtures/lora/llama_all/final_adapter"),
                                  peft_adapter_load(e.m, "tests/fixtures/lora/llama_qv_rslora/final_adapter"), NULL,
                                  NULL, NULL};
    CHECK(a[0] && a[1]);
    peft_error pe;
    a[2] = peft_adapter_load_err(e.m, "tests/fixtures/lora/llama_all/adapter", &pe);
    CHECK_MSG(a[2] != NULL, "%s", pe.msg);
    /* thread 3 shares thread 0's adapter and prompt, thread 4 runs the base */
    a[3] = a[0];
    static const char *prompts[N_THREADS] = {"the cat sat on", "once upon a time", "hello world", "the cat sat on",
                                             "the cat sat on"};
    job seq[N_THREADS], par[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        seq[i] = (job){.m = e.m, .ad = a[i], .prompt = prompts[i]};
        run_job(&seq[i]);
        CHECK_OK(seq[i].rc);
        par[i] = (job){.m = e.m, .ad = a[i], .prompt = prompts[i]};
    }
    /* the same adapter, prompt and seed give the same text; different adapters differ */
    CHECK(strcmp(seq[0].text, seq[3].text) == 0 && seq[0].len > 0);
    CHECK(strcmp(seq[0].text, seq[4].text) != 0);
    for (int round = 0; round < 2; round++) {
        pthread_t th[N_THREADS];
        for (int i = 0; i < N_THREADS; i++) CHECK(pthread_create(&th[i], NULL, run_job, &par[i]) == 0);
        for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < N_THREADS; i++) {
            CHECK_OK(par[i].rc);
            CHECK_MSG(strcmp(par[i].text, seq[i].text) == 0, "thread %d: \"%s\" vs one after another \"%s\"", i,
                      par[i].text, seq[i].text);
        }
    }
    printf("    %d threads, one model, 3 adapters and the base: texts equal to one after another\n", N_THREADS);
    /* an adapter in use outlives its owner's free */
    peft_session *s = peft_session_new(e.m, &pe);
    if (!s || !a[0]) peft_adapter_free(a[0]);
    else {
        CHECK_OK(peft_session_set_adapter(s, a[0]));
        CHECK_EQ_INT(peft_adapter_users(a[0]), 1);
        peft_adapter_free(a[0]);
        a[0] = NULL;
        peft_sample_params sp = peft_sample_default_params();
        sp.max_tokens = GEN;
        job j = {.m = e.m, .prompt = prompts[0]};
        CHECK_OK(peft_session_generate(s, prompts[0], &sp, collect, &j, NULL));
        CHECK_MSG(strncmp(j.text, seq[0].text, (size_t)j.len) == 0 && j.len > 0,
                  "after the owner's free: \"%s\" vs \"%s\"", j.text, seq[0].text);
    }
    peft_session_free(s);   /* frees a[0] (ASan: no leak, no use after free) */
    for (int i = 1; i < 3; i++) peft_adapter_free(a[i]);
    close_model(&e);
}

/* Every method's forward only reads its adapter: sessions of each method
 * decoding at once on their threads give what they give one after another
 * (ThreadSanitizer in CI watches the adapters' state as well). */
#define N_METHODS 10

typedef struct {
    peft_model *m;
    peft_adapter *ad;
    float out[64];
    int rc;
} mjob;

static void *run_mjob(void *u) {
    mjob *j = u;
    peft_error pe;
    peft_session *s = peft_session_new(j->m, &pe);
    if (!s) { j->rc = pe.status; return NULL; }
    peft_session_set_threads(s, 1);
    const int V = j->m->cfg.vocab;
    float *lg = malloc(sizeof *lg * (size_t)V);
    int32_t ids[6] = {3, 41, 5, 99, 17, 2};
    j->rc = lg ? peft_session_set_adapter(s, j->ad) : PEFT_ERR_NOMEM;
    if (!j->rc) j->rc = peft_session_decode(s, ids, 4, lg);
    for (int t = 4; !j->rc && t < 6; t++) j->rc = peft_session_decode(s, ids + t, 1, lg);
    if (!j->rc) memcpy(j->out, lg, sizeof j->out);
    free(lg);
    peft_session_free(s);
    return NULL;
}

static void every_method_decodes_on_threads_at_once(void) {
    env e;
    if (open_model(&e, MFIX "tiny-llama", 1)) { CHECK(0); return; }
    const uint32_t qvd = (1u << ROLE_Q) | (1u << ROLE_V) | (1u << ROLE_DOWN);
    static const char *const names[N_METHODS] = {"lora", "dora", "ia3", "loha", "lokr", "vera", "adapter-pfeiffer",
                                                 "prompt", "prefix", "adalora"};
    adapter *ad[N_METHODS];
    mjob seq[N_METHODS], par[N_METHODS];
    for (int i = 0; i < N_METHODS; i++) {
        const bool qv = !strcmp(names[i], "loha") || !strcmp(names[i], "lokr") || !strcmp(names[i], "vera");
        ad[i] = make_adapter(e.m, names[i], i >= 6 && i < 9 ? (i == 6 ? "reduction_factor=8" : "num_virtual_tokens=3") : NULL,
                             qv ? qvd : 0, 40 + (uint64_t)i);
        CHECK_MSG(ad[i] != NULL, "%s not made", names[i]);
        seq[i] = (mjob){.m = e.m, .ad = (peft_adapter *)ad[i]};
        par[i] = seq[i];
        run_mjob(&seq[i]);
        CHECK_OK(seq[i].rc);
    }
    pthread_t th[N_METHODS];
    for (int i = 0; i < N_METHODS; i++) CHECK(pthread_create(&th[i], NULL, run_mjob, &par[i]) == 0);
    for (int i = 0; i < N_METHODS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N_METHODS; i++) {
        CHECK_OK(par[i].rc);
        CHECK_MSG(!memcmp(par[i].out, seq[i].out, sizeof seq[i].out), "%s: logits on a thread differ", names[i]);
    }
    printf("    %d methods decoding on %d threads at once: logits equal to one after another\n", N_METHODS, N_METHODS);
    for (int i = 0; i < N_METHODS; i++) adapter_free(ad[i]);
    close_model(&e);
}

int main(void) {
    TEST_RUN(mixed_batch_equals_each_session_alone);
    TEST_RUN(scaled_loras_are_scaled_deltas);
    TEST_RUN(what_cannot_mix_is_refused);
    TEST_RUN(threads_share_one_model);
    TEST_RUN(every_method_decodes_on_threads_at_once);
    TEST_MAIN_END();
}
