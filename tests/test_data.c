/* test_data.c — JSONL datasets (tokenization and loss masks of every row
 * kind, truncation, errors naming file:line, skip_bad), the seeded split,
 * and the batch loader (padding, packing, determinism, checkpoint state).
 * Uses the tiny-llama fixture tokenizer (byte-level BPE, ChatML) and JSONL
 * files written into a temp folder; the chat and prompt/completion masks are
 * also checked against transformers (tools/make_data_fixtures.py). */
#include "train/data.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <unistd.h>

#define TOK "tests/fixtures/models/tiny-llama/tokenizer.json"
#define FIX "tests/fixtures/data/"

static char tmpdir[256];
static bpe_tokenizer *tok;

/* Writes text to tmpdir/name; returns the path (static, one at a time). */
static const char *write_file(const char *name, const char *text, size_t len) {
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fwrite(text, 1, len, f);
        fclose(f);
    }
    return p;
}

static const char *write_str(const char *name, const char *text) { return write_file(name, text, strlen(text)); }

/* Encoding of s without specials, appended to ids[*n]. */
static void enc_append(const char *s, int32_t *ids, int *n) {
    int32_t *x = NULL;
    int k = 0;
    peft_err err = {0};
    CHECK_OK(bpe_encode(tok, s, strlen(s), false, true, &x, &k, &err));
    for (int i = 0; i < k; i++) ids[(*n)++] = x[i];
    free(x);
}

static data_params params(int seq_len) {
    data_params p = data_default_params();
    p.seq_len = seq_len;
    return p;
}

static void test_defaults_and_tokenizer(void) {
    data_params p = data_default_params();
    CHECK(p.add_eos);
    CHECK(!p.skip_bad);
    CHECK(p.seq_len > 0);
    CHECK(bpe_eos_id(tok) >= 0);
}

/* text rows: [BOS?] + encode + EOS, loss on all but the first; \r\n, blank
 * lines and a last line without \n. */
static void test_text(void) {
    const char *path = write_str("text.jsonl", "{\"text\": \"Hello world\"}\r\n\r\n   \n{\"text\":\"a b\"}");
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_TEXT);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.n_lines, 2);
    CHECK_EQ_INT(d.n_skipped, 0);
    const char *texts[2] = {"Hello world", "a b"};
    int64_t tokens = 0, loss = 0;
    for (int e = 0; e < d.n && e < 2; e++) {
        int32_t want[64];
        int n = 0;
        if (bpe_adds_bos(tok)) want[n++] = bpe_bos_id(tok);
        enc_append(texts[e], want, &n);
        want[n++] = bpe_eos_id(tok);
        CHECK_EQ_INT(d.ex[e].n, n);
        CHECK(d.ex[e].n == n && !memcmp(d.ex[e].ids, want, (size_t)n * 4));
        CHECK_EQ_INT(d.ex[e].label, -1);
        for (int i = 0; i < d.ex[e].n; i++) CHECK_EQ_INT(d.ex[e].loss[i], i > 0);
        tokens += n;
        loss += n - 1;
    }
    CHECK_EQ_INT(d.n_tokens, tokens);
    CHECK_EQ_INT(d.n_loss_tokens, loss);
    data_free(&d);

    /* add_eos off */
    p.add_eos = false;
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (d.n == 2) {
        int32_t want[64];
        int n = 0;
        if (bpe_adds_bos(tok)) want[n++] = bpe_bos_id(tok);
        enc_append("a b", want, &n);
        CHECK(d.ex[1].n == n && !memcmp(d.ex[1].ids, want, (size_t)n * 4));
    }
    data_free(&d);
}

/* A line of 300 KB (getline, no fixed buffer) cut to seq_len. */
static void test_long_line(void) {
    size_t n = 300000;
    char *s = malloc(n + 64);
    strcpy(s, "{\"text\": \"");
    size_t k = strlen(s);
    for (size_t i = 0; i < n; i++) s[k++] = "abcd efgh"[i % 9];
    strcpy(s + k, "\"}\n{\"text\": \"short\"}\n");
    const char *path = write_str("long.jsonl", s);
    free(s);
    data_set d;
    peft_err err = {0};
    data_params p = params(100);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.n_truncated, 1);
    if (d.n == 2) {
        CHECK_EQ_INT(d.ex[0].n, 100);
        CHECK(d.ex[1].n < 100);
    }
    data_free(&d);
}

static cJSON *load_json(const char *path) {
    char *txt = NULL;
    size_t len = 0;
    peft_err err = {0};
    if (peft_read_file(path, &txt, &len, &err)) return NULL;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    return j;
}

/* Compares examples with {"ids", "loss"} rows written by transformers. */
static void check_against(const data_set *d, const char *expected) {
    cJSON *j = load_json(expected);
    CHECK_MSG(j != NULL, "%s missing", expected);
    if (!j) return;
    CHECK_EQ_INT(d->n, cJSON_GetArraySize(j));
    for (int e = 0; e < d->n && e < cJSON_GetArraySize(j); e++) {
        cJSON *row = cJSON_GetArrayItem(j, e);
        cJSON *ids = cJSON_GetObjectItem(row, "ids"), *loss = cJSON_GetObjectItem(row, "loss");
        CHECK_EQ_INT(d->ex[e].n, cJSON_GetArraySize(ids));
        if (d->ex[e].n != cJSON_GetArraySize(ids)) continue;
        int bad_ids = 0, bad_loss = 0;
        for (int i = 0; i < d->ex[e].n; i++) {
            bad_ids += d->ex[e].ids[i] != cJSON_GetArrayItem(ids, i)->valueint;
            bad_loss += d->ex[e].loss[i] != cJSON_GetArrayItem(loss, i)->valueint;
        }
        CHECK_MSG(bad_ids == 0 && bad_loss == 0, "%s row %d: %d ids, %d loss flags differ", expected, e,
                  bad_ids, bad_loss);
    }
    cJSON_Delete(j);
}

