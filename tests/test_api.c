/* test_api.c — the public C API alone (peft.h): load, adapt, train, save,
 * reload, attach, evaluate, generate, merge; errors through peft_last_error. */
#include "peft.h"
#include "test.h"

#include <unistd.h>

static void public_api_trains_saves_and_reloads(void) {
    char dir[] = "/tmp/peft_api_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char data[300], out[300], merged[300];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    snprintf(out, sizeof out, "%s/run", dir);
    snprintf(merged, sizeof merged, "%s/merged", dir);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 40; i++) fprintf(f, "{\"prompt\": \"Q%d:\", \"completion\": \" answer %d\"}\n", i % 7, i % 7);
    fclose(f);

    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, "tests/fixtures/models/tiny-gpt2");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    peft_lora_params lp = peft_lora_default_params();
    lp.r = 4;
    lp.targets = "c_attn,c_fc";
    peft_adapter *a = peft_adapter_new(m, &lp);
    CHECK(a != NULL);
    CHECK(peft_adapter_n_params(a) > 0);
    double base_loss, loss;
    int64_t n;
    CHECK_OK(peft_eval(m, NULL, data, 4, 64, &base_loss, &n));
    CHECK_OK(peft_eval(m, a, data, 4, 64, &loss, &n));
    CHECK_NEAR(loss, base_loss, 1e-6); /* B = 0: the adapter starts as the identity */

    peft_train_params tp = peft_train_default_params();
    tp.data = data;
    tp.out_dir = out;
    tp.steps = 20;
    tp.batch = 4;
    tp.seq = 64;
    tp.lr = 5e-3f;
    peft_train_result res;
    CHECK_OK(peft_train(m, a, &tp, &res));
    CHECK_EQ_INT(res.steps, 20);
    CHECK_OK(peft_eval(m, a, data, 4, 64, &loss, &n));
    CHECK_MSG(loss < base_loss - 0.3, "loss %g vs base %g", loss, base_loss);

    peft_adapter *b = peft_adapter_load(m, out);
    CHECK(b != NULL);
    double loss_b;
    CHECK_OK(peft_eval(m, b, data, 4, 64, &loss_b, &n));
    CHECK_NEAR(loss_b, loss, 1e-6);

    int32_t ids[6] = {317, 40, 41, 42, 43, 44};
    peft_model_info info;
    peft_model_get_info(m, &info);
    float *l0 = malloc(sizeof(float) * 6 * info.vocab), *l1 = malloc(sizeof(float) * 6 * info.vocab);
    CHECK_OK(peft_model_logits(m, ids, 6, l0));
    CHECK_OK(peft_adapter_attach(m, b));
    CHECK_OK(peft_model_logits(m, ids, 6, l1));
    CHECK(test_max_abs_diff(l0, l1, (size_t)6 * info.vocab) > 1e-3);
    peft_sample_params sp = peft_sample_default_params();
    sp.max_tokens = 4;
    CHECK_OK(peft_generate(m, "Q3:", &sp, NULL, NULL, NULL));

    /* merged into the base: same logits as attached */
    CHECK_OK(peft_adapter_merge(m, b, merged));
    peft_model *mm = peft_model_load(ctx, merged);
    CHECK(mm != NULL);
    if (mm) {
        float *l2 = malloc(sizeof(float) * 6 * info.vocab);
        CHECK_OK(peft_model_logits(mm, ids, 6, l2));
        CHECK(test_max_abs_diff(l1, l2, (size_t)6 * info.vocab) < 1e-4);
        free(l2);
        peft_model_free(mm);
    }
    CHECK_OK(peft_adapter_attach(m, NULL));

    /* errors come back as a status and a message */
    CHECK(peft_adapter_load(m, "/nonexistent/adapter") == NULL);
    CHECK(strstr(peft_last_error(ctx), "/nonexistent/adapter") != NULL);
    lp.targets = "q_proj";
    CHECK(peft_adapter_new(m, &lp) == NULL);
    CHECK(strstr(peft_last_error(ctx), "q_proj") != NULL);

    free(l0);
    free(l1);
    peft_adapter_free(a);
    peft_adapter_free(b);
    peft_model_free(m);
    peft_free(ctx);
    CHECK(test_rm_rf(dir) == 0);
}

/* Every method through the public API: create, train a few steps, reload,
 * same loss; an unknown method is an error. */
