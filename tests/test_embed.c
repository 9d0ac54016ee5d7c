/* test_embed.c — sentence embeddings (src/infer/embed.c, `peft embed`):
 * equal to sentence-transformers on the tiny BERT and RoBERTa fixtures (from
 * their ids, HF folders and GGUF) and on the real all-MiniLM-L6-v2 (from
 * text, through the CLI, within the 1e-4); the pipeline read from
 * modules.json (pooling modes, Normalize, max_seq_length truncation that
 * keeps [CLS]/[SEP], the plain-folder default); JSONL and .npy outputs read
 * back; and bad input: a decoder, broken or unsupported sentence-transformers
 * files, empty data, a line without "text". */
#include "core/core.h"
#include "formats/safetensors.h"
#include "infer/embed.h"
#include "model/model.h"
#include "peft.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <math.h>

#define FIX "tests/fixtures/models/"

static char tmp[256];

static const char *minilm_dir(void) {
    const char *p = getenv("PEFT_TEST_MINILM");
    return p && *p ? p : "models/all-MiniLM-L6-v2";
}

static void copy_file(const char *src, const char *dst) {
    size_t n = 0;
    char *d = test_read_file(src, &n);
    CHECK_MSG(d != NULL, "cannot read %s", src);
    if (d) test_write_bytes(dst, d, n);
    free(d);
}

/* A private copy of a fixture folder (its sentence-transformers files too) to break. */
static void copy_model(const char *src, const char *dst) {
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                        "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"};
    char a[512], b[512];
    test_rm_rf(dst);
    mkdir(dst, 0755);
    snprintf(b, sizeof b, "%s/1_Pooling", dst);
    mkdir(b, 0755);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(a, sizeof a, "%s/%s", src, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        copy_file(a, b);
    }
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    test_write_bytes(p, text, strlen(text));
}

/* Max |diff| between our embeddings of the reference batch's rows (their real tokens, with token types)
 * and sentence-transformers' `embeddings`. */
static double fixture_embed_diff(const char *model, const char *ref_dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/reference.safetensors", ref_dir);
    st_archive *ref = NULL;
    peft_err err = {0};
    if (st_open(p, &ref, &err)) { fprintf(stderr, "  %s\n", err.msg); return INFINITY; }
    const st_tensor *ids = st_find(ref, "input_ids"), *mask = st_find(ref, "attention_mask"),
                    *tt = st_find(ref, "token_type_ids"), *emb = st_find(ref, "embeddings");
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, model);
    double worst = INFINITY;
    embed_pipeline pl;
    if (!m) fprintf(stderr, "  load %s: %s\n", model, peft_last_error(ctx));
    else if (embed_pipeline_load(m, &pl, &err)) fprintf(stderr, "  %s\n", err.msg);
    else if (ids && mask && tt && emb) {
        CHECK_EQ_INT(pl.dim, emb->shape[1]);
        CHECK(pl.normalize);
        CHECK_EQ_INT(pl.modes, EMBED_POOL_MEAN);
        const int B = (int)ids->shape[0], T = (int)ids->shape[1];
        float *out = malloc(sizeof(float) * (size_t)pl.dim);
        worst = 0;
        for (int b = 0; b < B; b++) {
            int len = 0;
            while (len < T && ((const int32_t *)mask->data)[b * T + len]) len++;
            if (embed_ids(m, &pl, (const int32_t *)ids->data + b * T, (const int32_t *)tt->data + b * T, len, out,
                          &err)) {
                fprintf(stderr, "  %s\n", err.msg);
                worst = INFINITY;
                break;
            }
            worst = fmax(worst, test_max_abs_diff(out, (const float *)emb->data + (size_t)b * pl.dim, (size_t)pl.dim));
        }
        free(out);
    }
    peft_model_free(m);
    peft_free(ctx);
    st_close(ref);
    printf("    %-28s embeddings max|diff| = %.3g\n", model + strlen(FIX), worst);
    return worst;
}

static void tiny_bert_and_roberta_embeddings_match_sentence_transformers(void) {
    CHECK(fixture_embed_diff(FIX "tiny-bert", FIX "tiny-bert") <= 1e-5);
    CHECK(fixture_embed_diff(FIX "tiny-roberta", FIX "tiny-roberta") <= 1e-5);
    /* GGUF: bert.pooling_type 1 (mean), L2 as llama.cpp's embedding example */
    CHECK(fixture_embed_diff(FIX "tiny-bert.f32.gguf", FIX "tiny-bert") <= 1e-5);
    CHECK(fixture_embed_diff(FIX "tiny-roberta.f32.gguf", FIX "tiny-roberta") <= 1e-5);
}

/* Rows 0 and 1 of the reference batch are single texts: from their text (tokenized here, specials added)
 * the public API gives the same vectors. */