/* prompt/completion: pieces encoded apart, loss exactly on completion+EOS. */
static void test_prompt_completion(void) {
    const char *path = write_str("pc.jsonl", "{\"prompt\": \"Q: hi\", \"completion\": \" there\"}\n");
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.kind, DATA_PROMPT_COMPLETION);
    if (d.n == 1) {
        int32_t want[64];
        int n = 0, np;
        if (bpe_adds_bos(tok)) want[n++] = bpe_bos_id(tok);
        enc_append("Q: hi", want, &n);
        np = n;
        enc_append(" there", want, &n);
        want[n++] = bpe_eos_id(tok);
        CHECK(d.ex[0].n == n && !memcmp(d.ex[0].ids, want, (size_t)n * 4));
        for (int i = 0; i < d.ex[0].n; i++) CHECK_EQ_INT(d.ex[0].loss[i], i >= np);
        CHECK_EQ_INT(d.n_loss_tokens, n - np);
    }
    data_free(&d);

    CHECK_OK(data_load_jsonl(FIX "pc.jsonl", tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    check_against(&d, FIX "pc_expected.json");
    data_free(&d);
}

/* messages: loss only on assistant content + <|im_end|>, by hand on a
 * two-turn conversation and against transformers' assistant mask. */
static void test_messages(void) {
    const char *path = write_str("chat.jsonl",
                                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                                 "{\"role\": \"assistant\", \"content\": \"Hello!\"}, "
                                 "{\"role\": \"user\", \"content\": \"Bye\"}, "
                                 "{\"role\": \"assistant\", \"content\": \"See you\"}]}\n");
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_MESSAGES);
    if (d.n == 1) {
        int32_t want[256];
        uint8_t wl[256] = {0};
        int n = 0, a;
        enc_append("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", want, &n);
        a = n;
        enc_append("Hello!<|im_end|>", want, &n);
        memset(wl + a, 1, (size_t)(n - a));
        enc_append("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", want, &n);
        a = n;
        enc_append("See you<|im_end|>", want, &n);
        memset(wl + a, 1, (size_t)(n - a));
        enc_append("\n", want, &n);
        CHECK_EQ_INT(d.ex[0].n, n);
        CHECK(d.ex[0].n == n && !memcmp(d.ex[0].ids, want, (size_t)n * 4));
        CHECK(d.ex[0].n == n && !memcmp(d.ex[0].loss, wl, (size_t)n));
        CHECK_EQ_INT(d.ex[0].ids[n - 2], bpe_token_id(tok, "<|im_end|>"));
        CHECK_EQ_INT(d.ex[0].loss[n - 2], 1);
        CHECK_EQ_INT(d.ex[0].loss[n - 1], 0);
    }
    data_free(&d);

    CHECK_OK(data_load_jsonl(FIX "chat.jsonl", tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    check_against(&d, FIX "chat_expected.json");
    data_free(&d);

    /* A conversation with no assistant turn trains nothing: dropped. */
    path = write_str("chat2.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n"
                                    "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                                    "{\"role\": \"assistant\", \"content\": \"Yo\"}]}\n");
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.n, 1);
    CHECK_EQ_INT(d.n_skipped, 1);
    CHECK_EQ_INT(d.n_no_loss, 1);
    data_free(&d);
}

static void test_classification(void) {
    const char *path = write_str("cls.jsonl", "{\"text\": \"good film\", \"label\": 1}\n"
                                              "{\"text\": \"bad\", \"label\": 0, \"label_name\": \"neg\"}\n"
                                              "{\"text\": \"so so\", \"label\": 3.0}\n");
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_CLASSIFICATION);
    CHECK_EQ_INT(d.n, 3);
    CHECK_EQ_INT(d.n_labels, 4);
    CHECK_EQ_INT(d.n_loss_tokens, 0);
    if (d.n == 3) {
        CHECK_EQ_INT(d.ex[0].label, 1);
        CHECK_EQ_INT(d.ex[1].label, 0);
        CHECK_EQ_INT(d.ex[2].label, 3);
        int32_t want[64];
        int n = 0;
        if (bpe_adds_bos(tok)) want[n++] = bpe_bos_id(tok);
        enc_append("good film", want, &n); /* no EOS */
        CHECK(d.ex[0].n == n && !memcmp(d.ex[0].ids, want, (size_t)n * 4));
        for (int i = 0; i < d.ex[0].n; i++) CHECK_EQ_INT(d.ex[0].loss[i], 0);
    }
    data_free(&d);
}

/* Cut to seq_len keeping the start; a prompt that fills seq_len leaves no
 * completion and is dropped (truncated and skipped). */
static void test_truncation(void) {
    const char *path = write_str("trunc.jsonl",
                                 "{\"prompt\": \"aaaa bbbb cccc dddd eeee ffff gggg hhhh\", \"completion\": \" x\"}\n"
                                 "{\"prompt\": \"a\", \"completion\": \" long long long long long long long\"}\n"
                                 "{\"prompt\": \"a\", \"completion\": \" b\"}\n");
    data_set d;
    peft_err err = {0};
    data_params p = params(8);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.n_lines, 3);
    CHECK_EQ_INT(d.n_truncated, 2);
    CHECK_EQ_INT(d.n_skipped, 1);
    CHECK_EQ_INT(d.n_no_loss, 1);
    CHECK_EQ_INT(d.n_bad, 0);
    if (d.n == 2) {
        CHECK_EQ_INT(d.ex[0].n, 8);
        int32_t want[64];
        int n = 0;
        if (bpe_adds_bos(tok)) want[n++] = bpe_bos_id(tok);
        enc_append("a", want, &n);
        enc_append(" long long long long long long long", want, &n);
        CHECK(!memcmp(d.ex[0].ids, want, 8 * 4));
        CHECK(d.ex[1].n <= 8);
    }
    data_free(&d);
}

