/* cmd_embed.c — `peft embed`: sentence embeddings of a file of texts. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft embed --model PATH --data FILE [options]\n\n"
            "Sentence embeddings as sentence-transformers' encode computes them (modules.json's Pooling\n"
            "and Normalize, max_seq_length from sentence_bert_config.json). Encoders only (BERT, RoBERTa).\n\n"
            "  --model PATH       HF encoder folder (e.g. all-MiniLM-L6-v2) or .gguf file\n"
            "  --adapter DIR      apply an adapter of any method\n"
            "  --data FILE        the texts: *.jsonl is JSONL, one object with a \"text\" string per line\n"
            "                     (blank lines skipped); *.txt is plain text, one sentence per line (every\n"
            "                     line, blank ones too); any other name: JSONL if its first non-blank\n"
            "                     character is '{', else plain text\n"
            "  --out FILE         where to write (default: stdout); written atomically\n"
            "  --format F         jsonl (default): one {\"embedding\": [...]} per line, in input order;\n"
            "                     npy: float32 array of shape (n, dim) (the default when --out ends in .npy)\n"
            "  --threads N        threads (default: all cores)\n"
            "  --stats            print the speed (sentences/s) to stderr\n"
            "  --verbose          log what was loaded\n");
}

typedef struct {
    char **text;
    size_t *len;
    int n, cap;
} texts;

static int texts_add(texts *t, char *s, size_t len) {
    if (t->n == t->cap) {
        int cap = t->cap ? t->cap * 2 : 64;
        char **a = realloc(t->text, (size_t)cap * sizeof *a);
        if (!a) return -1;
        t->text = a;
        size_t *l = realloc(t->len, (size_t)cap * sizeof *l);
        if (!l) return -1;
        t->len = l;
        t->cap = cap;
    }
    t->text[t->n] = s;
    t->len[t->n++] = len;
    return 0;
}

static void texts_free(texts *t) {
    for (int i = 0; i < t->n; i++) free(t->text[i]);
    free(t->text);
    free(t->len);
}

static bool ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

/* JSONL (blank lines skipped) or plain text (every line a sentence, blank ones too, so that output line i
 * is input line i; a final newline does not start another). */
static int read_texts(const char *path, texts *out) {
    char *data = NULL;
    size_t len = 0;
    peft_error err = {0};
    if (peft_file_read(path, &data, &len, &err)) {
        fprintf(stderr, "peft embed: %s\n", err.msg);
        return 1;
    }
    size_t first = 0;
    while (first < len && (data[first] == ' ' || data[first] == '\t' || data[first] == '\r' || data[first] == '\n'))
        first++;
    bool jsonl = ends_with(path, ".jsonl") || (!ends_with(path, ".txt") && first < len && data[first] == '{');
    int rc = 0, line = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len, n = end - pos;
        line++;
        if (n > peft_max_line_bytes()) {
            fprintf(stderr, "peft embed: %s:%d: line of %zu bytes exceeds the limit of %zu\n", path, line, n,
                    peft_max_line_bytes());
            rc = 1;
        } else if (jsonl) {
            if (!blank(data + pos, n)) {
                cJSON *j = cJSON_ParseWithLength(data + pos, n);
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
                if (!j || !cJSON_IsObject(j)) {
                    fprintf(stderr, "peft embed: %s:%d: not a JSON object\n", path, line);
                    rc = 1;
                } else if (!cJSON_IsString(t)) {
                    fprintf(stderr, "peft embed: %s:%d: no \"text\" string field\n", path, line);
                    rc = 1;
                } else {
                    char *s = strdup(t->valuestring);
                    if (!s || texts_add(out, s, strlen(s))) { free(s); rc = 2; }
                }
                cJSON_Delete(j);
            }
        } else {
            if (n && data[pos + n - 1] == '\r') n--;   /* CRLF files */
            char *s = malloc(n + 1);
            if (s) { memcpy(s, data + pos, n); s[n] = 0; }
            if (!s || texts_add(out, s, n)) { free(s); rc = 2; }
        }
        pos = end + 1;
    }
    free(data);
    if (rc == 2) fprintf(stderr, "peft embed: out of memory\n");
    if (!rc && out->n == 0) {
        fprintf(stderr, "peft embed: %s: no sentences (an empty file%s)\n", path, jsonl ? " or only blank lines" : "");
        rc = 1;
    }
    return rc ? 1 : 0;
}

/* The output, built in memory and written at once (atomically with --out). */
typedef struct {
    char *data;
    size_t len, cap;
} out_buf;