static void embedding_from_text_matches_the_reference_rows(void) {
    static const char *const texts[2] = {
        "ROMEO: But, soft! what light through yonder window breaks? It is the east.", "Good night."};
    const char *models[2] = {FIX "tiny-bert", FIX "tiny-roberta"};
    for (int k = 0; k < 2; k++) {
        char p[512];
        snprintf(p, sizeof p, "%s/reference.safetensors", models[k]);
        st_archive *ref = NULL;
        peft_err err = {0};
        if (st_open(p, &ref, &err)) TEST_FAIL("%s", err.msg);
        const st_tensor *emb = st_find(ref, "embeddings");
        peft_ctx *ctx = peft_init(NULL);
        peft_model *m = peft_model_load(ctx, models[k]);
        CHECK(m && emb);
        if (m && emb) {
            int dim = peft_model_embed_dim(m);
            CHECK_EQ_INT(dim, 64);
            float out[2 * 64];
            CHECK_OK(peft_model_embed(m, texts, 2, out));
            double d = test_max_abs_diff(out, (const float *)emb->data, 2 * 64);
            CHECK_MSG(d <= 1e-5, "%s: from text max|diff| %g", models[k], d);
        }
        peft_model_free(m);
        peft_free(ctx);
        st_close(ref);
    }
}

/* ---- all-MiniLM-L6-v2 ---------------------------------------------------------- */

typedef struct {
    int n, dim;
    char **text;
    float *emb;
    int **ids, *n_ids, *n_full;
} minilm_ref;

static int load_minilm_ref(minilm_ref *r) {
    memset(r, 0, sizeof *r);
    size_t len;
    char *text = test_read_file("tests/fixtures/minilm/reference.json", &len);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *s = cJSON_GetObjectItem(j, "sentences");
    r->n = cJSON_GetArraySize(s);
    r->dim = 384;
    r->text = calloc((size_t)r->n, sizeof *r->text);
    r->emb = calloc((size_t)r->n * r->dim, sizeof *r->emb);
    r->ids = calloc((size_t)r->n, sizeof *r->ids);
    r->n_ids = calloc((size_t)r->n, sizeof(int));
    r->n_full = calloc((size_t)r->n, sizeof(int));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, s) {
        r->text[i] = strdup(cJSON_GetObjectItem(e, "text")->valuestring);
        const cJSON *v = cJSON_GetObjectItem(e, "embedding"), *x;
        int k = 0;
        cJSON_ArrayForEach(x, v) if (k < r->dim) r->emb[(size_t)i * r->dim + k++] = (float)x->valuedouble;
        const cJSON *ids = cJSON_GetObjectItem(e, "input_ids");
        r->n_ids[i] = cJSON_GetArraySize(ids);
        r->ids[i] = calloc((size_t)r->n_ids[i] + 1, sizeof(int));
        k = 0;
        cJSON_ArrayForEach(x, ids) r->ids[i][k++] = x->valueint;
        r->n_full[i] = cJSON_GetObjectItem(e, "n_tokens_untruncated")->valueint;
        i++;
    }
    cJSON_Delete(j);
    return r->n == 12 ? 0 : -1;
}

static void free_minilm_ref(minilm_ref *r) {
    for (int i = 0; i < r->n; i++) { free(r->text[i]); free(r->ids[i]); }
    free(r->text);
    free(r->ids);
    free(r->emb);
    free(r->n_ids);
    free(r->n_full);
}

static bool minilm_present(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", minilm_dir());
    return peft_file_exists(p);
}

/* The bar: `peft embed` from text equal to SentenceTransformer.encode within 1e-4, the 528-token
 * text truncated to 256 with [CLS] and [SEP] kept. */
static void minilm_matches_sentence_transformers_encode(void) {
    if (!minilm_present())
        TEST_SKIP("models/all-MiniLM-L6-v2 not found (run `bash scripts/setup.sh --model`, or set PEFT_TEST_MINILM)");
    minilm_ref r;
    if (load_minilm_ref(&r)) TEST_FAIL("tests/fixtures/minilm/reference.json: cannot read 12 sentences");
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, minilm_dir());
    CHECK(m != NULL);
    if (m) {
        peft_err err = {0};
        embed_pipeline pl;
        CHECK_OK(embed_pipeline_load(m, &pl, &err));
        CHECK_EQ_INT(pl.max_len, 256);
        CHECK_EQ_INT(pl.dim, 384);
        CHECK(pl.normalize);
        for (int i = 0; i < r.n; i++) {
            int32_t *ids = NULL;
            int n = 0, full = 0;
            CHECK_OK(embed_tokenize(m, &pl, r.text[i], strlen(r.text[i]), &ids, &n, &full, &err));
            CHECK_EQ_INT(n, r.n_ids[i]);
            CHECK_EQ_INT(full, r.n_full[i]);
            bool same = n == r.n_ids[i];
            for (int k = 0; same && k < n; k++) same = ids[k] == r.ids[i][k];
            CHECK_MSG(same, "sentence %d: token ids differ from sentence-transformers'", i);
            free(ids);
        }
        float *out = malloc(sizeof(float) * (size_t)r.n * r.dim);
        CHECK_OK(peft_model_embed(m, (const char *const *)r.text, r.n, out));
        double d = test_max_abs_diff(out, r.emb, (size_t)r.n * r.dim);
        printf("    all-MiniLM-L6-v2 (API) max|diff| = %.3g\n", d);
        CHECK(d <= 1e-4);
        free(out);
    }
    peft_model_free(m);
    peft_free(ctx);

    if (!getenv("PEFT_CLI")) { free_minilm_ref(&r); TEST_SKIP("PEFT_CLI not set (run through ctest)"); }
    char data[512], outp[512], args[2048], log[8192];
    snprintf(data, sizeof data, "%s/minilm.jsonl", tmp);
    FILE *f = fopen(data, "w");
    for (int i = 0; i < r.n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", r.text[i]);
        char *s = cJSON_PrintUnformatted(o);
        fprintf(f, "%s\n", s);
        free(s);
        cJSON_Delete(o);
    }
    fclose(f);
    snprintf(outp, sizeof outp, "%s/minilm.out.jsonl", tmp);
    snprintf(args, sizeof args, "embed --model %s --data %s --out %s --threads 2", minilm_dir(), data, outp);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    size_t len;
    char *text = test_read_file(outp, &len);
    CHECK(text != NULL);
    double worst = 0;
    int rows = 0;
    for (char *line = text; text && line && *line; rows++) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *j = cJSON_Parse(line);
        const cJSON *e = cJSON_GetObjectItem(j, "embedding"), *x;
        CHECK(cJSON_GetArraySize(e) == r.dim);
        int k = 0;
        if (rows < r.n)
            cJSON_ArrayForEach(x, e) if (k < r.dim) worst = fmax(worst, fabs(x->valuedouble - r.emb[(size_t)rows * r.dim + k++]));
        cJSON_Delete(j);
        line = nl ? nl + 1 : NULL;
    }
    CHECK_EQ_INT(rows, r.n);
    printf("    all-MiniLM-L6-v2 (peft embed) max|diff| = %.3g\n", worst);
    CHECK(worst <= 1e-4);
    free(text);
    free_minilm_ref(&r);
}