/* Loading fails with code and a message containing both needles. */
static void expect_error(const char *name, const char *text, int code, const char *n1, const char *n2) {
    const char *path = write_str(name, text);
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    int rc = data_load_jsonl(path, tok, &p, &d, &err);
    CHECK_MSG(rc == code, "%s: got %d, want %d (%s)", name, rc, code, err.msg);
    CHECK_MSG(strstr(err.msg, n1) != NULL, "%s: \"%s\" lacks \"%s\"", name, err.msg, n1);
    if (n2) CHECK_MSG(strstr(err.msg, n2) != NULL, "%s: \"%s\" lacks \"%s\"", name, err.msg, n2);
    if (!rc) data_free(&d);
}

static void test_errors(void) {
    const char *ok = "{\"text\": \"fine\"}\n";
    char buf[512];
    snprintf(buf, sizeof buf, "%s%s\n{\"text\": \"x\"\n", ok, ok);
    /* Line numbers count blank lines too: the bad line is the 4th. */
    expect_error("e1.jsonl", buf, PEFT_ERR_FORMAT, "e1.jsonl:4:", "not valid JSON");
    expect_error("e2.jsonl", "{\"prompt\": \"a\"}\n", PEFT_ERR_FORMAT, "e2.jsonl:1:",
                 "missing field \"completion\"");
    expect_error("e3.jsonl", "\n{\"prompt\": \"a\", \"completion\": 5}\n", PEFT_ERR_FORMAT, "e3.jsonl:2:",
                 "\"completion\" must be a string");
    expect_error("e4.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": -1}\n",
                 PEFT_ERR_FORMAT, "e4.jsonl:2:", "\"label\" must be a non-negative integer");
    expect_error("e5.jsonl", "{\"text\": \"a\", \"label\": 1.5}\n", PEFT_ERR_FORMAT, "e5.jsonl:1:", "\"label\"");
    expect_error("e6.jsonl", "{\"text\": \"a\", \"label\": \"1\"}\n", PEFT_ERR_FORMAT, "e6.jsonl:1:", "\"label\"");
    expect_error("e7.jsonl", "{\"text\": \"a\"}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n", PEFT_ERR_FORMAT,
                 "e7.jsonl:2:", "text rows");
    expect_error("e8.jsonl", "", PEFT_ERR_FORMAT, "e8.jsonl", "no usable examples");
    expect_error("e9.jsonl", "\n  \n\r\n", PEFT_ERR_FORMAT, "e9.jsonl", "no usable examples");
    expect_error("e10.jsonl", "{\"text\": \"a\"}\n[1, 2]\n", PEFT_ERR_FORMAT, "e10.jsonl:2:", "not a JSON object but an array");
    expect_error("e11.jsonl", "{\"foo\": 1}\n", PEFT_ERR_FORMAT, "e11.jsonl:1:", "no known fields (found \"foo\")");
    expect_error("e12.jsonl", "{\"text\": 3}\n", PEFT_ERR_FORMAT, "e12.jsonl:1:", "\"text\" must be a string");
    expect_error("e13.jsonl", "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n", PEFT_ERR_FORMAT,
                 "e13.jsonl:1:", "not system, user or assistant");
    expect_error("e14.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": null}]}\n", PEFT_ERR_FORMAT,
                 "e14.jsonl:1:", "\"content\" must be a string");
    expect_error("e15.jsonl", "{\"messages\": \"hi\"}\n", PEFT_ERR_FORMAT, "e15.jsonl:1:", "must be an array");
    expect_error("e16.jsonl", "{\"text\": \"a\"} trailing\n", PEFT_ERR_FORMAT, "e16.jsonl:1:", "not valid JSON");
    expect_error("e17.jsonl", "{\"text\": \"a\", \"label\": true}\n", PEFT_ERR_FORMAT, "e17.jsonl:1:", "\"label\"");
    expect_error("e18.jsonl", "{\"text\": \"\\u00ff\"}\n{\"text\": \"\xff\"}\n", PEFT_ERR_FORMAT, "e18.jsonl:2:",
                 "UTF-8");

    /* Missing file: I/O error naming it. */
    data_set d;
    peft_err err = {0};
    CHECK_EQ_INT(data_load_jsonl("/nonexistent/dir/x.jsonl", tok, NULL, &d, &err), PEFT_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent/dir/x.jsonl") != NULL);
}

