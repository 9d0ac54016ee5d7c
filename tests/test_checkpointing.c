/* test_checkpointing.c — gradient checkpointing (tg_options.checkpoint_every,
 * --checkpoint-layers):
 *   - for the methods whose hooks keep something per layer (LoRA with its
 *     dropout masks, DoRA's pre-scale outputs, IA3's, the bottleneck's,
 *     LoHa's dropout draws, VeRA, LoKr, prefix rows (projected too), prompt
 *     rows, full fine-tuning's
 *     norms and embeddings) on a decoder and an encoder, and every
 *     granularity K from 1 to n_layer, the loss and every gradient are
 *     bitwise those of the graph that keeps everything: the recompute runs
 *     the same code on the same inputs, so anything short of identical is a
 *     state the first forward left behind that the recompute does not see;
 *   - the graph holds less memory (K < n_layer), the same at K >= n_layer;
 *   - tg_plan_bytes predicts tg_arena_bytes without allocating, and
 *     tg_plan's parts add up (K layers and the other segments' inputs).
 * The fixtures have 2 layers; deeper copies (5 layers, each layer's weights
 * scaled differently so that a recompute of the wrong layer shows) are
 * written to a temporary folder, so that segments of 2 and 3 layers and a
 * shorter last segment are exercised. */
#include "core/core.h"
#include "formats/safetensors.h"
#include "peft/method.h"
#include "test.h"
#include "train/graph.h"

#include <math.h>
#include <unistd.h>

#define MFIX "tests/fixtures/models/"

static char tmp[256];

/* ---- deeper copies of the fixtures ------------------------------------------------ */

/* The layer index in a tensor name ("model.layers.3.", "encoder.layer.3.",
 * "transformer.h.3."), with the text before and after it; -1 if none. */
static int layer_of(const char *name, size_t *pre, const char **post) {
    static const char *const pats[] = {".layers.", ".layer.", ".h."};
    for (int k = 0; k < 3; k++) {
        const char *p = strstr(name, pats[k]);
        if (!p) continue;
        p += strlen(pats[k]);
        char *end;
        long l = strtol(p, &end, 10);
        if (end == p || *end != '.') continue;
        *pre = (size_t)(p - name);
        *post = end;
        return (int)l;
    }
    return -1;
}

static int copy_file(const char *from, const char *to) {
    char *d = NULL;
    size_t n = 0;
    peft_err err = {0};
    if (peft_read_file(from, &d, &n, &err)) return -1;
    test_write_bytes(to, d, n);
    free(d);
    return 0;
}

/* src (a 2-layer HF folder) as an n-layer model in dst: layer i has layer
 * (i mod 2)'s tensors, scaled by 1 + 0.05·i (norm weights and biases as
 * well: every layer differs). */
static int make_deep(const char *src, int n, const char *dst) {
    peft_err err = {0};
    if (mkdir(dst, 0755) && access(dst, F_OK)) return -1;
    static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                        "vocab.json", "merges.txt", "vocab.txt", "special_tokens_map.json"};
    char a[4096], b[4096];
    for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
        snprintf(a, sizeof a, "%s/%s", src, files[k]);
        snprintf(b, sizeof b, "%s/%s", dst, files[k]);
        if (access(a, F_OK) == 0 && copy_file(a, b)) return -1;
    }
    char to[64];
    snprintf(to, sizeof to, "\"num_hidden_layers\": %d", n);
    test_edit_file(dst, "config.json", "\"num_hidden_layers\": 2", to);
    snprintf(a, sizeof a, "%s/model.safetensors", src);
    st_archive *st = NULL;
    if (st_open(a, &st, &err)) return -1;
    const int nt = st_count(st);
    st_write_tensor *w = calloc((size_t)nt * n, sizeof *w);
    char **names = calloc((size_t)nt * n, sizeof *names);
    float **bufs = calloc((size_t)nt * n, sizeof *bufs);
    int nw = 0, rc = 0;
    for (int i = 0; i < nt; i++) {
        const st_tensor *t = st_at(st, i);
        size_t pre;
        const char *post;
        const int l = layer_of(t->name, &pre, &post);
        if (l < 0) {
            w[nw] = (st_write_tensor){t->name, t->dtype, t->ndim, {0}, t->data};
            memcpy(w[nw].shape, t->shape, sizeof t->shape);
            nw++;
            continue;
        }
        for (int li = l; li < n; li += 2) {
            char nm[512];
            snprintf(nm, sizeof nm, "%.*s%d%s", (int)pre, t->name, li, post);
            const int64_t ne = st_numel(t);
            float *v = malloc((size_t)ne * sizeof(float));
            const float *s = t->data;
            for (int64_t k = 0; k < ne; k++) v[k] = s[k] * (1.0f + 0.05f * (float)li);
            names[nw] = strdup(nm);
            bufs[nw] = v;
            w[nw] = (st_write_tensor){names[nw], t->dtype, t->ndim, {0}, v};
            memcpy(w[nw].shape, t->shape, sizeof t->shape);
            nw++;
        }
    }
    snprintf(b, sizeof b, "%s/model.safetensors", dst);
    rc = st_write(b, w, nw, NULL, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    for (int i = 0; i < nw; i++) {
        free(names[i]);
        free(bufs[i]);
    }
    free(names);
    free(bufs);
    free(w);
    st_close(st);
    return rc;
}