/* ---- the CLI ------------------------------------------------------------------ */

/* Reads an NPY v1 file of float32 (n, d), checking the header as numpy writes and reads it. */
static float *read_npy(const char *path, int *n, int *d) {
    size_t len;
    unsigned char *b = (unsigned char *)test_read_file(path, &len);
    if (!b) return NULL;
    float *out = NULL;
    if (len >= 10 && !memcmp(b, "\x93NUMPY\x01\x00", 8)) {
        size_t hl = b[8] | (size_t)b[9] << 8;
        CHECK_EQ_INT((10 + hl) % 64, 0);
        CHECK(10 + hl <= len && b[10 + hl - 1] == '\n');
        char hdr[256] = {0};
        memcpy(hdr, b + 10, hl < 255 ? hl : 255);
        CHECK(strstr(hdr, "'descr': '<f4'") && strstr(hdr, "'fortran_order': False"));
        const char *s = strstr(hdr, "'shape': (");
        if (s && sscanf(s, "'shape': (%d, %d)", n, d) == 2 && len == 10 + hl + (size_t)*n * *d * 4) {
            out = malloc((size_t)*n * *d * 4 + 1);
            memcpy(out, b + 10 + hl, (size_t)*n * *d * 4);   /* little-endian host */
        }
    }
    CHECK_MSG(out != NULL, "%s: not an NPY v1 float32 (n, d) file", path);
    free(b);
    return out;
}

static float *read_jsonl(const char *path, int *n, int dim) {
    size_t len;
    char *text = test_read_file(path, &len);
    if (!text) return NULL;
    float *out = malloc(sizeof(float) * 64 * dim);
    *n = 0;
    for (char *line = text; line && *line && *n < 64; (*n)++) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *j = cJSON_Parse(line);
        const cJSON *e = cJSON_GetObjectItem(j, "embedding"), *x;
        CHECK_EQ_INT(cJSON_GetArraySize(e), dim);
        int k = 0;
        cJSON_ArrayForEach(x, e) if (k < dim) out[(size_t)*n * dim + k++] = (float)x->valuedouble;
        cJSON_Delete(j);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return out;
}

/* JSONL and plain-text inputs, JSONL (stdout and --out) and .npy outputs read back: the same vectors
 * as the library's, in input order (float32 exactly: %.9g round-trips). */
static void cli_writes_jsonl_and_npy_that_read_back(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    static const char *const texts[3] = {"Good night.", "", "ROMEO: But, soft! what light"};
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, FIX "tiny-bert");
    if (!m) { peft_free(ctx); TEST_FAIL("load tiny-bert"); }
    float want[3 * 64];
    CHECK_OK(peft_model_embed(m, texts, 3, want));
    peft_model_free(m);
    peft_free(ctx);

    char jl[512], txt[512], o1[512], o2[512], args[2048], log[1 << 16];
    snprintf(jl, sizeof jl, "%s/in.jsonl", tmp);
    snprintf(txt, sizeof txt, "%s/in.txt", tmp);
    const char *jtext = "{\"text\": \"Good night.\", \"id\": 1}\n\n{\"text\": \"\"}\n{\"text\": \"ROMEO: But, soft! what light\"}\n";
    test_write_bytes(jl, jtext, strlen(jtext));
    const char *ptext = "Good night.\r\n\nROMEO: But, soft! what light\n";
    test_write_bytes(txt, ptext, strlen(ptext));

    snprintf(o1, sizeof o1, "%s/out.jsonl", tmp);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --out %s --threads 1", jl, o1);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    int n = 0;
    float *got = read_jsonl(o1, &n, 64);
    CHECK_EQ_INT(n, 3);
    if (got && n == 3) CHECK(test_max_abs_diff(got, want, 3 * 64) == 0);
    free(got);

    /* plain text, npy by the extension */
    snprintf(o2, sizeof o2, "%s/out.npy", tmp);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --out %s", txt, o2);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    int r = 0, d = 0;
    got = read_npy(o2, &r, &d);
    CHECK_EQ_INT(r, 3);
    CHECK_EQ_INT(d, 64);
    if (got && r == 3 && d == 64) CHECK(test_max_abs_diff(got, want, 3 * 64) == 0);
    free(got);

    /* --format npy wins over the extension; stdout JSONL */
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --out %s --format npy", jl, o1);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    got = read_npy(o1, &r, &d);
    CHECK(got && r == 3 && d == 64);
    free(got);
    snprintf(args, sizeof args, "%s embed --model " FIX "tiny-bert --data %s 2>/dev/null", getenv("PEFT_CLI"), jl);
    CHECK_EQ_INT(test_run_shell(args, log, sizeof log), 0);
    CHECK(!strncmp(log, "{\"embedding\": [", 15));
    int lines = 0;
    for (const char *c = log; *c; c++) lines += *c == '\n';
    CHECK_EQ_INT(lines, 3);

    CHECK_EQ_INT(test_run_cli("embed --help", log, sizeof log), 0);
    CHECK(strstr(log, "--data") && strstr(log, "npy"));
    CHECK_EQ_INT(test_run_cli("help", log, sizeof log), 0);
    CHECK(strstr(log, "embed") != NULL);
}