static void test_skip_bad(void) {
    const char *path = write_str("skip.jsonl", "not json\n"
                                               "{\"prompt\": \"a\", \"completion\": \" b\"}\n"
                                               "{\"prompt\": \"a\"}\n"
                                               "{\"text\": \"other kind\"}\n"
                                               "\n"
                                               "{\"prompt\": \"c\", \"completion\": \" d\"}\n");
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    p.skip_bad = true;
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.kind, DATA_PROMPT_COMPLETION);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.n_lines, 5);
    CHECK_EQ_INT(d.n_skipped, 3);
    CHECK_EQ_INT(d.n_bad, 3);
    data_free(&d);
    /* Nothing usable is still an error. */
    path = write_str("skip2.jsonl", "nope\n{\"x\": 1}\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK(strstr(err.msg, "no usable examples") != NULL);
}

/* n classification rows with label = row index, to identify examples. */
static int make_indexed(int n, data_set *d) {
    size_t cap = (size_t)n * 64 + 1;
    char *s = malloc(cap);
    size_t k = 0;
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(s + k, cap - k, "{\"text\": \"row %d%s\", \"label\": %d}\n", i,
                              i % 3 == 0 ? " with more words in it" : "", i);
    const char *path = write_file("indexed.jsonl", s, k);
    free(s);
    peft_err err = {0};
    data_params p = params(0);
    return data_load_jsonl(path, tok, &p, d, &err);
}

static void test_split(void) {
    data_set d, v, d2, v2;
    peft_err err = {0};
    CHECK_OK(make_indexed(100, &d));
    CHECK_OK(data_split(&d, 0.2, 7, &v, &err));
    CHECK_EQ_INT(d.n, 80);
    CHECK_EQ_INT(v.n, 20);
    CHECK_EQ_INT(v.kind, DATA_CLASSIFICATION);
    CHECK_EQ_INT(v.n_labels, 100);
    uint8_t seen[100] = {0};
    for (int i = 0; i < d.n; i++) {
        seen[d.ex[i].label]++;
        if (i) CHECK(d.ex[i].label > d.ex[i - 1].label);
    }
    for (int i = 0; i < v.n; i++) {
        seen[v.ex[i].label]++;
        if (i) CHECK(v.ex[i].label > v.ex[i - 1].label);
    }
    for (int i = 0; i < 100; i++) CHECK_EQ_INT(seen[i], 1);
    int64_t tok_total = d.n_tokens + v.n_tokens, t = 0;
    for (int i = 0; i < d.n; i++) t += d.ex[i].n;
    CHECK_EQ_INT(d.n_tokens, t);

    /* Same seed, same split; another seed, another split. */
    CHECK_OK(make_indexed(100, &d2));
    CHECK_EQ_INT(d2.n_tokens, tok_total);
    CHECK_OK(data_split(&d2, 0.2, 7, &v2, &err));
    int same = v2.n == v.n;
    for (int i = 0; same && i < v.n; i++) same = v.ex[i].label == v2.ex[i].label;
    CHECK(same);
    data_free(&d2);
    data_free(&v2);
    CHECK_OK(make_indexed(100, &d2));
    CHECK_OK(data_split(&d2, 0.2, 8, &v2, &err));
    same = v2.n == v.n;
    for (int i = 0; same && i < v.n; i++) same = v.ex[i].label == v2.ex[i].label;
    CHECK(!same);
    data_free(&d2);
    data_free(&v2);
    data_free(&d);
    data_free(&v);

    /* Sizes at the edges. */
    CHECK_OK(make_indexed(10, &d));
    CHECK_OK(data_split(&d, 0.01, 1, &v, &err));
    CHECK_EQ_INT(v.n, 1);
    CHECK_EQ_INT(d.n, 9);
    data_free(&v);
    CHECK_OK(data_split(&d, 0.0, 1, &v, &err));
    CHECK_EQ_INT(v.n, 0);
    CHECK_EQ_INT(d.n, 9);
    data_free(&v);
    CHECK_OK(data_split(&d, 0.99, 1, &v, &err));
    CHECK_EQ_INT(v.n, 8);
    CHECK_EQ_INT(d.n, 1);
    data_free(&v);
    CHECK_EQ_INT(data_split(&d, 1.5, 1, &v, &err), PEFT_ERR_INVALID);
    data_free(&d);
}

/* Text examples of assorted lengths, each distinct. */
static int make_texts(int n, int seq_len, data_set *d) {
    size_t cap = (size_t)n * 200 + 1;
    char *s = malloc(cap);
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        k += (size_t)snprintf(s + k, cap - k, "{\"text\": \"ex%d", i);
        for (int w = 0; w < (i * 7) % 11; w++) k += (size_t)snprintf(s + k, cap - k, " w%d", w);
        k += (size_t)snprintf(s + k, cap - k, "\"}\n");
    }
    const char *path = write_file("texts.jsonl", s, k);
    free(s);
    peft_err err = {0};
    data_params p = params(seq_len);
    return data_load_jsonl(path, tok, &p, d, &err);
}

/* Which example row r of a padded batch holds (-1 when none or several). */
static int which(const data_set *d, const data_batch *b, int r) {
    int found = -1, len = b->lengths[r];
    for (int i = 0; i < d->n; i++) {
        if (PEFT_MIN(d->ex[i].n, b->T) != len) continue;
        if (memcmp(d->ex[i].ids, b->inputs + (size_t)r * b->T, (size_t)len * 4)) continue;
        if (found >= 0) return -1;
        found = i;
    }
    return found;
}