static int buf_append(out_buf *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static int buf_printf(out_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int buf_printf(out_buf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) return buf_append(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    const int rc = buf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int write_jsonl(out_buf *b, const float *e, int n, int dim) {
    for (int i = 0; i < n; i++) {
        if (buf_printf(b, "{\"embedding\": [")) return -1;
        for (int k = 0; k < dim; k++)
            /* %.9g: a float32 reads back bit for bit */
            if (buf_printf(b, k ? ", %.9g" : "%.9g", (double)e[(size_t)i * dim + k])) return -1;
        if (buf_printf(b, "]}\n")) return -1;
    }
    return 0;
}

/* NPY format 1.0: magic, version, u16 header length, a Python dict literal padded with spaces to a
 * multiple of 64 bytes ending in '\n', then the data, little-endian float32. */
static int write_npy(out_buf *b, const float *e, int n, int dim) {
    char hdr[192];
    int h = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", n, dim);
    int total = 10 + h + 1;
    int pad = (64 - total % 64) % 64;
    int hlen = h + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    if (buf_append(b, pre, sizeof pre) || buf_append(b, hdr, (size_t)h)) return -1;
    for (int i = 0; i < pad; i++)
        if (buf_append(b, " ", 1)) return -1;
    if (buf_append(b, "\n", 1)) return -1;
    for (size_t i = 0; i < (size_t)n * dim; i++) {
        uint32_t u;
        memcpy(&u, &e[i], 4);
        unsigned char le[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
        if (buf_append(b, le, 4)) return -1;
    }
    return 0;
}

int cmd_embed(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "embed"};
    const char *model = NULL, *adapter_dir = NULL, *data = NULL, *out = NULL, *format = NULL, *v;
    int threads = 0;
    bool bad = false, verbose = false, stats = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--data", &bad))) data = v;
        else if ((v = cli_opt(&a, "--out", &bad))) out = v;
        else if ((v = cli_opt(&a, "--format", &bad))) format = v;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &threads) != 0;
        else if (cli_flag(&a, "--stats")) stats = true;
        else if (cli_flag(&a, "--verbose")) verbose = true;
        else if (cli_flag(&a, "--help")) { usage(stdout); return 0; }
        else if (!bad) {
            cli_unknown_option(&a);
            usage(stderr);
            return 2;
        }
    }
    if (bad) return 2;
    if (!model || !data) {
        fprintf(stderr, "peft embed: --model and --data are required\n");
        usage(stderr);
        return 2;
    }
    bool npy;
    if (!format) npy = out && ends_with(out, ".npy");
    else if (!strcmp(format, "npy")) npy = true;
    else if (!strcmp(format, "jsonl")) npy = false;
    else {
        fprintf(stderr, "peft embed: --format must be jsonl or npy (got \"%s\")\n", format);
        return 2;
    }
    if (npy && !out) {
        fprintf(stderr, "peft embed: --format npy needs --out FILE\n");
        return 2;
    }
    texts tx = {0};
    if (read_texts(data, &tx)) { texts_free(&tx); return 1; }

    peft_ctx *ctx = cli_ctx(threads, verbose);
    if (!ctx) { texts_free(&tx); return 1; }
    int rc = 1;
    float *emb = NULL;
    peft_adapter *ad = NULL;
    peft_embedder *emr = NULL;
    out_buf b = {0};
    peft_model *m = peft_model_load(ctx, model);
    if (!m) { fprintf(stderr, "peft embed: %s\n", peft_last_error(ctx)); goto done; }
    peft_embed_info p;
    if (!(emr = peft_embedder_new(m))) { fprintf(stderr, "peft embed: %s\n", peft_last_error(ctx)); goto done; }
    peft_embedder_info(emr, &p);
    /* as the context's log line at info level (cli_ctx prints those with --verbose) */
    if (verbose)
        fprintf(stderr, "peft: info: embed: %s, dim %d, max_seq_length %d, pooling 0x%x, normalize %s\n", p.source,
                p.dim, p.max_seq_length, p.pooling, p.normalize ? "yes" : "no");
    if (adapter_dir) {
        if (!(ad = peft_adapter_load(m, adapter_dir)) || peft_adapter_attach(m, ad)) {
            fprintf(stderr, "peft embed: %s\n", peft_last_error(ctx));
            goto done;
        }
    }
    emb = malloc((size_t)tx.n * p.dim * sizeof *emb);
    if (!emb) { fprintf(stderr, "peft embed: out of memory\n"); goto done; }
    double t0 = now_s();
    for (int i = 0; i < tx.n; i++)
        if (peft_embedder_text(emr, tx.text[i], tx.len[i], emb + (size_t)i * p.dim)) {
            fprintf(stderr, "peft embed: %s: sentence %d: %s\n", data, i + 1, peft_last_error(ctx));
            goto done;
        }
    double dt = now_s() - t0;
    if ((npy ? write_npy : write_jsonl)(&b, emb, tx.n, p.dim)) { fprintf(stderr, "peft embed: out of memory\n"); goto done; }
    if (out) {
        peft_error we = {0};
        if (peft_file_write_atomic(out, b.data, b.len, &we)) {
            fprintf(stderr, "peft embed: %s\n", we.msg);
            goto done;
        }
    } else if (fwrite(b.data, 1, b.len, stdout) != b.len || fflush(stdout)) {
        fprintf(stderr, "peft embed: cannot write to stdout\n");
        goto done;
    }
    if (stats)
        fprintf(stderr, "embedded %d sentences (dim %d) in %.3f s (%.1f sentences/s, %d threads)\n", tx.n, p.dim, dt,
                dt > 0 ? tx.n / dt : 0.0, peft_ctx_threads(ctx));
    rc = 0;
done:
    free(b.data);
    free(emb);
    peft_embedder_free(emr);
    if (m) peft_adapter_attach(m, NULL);
    peft_model_free(m);
    if (ad) peft_adapter_free(ad);
    peft_free(ctx);
    texts_free(&tx);
    return rc;
}