/* --adapter: the attached adapter applies to the embedding (a bottleneck adapter with BERT's random init
 * changes it), and the CLI's vectors equal the library's with the adapter attached. */
static void adapter_applies_to_the_embedding(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    static const char *const texts[2] = {"Good night.", "ROMEO: But, soft!"};
    char ad[512], data[512], out[512], args[2048], log[8192];
    snprintf(ad, sizeof ad, "%s/adapter", tmp);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, FIX "tiny-bert");
    if (!m) { peft_free(ctx); TEST_FAIL("load tiny-bert"); }
    peft_method_params mp = peft_method_default_params("adapter-houlsby");
    mp.bert_init = 1;
    mp.seed = 3;
    peft_adapter *a = peft_adapter_new_method(m, &mp);
    CHECK_MSG(a != NULL, "%s", peft_last_error(ctx));
    float base[2 * 64], with[2 * 64];
    CHECK_OK(peft_model_embed(m, texts, 2, base));
    if (a) {
        CHECK_OK(peft_adapter_save(m, a, ad));
        CHECK_OK(peft_adapter_attach(m, a));
        CHECK_OK(peft_model_embed(m, texts, 2, with));
        CHECK(test_max_abs_diff(base, with, 2 * 64) > 1e-3);
        peft_adapter_attach(m, NULL);
    }
    peft_adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    if (!a) return;
    snprintf(data, sizeof data, "%s/ad.txt", tmp);
    test_write_bytes(data, "Good night.\nROMEO: But, soft!\n", 30);
    snprintf(out, sizeof out, "%s/ad.npy", tmp);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --adapter %s --data %s --out %s", ad, data, out);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    int r = 0, d = 0;
    float *got = read_npy(out, &r, &d);
    CHECK(got && r == 2 && d == 64);
    if (got && r == 2 && d == 64) CHECK_MSG(test_max_abs_diff(got, with, 2 * 64) <= 1e-6, "CLI vs API with the adapter");
    free(got);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --adapter %s/nothing-here --data %s", tmp, data);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
}

/* ---- the pipeline from the folder ---------------------------------------------- */

static int load_pipeline(const char *dir, embed_pipeline *p, peft_err *err, peft_model **keep, peft_ctx **kctx) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, dir);
    if (!m) {
        snprintf(err->msg, sizeof err->msg, "%s", peft_last_error(ctx));
        peft_free(ctx);
        return err->code = PEFT_ERR_IO;
    }
    int rc = embed_pipeline_load(m, p, err);
    if (keep && !rc) { *keep = m; *kctx = ctx; return 0; }
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}

static void hidden_of(peft_model *m, const char *text, float **h, int *T) {
    int32_t *ids = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_encode(m->tok, text, strlen(text), true, true, &ids, T, &err));
    *h = malloc(sizeof(float) * (size_t)*T * m->cfg.d_model);
    model_state st;
    model_state_init(&st, NULL);
    CHECK_OK(model_forward_ex(m, &st, ids, NULL, *T, NULL, false, *h, &err));
    model_state_free(&st);
    free(ids);
}

/* modules.json and 1_Pooling/config.json decide the vector: without modules.json it is the plain mean
 * (no normalization, as sentence-transformers wraps a bare HF model); cls, max and a list of modes
 * concatenated in sentence-transformers' order; Normalize only when listed. */