static void public_api_every_method(void) {
    char dir[] = "/tmp/peft_api_m_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char data[300], out[300];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    FILE *f = fopen(data, "w");
    for (int i = 0; f && i < 24; i++) fprintf(f, "{\"prompt\": \"Q%d:\", \"completion\": \" answer %d\"}\n", i % 5, i % 5);
    if (f) fclose(f);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, "tests/fixtures/models/tiny-gpt2");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    static const char *methods[] = {"dora", "adapter-pfeiffer", "adapter-houlsby", "prompt", "prefix", "ia3", "bitfit"};
    for (size_t k = 0; k < sizeof methods / sizeof *methods; k++) {
        peft_method_params mp = peft_method_default_params(methods[k]);
        mp.lora.r = 4;
        mp.num_virtual_tokens = 4;
        mp.reduction_factor = 8;
        peft_adapter *a = peft_adapter_new_method(m, &mp);
        CHECK_MSG(a != NULL, "%s: %s", methods[k], peft_last_error(ctx));
        if (!a) continue;
        CHECK(!strcmp(peft_adapter_method(a), methods[k]));
        peft_train_params tp = peft_train_default_params();
        tp.data = data;
        tp.steps = 3;
        tp.batch = 2;
        tp.seq = 32;
        tp.lr = 1e-2f;
        snprintf(out, sizeof out, "%s/%s", dir, methods[k]);
        tp.out_dir = out;
        peft_train_result r;
        CHECK_OK(peft_train(m, a, &tp, &r));
        double l1, l2;
        int64_t n1, n2;
        CHECK_OK(peft_eval(m, a, data, 4, 32, &l1, &n1));
        peft_adapter *b = peft_adapter_load(m, out);
        CHECK_MSG(b != NULL, "%s: %s", methods[k], peft_last_error(ctx));
        if (b) {
            CHECK_OK(peft_eval(m, b, data, 4, 32, &l2, &n2));
            CHECK_MSG(fabs(l1 - l2) <= 1e-6 * fabs(l1), "%s: reloaded loss %.7f vs %.7f", methods[k], l2, l1);
            CHECK(!strcmp(peft_adapter_method(b), methods[k]));
            peft_adapter_free(b);
        }
        peft_adapter_free(a);
    }
    peft_method_params bad = peft_method_default_params("lorax");
    CHECK(peft_adapter_new_method(m, &bad) == NULL);
    CHECK(strstr(peft_last_error(ctx), "unknown method") != NULL);
    peft_model_free(m);
    peft_free(ctx);
    test_rm_rf(dir);
}

/* LoHa through the public API on Llama (GPT-2 is refused): HF's defaults
 * r 8, alpha 8 from peft_method_default_params, its options string, train,
 * save, reload, same loss. */
static void public_api_loha(void) {
    char dir[] = "/tmp/peft_api_loha_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char data[300], out[300], cfgp[320];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    FILE *f = fopen(data, "w");
    for (int i = 0; f && i < 24; i++) fprintf(f, "{\"prompt\": \"Q%d:\", \"completion\": \" answer %d\"}\n", i % 5, i % 5);
    if (f) fclose(f);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, "tests/fixtures/models/tiny-llama");
    CHECK(m != NULL);
    if (!m) { peft_free(ctx); return; }
    peft_method_params mp = peft_method_default_params("loha");
    mp.options = "rank_dropout=0.1;rank_pattern={\"v_proj\": 2}";
    peft_adapter *a = peft_adapter_new_method(m, &mp);
    CHECK_MSG(a != NULL, "%s", peft_last_error(ctx));
    if (a) {
        peft_train_params tp = peft_train_default_params();
        tp.data = data;
        tp.steps = 3;
        tp.batch = 2;
        tp.seq = 32;
        tp.lr = 1e-2f;
        snprintf(out, sizeof out, "%s/loha", dir);
        tp.out_dir = out;
        peft_train_result r;
        CHECK_OK(peft_train(m, a, &tp, &r));
        double l1 = NAN, l2 = NAN;
        int64_t n1, n2;
        CHECK_OK(peft_eval(m, a, data, 4, 32, &l1, &n1));
        peft_adapter *b = peft_adapter_load(m, out);
        CHECK_MSG(b != NULL, "%s", peft_last_error(ctx));
        if (b) CHECK_OK(peft_eval(m, b, data, 4, 32, &l2, &n2));
        CHECK_MSG(fabs(l1 - l2) <= 1e-6 * fabs(l1), "reloaded loss %.7f vs %.7f", l2, l1);
        peft_adapter_free(b);
        snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", out);
        static char cfg[8192];
        FILE *cf = fopen(cfgp, "r");
        const size_t len = cf ? fread(cfg, 1, sizeof cfg - 1, cf) : 0;
        if (cf) fclose(cf);
        cfg[len] = 0;
        CHECK_MSG(strstr(cfg, "\"r\":\t8,") && strstr(cfg, "\"alpha\":\t8,") && strstr(cfg, "\"v_proj\":\t2") &&
                      strstr(cfg, "\"rank_dropout\":\t0.1"),
                  "%s: %s", cfgp, cfg);
    }
    peft_adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    test_rm_rf(dir);
}

int main(void) {
    TEST_RUN(public_api_every_method);
    TEST_RUN(public_api_loha);
    TEST_RUN(public_api_trains_saves_and_reloads);
    TEST_MAIN_END();
}