static void test_loader_padding(void) {
    data_set d;
    CHECK_OK(make_texts(7, 0, &d));
    data_loader *l = NULL;
    peft_err err = {0};
    int B = 3, T = 12, pad = 317;
    CHECK_OK(data_loader_new(&d, B, T, false, 42, pad, &l, &err));
    if (!l) { data_free(&d); return; }
    CHECK_EQ_INT(data_loader_batches_per_epoch(l), 3);
    int order[42], k = 0;
    for (int step = 0; step < 14; step++) {
        data_batch b;
        CHECK_OK(data_loader_next(l, &b));
        CHECK_EQ_INT(b.B, B);
        CHECK_EQ_INT(b.T, T);
        int nt = 0;
        for (int r = 0; r < B; r++) {
            int e = which(&d, &b, r);
            CHECK(e >= 0);
            order[k++] = e;
            if (e < 0) continue;
            const data_example *x = &d.ex[e];
            int len = PEFT_MIN(x->n, T);
            CHECK_EQ_INT(b.lengths[r], len);
            CHECK_EQ_INT(b.labels[r], -1);
            for (int t = 0; t < T; t++) {
                size_t o = (size_t)r * T + t;
                if (t >= len) CHECK_EQ_INT(b.inputs[o], pad);
                int want = t + 1 < len && x->loss[t + 1] ? x->ids[t + 1] : -100;
                CHECK_EQ_INT(b.targets[o], want);
                CHECK_EQ_INT(b.positions[o], t);
                CHECK_EQ_INT(b.segments[o], 0);
                nt += b.targets[o] != -100;
            }
        }
        CHECK_EQ_INT(b.n_targets, nt);
    }
    /* The stream is one permutation per epoch, batches straddling epochs. */
    for (int ep = 0; ep < 6; ep++) {
        int cnt[7] = {0};
        for (int i = 0; i < 7; i++) cnt[order[ep * 7 + i] >= 0 ? order[ep * 7 + i] : 0]++;
        for (int i = 0; i < 7; i++) CHECK_EQ_INT(cnt[i], 1);
    }
    int differ = 0;
    for (int i = 0; i < 7; i++) differ += order[i] != order[7 + i];
    CHECK(differ > 0); /* reshuffled */
    CHECK_EQ_INT(data_loader_epoch(l), 42 / 7);
    data_loader_free(l);

    /* Rows longer than T are cut to T. */
    CHECK_OK(data_loader_new(&d, 2, 3, false, 1, -1, &l, &err));
    for (int step = 0; step < 7 && l; step++) {
        data_batch b;
        data_loader_next(l, &b);
        for (int r = 0; r < 2; r++) {
            CHECK_EQ_INT(b.lengths[r], 3);
            CHECK_EQ_INT(b.targets[r * 3 + 2], -100);
        }
    }
    data_loader_free(l);
    data_free(&d);
}

/* The order a loader (of any mode) uses for epoch `ep`. */
static void epoch_order(const data_set *d, uint64_t seed, int ep, int *order) {
    data_loader *l = NULL;
    peft_err err = {0};
    CHECK_OK(data_loader_new(d, 1, 4096, false, seed, 0, &l, &err));
    for (int i = 0; i < (ep + 1) * d->n; i++) {
        data_batch b;
        data_loader_next(l, &b);
        if (i >= ep * d->n) order[i - ep * d->n] = which(d, &b, 0);
    }
    data_loader_free(l);
}

static void test_loader_packing(void) {
    data_set d;
    CHECK_OK(make_texts(9, 0, &d));
    /* Make one example longer than T so it must be split over rows. */
    int T = 10, B = 2;
    int longest = 0;
    for (int i = 0; i < d.n; i++) longest = PEFT_MAX(longest, d.ex[i].n);
    CHECK(longest > T);
    int64_t total = d.n_tokens;

    /* The token and target streams expected over two epochs. */
    int order[2][9];
    epoch_order(&d, 5, 0, order[0]);
    epoch_order(&d, 5, 1, order[1]);
    int32_t *want_in = malloc((size_t)total * 2 * 4), *want_tg = malloc((size_t)total * 2 * 4);
    int64_t w = 0;
    for (int ep = 0; ep < 2; ep++)
        for (int i = 0; i < 9; i++) {
            const data_example *x = &d.ex[order[ep][i] >= 0 ? order[ep][i] : 0];
            for (int t = 0; t < x->n; t++, w++) {
                want_in[w] = x->ids[t];
                want_tg[w] = t + 1 < x->n && x->loss[t + 1] ? x->ids[t + 1] : -100;
            }
        }

    data_loader *l = NULL;
    peft_err err = {0};
    CHECK_OK(data_loader_new(&d, B, T, true, 5, 0, &l, &err));
    if (!l) goto done;
    CHECK_EQ_INT(data_loader_batches_per_epoch(l), (int)((total + B * T - 1) / (B * T)));
    int64_t pos = 0;
    int bad_in = 0, bad_tg = 0, bad_pos = 0, bad_seg = 0;
    int ex_i = 0, ex_t = 0; /* where the stream is: example i (of 18), token t */
    while (pos + B * T <= 2 * total) {
        data_batch b;
        data_loader_next(l, &b);
        int nt = 0;
        for (int r = 0; r < B; r++) {
            CHECK_EQ_INT(b.lengths[r], T);
            int seg = 0;
            for (int t = 0; t < T; t++, pos++) {
                size_t o = (size_t)r * T + t;
                bad_in += b.inputs[o] != want_in[pos];
                bad_tg += b.targets[o] != want_tg[pos];
                nt += b.targets[o] != -100;
                /* Positions restart at each example and each row. */
                int want_p = t == 0 ? 0 : (ex_t == 0 ? 0 : b.positions[o - 1] + 1);
                bad_pos += b.positions[o] != want_p;
                if (t > 0 && ex_t == 0) seg++;
                bad_seg += b.segments[o] != seg;
                const data_example *x = &d.ex[order[ex_i / 9][ex_i % 9]];
                if (++ex_t == x->n) { ex_t = 0; ex_i++; }
            }
        }
        CHECK_EQ_INT(b.n_targets, nt);
    }
    CHECK_EQ_INT(bad_in, 0);
    CHECK_EQ_INT(bad_tg, 0);
    CHECK_EQ_INT(bad_pos, 0);
    CHECK_EQ_INT(bad_seg, 0);
    CHECK(data_loader_epoch(l) >= 1);
    data_loader_free(l);
done:
    free(want_in);
    free(want_tg);
    data_free(&d);
}