/* ---- the comparison ----------------------------------------------------------------- */

static method_config mk(const char *name, const char *options, float dropout, int n_labels) {
    method_config c;
    memset(&c, 0, sizeof c);
    c.ops = method_find(name);
    if (!c.ops) fprintf(stderr, "  no method %s\n", name);
    c.r = 4;
    c.alpha = 8;
    c.seed = 7;
    c.dropout = dropout;
    c.n_labels = n_labels;
    snprintf(c.options, sizeof c.options, "%s", options ? options : "");
    return c;
}

static int32_t g_buf[8][64];

/* 2 rows of T tokens; row 1 is 3 tokens shorter (padding, for the encoder's mask). */
static data_batch make_batch(int T, int n_labels) {
    data_batch b = {2, T, g_buf[0], g_buf[1], g_buf[2], g_buf[3], g_buf[4], g_buf[5], 0, 0, NULL, NULL, 0};
    peft_rng rng;
    peft_rng_seed(&rng, 11);
    b.lengths[0] = T;
    b.lengths[1] = T - 3;
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < T; t++) {
            const int i = r * T + t;
            b.inputs[i] = t < b.lengths[r] ? (int32_t)(peft_rng_u64(&rng) % 300) : 0;
            b.positions[i] = t;
            b.segments[i] = 0;
        }
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < T; t++) {
            const int i = r * T + t;
            b.targets[i] = (n_labels == 0 && t + 1 < b.lengths[r] && t >= 1) ? b.inputs[i + 1] : -100;
            b.n_targets += b.targets[i] != -100;
        }
    if (n_labels) {
        b.labels[0] = 1;
        b.labels[1] = n_labels - 1;
        b.n_targets = 2;
    }
    return b;
}

/* One training pass: the loss, and the gradient in out (a->n_params). */
static int pass(train_graph *g, adapter *a, const data_batch *b, uint64_t seed, double *loss, float *out) {
    peft_err err = {0};
    memset(a->grads, 0, (size_t)a->n_params * sizeof(float));
    int n = 0;
    const int rc = tg_run(g, b, true, 1.0f / (float)b->n_targets, seed, loss, &n, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    memcpy(out, a->grads, (size_t)a->n_params * sizeof(float));
    return rc;
}

/* Index of the first entry where x and y differ bitwise, -1 if none. */
static int64_t first_diff(const float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&x[i], &y[i], sizeof(float))) return i;
    return -1;
}

static int n_cases;