static void pipeline_follows_modules_json(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/pipe", tmp);
    copy_model(FIX "tiny-bert", dir);
    const char *text = "Good night, sweet prince.";
    embed_pipeline p;
    peft_err err = {0};
    peft_model *m = NULL;
    peft_ctx *ctx = NULL;

    /* no modules.json: mean, not normalized */
    char mj[600];
    snprintf(mj, sizeof mj, "%s/modules.json", dir);
    unlink(mj);
    CHECK_OK(load_pipeline(dir, &p, &err, &m, &ctx));
    if (m) {
        CHECK_EQ_INT(p.modes, EMBED_POOL_MEAN);
        CHECK(!p.normalize);
        CHECK_EQ_INT(p.max_len, m->cfg.n_ctx);   /* sentence_bert_config.json is the Transformer module's */
        float *h, e[64];
        int T;
        hidden_of(m, text, &h, &T);
        CHECK_OK(embed_text(m, &p, text, strlen(text), e, &err));
        double worst = 0, nrm = 0;
        for (int i = 0; i < 64; i++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += h[t * 64 + i];
            worst = fmax(worst, fabs(s / T - e[i]));
            nrm += (double)e[i] * e[i];
        }
        CHECK(worst <= 1e-6);
        CHECK(fabs(sqrt(nrm) - 1) > 1e-3);   /* really not normalized */
        free(h);
        peft_model_free(m);
        peft_free(ctx);
        m = NULL;
    }

    /* cls + max + mean, no Normalize */
    write_text(dir, "modules.json",
               "[{\"idx\":0,\"name\":\"0\",\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
               "{\"idx\":1,\"name\":\"1\",\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"}]");
    write_text(dir, "1_Pooling/config.json",
               "{\"word_embedding_dimension\": 64, \"pooling_mode\": [\"cls\", \"max\", \"mean\"]}");
    CHECK_OK(load_pipeline(dir, &p, &err, &m, &ctx));
    if (m) {
        CHECK_EQ_INT(p.dim, 192);
        CHECK(!p.normalize);
        float *h, e[192];
        int T;
        hidden_of(m, text, &h, &T);
        CHECK_OK(embed_text(m, &p, text, strlen(text), e, &err));
        double worst = 0;
        for (int i = 0; i < 64; i++) {
            double s = 0, mx = -INFINITY;
            for (int t = 0; t < T; t++) { s += h[t * 64 + i]; mx = fmax(mx, h[t * 64 + i]); }
            worst = fmax(worst, fabs(h[i] - e[i]));
            worst = fmax(worst, fabs(mx - e[64 + i]));
            worst = fmax(worst, fabs(s / T - e[128 + i]));
        }
        CHECK(worst <= 1e-6);
        free(h);
        peft_model_free(m);
        peft_free(ctx);
        m = NULL;
    }

    /* legacy booleans: cls token; and a newer module path for the same classes */
    write_text(dir, "modules.json",
               "[{\"path\":\"\",\"type\":\"sentence_transformers.base.modules.transformer.Transformer\"},"
               "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.sentence_transformer.modules.Pooling\"},"
               "{\"path\":\"2_Normalize\",\"type\":\"sentence_transformers.models.Normalize\"}]");
    write_text(dir, "1_Pooling/config.json", "{\"pooling_mode_cls_token\": true, \"pooling_mode_mean_tokens\": false}");
    CHECK_OK(load_pipeline(dir, &p, &err, NULL, NULL));
    CHECK_EQ_INT(p.modes, EMBED_POOL_CLS);
    CHECK(p.normalize);
    /* nothing set: mean */
    write_text(dir, "1_Pooling/config.json", "{\"word_embedding_dimension\": 64}");
    CHECK_OK(load_pipeline(dir, &p, &err, NULL, NULL));
    CHECK_EQ_INT(p.modes, EMBED_POOL_MEAN);
}

/* GGUF: bert.pooling_type as llama.cpp reads it (the fixture's value 1 byte-patched): 2 pools [CLS], 3 the
 * last token, both L2-normalized; 0 (per-token) and 4 (rank) are refused, naming the key. */
static void gguf_pooling_type_is_followed(void) {
    size_t len;
    char *g = test_read_file(FIX "tiny-bert.f32.gguf", &len);
    if (!g) TEST_FAIL("cannot read tiny-bert.f32.gguf");
    const char *key = "bert.pooling_type";
    char *at = NULL;
    for (size_t i = 0; i + strlen(key) < len && !at; i++)
        if (!memcmp(g + i, key, strlen(key))) at = g + i;
    if (!at) { free(g); TEST_FAIL("tiny-bert.f32.gguf has no %s", key); }
    uint32_t type, val;
    memcpy(&type, at + strlen(key), 4);
    memcpy(&val, at + strlen(key) + 4, 4);
    CHECK_EQ_INT(type, 4);   /* GGUF UINT32 */
    CHECK_EQ_INT(val, 1);
    char path[512];
    snprintf(path, sizeof path, "%s/pool.gguf", tmp);
    const uint32_t vals[4] = {2, 3, 0, 4};
    for (int k = 0; k < 4; k++) {
        memcpy(at + strlen(key) + 4, &vals[k], 4);
        test_write_bytes(path, g, len);
        peft_ctx *ctx = peft_init(NULL);
        peft_model *m = peft_model_load(ctx, path);
        CHECK(m != NULL);
        if (m) {
            embed_pipeline p;
            peft_err err = {0};
            int rc = embed_pipeline_load(m, &p, &err);
            if (vals[k] >= 2 && vals[k] <= 3) {
                CHECK_OK(rc);
                CHECK_EQ_INT(p.modes, vals[k] == 2 ? EMBED_POOL_CLS : EMBED_POOL_LAST);
                CHECK(p.normalize);
                float *h, e[64];
                int T;
                const char *text = "Good night.";
                hidden_of(m, text, &h, &T);
                CHECK_OK(embed_text(m, &p, text, strlen(text), e, &err));
                const float *row = h + (vals[k] == 2 ? 0 : (size_t)(T - 1) * 64);
                double nrm = 0, worst = 0;
                for (int i = 0; i < 64; i++) nrm += (double)row[i] * row[i];
                for (int i = 0; i < 64; i++) worst = fmax(worst, fabs(row[i] / sqrt(nrm) - e[i]));
                CHECK_MSG(worst <= 1e-6, "pooling_type %u: max|diff| %g", vals[k], worst);
                free(h);
            } else {
                CHECK_EQ_INT(rc, PEFT_ERR_UNSUPPORTED);
                CHECK(strstr(err.msg, "bert.pooling_type") != NULL);
            }
        }
        peft_model_free(m);
        peft_free(ctx);
    }
    free(g);
}