/* Same seed, same batches; other seed, other order. */
static void test_loader_determinism(void) {
    data_set d;
    CHECK_OK(make_texts(20, 0, &d));
    for (int pack = 0; pack < 2; pack++) {
        data_loader *a = NULL, *b = NULL, *c = NULL;
        peft_err err = {0};
        CHECK_OK(data_loader_new(&d, 4, 16, pack, 99, 0, &a, &err));
        CHECK_OK(data_loader_new(&d, 4, 16, pack, 99, 0, &b, &err));
        CHECK_OK(data_loader_new(&d, 4, 16, pack, 100, 0, &c, &err));
        int same_ab = 1, same_ac = 1;
        for (int s = 0; s < 12 && a && b && c; s++) {
            data_batch x, y, z;
            data_loader_next(a, &x);
            data_loader_next(b, &y);
            data_loader_next(c, &z);
            size_t bt = 4 * 16 * 4;
            same_ab &= !memcmp(x.inputs, y.inputs, bt) && !memcmp(x.targets, y.targets, bt) &&
                       !memcmp(x.positions, y.positions, bt) && !memcmp(x.segments, y.segments, bt);
            same_ac &= !memcmp(x.inputs, z.inputs, bt);
        }
        CHECK(same_ab);
        CHECK(!same_ac);
        data_loader_free(a);
        data_loader_free(b);
        data_loader_free(c);
    }
    data_free(&d);
}

/* A saved state gives the same future batches in a fresh loader, mid-epoch
 * and mid-example (packing). */
static void test_loader_state(void) {
    data_set d;
    CHECK_OK(make_texts(13, 0, &d));
    for (int pack = 0; pack < 2; pack++)
        for (int skip = 0; skip < 9; skip += 4) {
            data_loader *a = NULL, *b = NULL;
            peft_err err = {0};
            CHECK_OK(data_loader_new(&d, 3, 7, pack, 11, 0, &a, &err));
            CHECK_OK(data_loader_new(&d, 3, 7, pack, 11, 0, &b, &err));
            if (!a || !b) { data_loader_free(a); data_loader_free(b); continue; }
            data_batch x, y;
            for (int s = 0; s < skip; s++) data_loader_next(a, &x);
            size_t n = data_loader_state_size(a);
            unsigned char *st = malloc(n);
            data_loader_get_state(a, st);
            CHECK_OK(data_loader_set_state(b, st, n));
            CHECK_EQ_INT(data_loader_epoch(b), data_loader_epoch(a));
            int same = 1;
            for (int s = 0; s < 15; s++) {
                data_loader_next(a, &x);
                data_loader_next(b, &y);
                size_t bt = 3 * 7 * 4;
                same &= !memcmp(x.inputs, y.inputs, bt) && !memcmp(x.targets, y.targets, bt) &&
                        !memcmp(x.positions, y.positions, bt) && !memcmp(x.segments, y.segments, bt) &&
                        !memcmp(x.lengths, y.lengths, 3 * 4) && x.n_targets == y.n_targets;
            }
            CHECK_MSG(same, "pack %d skip %d", pack, skip);
            free(st);
            data_loader_free(a);
            data_loader_free(b);
        }
    /* Another seed's (or shape's) state is refused and changes nothing. */
    data_loader *a = NULL, *b = NULL;
    peft_err err = {0};
    CHECK_OK(data_loader_new(&d, 3, 7, true, 11, 0, &a, &err));
    CHECK_OK(data_loader_new(&d, 3, 7, true, 12, 0, &b, &err));
    if (a && b) {
        data_batch x;
        data_loader_next(a, &x);
        size_t n = data_loader_state_size(a);
        unsigned char *st = malloc(n);
        data_loader_get_state(a, st);
        CHECK_EQ_INT(data_loader_set_state(b, st, n), PEFT_ERR_INVALID);
        CHECK_EQ_INT(data_loader_set_state(b, st, n - 1), PEFT_ERR_INVALID);
        st[8 * 8] = 200; /* offset past the example */
        CHECK_EQ_INT(data_loader_set_state(a, st, n), PEFT_ERR_INVALID);
        free(st);
    }
    data_loader_free(a);
    data_loader_free(b);
    data_free(&d);
}