static void compare(const char *model, const char *what, method_config mc, const char *targets) {
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = ctx ? peft_model_load(ctx, model) : NULL;
    if (!m) { CHECK_MSG(0, "cannot load %s", model); peft_free(ctx); return; }
    peft_err err = {0};
    adapter *a = NULL;
    if (targets) CHECK_OK(method_parse_targets(m, targets, &mc.targets, &err));
    CHECK_OK(adapter_new(m, &mc, &a, &err));
    if (!a) { fprintf(stderr, "  %s: %s\n", what, err.msg); goto out_model; }
    {
        /* every parameter away from its initial value: no gradient is trivially 0 */
        peft_rng rng;
        peft_rng_seed(&rng, 99);
        for (int64_t k = 0; k < a->n_params; k++) a->params[k] += 0.1f * peft_rng_normal(&rng);
        CHECK_OK(adapter_refresh(a, m, &err));
    }
    const int L = m->cfg.n_layer, T = 12;
    const data_batch b = make_batch(T, mc.n_labels);
    /* a shorter batch through the same graphs: the buffers fit any T up to the capacity */
    data_batch bs = make_batch(T - 4, mc.n_labels);
    const int64_t np = a->n_params;
    float *ref = malloc((size_t)np * sizeof(float)), *got = malloc((size_t)np * sizeof(float));
    float *ref_s = malloc((size_t)np * sizeof(float));
    train_graph *g0 = NULL;
    CHECK_OK(tg_new(m, a, b.B, b.T, &g0, &err));
    double l_ref = NAN, l_ref_s = NAN;
    if (!g0 || pass(g0, a, &b, 1234, &l_ref, ref) || pass(g0, a, &bs, 77, &l_ref_s, ref_s)) {
        CHECK_MSG(0, "%s: the reference pass failed", what);
        goto out;
    }
    size_t planned = 0;
    CHECK_OK(tg_plan_bytes(m, a, b.B, b.T, NULL, &planned, &err));
    CHECK_MSG(planned == tg_arena_bytes(g0), "%s: planned %zu bytes, the graph has %zu", what, planned,
              tg_arena_bytes(g0));
    int64_t nz = 0;
    for (int64_t k = 0; k < np; k++) nz += ref[k] != 0.0f;
    CHECK_MSG(nz > np / 4, "%s: only %lld of %lld gradients are not 0", what, (long long)nz, (long long)np);
    /* K = n_layer keeps every layer (the one segment is still in place
     * after the forward): the graph of K = 0 */
    const int Ks[] = {1, 2, 3, L};
    for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
        const int K = Ks[ki];
        if (K > L || (ki + 1 < sizeof Ks / sizeof *Ks && K >= L)) continue;
        const tg_options o = {.checkpoint_every = K};
        train_graph *gk = NULL;
        CHECK_OK(tg_new_opts(m, a, b.B, b.T, &o, &gk, &err));
        if (!gk) { fprintf(stderr, "  %s K=%d: %s\n", what, K, err.msg); continue; }
        double l = NAN;
        for (int rep = 0; rep < 2; rep++) {   /* twice: nothing of a run is left for the next */
            CHECK_OK(pass(gk, a, &b, 1234, &l, got));
            CHECK_MSG(memcmp(&l, &l_ref, sizeof l) == 0, "%s K=%d: loss %.17g, without checkpointing %.17g", what, K, l,
                      l_ref);
            const int64_t i = first_diff(got, ref, np);
            CHECK_MSG(i < 0, "%s K=%d: gradient %lld is %.9g, without checkpointing %.9g", what, K, (long long)i,
                      i < 0 ? 0.0 : got[i], i < 0 ? 0.0 : ref[i]);
        }
        CHECK_OK(pass(gk, a, &bs, 77, &l, got));
        CHECK_MSG(memcmp(&l, &l_ref_s, sizeof l) == 0, "%s K=%d, T=%d: loss %.17g, without %.17g", what, K, bs.T, l,
                  l_ref_s);
        const int64_t i = first_diff(got, ref_s, np);
        CHECK_MSG(i < 0, "%s K=%d, T=%d: gradient %lld differs", what, K, bs.T, (long long)i);
        const size_t b0 = tg_arena_bytes(g0), bk = tg_arena_bytes(gk);
        if (K < L) CHECK_MSG(bk < b0, "%s K=%d: %zu bytes, %zu without checkpointing", what, K, bk, b0);
        else CHECK_MSG(bk == b0, "%s K=%d >= %d layers: %zu bytes, %zu without", what, K, L, bk, b0);
        CHECK_OK(tg_plan_bytes(m, a, b.B, b.T, &o, &planned, &err));
        CHECK_MSG(planned == bk, "%s K=%d: planned %zu bytes, the graph has %zu", what, K, planned, bk);
        /* the parts: K layers and the other segments' inputs; the rest does not depend on K */
        tg_memory p0, pk;
        CHECK_OK(tg_plan(m, a, b.B, b.T, NULL, &p0, &err));
        CHECK_OK(tg_plan(m, a, b.B, b.T, &o, &pk, &err));
        CHECK(pk.total == bk && p0.total == b0 && pk.shared == p0.shared && pk.layer == p0.layer);
        CHECK(p0.layers == (size_t)L * p0.layer && p0.checkpoint_every == 0 && pk.hooks <= p0.hooks);
        const size_t want = K < L ? (size_t)K * pk.layer + (size_t)((L + K - 1) / K - 1) * pk.input : p0.layers;
        CHECK_MSG(pk.layers == want && pk.checkpoint_every == (K < L ? K : 0), "%s K=%d: layers %zu bytes, want %zu",
                  what, K, pk.layers, want);
        CHECK(pk.total == pk.layers + pk.hooks + pk.shared && pk.input > 0 && pk.layer > pk.input);
        if (K == 1) printf("    %-28s %d layers: %zu -> %zu bytes at K=1\n", what, L, b0, bk);
        tg_free(gk);
        n_cases++;
    }
