/* test_predict.c — classification predictions: peft_classify's
 * probabilities against transformers + peft (tests/fixtures/predict, made
 * by tools/make_predict_fixtures.py from adapters peft.c trained) at every
 * batch size; `peft predict` end to end (output lines in input order,
 * --out, label names, --metrics and its JSON); and the messages that send
 * a classifier from generate / chat / eval to predict. */
#include "peft.h"
#include "test.h"

#include <cjson/cJSON.h>

#define EXPECTED "tests/fixtures/predict/expected.json"

static cJSON *load_json(const char *path) {
    char *t = test_read_file(path, NULL);
    cJSON *j = t ? cJSON_Parse(t) : NULL;
    free(t);
    return j;
}

/* The JSONL rows of path: texts and text_pairs (NULL where none). */
static int read_inputs(const char *path, char ***texts, char ***pairs) {
    char *t = test_read_file(path, NULL);
    if (!t) return -1;
    int n = 0;
    *texts = calloc(64, sizeof **texts);
    *pairs = calloc(64, sizeof **pairs);
    for (char *line = strtok(t, "\n"); line && n < 64; line = strtok(NULL, "\n")) {
        cJSON *r = cJSON_Parse(line);
        const cJSON *a = cJSON_GetObjectItem(r, "text"), *b = cJSON_GetObjectItem(r, "text_pair");
        (*texts)[n] = strdup(a->valuestring);
        (*pairs)[n] = cJSON_IsString(b) ? strdup(b->valuestring) : NULL;
        n++;
        cJSON_Delete(r);
    }
    free(t);
    return n;
}

static void free_inputs(char **texts, char **pairs, int n) {
    for (int i = 0; i < n; i++) { free(texts[i]); free(pairs[i]); }
    free(texts);
    free(pairs);
}

static void probabilities_match_transformers_at_every_batch_size(void) {
    cJSON *ref_all = load_json(EXPECTED);
    if (!ref_all) TEST_FAIL("%s missing or not JSON", EXPECTED);
    const cJSON *c;
    int cases = 0;
    cJSON_ArrayForEach(c, ref_all) {
        const char *model = cJSON_GetObjectItem(c, "model")->valuestring,
                   *adir = cJSON_GetObjectItem(c, "adapter")->valuestring,
                   *inputs = cJSON_GetObjectItem(c, "inputs")->valuestring;
        const cJSON *probs = cJSON_GetObjectItem(c, "probs");
        peft_ctx_params cp = peft_ctx_default_params();
        cp.n_threads = 1;
        peft_ctx *ctx = peft_init(&cp);
        peft_model *m = peft_model_load(ctx, model);
        CHECK_MSG(m != NULL, "%s: %s", model, peft_last_error(ctx));
        peft_adapter *a = m ? peft_adapter_load(m, adir) : NULL;
        CHECK_MSG(a != NULL, "%s: %s", adir, peft_last_error(ctx));
        char **texts = NULL, **pairs = NULL;
        const int n = read_inputs(inputs, &texts, &pairs);
        CHECK_EQ_INT(n, cJSON_GetArraySize(probs));
        const int K = a ? peft_classifier_num_labels(m, a) : 0;
        CHECK_EQ_INT(K, 3);
        if (a && n > 0 && K == 3) {
            float *p = malloc(sizeof(float) * (size_t)n * K), *lg = malloc(sizeof(float) * (size_t)n * K);
            float *p1 = malloc(sizeof(float) * (size_t)n * K);
            /* 1: no padding; 3: padded batches and a short last one; 16: one batch */
            const int batches[3] = {1, 3, 16};
            for (int bi = 0; bi < 3; bi++) {
                peft_classify_params pp = peft_classify_default_params();
                pp.batch = batches[bi];
                CHECK_MSG(peft_classify(m, a, (const char *const *)texts, (const char *const *)pairs, n, &pp, lg, p) == 0,
                          "%s", peft_last_error(ctx));
                double worst = 0;
                for (int i = 0; i < n; i++) {
                    const cJSON *row = cJSON_GetArrayItem(probs, i);
                    double z = 0, mx = lg[(size_t)i * K];
                    for (int k = 1; k < K; k++) mx = fmax(mx, lg[(size_t)i * K + k]);
                    for (int k = 0; k < K; k++) z += exp(lg[(size_t)i * K + k] - mx);
                    for (int k = 0; k < K; k++) {
                        const double ref = cJSON_GetArrayItem(row, k)->valuedouble, got = p[(size_t)i * K + k];
                        worst = fmax(worst, fabs(got - ref));
                        /* probs are the softmax of the logits returned beside them */
                        CHECK_NEAR(got, exp(lg[(size_t)i * K + k] - mx) / z, 1e-6);
                    }
                }
                CHECK_MSG(worst <= 1e-5, "%s, batch %d: max |p - transformers| = %.3g", adir, batches[bi], worst);
                if (bi == 0) memcpy(p1, p, sizeof(float) * (size_t)n * K);
                else CHECK_MSG(test_max_abs_diff(p, p1, (size_t)n * K) <= 1e-6, "%s: batch %d differs from batch 1 by %.3g",
                               adir, batches[bi], test_max_abs_diff(p, p1, (size_t)n * K));
            }
            /* logits alone (probs NULL) are the same logits */
            float *lg2 = malloc(sizeof(float) * (size_t)n * K);
            CHECK_OK(peft_classify(m, a, (const char *const *)texts, (const char *const *)pairs, n, NULL, lg2, NULL));
            CHECK(test_max_abs_diff(lg, lg2, (size_t)n * K) <= 1e-6);
            free(lg2);
            free(p);
            free(p1);
            free(lg);
        }
        free_inputs(texts, pairs, n);
        peft_adapter_free(a);
        peft_model_free(m);
        peft_free(ctx);
        cases++;
    }
    CHECK_EQ_INT(cases, 3);
    cJSON_Delete(ref_all);
}