static void test_loader_classification(void) {
    data_set d;
    CHECK_OK(make_indexed(5, &d));
    data_loader *l = NULL;
    peft_err err = {0};
    CHECK_EQ_INT(data_loader_new(&d, 2, 8, true, 1, 0, &l, &err), PEFT_ERR_INVALID);
    CHECK_OK(data_loader_new(&d, 2, 8, false, 1, 0, &l, &err));
    int seen[5] = {0};
    for (int s = 0; s < 5 && l; s++) {
        data_batch b;
        data_loader_next(l, &b);
        /* no token targets; one classification target per labelled row */
        int nt = 0;
        for (int i = 0; i < b.B * b.T; i++) nt += b.targets[i] != -100;
        CHECK_EQ_INT(nt, 0);
        CHECK_EQ_INT(b.n_targets, (b.labels[0] >= 0) + (b.labels[1] >= 0));
        for (int r = 0; r < 2; r++) {
            int e = which(&d, &b, r);
            CHECK(e >= 0);
            if (e >= 0) CHECK_EQ_INT(b.labels[r], d.ex[e].label);
            if (b.labels[r] >= 0 && b.labels[r] < 5) seen[b.labels[r]]++;
            for (int t = 0; t < 8; t++) CHECK_EQ_INT(b.targets[r * 8 + t], -100);
        }
    }
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(seen[i], 2); /* two epochs */
    data_loader_free(l);
    CHECK_EQ_INT(data_loader_new(&d, 0, 8, false, 1, 0, &l, &err), PEFT_ERR_INVALID);
    data_free(&d);
}

/* {anchor, positive[, negative]}: each text its own [CLS] … [SEP] input
 * (the tiny BERT's WordPiece), truncated keeping the template; the loader
 * puts text c of example i in row c·B + i with the anchor's label i. */
static void test_pairs(void) {
    bpe_tokenizer *wp = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json("tests/fixtures/models/tiny-bert/tokenizer.json", &wp, &err));
    if (!wp) return;
    const char *path = write_str("pairs.jsonl", "{\"anchor\": \"a man plays\", \"positive\": \"music\"}\n"
                                                "{\"anchor\": \"a cat\", \"positive\": \"a pet sleeps on the sofa all day\"}\n"
                                                "{\"anchor\": \"rain\", \"positive\": \"weather\"}\n");
    data_set d;
    data_params p = params(8);
    CHECK_OK(data_load_jsonl(path, wp, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_PAIRS);
    CHECK_EQ_INT(d.n_cols, 2);
    CHECK_EQ_INT(d.n, 3);
    CHECK_EQ_INT(d.n_truncated, 1);
    for (int i = 0; i < d.n; i++) {
        const data_example *e = &d.ex[i];
        CHECK_EQ_INT(e->n_cols, 2);
        CHECK_EQ_INT(e->col_len[0] + e->col_len[1], e->n);
        CHECK(e->col_len[1] <= 8);
        /* both texts open with [CLS] and close with [SEP], even when cut */
        CHECK_EQ_INT(e->ids[0], bpe_cls_id(wp));
        CHECK_EQ_INT(e->ids[e->col_len[0] - 1], bpe_sep_id(wp));
        CHECK_EQ_INT(e->ids[e->col_len[0]], bpe_cls_id(wp));
        CHECK_EQ_INT(e->ids[e->n - 1], bpe_sep_id(wp));
    }
    data_loader *l = NULL;
    CHECK_EQ_INT(data_loader_new(&d, 2, 8, true, 1, 0, &l, &err), PEFT_ERR_INVALID);   /* no packing */
    CHECK_OK(data_loader_new(&d, 2, 8, false, 1, 0, &l, &err));
    for (int s = 0; s < 3 && l; s++) {
        data_batch b;
        data_loader_next(l, &b);
        CHECK_EQ_INT(b.B, 4);
        CHECK_EQ_INT(b.n_cols, 2);
        CHECK_EQ_INT(b.n_targets, 2);
        for (int i = 0; i < 2; i++) {
            CHECK_EQ_INT(b.labels[i], i);
            CHECK_EQ_INT(b.labels[2 + i], -1);
            /* the anchor and positive of one example share it */
            int ex = -1;
            for (int k = 0; k < d.n; k++)
                if (d.ex[k].col_len[0] == b.lengths[i] && !memcmp(d.ex[k].ids, b.inputs + i * 8, (size_t)b.lengths[i] * 4))
                    ex = k;
            CHECK(ex >= 0);
            if (ex < 0) continue;
            CHECK_EQ_INT(b.lengths[2 + i], PEFT_MIN(8, d.ex[ex].col_len[1]));
            CHECK(!memcmp(d.ex[ex].ids + d.ex[ex].col_len[0], b.inputs + (2 + i) * 8, (size_t)b.lengths[2 + i] * 4));
            for (int t = 0; t < 8; t++) CHECK_EQ_INT(b.targets[i * 8 + t], -100);
        }
    }
    data_loader_free(l);
    data_free(&d);

    /* a hard-negative column, the same in every row */
    path = write_str("triples.jsonl", "{\"anchor\": \"a\", \"positive\": \"b\", \"negative\": \"c\"}\n"
                                      "{\"anchor\": \"d\", \"positive\": \"e\"}\n");
    p = params(0);
    CHECK_EQ_INT(data_load_jsonl(path, wp, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "triples.jsonl:2") && strstr(err.msg, "without \"negative\""), "%s", err.msg);
    path = write_str("nopos.jsonl", "{\"anchor\": \"a\"}\n");
    CHECK_EQ_INT(data_load_jsonl(path, wp, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "missing field \"positive\""), "%s", err.msg);
    path = write_str("triples_ok.jsonl", "{\"anchor\": \"a\", \"positive\": \"b\", \"negative\": \"c\"}\n");
    const int rc3 = data_load_jsonl(path, wp, &p, &d, &err);
    CHECK_EQ_INT(rc3, 0);
    if (!rc3) {
        CHECK_EQ_INT(d.n_cols, 3);
        data_free(&d);
    }
    bpe_free(wp);
}