out:
    tg_free(g0);
    free(ref);
    free(got);
    free(ref_s);
    adapter_free(a);
out_model:
    peft_model_free(m);
    peft_free(ctx);
}

/* whether model is one of the deep copies (5 layers) */
static bool m_layers_gt2(const char *model) { return strstr(model, "-5") != NULL; }

static void methods_on(const char *model, int n_labels) {
    const char *base = strrchr(model, '/') + 1;
    char what[128];
#define CASE(tag, mc, targets)                                 \
    do {                                                       \
        snprintf(what, sizeof what, "%s %s", base, tag);       \
        compare(model, what, mc, targets);                     \
    } while (0)
    CASE("lora+dropout", mk("lora", "", 0.1f, n_labels), NULL);
    CASE("lora all-linear", mk("lora", "", 0.0f, n_labels), "all-linear");
    CASE("dora", mk("dora", "", 0.0f, n_labels), NULL);
    CASE("ia3", mk("ia3", "", 0.0f, n_labels), NULL);
    CASE("prefix", mk("prefix", "num_virtual_tokens=3", 0.0f, n_labels), NULL);
    CASE("prefix projected", mk("prefix", "num_virtual_tokens=3;prefix_projection=true", 0.0f, n_labels), NULL);
    CASE("prompt", mk("prompt", "num_virtual_tokens=3", 0.0f, n_labels), NULL);
    CASE("vera+dropout", mk("vera", "", 0.1f, n_labels), NULL);
    CASE("lokr", mk("lokr", "", 0.0f, n_labels), "all-linear");
    CASE("adapter-houlsby", mk("adapter-houlsby", "", 0.0f, n_labels), NULL);
    CASE("full", mk("full", "", 0.0f, n_labels), NULL);
    CASE("loha+dropouts", mk("loha", "rank_dropout=0.3;module_dropout=0.3", 0.0f, n_labels), NULL);
    {
        /* hooks on some layers only: slots shared by hooked and unhooked
         * layers, and the backward stopping inside a segment */
        method_config c = mk("lora", "", 0.1f, n_labels);
        c.layers = m_layers_gt2(model) ? (1u << 1 | 1u << 4) : 1u << 1;
        CASE("lora layers 1,4", c, "all-linear");
        c = mk("adapter-houlsby", "", 0.0f, n_labels);
        c.layers = m_layers_gt2(model) ? (1u << 3) : 1u << 1;
        CASE("houlsby layer 3", c, NULL);
    }
    if (n_labels) CASE("bitfit", mk("bitfit", "", 0.0f, n_labels), NULL);   /* Llama has no biases */
#undef CASE
}

static void decoder_every_method_bitwise(void) {
    char deep[300];
    snprintf(deep, sizeof deep, "%s/tiny-llama-5", tmp);
    if (make_deep(MFIX "tiny-llama", 5, deep)) TEST_FAIL("cannot write %s", deep);
    methods_on(MFIX "tiny-llama", 0);
    methods_on(deep, 0);
}

static void encoder_every_method_bitwise(void) {
    char deep[300];
    snprintf(deep, sizeof deep, "%s/tiny-bert-5", tmp);
    if (make_deep(MFIX "tiny-bert", 5, deep)) TEST_FAIL("cannot write %s", deep);
    methods_on(MFIX "tiny-bert", 3);
    methods_on(deep, 3);
}

/* The per-family buffers (Gemma 2's sub-layer output norms, Qwen3's q/k
 * norms, GPT-2's fused q, k, v) are slot buffers too. */
static void other_families_bitwise(void) {
    static const char *const fams[] = {"tiny-gemma2", "tiny-qwen3", "tiny-gpt2", "tiny-phi3"};
    for (size_t k = 0; k < sizeof fams / sizeof *fams; k++) {
        char src[300], what[128];
        snprintf(src, sizeof src, MFIX "%s", fams[k]);
        snprintf(what, sizeof what, "%s lora", fams[k]);
        compare(src, what, mk("lora", "", 0.1f, 0), "all-linear");
        snprintf(what, sizeof what, "%s full", fams[k]);
        compare(src, what, mk("full", "", 0.0f, 0), NULL);
    }
}