/* max_seq_length truncates the content and keeps [CLS] ... [SEP], as HF tokenizers' truncation does;
 * a max_seq_length past the position table is held to it. */
static void truncation_keeps_the_special_tokens(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/trunc", tmp);
    copy_model(FIX "tiny-bert", dir);
    write_text(dir, "sentence_bert_config.json", "{\"max_seq_length\": 8, \"do_lower_case\": false}");
    embed_pipeline p;
    peft_err err = {0};
    peft_model *m = NULL;
    peft_ctx *ctx = NULL;
    CHECK_OK(load_pipeline(dir, &p, &err, &m, &ctx));
    if (!m) return;
    CHECK_EQ_INT(p.max_len, 8);
    const char *text = "ROMEO: But, soft! what light through yonder window breaks?";
    int32_t *full = NULL, *cut = NULL;
    int nf = 0, nc = 0, nfull = 0;
    CHECK_OK(bpe_encode(m->tok, text, strlen(text), true, true, &full, &nf, &err));
    CHECK_OK(embed_tokenize(m, &p, text, strlen(text), &cut, &nc, &nfull, &err));
    CHECK(nf > 8);
    CHECK_EQ_INT(nfull, nf);
    CHECK_EQ_INT(nc, 8);
    if (nc == 8 && nf > 8) {
        CHECK_EQ_INT(cut[0], bpe_cls_id(m->tok));
        CHECK_EQ_INT(cut[7], bpe_sep_id(m->tok));
        CHECK(!memcmp(cut, full, 7 * sizeof *cut));
    }
    /* a short text is left alone */
    int32_t *s = NULL;
    int ns = 0;
    CHECK_OK(embed_tokenize(m, &p, "Hi", 2, &s, &ns, NULL, &err));
    CHECK(ns < 8);
    free(s);
    free(full);
    free(cut);
    peft_model_free(m);
    peft_free(ctx);
    write_text(dir, "sentence_bert_config.json", "{\"max_seq_length\": 100000}");
    CHECK_OK(load_pipeline(dir, &p, &err, NULL, NULL));
    CHECK_EQ_INT(p.max_len, 128);
}

/* ---- bad input ----------------------------------------------------------------- */

static void expect_pipeline_error(const char *dir, int code, const char *needle1, const char *needle2) {
    embed_pipeline p;
    peft_err err = {0};
    int rc = load_pipeline(dir, &p, &err, NULL, NULL);
    CHECK_MSG(rc == code, "expected %d, got %d (%s)", code, rc, err.msg);
    CHECK_MSG(strstr(err.msg, needle1) != NULL, "\"%s\" lacks \"%s\"", err.msg, needle1);
    if (needle2) CHECK_MSG(strstr(err.msg, needle2) != NULL, "\"%s\" lacks \"%s\"", err.msg, needle2);
}

/* A decoder asked to embed gets a clear error, through the API and the CLI, not a vector. */
static void decoder_asked_to_embed_is_a_clear_error(void) {
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = peft_model_load(ctx, FIX "tiny-llama");
    CHECK(m != NULL);
    if (m) {
        const char *t = "hello";
        float out[64];
        CHECK_EQ_INT(peft_model_embed_dim(m), PEFT_ERR_UNSUPPORTED);
        CHECK_EQ_INT(peft_model_embed(m, &t, 1, out), PEFT_ERR_UNSUPPORTED);
        CHECK(strstr(peft_last_error(ctx), "decoder") && strstr(peft_last_error(ctx), "encoder"));
    }
    peft_model_free(m);
    peft_free(ctx);
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[512], args[2048], log[8192];
    snprintf(data, sizeof data, "%s/dec.txt", tmp);
    test_write_bytes(data, "hello\n", 6);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-llama.f32.gguf --data %s", data);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
    CHECK(strstr(log, "decoder") != NULL);
    CHECK(strstr(log, "embedding\"") == NULL);
}