/* {text, text_pair, label}: [CLS] A [SEP] B [SEP] with B's token types 1,
 * carried into the batch; single texts keep NULL types. */
static void test_pair_classification(void) {
    bpe_tokenizer *wp = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json("tests/fixtures/models/tiny-bert/tokenizer.json", &wp, &err));
    if (!wp) return;
    const char *path = write_str("pcls.jsonl", "{\"text\": \"is it\", \"text_pair\": \"yes it is\", \"label\": 1}\n"
                                               "{\"text\": \"single\", \"label\": 0}\n");
    data_set d;
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(path, wp, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_CLASSIFICATION);
    if (d.n == 2) {
        int32_t *ids = NULL, *ty = NULL;
        int n = 0;
        CHECK_OK(bpe_encode_input(wp, "is it", 5, "yes it is", 9, 0, &ids, &ty, &n, NULL, &err));
        CHECK(d.ex[0].n == n && !memcmp(d.ex[0].ids, ids, (size_t)n * 4));
        CHECK(d.ex[0].types != NULL);
        int ones = 0;
        for (int i = 0; d.ex[0].types && i < n; i++) {
            CHECK_EQ_INT(d.ex[0].types[i], ty[i]);
            ones += ty[i];
        }
        CHECK(ones > 0);
        CHECK(d.ex[1].types == NULL);
        free(ids);
        free(ty);
        data_loader *l = NULL;
        CHECK_OK(data_loader_new(&d, 2, 16, false, 1, 0, &l, &err));
        data_batch b;
        if (l) data_loader_next(l, &b);
        CHECK(l && b.types != NULL);
        for (int r = 0; l && b.types && r < 2; r++) {
            const int e = b.labels[r];   /* label 1: the pair, 0: the single text */
            const data_example *x = &d.ex[e == 1 ? 0 : 1];
            for (int t = 0; t < 16; t++)
                CHECK_EQ_INT(b.types[r * 16 + t], t < x->n && x->types ? x->types[t] : 0);
        }
        data_loader_free(l);
    }
    data_free(&d);
    bpe_free(wp);
}

/* The project's real datasets: E2E (prompt/completion) and SST-2. */
static void test_shared_data(void) {
    const char *e2e = "../shared/data/e2e/dev.jsonl", *sst = "../shared/data/sst2/train.jsonl";
    if (!peft_file_exists(e2e) || !peft_file_exists(sst))
        TEST_SKIP("%s or %s missing: the project's test datasets (../shared/data, beside the checkout in CI) "
                  "are not here", e2e, sst);
    data_set d;
    peft_err err = {0};
    data_params p = params(256);
    CHECK_OK(data_load_jsonl(e2e, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_PROMPT_COMPLETION);
    CHECK_EQ_INT(d.n_lines, 4672);
    CHECK_EQ_INT(d.n + d.n_skipped, 4672);
    CHECK_EQ_INT(d.n_bad, 0);
    CHECK(d.n > 4600);
    CHECK(d.n_loss_tokens > 0 && d.n_loss_tokens < d.n_tokens);
    data_free(&d);

    /* SST-2: the first 2000 lines. */
    char *txt = NULL;
    size_t len = 0;
    CHECK_OK(peft_read_file(sst, &txt, &len, &err));
    if (!txt) return;
    size_t k = 0;
    for (int lines = 0; k < len && lines < 2000; k++)
        if (txt[k] == '\n') lines++;
    const char *path = write_file("sst2.jsonl", txt, k);
    free(txt);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_CLASSIFICATION);
    CHECK_EQ_INT(d.n, 2000);
    CHECK_EQ_INT(d.n_labels, 2);
    data_loader *l = NULL;
    CHECK_OK(data_loader_new(&d, 8, 64, false, 3, bpe_pad_id(tok), &l, &err));
    CHECK_EQ_INT(data_loader_batches_per_epoch(l), 250);
    data_loader_free(l);
    data_free(&d);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/peft_data_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    peft_err err = {0};
    if (bpe_load_json(TOK, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    TEST_RUN(test_defaults_and_tokenizer);
    TEST_RUN(test_text);
    TEST_RUN(test_long_line);
    TEST_RUN(test_prompt_completion);
    TEST_RUN(test_messages);
    TEST_RUN(test_classification);
    TEST_RUN(test_truncation);
    TEST_RUN(test_errors);
    TEST_RUN(test_skip_bad);
    TEST_RUN(test_split);
    TEST_RUN(test_loader_padding);
    TEST_RUN(test_loader_packing);
    TEST_RUN(test_loader_determinism);
    TEST_RUN(test_loader_state);
    TEST_RUN(test_loader_classification);
    TEST_RUN(test_pairs);
    TEST_RUN(test_pair_classification);
    TEST_RUN(test_shared_data);
    bpe_free(tok);
    if (test_rm_rf(tmpdir) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
