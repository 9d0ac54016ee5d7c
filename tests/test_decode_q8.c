/* test_decode_q8.c — FAST decoding (8-bit activations, peft_model_set_decode)
 * against EXACT on the real model, SmolLM2-135M-Instruct Q4_1 (its LM head,
 * the tied token embedding, is Q8_0). Skips when the file is absent.
 *
 * Both runs process the same prompt and are then fed the same tokens (the
 * EXACT run's greedy choices), so every step compares the logits of one
 * context. What must hold:
 *   - the logits stay close: max |Δ| over the whole vocabulary and every
 *     step within LOGIT_TOL, the mean within MEAN_TOL. Each product's input
 *     is rounded by at most half a step of 1/127 of its 32-block's largest
 *     value (test_qdot.c checks that bound product by product); this
 *     model's activations have channels 10-20 times their row's RMS, so a
 *     product moves by 0.5-5% of its norm and, over 30 layers, the logits
 *     by about 0.3 on average and 2.3 at most here (measured when this test
 *     was written; the tolerances leave a factor ~1.7 for other CPUs'
 *     summation in the exact path and other thread counts). llama.cpp's
 *     decoding rounds the same way (Q8_0 / Q8_1 activation blocks);
 *   - greedy choices agree wherever the choice is clear: at each step
 *     whose EXACT top-2 margin exceeds CLEAR_MARGIN (one logit: the top
 *     token at least e times as likely as the next) the argmaxes are equal,
 *     and the free-running FAST greedy text equals EXACT's up to the first
 *     step whose margin is below that. */
#include "core/core.h"
#include "peft.h"
#include "test.h"

#define LOGIT_TOL 4.0
#define MEAN_TOL 0.5
#define CLEAR_MARGIN 1.0f
enum { STEPS = 32 };

static const char *model_path(void) {
    const char *p = getenv("PEFT_TEST_GGUF");
    if (p && *p) return p;
    return "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

static int collect(const char *piece, int len, void *user) {
    return peft_buf_append(user, piece, (size_t)len);
}

static int argmax(const float *l, int V, float *margin) {
    int a = 0;
    for (int i = 1; i < V; i++) if (l[i] > l[a]) a = i;
    float second = -INFINITY;
    for (int i = 0; i < V; i++) if (i != a && l[i] > second) second = l[i];
    if (margin) *margin = l[a] - second;
    return a;
}

static void fast_decode_tracks_exact_on_smollm2(void) {
    const char *path = model_path();
    if (!peft_file_exists(path))
        TEST_SKIP("%s not found (run `bash scripts/setup.sh --model`, or set PEFT_TEST_GGUF)", path);
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, path);
    CHECK_MSG(m != NULL, "%s", peft_last_error(ctx));
    if (!m) { peft_free(ctx); return; }
    CHECK(peft_model_decode(m) == PEFT_DECODE_EXACT);   /* the default */
    if (!strcmp(peft_decode_unit(), "none")) {
        peft_model_free(m);
        peft_free(ctx);
        TEST_SKIP_HW("no AVX2 here: FAST decodes as EXACT");
    }
    peft_model_info info;
    CHECK_OK(peft_model_get_info(m, &info));
    const int V = info.vocab;
    peft_session *ss = peft_session_new(m, NULL);
    CHECK(ss != NULL);
    if (!ss) { peft_model_free(m); peft_free(ctx); return; }
    const char *prompts[] = {
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "The lighthouse keeper on the northern island kept a logbook for forty years. Every evening he wrote down",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"};
    float *ex = malloc(sizeof(float) * (size_t)V * STEPS), *fa = malloc(sizeof(float) * (size_t)V * STEPS);
    double worst = 0, sum = 0;
    size_t count = 0;
    for (int p = 0; p < 3; p++) {
        int32_t *ids = NULL, toks[STEPS];
        int n = 0;
        CHECK_OK(peft_tokenize(m, prompts[p], 1, 1, &ids, &n));
        /* EXACT: the prompt, then its greedy tokens one at a time */
        CHECK_OK(peft_model_set_decode(m, PEFT_DECODE_EXACT));
        peft_session_reset(ss);
        CHECK_OK(peft_session_decode(ss, ids, n, ex));
        for (int s = 0; s < STEPS; s++) {
            toks[s] = argmax(ex + (size_t)s * V, V, NULL);
            if (s + 1 < STEPS) CHECK_OK(peft_session_decode(ss, &toks[s], 1, ex + (size_t)(s + 1) * V));
        }
        /* FAST on the same tokens */
        CHECK_OK(peft_model_set_decode(m, PEFT_DECODE_FAST));
        peft_session_reset(ss);
        CHECK_OK(peft_session_decode(ss, ids, n, fa));
        for (int s = 0; s + 1 < STEPS; s++) CHECK_OK(peft_session_decode(ss, &toks[s], 1, fa + (size_t)(s + 1) * V));
        int clear = 0, clear_agree = 0, free_ok = 1, free_until = STEPS;
        double pw = 0;
        for (int s = 0; s < STEPS; s++) {
            const float *e = ex + (size_t)s * V, *f = fa + (size_t)s * V;
            double sw = 0;
            for (int i = 0; i < V; i++) {
                const double d = fabs((double)e[i] - f[i]);
                sw = d > sw ? d : sw;
                sum += d;
            }
            count += (size_t)V;
            pw = sw > pw ? sw : pw;
            float margin;
            const int ae = argmax(e, V, &margin), af = argmax(f, V, NULL);
            if (margin > CLEAR_MARGIN) {
                clear++;
                clear_agree += ae == af;
                CHECK_MSG(ae == af, "prompt %d step %d: exact margin %.3f but argmax %d (fast) vs %d (max |dlogit| %.3f)", p, s,
                          margin, af, ae, sw);
            } else if (free_until == STEPS) {
                free_until = s;
            }
        }
        /* free-running FAST greedy up to the first unclear step */
        peft_session_reset(ss);
        CHECK_OK(peft_session_decode(ss, ids, n, fa));
        for (int s = 0; s < free_until; s++) {
            const int32_t t = argmax(fa, V, NULL);
            if (t != toks[s]) { free_ok = 0; break; }
            CHECK_OK(peft_session_decode(ss, &t, 1, fa));
        }
        CHECK_MSG(free_ok, "prompt %d: free-running FAST greedy differs before step %d", p, free_until);
        printf("    prompt %d (%d tokens): max |dlogit| %.3f; %d of %d steps clear, argmax equal on %d; greedy text equal "
               "for the first %d tokens\n", p, n, pw, clear, STEPS, clear_agree, free_until);
        worst = pw > worst ? pw : worst;
        free(ids);
    }
    const double mean = sum / (double)count;
    printf("    all steps: max |dlogit| %.3f (tolerance %g), mean %.4f (tolerance %g)\n", worst, LOGIT_TOL, mean, MEAN_TOL);
    CHECK(worst <= LOGIT_TOL);
    CHECK(mean <= MEAN_TOL);
    free(ex);
    free(fa);
    peft_session_free(ss);
    peft_model_free(m);
    peft_free(ctx);
}

/* The mode is the model's: set and read back, unknown values refused. */
static void decode_mode_is_settable(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, "tests/fixtures/models/tiny-gpt2.q8_0.gguf");
    CHECK_MSG(m != NULL, "%s", peft_last_error(ctx));
    if (!m) { peft_free(ctx); return; }
    CHECK(peft_model_decode(m) == PEFT_DECODE_EXACT);
    CHECK_OK(peft_model_set_decode(m, PEFT_DECODE_FAST));
    CHECK(peft_model_decode(m) == PEFT_DECODE_FAST);
    CHECK_OK(peft_model_set_decode(m, PEFT_DECODE_EXACT));
    CHECK(peft_model_decode(m) == PEFT_DECODE_EXACT);
    CHECK(peft_model_set_decode(m, (peft_decode)7) == PEFT_ERR_INVALID);
    CHECK(strstr(peft_last_error(ctx), "decode mode") != NULL);
    CHECK(peft_model_decode(m) == PEFT_DECODE_EXACT);
    peft_model_free(m);
    peft_free(ctx);
}

