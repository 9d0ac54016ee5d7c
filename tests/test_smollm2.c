/* test_smollm2.c — the real model: SmolLM2-135M-Instruct, Q4_1 GGUF.
 * Compares tokenization, chat formatting, next-token logits and greedy
 * continuations with transformers run on the same dequantized weights
 * (tests/fixtures/smollm2/reference.json, made by
 * tools/make_smollm2_reference.py). Skips when the model file is absent:
 * `bash scripts/setup.sh --model` fetches it. */
#include "model/model.h"
#include "peft.h"
#include "test.h"

#include <cjson/cJSON.h>

/* Logit tolerance: both sides compute in f32 on identical weights; what
 * differs is summation order across 30 layers (OpenBLAS vs PyTorch). See
 * docs/formats.md ("Agreement with the reference"). */
#define LOGIT_TOL 1e-3

static const char *model_path(void) {
    const char *p = getenv("PEFT_TEST_GGUF");
    if (p && *p) return p;
    return "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

static cJSON *load_ref(void) {
    char *text = NULL;
    peft_err err = {0};
    if (peft_read_file("tests/fixtures/smollm2/reference.json", &text, NULL, &err)) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

static int ids_of(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) if (n < cap) out[n++] = (int32_t)v->valuedouble;
    return n;
}

static void smollm2_matches_transformers(void) {
    const char *path = model_path();
    if (!peft_file_exists(path))
        TEST_SKIP("%s not found (run `bash scripts/setup.sh --model`, or set PEFT_TEST_GGUF)", path);
    cJSON *ref = load_ref();
    CHECK(ref != NULL);
    if (!ref) return;
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, path);
    CHECK_MSG(m != NULL, "%s", peft_last_error(ctx));
    if (!m) { cJSON_Delete(ref); peft_free(ctx); return; }
    const int V = m->cfg.vocab;
    CHECK_EQ_INT(V, cJSON_GetObjectItem(ref, "vocab_size")->valueint);
    float *logits = malloc(sizeof(float) * (size_t)V);
    const cJSON *c;
    int ci = 0;
    double worst_logit = 0, worst_lse = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        int32_t want[4096], greedy[64];
        int n_want = ids_of(cJSON_GetObjectItem(c, "input_ids"), want, 4096);
        /* tokenization of the formatted text */
        int32_t *ids = NULL;
        int n = 0;
        CHECK_OK(peft_tokenize(m, text, 1, 1, &ids, &n));
        bool same = n == n_want;
        for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
        CHECK_MSG(same, "case %d: token ids differ from transformers (%d vs %d tokens)", ci, n, n_want);
        free(ids);
        /* chat formatting */
        if (!strcmp(cJSON_GetObjectItem(c, "kind")->valuestring, "chat")) {
            bpe_chat_msg msgs[4];
            int nm = 0;
            const cJSON *msg;
            cJSON_ArrayForEach(msg, cJSON_GetObjectItem(c, "messages")) if (nm < 4) {
                msgs[nm].role = cJSON_GetObjectItem(msg, "role")->valuestring;
                msgs[nm].content = cJSON_GetObjectItem(msg, "content")->valuestring;
                nm++;
            }
            char *formatted = NULL;
            peft_err err = {0};
            CHECK_OK(bpe_chat_format(m->tok, msgs, nm, true, &formatted, &err));
            CHECK_MSG(formatted && !strcmp(formatted, text), "case %d: chat template gives\n%s", ci, formatted ? formatted : "(null)");
            free(formatted);
        }
        /* next-token logits on the reference ids */
        peft_err err = {0};
        model_state st;
        model_state_init(&st, NULL);
        CHECK_OK(model_forward(m, &st, want, n_want, logits, false, &err));
        const cJSON *tid = cJSON_GetObjectItem(c, "top_ids"), *tl = cJSON_GetObjectItem(c, "top_logits");
        for (int k = 0; k < cJSON_GetArraySize(tid); k++) {
            int id = cJSON_GetArrayItem(tid, k)->valueint;
            double d = fabs(logits[id] - cJSON_GetArrayItem(tl, k)->valuedouble);
            if (d > worst_logit) worst_logit = d;
        }
        double mx = -INFINITY, s = 0;
        int am = 0;
        for (int i = 0; i < V; i++) if (logits[i] > mx) { mx = logits[i]; am = i; }
        for (int i = 0; i < V; i++) s += exp(logits[i] - mx);
        double lse = mx + log(s), dl = fabs(lse - cJSON_GetObjectItem(c, "logsumexp")->valuedouble);
        if (dl > worst_lse) worst_lse = dl;
        CHECK_EQ_INT(am, cJSON_GetObjectItem(c, "argmax")->valueint);
        /* greedy continuation through the KV cache */
        int ng = ids_of(cJSON_GetObjectItem(c, "greedy"), greedy, 64), agree = 0;
        int32_t tok = am;
        for (int i = 0; i < ng; i++) {
            if (tok != greedy[i]) break;
            agree++;
            if (i + 1 < ng) {
                CHECK_OK(model_forward(m, &st, &tok, 1, logits, false, &err));
                tok = 0;
                for (int j = 1; j < V; j++) if (logits[j] > logits[tok]) tok = j;
            }
        }
        CHECK_MSG(agree == ng, "case %d: greedy continuation agrees for %d of %d tokens", ci, agree, ng);
        model_state_free(&st);
        ci++;
    }
    printf("    %d cases: max |logit diff| over top-128 = %.3g, max |logsumexp diff| = %.3g (tolerance %g)\n", ci,
           worst_logit, worst_lse, LOGIT_TOL);
    CHECK(worst_logit <= LOGIT_TOL);
    CHECK(worst_lse <= LOGIT_TOL);
    free(logits);
    peft_model_free(m);
    peft_free(ctx);
    cJSON_Delete(ref);
}

static int collect(const char *piece, int len, void *user) {
    peft_buf *b = user;
    return peft_buf_append(b, piece, (size_t)len);
}

/* `peft generate --chat` must answer a simple question coherently. */
static void smollm2_chat_answers_coherently(void) {
    const char *path = model_path();
    if (!peft_file_exists(path))
        TEST_SKIP("%s not found (run `bash scripts/setup.sh --model`, or set PEFT_TEST_GGUF)", path);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, path);
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    peft_sample_params sp = peft_sample_default_params();
    sp.chat = 1;
    sp.max_tokens = 40;
    peft_buf out = {0};
    peft_gen_stats st;
    CHECK_OK(peft_generate(m, "What is the capital of France?", &sp, collect, &out, &st));
    CHECK_MSG(out.data && strstr(out.data, "Paris"), "answer: %s", out.data ? out.data : "");
    CHECK(st.stopped_at_eos);
    printf("    answer: %s\n", out.data ? out.data : "");
    peft_buf_free(&out);
    peft_model_free(m);
    peft_free(ctx);
}

int main(void) {
    TEST_RUN(smollm2_matches_transformers);
    TEST_RUN(smollm2_chat_answers_coherently);
    TEST_MAIN_END();
}