static void bad_options_fail_clearly(void) {
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 1;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = ctx ? peft_model_load(ctx, MFIX "tiny-llama") : NULL;
    if (!m) { peft_free(ctx); TEST_FAIL("cannot load tiny-llama"); }
    peft_err err = {0};
    train_graph *g = NULL;
    const tg_options o = {.checkpoint_every = -1};
    CHECK_EQ_INT(tg_new_opts(m, NULL, 2, 8, &o, &g, &err), PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "checkpointing") != NULL, "%s", err.msg);
    size_t bytes = 0;
    CHECK_EQ_INT(tg_plan_bytes(m, NULL, 2, 1000, &o, &bytes, &err), PEFT_ERR_INVALID);
    peft_model_free(m);
    peft_free(ctx);
}

/* ---- the CLI ---------------------------------------------------------------------- */

static void write_data(const char *path, int n_rows) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    const char *w[] = {"the", "king", "queen", "lord", "night", "day", "love", "sword", "crown", "heart", "fair"};
    peft_rng r;
    peft_rng_seed(&r, 11);
    for (int i = 0; i < n_rows; i++) {
        fprintf(f, "{\"text\": \"");
        const int len = 5 + (int)(peft_rng_u64(&r) % 30);
        for (int k = 0; k < len; k++) fprintf(f, "%s%s", k ? " " : "", w[peft_rng_u64(&r) % 11]);
        fprintf(f, "\"}\n");
    }
    fclose(f);
}

/* The losses, validation losses and gradient norms of a run's metrics.jsonl
 * (not its timings) as one string. */
static char *losses_of(const char *dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    char *text = test_read_file(p, NULL);
    if (!text) return NULL;
    peft_buf b = {0};
    static const char *const keys[] = {"\"loss\": ", "\"val_loss\": ", "\"grad_norm\": "};
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = 0;
        for (int k = 0; k < 3; k++) {
            const char *at = strstr(line, keys[k]);
            if (at) peft_buf_printf(&b, "%.*s;", (int)strcspn(at, ",}"), at);
        }
        peft_buf_printf(&b, "\n");
        line = next;
    }
    free(text);
    return b.data;
}

static bool same_file(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *da = test_read_file(a, &la), *db = test_read_file(b, &lb);
    const bool same = da && db && la == lb && memcmp(da, db, la) == 0;
    free(da);
    free(db);
    return same;
}

/* The MiB of the "graph:" line of a run's output, -1 without one. */
static double graph_mib(const char *out) {
    const char *at = strstr(out, "graph: ");
    return at ? atof(at + 7) : -1;
}