/* Broken or unsupported sentence-transformers files name the file (and key) and the problem. */
static void bad_sentence_transformers_files_are_named(void) {
    char dir[512], p[600];
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    copy_model(FIX "tiny-bert", dir);
    write_text(dir, "modules.json", "[{\"type\": \"sentence_transformers.models.Transformer\", \"path\": \"\"");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "modules.json", "not valid JSON");
    write_text(dir, "modules.json", "{\"type\": 1}");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "modules.json", "list");
    write_text(dir, "modules.json", "[]");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "modules.json", "0 modules");
    write_text(dir, "modules.json", "[{\"path\": \"\"}]");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "modules.json", "type");
    write_text(dir, "modules.json",
               "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
               "{\"path\":\"1_Pooling\",\"type\":\"sentence_transformers.models.Pooling\"},"
               "{\"path\":\"2_Dense\",\"type\":\"sentence_transformers.models.Dense\"}]");
    expect_pipeline_error(dir, PEFT_ERR_UNSUPPORTED, "modules.json", "Dense");
    write_text(dir, "modules.json",
               "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"},"
               "{\"path\":\"../../etc\",\"type\":\"sentence_transformers.models.Pooling\"}]");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "modules.json", "leaves the model folder");
    write_text(dir, "modules.json", "[{\"path\":\"\",\"type\":\"sentence_transformers.models.Transformer\"}]");
    expect_pipeline_error(dir, PEFT_ERR_UNSUPPORTED, "modules.json", "Pooling");
    copy_file(FIX "tiny-bert/modules.json", (snprintf(p, sizeof p, "%s/modules.json", dir), p));

    write_text(dir, "1_Pooling/config.json", "{\"pooling_mode_mean_tokens\": tru");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "1_Pooling/config.json", "not valid JSON");
    write_text(dir, "1_Pooling/config.json", "{\"pooling_mode_weightedmean_tokens\": true}");
    expect_pipeline_error(dir, PEFT_ERR_UNSUPPORTED, "1_Pooling/config.json", "weightedmean");
    write_text(dir, "1_Pooling/config.json", "{\"pooling_mode\": \"median\"}");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "1_Pooling/config.json", "median");
    write_text(dir, "1_Pooling/config.json", "{\"pooling_mode_mean_tokens\": \"yes\"}");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "1_Pooling/config.json", "pooling_mode_mean_tokens");
    write_text(dir, "1_Pooling/config.json", "{\"word_embedding_dimension\": 384}");
    expect_pipeline_error(dir, PEFT_ERR_SHAPE, "1_Pooling/config.json", "384");
    write_text(dir, "1_Pooling/config.json", "{\"word_embedding_dimension\": 1e300}");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "1_Pooling/config.json", "word_embedding_dimension");
    snprintf(p, sizeof p, "%s/1_Pooling/config.json", dir);
    unlink(p);
    expect_pipeline_error(dir, PEFT_ERR_IO, "1_Pooling/config.json", NULL);
    /* an oversized file is refused before it is read */
    char *big = malloc((2 << 20) + 1);
    memset(big, ' ', 2 << 20);
    big[2 << 20] = 0;
    big[0] = '{';
    big[(2 << 20) - 1] = '}';
    write_text(dir, "1_Pooling/config.json", big);
    free(big);
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "1_Pooling/config.json", NULL);
    copy_file(FIX "tiny-bert/1_Pooling/config.json", p);

    write_text(dir, "sentence_bert_config.json", "{\"max_seq_length\": -3}");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "sentence_bert_config.json", "max_seq_length");
    write_text(dir, "sentence_bert_config.json", "[1, 2");
    expect_pipeline_error(dir, PEFT_ERR_FORMAT, "sentence_bert_config.json", "not valid JSON");
}

/* Bad data: an empty file, blank JSONL, a line without "text" (with its line number), a line that is not
 * JSON, bad options; nothing is written. */
