/* cmd_predict.c — `peft predict`: labels and probabilities of a
 * classifier (an adapter with a sequence-classification head, or a
 * *ForSequenceClassification model) for a JSONL file of texts, with
 * accuracy, F1 and a confusion matrix where the rows carry labels. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft predict --adapter DIR --data FILE [options]\n\n"
            "Labels and probabilities of a classifier: an adapter trained on {\"text\"[, \"text_pair\"], \"label\"}\n"
            "rows (it has a sequence-classification head), or a *ForSequenceClassification model alone.\n\n"
            "  --model PATH       HF model folder or .gguf file (default: the adapter's base_model_name_or_path)\n"
            "  --adapter DIR      the classifier adapter (omit it for a model with its own head)\n"
            "  --data FILE        JSONL, one {\"text\": ...} per line, optional \"text_pair\" (pair classification)\n"
            "                     and \"label\" (an integer, or a name of id2label) for --metrics\n"
            "  --out FILE         write the predictions here, atomically (default: stdout): one line per input,\n"
            "                     in input order: {\"index\": i, \"label\": k, \"label_name\": \"...\", \"probs\": [...]}\n"
            "                     (label_name where the adapter's or the model's config has id2label)\n"
            "  --metrics          accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix of\n"
            "                     the labelled rows, printed to stderr; as JSON to --metrics-out\n"
            "  --metrics-out FILE the metrics as JSON (default with --out: FILE.metrics.json beside it; without\n"
            "                     --out: one JSON line on stderr after the table)\n"
            "  --batch N          inputs per forward (default 8; the results do not depend on it)\n"
            "  --seq N            truncate inputs to N tokens, the template's included (default: the context)\n"
            "  --threads N        threads (default: all cores)\n"
            "  --compute P        " CLI_COMPUTE_HELP "\n"
            "  --verbose          log what was loaded\n");
}

typedef struct {
    char *text, *pair;
    int label;   /* -1: none */
    int line;
} row;

typedef struct {
    row *r;
    int n, cap;
} rows;

static void rows_free(rows *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->r[i].text);
        free(t->r[i].pair);
    }
    free(t->r);
}

/* Class names from a config's id2label ({"0": "negative", ...}) when it
 * names exactly the K labels; names[k] malloc'ed. */
static bool names_from(const char *path, int K, char **names) {
    char *text = NULL;
    if (peft_file_read(path, &text, NULL, NULL)) return false;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "id2label");
    bool ok = cJSON_IsObject(m) && cJSON_GetArraySize(m) == K;
    for (int k = 0; ok && k < K; k++) {
        char key[32];
        snprintf(key, sizeof key, "%d", k);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
        ok = cJSON_IsString(v) && v->valuestring;
    }
    for (int k = 0; ok && k < K; k++) {
        char key[32];
        snprintf(key, sizeof key, "%d", k);
        names[k] = strdup(cJSON_GetObjectItemCaseSensitive(m, key)->valuestring);
        ok = names[k] != NULL;
    }
    if (!ok)
        for (int k = 0; k < K; k++) { free(names[k]); names[k] = NULL; }
    cJSON_Delete(j);
    return ok;
}

/* The first of: the adapter folder's adapter_config.json and config.json,
 * the model folder's config.json. *from: which. */