/* peft generate decodes FAST unless --exact-decode: on SmolLM2, whose
 * texts differ between the two for the prompt below (a near tie at its
 * third new token), each mode's text is the library's in that mode. */
static void cli_decodes_fast_unless_exact(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    const char *path = model_path();
    if (!peft_file_exists(path)) TEST_SKIP("%s not found", path);
    if (!strcmp(peft_decode_unit(), "none")) TEST_SKIP_HW("no AVX2 here: FAST decodes as EXACT");
    const char *prompt = "The lighthouse keeper on the northern island kept a logbook for forty years. Every evening he wrote down";
    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = 2;
    peft_ctx *ctx = peft_init(&cp);
    peft_model *m = peft_model_load(ctx, path);
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    char lib[2][4096], cli[2][8192], args[1024];
    for (int fast = 0; fast < 2; fast++) {
        CHECK_OK(peft_model_set_decode(m, fast ? PEFT_DECODE_FAST : PEFT_DECODE_EXACT));
        peft_sample_params sp = peft_sample_default_params();
        sp.max_tokens = 12;
        peft_buf b = {0};
        CHECK_OK(peft_generate(m, prompt, &sp, collect, &b, NULL));
        snprintf(lib[fast], sizeof lib[fast], "%.*s", (int)b.len, b.data ? b.data : "");
        free(b.data);
        snprintf(args, sizeof args, "generate --model %s --prompt \"%s\" --max-tokens 12 --threads 2 --no-echo%s", path, prompt,
                 fast ? "" : " --exact-decode");
        CHECK_EQ_INT(test_run_cli(args, cli[fast], sizeof cli[fast]), 0);
        CHECK_MSG(strstr(cli[fast], lib[fast]) != NULL, "%s: CLI printed \"%s\", the library generated \"%s\"",
                  fast ? "fast" : "exact", cli[fast], lib[fast]);
    }
    printf("    exact: %s\n    fast:  %s\n", lib[0], lib[1]);
    CHECK_MSG(strcmp(lib[0], lib[1]) != 0, "this prompt no longer tells the modes apart");
    peft_model_free(m);
    peft_free(ctx);
}

int main(void) {
    TEST_RUN(decode_mode_is_settable);
    TEST_RUN(fast_decode_tracks_exact_on_smollm2);
    TEST_RUN(cli_decodes_fast_unless_exact);
    TEST_MAIN_END();
}