static void classify_refuses_a_model_without_a_head(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, "tests/fixtures/models/tiny-llama");
    if (!m) TEST_FAIL("tiny-llama: %s", peft_last_error(ctx));
    CHECK_EQ_INT(peft_classifier_num_labels(m, NULL), 0);
    const char *t[1] = {"hello"};
    float p[4];
    CHECK_EQ_INT(peft_classify(m, NULL, t, NULL, 1, NULL, NULL, p), PEFT_ERR_INVALID);
    CHECK_MSG(strstr(peft_last_error(ctx), "classification head") != NULL, "%s", peft_last_error(ctx));
    /* a model with its own head (a *ForSequenceClassification folder) classifies without an adapter */
    peft_model *bert = peft_model_load(ctx, "tests/fixtures/models/tiny-bert");
    CHECK(bert != NULL);
    if (bert) {
        CHECK_EQ_INT(peft_classifier_num_labels(bert, NULL), 3);
        CHECK_OK(peft_classify(bert, NULL, t, NULL, 1, NULL, NULL, p));
        CHECK_NEAR(p[0] + p[1] + p[2], 1.0, 1e-6);
        /* zero inputs: nothing to do, not an error */
        CHECK_OK(peft_classify(bert, NULL, t, NULL, 0, NULL, NULL, p));
    }
    peft_model_free(bert);
    peft_model_free(m);
    peft_free(ctx);
}