static bool label_names(const char *adapter_dir, const char *model, int K, char **names, char *from, size_t cap) {
    const char *dirs[3] = {adapter_dir, adapter_dir, model};
    const char *files[3] = {"adapter_config.json", "config.json", "config.json"};
    for (int i = 0; i < 3; i++) {
        if (!dirs[i]) continue;
        snprintf(from, cap, "%s/%s", dirs[i], files[i]);
        if (names_from(from, K, names)) return true;
    }
    from[0] = 0;
    return false;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

/* A label field: an integer in [0, K), or one of the class names. */
static int parse_label(const cJSON *l, int K, char *const *names, bool have_names, const char *path, int line) {
    if (cJSON_IsNumber(l)) {
        const double v = l->valuedouble;
        if (v >= 0 && v < K && v == floor(v)) return (int)v;
        fprintf(stderr, "peft predict: %s:%d: \"label\" %g is not a label of this %d-label classifier (0..%d)\n", path,
                line, v, K, K - 1);
        return -2;
    }
    if (cJSON_IsString(l) && l->valuestring) {
        for (int k = 0; have_names && k < K; k++)
            if (!strcmp(names[k], l->valuestring)) return k;
        fprintf(stderr, "peft predict: %s:%d: \"label\" \"%s\" is not %s\n", path, line, l->valuestring,
                have_names ? "one of the classifier's id2label names" : "an integer (the classifier has no id2label names)");
        return -2;
    }
    fprintf(stderr, "peft predict: %s:%d: \"label\" must be an integer in 0..%d or a class name\n", path, line, K - 1);
    return -2;
}

static int read_rows(const char *path, int K, char *const *names, bool have_names, rows *out) {
    char *data = NULL;
    size_t len = 0;
    peft_error err = {0};
    if (peft_file_read(path, &data, &len, &err)) {
        fprintf(stderr, "peft predict: %s\n", err.msg);
        return 1;
    }
    int rc = 0, line = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        char *nl = memchr(data + pos, '\n', len - pos);
        const size_t end = nl ? (size_t)(nl - data) : len, n = end - pos;
        line++;
        if (n > peft_max_line_bytes()) {
            fprintf(stderr, "peft predict: %s:%d: line of %zu bytes exceeds the limit of %zu\n", path, line, n,
                    peft_max_line_bytes());
            rc = 1;
        } else if (!blank(data + pos, n)) {
            cJSON *j = cJSON_ParseWithLength(data + pos, n);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text"),
                        *p = cJSON_GetObjectItemCaseSensitive(j, "text_pair"),
                        *l = cJSON_GetObjectItemCaseSensitive(j, "label");
            if (!j || !cJSON_IsObject(j)) {
                fprintf(stderr, "peft predict: %s:%d: not a JSON object (the file must be JSONL: one object per line)\n",
                        path, line);
                rc = 1;
            } else if (!cJSON_IsString(t)) {
                fprintf(stderr, "peft predict: %s:%d: no \"text\" string field (rows are {\"text\"[, \"text_pair\"][, "
                        "\"label\"]})\n", path, line);
                rc = 1;
            } else if (p && !cJSON_IsString(p) && !cJSON_IsNull(p)) {
                fprintf(stderr, "peft predict: %s:%d: \"text_pair\" must be a string\n", path, line);
                rc = 1;
            } else {
                const int label = l && !cJSON_IsNull(l) ? parse_label(l, K, names, have_names, path, line) : -1;
                if (label < -1) rc = 1;
                else if (out->n == out->cap) {
                    const int cap = out->cap ? 2 * out->cap : 64;
                    row *r = realloc(out->r, (size_t)cap * sizeof *r);
                    if (!r) rc = 2;
                    else { out->r = r; out->cap = cap; }
                }
                if (!rc) {
                    row *r = &out->r[out->n];
                    r->text = strdup(t->valuestring);
                    r->pair = cJSON_IsString(p) ? strdup(p->valuestring) : NULL;
                    r->label = label;
                    r->line = line;
                    if (!r->text || (cJSON_IsString(p) && !r->pair)) { free(r->text); free(r->pair); rc = 2; }
                    else out->n++;
                }
            }
            cJSON_Delete(j);
        }
        pos = end + 1;
    }
    free(data);
    if (rc == 2) fprintf(stderr, "peft predict: out of memory\n");
    if (!rc && out->n == 0) {
        fprintf(stderr, "peft predict: %s: no rows (an empty file or only blank lines)\n", path);
        rc = 1;
    }
    return rc ? 1 : 0;
}