static void bad_data_is_a_clear_error(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[512], out[512], args[2048], log[8192];
    snprintf(out, sizeof out, "%s/never.jsonl", tmp);
    struct { const char *name, *content, *needle; } cases[] = {
        {"empty.txt", "", "no sentences"},
        {"empty.jsonl", "", "no sentences"},
        {"blank.jsonl", "\n  \n", "no sentences"},
        {"notext.jsonl", "{\"text\": \"a\"}\n{\"sentence\": \"b\"}\n", "notext.jsonl:2: no \"text\""},
        {"numtext.jsonl", "{\"text\": 3}\n", "numtext.jsonl:1: no \"text\""},
        {"broken.jsonl", "{\"text\": \"a\"}\n[1, 2\n", "broken.jsonl:2: not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(data, sizeof data, "%s/%s", tmp, cases[i].name);
        test_write_bytes(data, cases[i].content, strlen(cases[i].content));
        snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --out %s", data, out);
        CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
        CHECK_MSG(strstr(log, cases[i].needle) != NULL, "%s: \"%s\" lacks \"%s\"", cases[i].name, log, cases[i].needle);
        CHECK(!peft_file_exists(out));
    }
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s/missing.jsonl", tmp);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
    CHECK(strstr(log, "missing.jsonl") != NULL);
    snprintf(data, sizeof data, "%s/ok.txt", tmp);
    test_write_bytes(data, "a\n", 2);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --format csv", data);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 2);
    CHECK(strstr(log, "--format") != NULL);
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --format npy", data);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 2);
    CHECK(strstr(log, "--out") != NULL);
    CHECK_EQ_INT(test_run_cli("embed --model " FIX "tiny-bert", log, sizeof log), 2);
    /* an unwritable output */
    snprintf(args, sizeof args, "embed --model " FIX "tiny-bert --data %s --out %s/no/such/dir/x.npy", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
}

/* ---- contrastive fine-tuning ----------------------------------------------------- */

static double json_number(const char *text, const char *key) {
    const char *j = strchr(text, '{');
    cJSON *o = j ? cJSON_Parse(j) : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const double x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    cJSON_Delete(o);
    return x;
}

/* peft eval on {anchor, positive} rows is sentence-transformers'
 * MultipleNegativesRankingLoss (tests/fixtures/minilm/reference.json, made
 * with the real loss class on all-MiniLM-L6-v2); peft train on pairs lowers
 * it on the tiny BERT, writes a FEATURE_EXTRACTION adapter, and that
 * adapter changes what peft embed gives. */
static void contrastive_training_follows_sentence_transformers(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char data[512], run[512], args[2048], log[8192];
    snprintf(data, sizeof data, "%s/pairs.jsonl", tmp);
    if (minilm_present()) {
        size_t len = 0;
        char *text = test_read_file("tests/fixtures/minilm/reference.json", &len);
        cJSON *ref = text ? cJSON_Parse(text) : NULL;
        free(text);
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(ref, "mnrl");
        const cJSON *an = cJSON_GetObjectItemCaseSensitive(mn, "anchors"), *po = cJSON_GetObjectItemCaseSensitive(mn, "positives");
        const double want = cJSON_GetObjectItemCaseSensitive(mn, "loss")->valuedouble;
        peft_buf b = {0};
        for (int i = 0; i < cJSON_GetArraySize(an); i++) {
            cJSON *row = cJSON_CreateObject();
            cJSON_AddStringToObject(row, "anchor", cJSON_GetArrayItem(an, i)->valuestring);
            cJSON_AddStringToObject(row, "positive", cJSON_GetArrayItem(po, i)->valuestring);
            char *line = cJSON_PrintUnformatted(row);
            peft_buf_printf(&b, "%s\n", line);
            free(line);
            cJSON_Delete(row);
        }
        test_write_bytes(data, b.data, b.len);
        peft_buf_free(&b);
        cJSON_Delete(ref);
        snprintf(args, sizeof args, "eval --model %s --data %s --batch 4 --json", minilm_dir(), data);
        CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
        const double got = json_number(log, "loss");
        printf("    all-MiniLM-L6-v2 MNRL loss %.7f (sentence-transformers %.7f)\n", got, want);
        CHECK_MSG(fabs(got - want) <= 2e-6 * want, "MNRL loss %.7f vs %.7f (%s)", got, want, log);
    } else
        printf("    (all-MiniLM-L6-v2 absent: its MNRL loss not checked)\n");

    static const char pairs[] = "{\"anchor\": \"the cat sleeps\", \"positive\": \"a pet rests\"}\n"
                                "{\"anchor\": \"rain falls\", \"positive\": \"the weather is wet\"}\n"
                                "{\"anchor\": \"a man sings\", \"positive\": \"music is played\"}\n"
                                "{\"anchor\": \"bread in the oven\", \"positive\": \"someone bakes\"}\n";
    test_write_bytes(data, pairs, sizeof pairs - 1);
    snprintf(args, sizeof args, "eval --model " FIX "tiny-bert --data %s --batch 4 --json", data);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    const double before = json_number(log, "loss");
    snprintf(run, sizeof run, "%s/mnrl_run", tmp);
    snprintf(args, sizeof args, "train --model " FIX "tiny-bert --data %s --out %s --steps 8 --batch 4 --lr 0.02 --r 4 "
             "--target query,key,value --quiet --threads 1", data, run);
    CHECK_MSG(test_run_cli(args, log, sizeof log) == 0, "%s", log);
    CHECK_MSG(strstr(log, "contrastive pairs") != NULL, "%s", log);
    snprintf(args, sizeof args, "eval --model " FIX "tiny-bert --adapter %s --data %s --batch 4 --json", run, data);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 0);
    const double after = json_number(log, "loss");
    printf("    tiny-bert LoRA on 4 pairs: MNRL %.4f -> %.4f, in-batch accuracy %.2f\n", before, after,
           json_number(log, "accuracy"));
    CHECK_MSG(after < before - 0.1, "MNRL %.4f -> %.4f", before, after);
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_config.json", run);
    size_t len = 0;
    char *cfg = test_read_file(path, &len);
    CHECK_MSG(cfg && strstr(cfg, "\"FEATURE_EXTRACTION\""), "%s", cfg ? cfg : path);
    free(cfg);
    /* pairs on a decoder, or a scale on text data, are refused by name */
    snprintf(args, sizeof args, "train --model " FIX "tiny-llama --data %s --out %s/x --steps 1 --quiet", data, tmp);
    CHECK_EQ_INT(test_run_cli(args, log, sizeof log), 1);
    CHECK_MSG(strstr(log, "decoder") != NULL, "%s", log);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/peft_embed_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    TEST_RUN(tiny_bert_and_roberta_embeddings_match_sentence_transformers);
    TEST_RUN(embedding_from_text_matches_the_reference_rows);
    TEST_RUN(minilm_matches_sentence_transformers_encode);
    TEST_RUN(cli_writes_jsonl_and_npy_that_read_back);
    TEST_RUN(contrastive_training_follows_sentence_transformers);
    TEST_RUN(adapter_applies_to_the_embedding);
    TEST_RUN(pipeline_follows_modules_json);
    TEST_RUN(gguf_pooling_type_is_followed);
    TEST_RUN(truncation_keeps_the_special_tokens);
    TEST_RUN(decoder_asked_to_embed_is_a_clear_error);
    TEST_RUN(bad_sentence_transformers_files_are_named);
    TEST_RUN(bad_data_is_a_clear_error);
    test_rm_rf(tmp);
    TEST_MAIN_END();
}