static void cli_writes_predictions_in_order_with_metrics(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    cJSON *ref_all = load_json(EXPECTED);
    if (!ref_all) TEST_FAIL("%s missing", EXPECTED);
    const cJSON *c = cJSON_GetObjectItem(ref_all, "bert_pairs");
    const cJSON *probs = cJSON_GetObjectItem(c, "probs");
    char *dir = test_tmp_file();
    char out[4096], args[8192], path[512], mpath[600], buf[16384];
    unlink(dir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/pred.jsonl", dir);
    snprintf(mpath, sizeof mpath, "%s.metrics.json", path);
    /* no --model: the adapter's base_model_name_or_path */
    snprintf(args, sizeof args, "predict --adapter %s --data %s --out %s --metrics --batch 2 --threads 1",
             cJSON_GetObjectItem(c, "adapter")->valuestring, cJSON_GetObjectItem(c, "inputs")->valuestring, path);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 0);
    CHECK_MSG(strstr(buf, "accuracy") && strstr(buf, "macro F1") && strstr(buf, "confusion matrix"), "%s", buf);
    CHECK_MSG(strstr(buf, "the others have no \"label\""), "one input has no label: %s", buf);
    char *text = test_read_file(path, NULL);
    CHECK(text != NULL);
    int n = 0;
    int pred[16] = {0};
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n"), n++) {
        cJSON *r = cJSON_Parse(line);
        CHECK_MSG(r != NULL, "line %d is not JSON: %s", n, line);
        if (!r) continue;
        CHECK_EQ_INT(cJSON_GetObjectItem(r, "index")->valueint, n);
        const cJSON *p = cJSON_GetObjectItem(r, "probs"), *ref = cJSON_GetArrayItem(probs, n);
        int best = 0;
        for (int k = 0; k < 3; k++) {
            CHECK_NEAR(cJSON_GetArrayItem(p, k)->valuedouble, cJSON_GetArrayItem(ref, k)->valuedouble, 1e-5);
            if (cJSON_GetArrayItem(ref, k)->valuedouble > cJSON_GetArrayItem(ref, best)->valuedouble) best = k;
        }
        CHECK_EQ_INT(cJSON_GetObjectItem(r, "label")->valueint, best);
        if (n < 16) pred[n] = best;
        /* tiny-bert's config.json names its classes */
        static const char *const names[3] = {"negative", "neutral", "positive"};
        const cJSON *ln = cJSON_GetObjectItem(r, "label_name");
        CHECK_MSG(cJSON_IsString(ln) && !strcmp(ln->valuestring, names[best]), "line %d: label_name", n);
        cJSON_Delete(r);
    }
    CHECK_EQ_INT(n, cJSON_GetArraySize(probs));
    free(text);
    /* the metrics JSON beside --out: accuracy from the labels of inputs_pairs.jsonl */
    cJSON *mj = load_json(mpath);
    CHECK_MSG(mj != NULL, "%s missing", mpath);
    if (mj) {
        static const int truth[4] = {2, 2, 0, 1};   /* the fifth input has no label */
        int correct = 0;
        for (int i = 0; i < 4; i++) correct += pred[i] == truth[i];
        CHECK_EQ_INT(cJSON_GetObjectItem(mj, "n")->valueint, 4);
        CHECK_EQ_INT(cJSON_GetObjectItem(mj, "n_unlabelled")->valueint, 1);
        CHECK_NEAR(cJSON_GetObjectItem(mj, "accuracy")->valuedouble, correct / 4.0, 1e-12);
        const cJSON *cm = cJSON_GetObjectItem(mj, "confusion_matrix");
        CHECK_EQ_INT(cJSON_GetArraySize(cm), 3);
        int total = 0, diag = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                const int v = cJSON_GetArrayItem(cJSON_GetArrayItem(cm, i), j)->valueint;
                total += v;
                diag += i == j ? v : 0;
            }
        CHECK_EQ_INT(total, 4);
        CHECK_EQ_INT(diag, correct);
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(mj, "per_class")), 3);
        CHECK(cJSON_IsNumber(cJSON_GetObjectItem(mj, "macro_f1")));
        cJSON_Delete(mj);
    }
    /* stdout without --out: the same lines */
    snprintf(args, sizeof args, "predict --model %s --adapter %s --data %s --threads 1 2>/dev/null",
             cJSON_GetObjectItem(c, "model")->valuestring, cJSON_GetObjectItem(c, "adapter")->valuestring,
             cJSON_GetObjectItem(c, "inputs")->valuestring);
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "%s %s", getenv("PEFT_CLI"), args);
    CHECK_EQ_INT(test_run_shell(cmd, out, sizeof out), 0);
    /* batch 8 vs 2: the same lines up to float summation order in the padded rows */
    text = test_read_file(path, NULL);
    char *sa = NULL, *sb = NULL;
    int lines = 0;
    for (char *la = text ? strtok_r(text, "\n", &sa) : NULL, *lb = strtok_r(out, "\n", &sb); la && lb;
         la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb), lines++) {
        cJSON *ja = cJSON_Parse(la), *jb = cJSON_Parse(lb);
        CHECK_MSG(ja && jb, "line %d: %s | %s", lines, la, lb);
        if (ja && jb) {
            CHECK_EQ_INT(cJSON_GetObjectItem(ja, "label")->valueint, cJSON_GetObjectItem(jb, "label")->valueint);
            for (int k = 0; k < 3; k++)
                CHECK_NEAR(cJSON_GetArrayItem(cJSON_GetObjectItem(ja, "probs"), k)->valuedouble,
                           cJSON_GetArrayItem(cJSON_GetObjectItem(jb, "probs"), k)->valuedouble, 1e-6);
        }
        cJSON_Delete(ja);
        cJSON_Delete(jb);
    }
    CHECK_EQ_INT(lines, cJSON_GetArraySize(probs));
    free(text);
    unlink(mpath);
    unlink(path);
    rmdir(dir);
    free(dir);
    cJSON_Delete(ref_all);
}