/* The metrics of the labelled rows as a table (stderr) and as JSON (*json,
 * malloc'ed, one line). */
static int metrics(const rows *t, const int *pred, int K, char *const *names, bool have_names, char **json) {
    int *cm = calloc((size_t)K * K, sizeof *cm);
    if (!cm) return 2;
    int n = 0, correct = 0;
    for (int i = 0; i < t->n; i++) {
        if (t->r[i].label < 0) continue;
        cm[(size_t)t->r[i].label * K + pred[i]]++;
        n++;
        correct += t->r[i].label == pred[i];
    }
    /* the scalars first, for a reader of the line */
    cJSON *o = cJSON_CreateObject(), *pc = cJSON_CreateArray(), *mat = cJSON_CreateArray();
    double f1_sum = 0;
    const double acc = (double)correct / n;
    fprintf(stderr, "metrics over %d labelled row%s%s:\n  accuracy %.4f (%d/%d)\n", n, n == 1 ? "" : "s",
            n < t->n ? " (the others have no \"label\")" : "", acc, correct, n);
    fprintf(stderr, "  %-16s %9s %9s %9s %8s\n", "class", "precision", "recall", "f1", "support");
    for (int k = 0; k < K; k++) {
        int tp = cm[(size_t)k * K + k], pred_k = 0, true_k = 0;
        for (int j = 0; j < K; j++) {
            pred_k += cm[(size_t)j * K + k];
            true_k += cm[(size_t)k * K + j];
        }
        /* sklearn's zero_division=0: an undefined ratio counts as 0 */
        const double p = pred_k ? (double)tp / pred_k : 0, r = true_k ? (double)tp / true_k : 0,
                     f1 = p + r > 0 ? 2 * p * r / (p + r) : 0;
        f1_sum += f1;
        char name[64];
        snprintf(name, sizeof name, "%d%s%.40s", k, have_names ? " " : "", have_names ? names[k] : "");
        fprintf(stderr, "  %-16s %9.4f %9.4f %9.4f %8d\n", name, p, r, f1, true_k);
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "label", k);
        if (have_names) cJSON_AddStringToObject(c, "label_name", names[k]);
        cJSON_AddNumberToObject(c, "precision", p);
        cJSON_AddNumberToObject(c, "recall", r);
        cJSON_AddNumberToObject(c, "f1", f1);
        cJSON_AddNumberToObject(c, "support", true_k);
        cJSON_AddItemToArray(pc, c);
        cJSON_AddItemToArray(mat, cJSON_CreateIntArray(cm + (size_t)k * K, K));
    }
    const double macro = f1_sum / K;
    fprintf(stderr, "  macro F1 %.4f\n  confusion matrix (rows: true label, columns: predicted):\n", macro);
    for (int k = 0; k < K; k++) {
        fprintf(stderr, "   ");
        for (int j = 0; j < K; j++) fprintf(stderr, " %6d", cm[(size_t)k * K + j]);
        fprintf(stderr, "\n");
    }
    cJSON_AddNumberToObject(o, "n", n);
    cJSON_AddNumberToObject(o, "n_unlabelled", t->n - n);
    cJSON_AddNumberToObject(o, "accuracy", acc);
    cJSON_AddNumberToObject(o, "macro_f1", macro);
    cJSON_AddItemToObject(o, "per_class", pc);
    cJSON_AddItemToObject(o, "confusion_matrix", mat);
    *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    free(cm);
    return *json ? 0 : 2;
}