static void cli_trains_to_the_same_losses_and_resumes(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char model[300], data[300], args[4096], out[16384], pa[600], pb[600];
    snprintf(model, sizeof model, "%s/tiny-llama-5", tmp);
    if (access(model, F_OK) && make_deep(MFIX "tiny-llama", 5, model)) TEST_FAIL("cannot write %s", model);
    snprintf(data, sizeof data, "%s/d.jsonl", tmp);
    write_data(data, 60);
    char common[1024];
    snprintf(common, sizeof common,
             "train --model %s --data %s --batch 4 --seq 48 --lr 3e-3 --dropout 0.1 --target all-linear --threads 2 "
             "--quiet --seed 5 --val-split 0.1 --eval-every 3",
             model, data);
    /* off, K = 1 (the option alone, before another), K = 2 */
    static const char *const variants[] = {"", "--checkpoint-layers", "--checkpoint-layers 2"};
    double mib[3];
    char *ref = NULL;
    for (int v = 0; v < 3; v++) {
        snprintf(args, sizeof args, "%s --steps 6 %s --out %s/run%d", common, variants[v], tmp, v);
        CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
        mib[v] = graph_mib(out);
        snprintf(pa, sizeof pa, "%s/run%d", tmp, v);
        char *l = losses_of(pa);
        CHECK_MSG(l && strstr(l, "\"val_loss\""), "run %d: no losses in %s/metrics.jsonl", v, pa);
        if (v == 0) ref = l;
        else {
            CHECK_MSG(l && ref && !strcmp(l, ref), "%s: losses\n%s\nwithout checkpointing\n%s", variants[v], l, ref);
            free(l);
            snprintf(pa, sizeof pa, "%s/run0/adapter_model.safetensors", tmp);
            snprintf(pb, sizeof pb, "%s/run%d/adapter_model.safetensors", tmp, v);
            CHECK_MSG(same_file(pa, pb), "%s: the trained adapter differs", variants[v]);
        }
        if (v == 1) CHECK_MSG(strstr(out, "checkpointing every 1 of 5 layers") != NULL, "%s", out);
    }
    CHECK_MSG(mib[0] > 0 && mib[1] > 0 && mib[1] < mib[0] && mib[2] < mib[0], "graph MiB %g, %g, %g", mib[0], mib[1],
              mib[2]);
    printf("    graph %.2f MiB, checkpointing every layer %.2f MiB, every 2 layers %.2f MiB\n", mib[0], mib[1], mib[2]);

    /* a run checkpointing every 2 layers, resumed from its step-3
     * checkpoint without the option: it keeps the setting and ends where
     * run0 did */
    snprintf(args, sizeof args, "%s --steps 6 --save-every 3 --checkpoint-layers 2 --out %s/res", common, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    snprintf(pa, sizeof pa, "%s/res/checkpoint-3/optimizer.safetensors", tmp);
    peft_err err = {0};
    st_archive *st = NULL;
    CHECK_OK(st_open(pa, &st, &err));
    const char *saved = st ? st_metadata(st, "checkpoint_layers") : NULL;
    CHECK_MSG(saved && !strcmp(saved, "2"), "%s: checkpoint_layers %s", pa, saved ? saved : "(none)");
    st_close(st);
    snprintf(args, sizeof args, "%s --steps 6 --save-every 3 --out %s/res --resume %s/res/checkpoint-3", common, tmp, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "checkpointing every 2 of 5 layers") != NULL, "the resume did not keep the setting: %s", out);
    CHECK_MSG(strstr(out, "resumes with") == NULL, "%s", out);
    snprintf(pa, sizeof pa, "%s/res", tmp);
    char *l = losses_of(pa);
    CHECK_MSG(l && ref && !strcmp(l, ref), "resumed: losses\n%s\nuninterrupted\n%s", l ? l : "", ref ? ref : "");
    free(l);
    snprintf(pa, sizeof pa, "%s/run0/adapter_model.safetensors", tmp);
    snprintf(pb, sizeof pb, "%s/res/adapter_model.safetensors", tmp);
    CHECK_MSG(same_file(pa, pb), "the resumed run's adapter differs");
    /* turned off on a resume: it says so, the losses still agree */
    snprintf(args, sizeof args, "%s --steps 6 --checkpoint-layers 0 --out %s/res2 --resume %s/res/checkpoint-3", common,
             tmp, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "--checkpoint-layers 2 and resumes with 0 (off)") != NULL, "%s", out);
    CHECK_MSG(strstr(out, "every layer kept") != NULL, "%s", out);
    free(ref);

    /* a config file's true is K = 1; bad values are usage errors */
    snprintf(pa, sizeof pa, "%s/c.json", tmp);
    FILE *f = fopen(pa, "w");
    if (f) {
        fprintf(f, "{\"checkpoint_layers\": true}\n");
        fclose(f);
    }
    snprintf(args, sizeof args, "%s --steps 1 --config %s --out %s/cfg", common, pa, tmp);
    CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 0);
    CHECK_MSG(strstr(out, "checkpointing every 1 of 5 layers") != NULL, "%s", out);
    static const char *const bad[] = {"-1", "two", "1.5"};
    for (int k = 0; k < 3; k++) {
        snprintf(args, sizeof args, "%s --steps 1 --checkpoint-layers=%s --out %s/bad", common, bad[k], tmp);
        CHECK_EQ_INT(test_run_cli(args, out, sizeof out), 2);
        CHECK_MSG(strstr(out, "--checkpoint-layers must be an integer") != NULL, "%s", out);
    }
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/peft_ckpt_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    TEST_RUN(decoder_every_method_bitwise);
    TEST_RUN(encoder_every_method_bitwise);
    TEST_RUN(other_families_bitwise);
    TEST_RUN(bad_options_fail_clearly);
    TEST_RUN(cli_trains_to_the_same_losses_and_resumes);
    printf("    %d (model, method, K) cases bitwise equal\n", n_cases);
    if (test_rm_rf(tmp) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    TEST_MAIN_END();
}