static void classifiers_are_sent_to_predict(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char buf[8192], data[300];
    char args[2048];
    char *dir = test_tmp_file();
    unlink(dir);
    mkdir(dir, 0755);
    snprintf(data, sizeof data, "%s/lm.jsonl", dir);
    test_write_bytes(data, "{\"text\": \"once upon a time\"}\n", 29);
    const char *A = "tests/fixtures/predict/llama/adapter", *M = "tests/fixtures/models/tiny-llama";
    snprintf(args, sizeof args, "generate --model %s --adapter %s --prompt hi --max-tokens 2", M, A);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 1);
    CHECK_MSG(strstr(buf, "classifier") && strstr(buf, "peft predict"), "generate: %s", buf);
    snprintf(args, sizeof args, "chat --model %s --adapter %s </dev/null", M, A);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 1);
    CHECK_MSG(strstr(buf, "peft predict"), "chat: %s", buf);
    snprintf(args, sizeof args, "eval --model %s --adapter %s --data %s", M, A, data);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 1);
    CHECK_MSG(strstr(buf, "{\"text\", \"label\"}") && strstr(buf, "peft predict"), "eval: %s", buf);
    CHECK_MSG(!strstr(buf, "no target tokens"), "eval: %s", buf);
    /* --metrics on rows without labels: the predictions, and why there are no metrics */
    snprintf(args, sizeof args, "predict --adapter %s --data %s --metrics", A, data);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 1);
    CHECK_MSG(strstr(buf, "\"probs\"") && strstr(buf, "has a \"label\""), "predict --metrics: %s", buf);
    /* an LM adapter-less model: no head to predict with */
    snprintf(args, sizeof args, "predict --model %s --data %s", M, data);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 1);
    CHECK_MSG(strstr(buf, "no sequence-classification head"), "predict without a head: %s", buf);
    /* a label that is not one of the classifier's */
    test_write_bytes(data, "{\"text\": \"x\", \"label\": 7}\n", 26);
    snprintf(args, sizeof args, "predict --adapter %s --data %s", A, data);
    CHECK_EQ_INT(test_run_cli(args, buf, sizeof buf), 1);
    CHECK_MSG(strstr(buf, "lm.jsonl:1") && strstr(buf, "0..2"), "bad label: %s", buf);
    unlink(data);
    rmdir(dir);
    free(dir);
}

int main(void) {
    TEST_RUN(probabilities_match_transformers_at_every_batch_size);
    TEST_RUN(classify_refuses_a_model_without_a_head);
    TEST_RUN(cli_writes_predictions_in_order_with_metrics);
    TEST_RUN(classifiers_are_sent_to_predict);
    TEST_MAIN_END();
}