int cmd_predict(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "predict"};
    const char *model = NULL, *adapter_dir = NULL, *data = NULL, *out = NULL, *metrics_out = NULL, *compute = NULL, *v;
    int threads = 0;
    bool bad = false, verbose = false, want_metrics = false;
    peft_classify_params cp = peft_classify_default_params();
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--data", &bad))) data = v;
        else if ((v = cli_opt(&a, "--out", &bad))) out = v;
        else if ((v = cli_opt(&a, "--metrics-out", &bad))) metrics_out = v;
        else if ((v = cli_opt(&a, "--batch", &bad))) bad = cli_int(a.cmd, "--batch", v, 1, 4096, &cp.batch) != 0;
        else if ((v = cli_opt(&a, "--seq", &bad))) bad = cli_int(a.cmd, "--seq", v, 2, 1 << 20, &cp.seq) != 0;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &threads) != 0;
        else if ((v = cli_opt(&a, "--compute", &bad))) compute = v;
        else if (cli_flag(&a, "--metrics")) want_metrics = true;
        else if (cli_flag(&a, "--verbose")) verbose = true;
        else if (cli_flag(&a, "--help")) { usage(stdout); return 0; }
        else if (!bad) {
            cli_unknown_option(&a);
            return 2;
        }
    }
    if (bad) return 2;
    char *base = NULL;
    if (!model && adapter_dir) model = base = cli_adapter_base(adapter_dir);
    if (!model || !data) {
        fprintf(stderr, "peft predict: %s\n",
                !data ? "--data is required" : "--model is required (the adapter names no base_model_name_or_path)");
        usage(stderr);
        free(base);
        return 2;
    }
    if (metrics_out && !want_metrics) {
        fprintf(stderr, "peft predict: --metrics-out needs --metrics\n");
        free(base);
        return 2;
    }
    int rc = 1;
    peft_ctx *ctx = cli_ctx(threads, verbose);
    peft_model *m = NULL;
    peft_adapter *ad = NULL;
    rows t = {0};
    char **names = NULL, from[4200] = "", *mjson = NULL, *mpath = NULL;
    float *probs = NULL;
    int n_names = 0;
    int *pred = NULL;
    const char **texts = NULL, **pairs = NULL;
    char *outbuf = NULL;
    size_t outlen = 0, outcap = 0;
    if (!ctx) goto done;
    if (!(m = peft_model_load(ctx, model))) {
        fprintf(stderr, "peft predict: %s\n", peft_last_error(ctx));
        goto done;
    }
    if ((rc = cli_compute("predict", ctx, m, compute, false))) goto done;
    rc = 1;
    if (adapter_dir && !(ad = peft_adapter_load(m, adapter_dir))) {
        fprintf(stderr, "peft predict: %s\n", peft_last_error(ctx));
        goto done;
    }
    const int K = peft_classifier_num_labels(m, ad);
    if (K <= 0) {
        if (adapter_dir)
            fprintf(stderr, "peft predict: %s has no sequence-classification head (a %s adapter for generation): "
                    "use `peft generate --model %s --adapter %s --prompt ...`; classifiers are trained on "
                    "{\"text\", \"label\"} rows\n", adapter_dir, peft_adapter_method(ad), model, adapter_dir);
        else
            fprintf(stderr, "peft predict: %s has no sequence-classification head: give the classifier adapter "
                    "(--adapter DIR, trained on {\"text\", \"label\"} rows)\n", model);
        goto done;
    }
    if (!(names = calloc((size_t)K, sizeof *names))) { fprintf(stderr, "peft predict: out of memory\n"); goto done; }
    n_names = K;
    const bool have_names = label_names(adapter_dir, model, K, names, from, sizeof from);
    if (verbose && have_names) fprintf(stderr, "peft predict: class names from %s\n", from);
    if (read_rows(data, K, names, have_names, &t)) goto done;
    texts = malloc((size_t)t.n * sizeof *texts);
    pairs = malloc((size_t)t.n * sizeof *pairs);
    probs = malloc((size_t)t.n * K * sizeof *probs);
    pred = malloc((size_t)t.n * sizeof *pred);
    if (!texts || !pairs || !probs || !pred) { fprintf(stderr, "peft predict: out of memory\n"); goto done; }
    int n_labelled = 0;
    for (int i = 0; i < t.n; i++) {
        texts[i] = t.r[i].text;
        pairs[i] = t.r[i].pair;
        n_labelled += t.r[i].label >= 0;
    }
    if (peft_classify(m, ad, texts, pairs, t.n, &cp, NULL, probs)) {
        fprintf(stderr, "peft predict: %s: %s\n", data, peft_last_error(ctx));
        goto done;
    }
    /* the predictions, then where they go */
    for (int i = 0; i < t.n; i++) {
        const float *p = probs + (size_t)i * K;
        int best = 0;
        for (int k = 1; k < K; k++)
            if (p[k] > p[best]) best = k;
        pred[i] = best;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", i);
        cJSON_AddNumberToObject(o, "label", best);
        if (have_names) cJSON_AddStringToObject(o, "label_name", names[best]);
        char *head = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!head) { fprintf(stderr, "peft predict: out of memory\n"); goto done; }
        /* probabilities as %.8g (cJSON prints 17 digits): ample for f32 */
        size_t need = strlen(head) + 32 + (size_t)K * 20;
        if (outlen + need > outcap) {
            size_t cap = outcap ? outcap : 1 << 16;
            while (outlen + need > cap) cap *= 2;
            char *nb = realloc(outbuf, cap);
            if (!nb) { free(head); fprintf(stderr, "peft predict: out of memory\n"); goto done; }
            outbuf = nb;
            outcap = cap;
        }
        outlen += (size_t)snprintf(outbuf + outlen, outcap - outlen, "%.*s,\"probs\":[", (int)strlen(head) - 1, head);
        for (int k = 0; k < K; k++)
            outlen += (size_t)snprintf(outbuf + outlen, outcap - outlen, "%s%.8g", k ? "," : "", (double)p[k]);
        outlen += (size_t)snprintf(outbuf + outlen, outcap - outlen, "]}\n");
        free(head);
    }
    if (out) {
        peft_error we = {0};
        if (peft_file_write_atomic(out, outbuf, outlen, &we)) {
            fprintf(stderr, "peft predict: %s\n", we.msg);
            goto done;
        }
    } else if (outlen && fwrite(outbuf, 1, outlen, stdout) != outlen) {
        fprintf(stderr, "peft predict: writing to stdout failed\n");
        goto done;
    }
    fflush(stdout);
    rc = 0;
    if (want_metrics) {
        if (n_labelled == 0) {
            fprintf(stderr, "peft predict: --metrics: no row of %s has a \"label\", so there is nothing to score "
                    "(the predictions were written; add \"label\" to the rows to get accuracy and F1)\n", data);
            rc = 1;
            goto done;
        }
        if (metrics(&t, pred, K, names, have_names, &mjson)) { fprintf(stderr, "peft predict: out of memory\n"); rc = 1; goto done; }
        if (!metrics_out && out) {
            mpath = malloc(strlen(out) + 16);
            if (mpath) sprintf(mpath, "%s.metrics.json", out);
            metrics_out = mpath;
        }
        if (metrics_out) {
            peft_error we = {0};
            const size_t ml = strlen(mjson);
            char *withnl = malloc(ml + 2);
            if (!withnl) { fprintf(stderr, "peft predict: out of memory\n"); rc = 1; goto done; }
            memcpy(withnl, mjson, ml);
            withnl[ml] = '\n';
            if (peft_file_write_atomic(metrics_out, withnl, ml + 1, &we)) {
                fprintf(stderr, "peft predict: %s\n", we.msg);
                rc = 1;
            } else
                fprintf(stderr, "metrics: %s\n", metrics_out);
            free(withnl);
        } else
            fprintf(stderr, "%s\n", mjson);
    }
done:
    free(outbuf);
    free(mjson);
    free(mpath);
    free(texts);
    free(pairs);
    free(probs);
    free(pred);
    for (int k = 0; k < n_names; k++) free(names[k]);
    free(names);
    rows_free(&t);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    free(base);
    return rc;
}
