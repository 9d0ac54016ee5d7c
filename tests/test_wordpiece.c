/* test_wordpiece.c — WordPiece tokenizers (BERT family) against Hugging Face
 * `tokenizers`: ids, token type ids, pairs and decode on a corpus of hard
 * strings, ids on 2000 real lines, and the normalizer + pre-tokenizer on
 * every Unicode code point (fixtures by tools/make_wordpiece_fixtures.py in
 * tests/fixtures/tokenizer/wordpiece/); bad files and long words. */
#include "test.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/wordpiece.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WP "tests/fixtures/tokenizer/wordpiece/"
#define SST2 "../shared/data/sst2/train.jsonl"
#define AGNEWS "../shared/data/agnews/all.jsonl"

static const char *const NAMES[] = {"minilm", "cased", "strip", "seq", "uncased"};
#define N_NAMES 5

static cJSON *read_json(const char *path) {
    char *data;
    size_t len;
    peft_err err = {0};
    if (peft_read_file(path, &data, &len, &err)) return NULL;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    return j;
}

static bpe_tokenizer *load(const char *name) {
    char path[256];
    snprintf(path, sizeof path, WP "%s/tokenizer.json", name);
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    int rc = bpe_load_json(path, &t, &err);
    CHECK_MSG(rc == 0, "%s: %s", path, err.msg);
    return t;
}

static bool ids_equal(const cJSON *want, const int32_t *ids, int n) {
    if (cJSON_GetArraySize(want) != n) return false;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, want) if ((int)e->valuedouble != ids[i++]) return false;
    return true;
}

static void print_ids(const char *what, const int32_t *ids, int n) {
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static void print_want(const cJSON *want) {
    fprintf(stderr, "    want:");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, want) if (i++ < 40) fprintf(stderr, " %d", (int)e->valuedouble);
    fprintf(stderr, "\n");
}

/* ids of one encode against the fixture; prints both on a difference. */
static void check_ids(const char *name, const char *what, int line, const cJSON *want, const int32_t *ids, int n) {
    bool ok = ids_equal(want, ids, n);
    CHECK_MSG(ok, "%s: %s differ on corpus line %d", name, what, line);
    if (!ok) {
        print_ids("got", ids, n);
        print_want(want);
    }
}

/* A corpus line from its hex (the text may hold a NUL); its length. */
static size_t unhex(const cJSON *h, char *out, size_t cap) {
    const char *x = cJSON_IsString(h) ? h->valuestring : "";
    size_t n = 0;
    for (; x[0] && x[1] && n + 1 < cap; x += 2) {
        unsigned v;
        if (sscanf(x, "%2x", &v) != 1) break;
        out[n++] = (char)v;
    }
    out[n] = 0;
    return n;
}

/* The hard strings: ids with and without the template, special tokens in
 * the text parsed or not, token type ids, HF's decode; and the pairs. */
static void test_corpus_matches_hf(void) {
    cJSON *exp = read_json(WP "expected.json");
    CHECK_MSG(exp != NULL, "cannot read " WP "expected.json");
    if (!exp) return;
    const cJSON *corpus = cJSON_GetObjectItemCaseSensitive(exp, "corpus");
    const cJSON *corpus_hex = cJSON_GetObjectItemCaseSensitive(exp, "corpus_hex");
    const cJSON *pairs = cJSON_GetObjectItemCaseSensitive(exp, "pairs");
    CHECK(cJSON_GetArraySize(corpus) > 40);
    CHECK_EQ_INT(cJSON_GetArraySize(corpus_hex), cJSON_GetArraySize(corpus));
    for (int k = 0; k <= N_NAMES; k++) {
        bpe_tokenizer *t = NULL;
        const char *name = k < N_NAMES ? NAMES[k] : "uncased/model.gguf";
        if (k < N_NAMES) {
            t = load(NAMES[k]);
        } else {
            /* llama.cpp's spelling of the uncased vocabulary: the same ids */
            gguf_file *g = NULL;
            peft_err err = {0};
            CHECK_OK(gguf_open(WP "uncased/model.gguf", &g, &err));
            if (g) CHECK_MSG(bpe_load_gguf(g, &t, &err) == 0, "%s", err.msg);
            gguf_close(g);
        }
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(exp, k < N_NAMES ? NAMES[k] : "uncased");
        if (!t || !w) { bpe_free(t); CHECK(w != NULL); continue; }
        CHECK_EQ_INT(bpe_get_kind(t), BPE_WORDPIECE);
        int i = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, corpus) {
            char s[4096];
            size_t len = unhex(cJSON_GetArrayItem(corpus_hex, i), s, sizeof s);
            peft_err err = {0};
            int32_t *ids = NULL, *ty = NULL;
            int n = 0;
            CHECK_OK(bpe_encode_pair(t, s, len, NULL, 0, true, true, &ids, &ty, &n, &err));
            check_ids(name, "ids", i, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "ids"), i), ids, n);
            check_ids(name, "type_ids", i, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "type_ids"), i),
                      ty, n);
            char *dec = NULL;
            CHECK_OK(bpe_decode(t, ids, n, &dec, &err));
            const char *want_dec = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "decoded"), i)->valuestring;
            CHECK_MSG(dec && !strcmp(dec, want_dec), "%s: decode differs on line %d: \"%.80s\" vs HF \"%.80s\"",
                      name, i, dec ? dec : "(null)", want_dec);
            free(dec);
            free(ids);
            free(ty);
            CHECK_OK(bpe_encode(t, s, len, true, true, &ids, &n, &err));
            check_ids(name, "ids (bpe_encode)", i, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "ids"), i),
                      ids, n);
            free(ids);
            CHECK_OK(bpe_encode(t, s, len, false, true, &ids, &n, &err));
            check_ids(name, "ids without the template", i,
                      cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "ids_plain"), i), ids, n);
            free(ids);
            CHECK_OK(bpe_encode(t, s, len, true, false, &ids, &n, &err));
            check_ids(name, "ids with special tokens as text", i,
                      cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "ids_no_special"), i), ids, n);
            free(ids);
            i++;
        }
        i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, pairs) {
            const char *a = cJSON_GetArrayItem(p, 0)->valuestring, *b = cJSON_GetArrayItem(p, 1)->valuestring;
            const cJSON *wp = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(w, "pairs"), i);
            peft_err err = {0};
            int32_t *ids = NULL, *ty = NULL;
            int n = 0;
            CHECK_OK(bpe_encode_pair(t, a, strlen(a), b, strlen(b), true, true, &ids, &ty, &n, &err));
            check_ids(name, "pair ids", i, cJSON_GetObjectItemCaseSensitive(wp, "ids"), ids, n);
            check_ids(name, "pair type_ids", i, cJSON_GetObjectItemCaseSensitive(wp, "type_ids"), ty, n);
            free(ids);
            free(ty);
            CHECK_OK(bpe_encode_pair(t, a, strlen(a), b, strlen(b), false, true, &ids, &ty, &n, &err));
            check_ids(name, "pair ids without the template", i, cJSON_GetObjectItemCaseSensitive(wp, "ids_plain"),
                      ids, n);
            check_ids(name, "pair type_ids without the template", i,
                      cJSON_GetObjectItemCaseSensitive(wp, "type_ids_plain"), ty, n);
            free(ids);
            free(ty);
            i++;
        }
        bpe_free(t);
    }
    cJSON_Delete(exp);
}

static uint64_t fnv1a64_ids(const int32_t *ids, int n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xFF;
            h *= 0x100000001b3ull;
        }
    }
    return h;
}

/* The first 1000 texts of SST-2 and of AG News, each tokenizer's ids
 * (hashed in the fixture) identical to HF's. */
static void test_real_text_matches_hf(void) {
    if (!peft_file_exists(SST2) || !peft_file_exists(AGNEWS))
        TEST_SKIP("%s or %s missing: the project's test datasets (../shared/data, beside the checkout in CI) "
                  "are not here", SST2, AGNEWS);
    cJSON *exp = read_json(WP "real.json");
    CHECK_MSG(exp != NULL, "cannot read " WP "real.json");
    if (!exp) return;
    char **texts = NULL;
    int nt = 0;
    const char *files[2] = {SST2, AGNEWS};
    for (int f = 0; f < 2; f++) {
        char *data;
        size_t len;
        peft_err err = {0};
        CHECK_OK(peft_read_file(files[f], &data, &len, &err));
        int got = 0;
        for (char *line = data; line && *line && got < 1000;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            cJSON *j = cJSON_Parse(line);
            const cJSON *tx = cJSON_GetObjectItemCaseSensitive(j, "text");
            if (cJSON_IsString(tx)) {
                texts = realloc(texts, (size_t)(nt + 1) * sizeof *texts);
                texts[nt++] = strdup(tx->valuestring);
                got++;
            }
            cJSON_Delete(j);
            line = nl ? nl + 1 : NULL;
        }
        free(data);
    }
    CHECK_EQ_INT(nt, 2000);
    for (int k = 0; k < N_NAMES; k++) {
        bpe_tokenizer *t = load(NAMES[k]);
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(exp, NAMES[k]);
        if (!t || !w) { bpe_free(t); CHECK(w != NULL); continue; }
        CHECK_EQ_INT(cJSON_GetArraySize(w), nt);
        int bad = 0, total = 0;
        for (int i = 0; i < nt && i < cJSON_GetArraySize(w); i++) {
            int32_t *ids = NULL;
            int n = 0;
            peft_err err = {0};
            CHECK_OK(bpe_encode(t, texts[i], strlen(texts[i]), true, true, &ids, &n, &err));
            const cJSON *e = cJSON_GetArrayItem(w, i);
            char hex[17];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64_ids(ids, n));
            bool ok = (int)cJSON_GetArrayItem(e, 0)->valuedouble == n && !strcmp(cJSON_GetArrayItem(e, 1)->valuestring, hex);
            if (!ok && bad++ < 5) {
                fprintf(stderr, "  %s: ids differ from HF on text %d: \"%.80s\"\n", NAMES[k], i, texts[i]);
                print_ids("got", ids, n);
            }
            total += n;
            free(ids);
        }
        CHECK_MSG(bad == 0, "%s: %d of %d real texts differ from HF", NAMES[k], bad, nt);
        printf("  %s: %d real texts, %d ids, identical to HF\n", NAMES[k], nt, total);
        bpe_free(t);
    }
    for (int i = 0; i < nt; i++) free(texts[i]);
    free(texts);
    cJSON_Delete(exp);
}

/* Whether cp is in the fixture's "skip" ranges: the code points where HF
 * `tokenizers` and utf8proc (Unicode 15) disagree because they follow
 * different Unicode versions (tools/make_wordpiece_fixtures.py,
 * KNOWN_DIVERGENT, says which and why; docs/formats.md). */
static bool skipped(const cJSON *skip, int cp) {
    const cJSON *r;
    cJSON_ArrayForEach(r, skip) {
        if (cp >= (int)cJSON_GetArrayItem(r, 0)->valuedouble && cp <= (int)cJSON_GetArrayItem(r, 1)->valuedouble)
            return true;
    }
    return false;
}

/* The normalizer and pre-tokenizer on "a<cp>b" for every code point:
 * character classes (whitespace, control, punctuation, CJK), lowercase,
 * NFD and accent stripping, against HF block by block. */
static void test_every_codepoint_matches_hf(void) {
    cJSON *exp = read_json(WP "codepoints.json");
    CHECK_MSG(exp != NULL, "cannot read " WP "codepoints.json");
    if (!exp) return;
    int block = 0;
    CHECK_OK(peft_json_get_int(exp, "block", 0, true, 1, 1 << 20, &block, "codepoints.json", &(peft_err){0}));
    if (block <= 0) { cJSON_Delete(exp); return; }
    const cJSON *skip = cJSON_GetObjectItemCaseSensitive(exp, "skip"), *r;
    static bool in_skip[0x1100]; /* 256-code-point pages with a skipped code point */
    int n_skipped = 0;
    cJSON_ArrayForEach(r, skip) {
        int lo = (int)cJSON_GetArrayItem(r, 0)->valuedouble, hi = (int)cJSON_GetArrayItem(r, 1)->valuedouble;
        CHECK(lo >= 0 && lo <= hi && hi < 0x110000);
        for (int p = lo >> 8; p <= hi >> 8 && p < 0x1100; p++) in_skip[p] = true;
        n_skipped += hi - lo + 1;
    }
    CHECK_MSG(n_skipped < 1000, "%d code points skipped", n_skipped);
    for (int k = 0; k < 4; k++) {
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(exp, NAMES[k]);
        bpe_tokenizer *t = load(NAMES[k]);
        if (!t || !w) { bpe_free(t); CHECK(w != NULL); continue; }
        int nb = 0x110000 / block, bad = 0;
        CHECK_EQ_INT(cJSON_GetArraySize(w), nb);
        for (int b = 0; b < nb && b < cJSON_GetArraySize(w); b++) {
            uint32_t h = 2166136261u;
            for (int cp = b * block; cp < (b + 1) * block; cp++) {
                if ((cp >= 0xD800 && cp <= 0xDFFF) || (in_skip[cp >> 8] && skipped(skip, cp))) continue;
                char s[8];
                size_t l = 0;
                s[l++] = 'a';
                l += (size_t)bpe_utf8_encode((uint32_t)cp, s + l);
                s[l++] = 'b';
                char *words = NULL;
                size_t wl = 0;
                peft_err err = {0};
                if (wp_pretokenize(t, s, l, &words, &wl, &err)) {
                    CHECK_MSG(0, "%s: U+%04X: %s", NAMES[k], cp, err.msg);
                    continue;
                }
                for (size_t i = 0; i < wl; i++) {
                    unsigned char c = words[i] ? (unsigned char)words[i] : 1; /* NUL ends a word: HF's U+0001 */
                    h = (h ^ c) * 16777619u;
                }
                h = (h ^ 2u) * 16777619u;
                free(words);
            }
            char hex[9];
            snprintf(hex, sizeof hex, "%08x", h);
            if (strcmp(hex, cJSON_GetArrayItem(w, b)->valuestring)) {
                if (bad++ < 40) fprintf(stderr, "  %s: code points U+%04X..U+%04X differ from HF\n", NAMES[k],
                                        b * block, (b + 1) * block - 1);
            }
        }
        CHECK_MSG(bad == 0, "%s: %d blocks of %d code points differ from HF", NAMES[k], bad, block);
        printf("  %s: every code point but %d (Unicode version differences) as HF\n", NAMES[k], n_skipped);
        bpe_free(t);
    }
    cJSON_Delete(exp);
}

/* Special ids, kind, description, per-token bytes, and pairs refused by a
 * BPE tokenizer that has no pair template. */
static void test_api(void) {
    bpe_tokenizer *t = load("minilm");
    if (!t) return;
    CHECK_EQ_INT(bpe_vocab_size(t), 30522);
    CHECK_EQ_INT(bpe_cls_id(t), 101);
    CHECK_EQ_INT(bpe_sep_id(t), 102);
    CHECK_EQ_INT(bpe_pad_id(t), 0);
    CHECK_EQ_INT(bpe_token_id(t, "[MASK]"), 103);
    CHECK(bpe_is_special(t, 103));
    CHECK(!bpe_is_special(t, 7592));
    CHECK(!bpe_adds_bos(t));
    CHECK_MSG(strstr(bpe_describe(t), "WordPiece") != NULL, "describe: %s", bpe_describe(t));
    char buf[16];
    int id = bpe_token_id(t, "##ing");
    CHECK(id > 0);
    CHECK_EQ_INT(bpe_token_bytes(t, id, buf, sizeof buf), 3);
    CHECK(!memcmp(buf, "ing", 3));
    CHECK_EQ_INT(bpe_token_bytes(t, 101, buf, sizeof buf), 5);
    CHECK(!memcmp(buf, "[CLS]", 5));
    /* invalid UTF-8 and ids out of range are errors that say so */
    int32_t *ids = NULL;
    int n = 0;
    peft_err err = {0};
    CHECK(bpe_encode(t, "a\xff" "b", 3, true, true, &ids, &n, &err) == PEFT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "UTF-8") != NULL, "%s", err.msg);
    CHECK(ids == NULL);
    int32_t bad[2] = {101, 40000};
    char *dec = NULL;
    CHECK(bpe_decode(t, bad, 2, &dec, &err) == PEFT_ERR_INVALID);
    CHECK(dec == NULL);
    /* a word longer than max_input_chars_per_word (100) is one [UNK]; a
     * megabyte-long word stays linear (no token is longer than the
     * vocabulary's longest) */
    size_t big = 1 << 20;
    char *w = malloc(big);
    memset(w, 'a', big);
    CHECK_OK(bpe_encode(t, w, big, false, true, &ids, &n, &err));
    CHECK(n == 1 && ids[0] == 100);
    free(ids);
    for (size_t i = 0; i < big; i += 2) w[i] = ' ';
    CHECK_OK(bpe_encode(t, w, big, false, true, &ids, &n, &err));
    CHECK_EQ_INT(n, (int)(big / 2));
    free(ids);
    free(w);
    bpe_free(t);

    /* GGUF: [CLS] is written as BOS, [SEP] as EOS and separator */
    gguf_file *g = NULL;
    peft_err e1 = {0};
    CHECK_OK(gguf_open(WP "uncased/model.gguf", &g, &e1));
    if (g) {
        bpe_tokenizer *u = NULL;
        CHECK_OK(bpe_load_gguf(g, &u, &e1));
        if (u) {
            CHECK_EQ_INT(bpe_get_kind(u), BPE_WORDPIECE);
            CHECK_EQ_INT(bpe_cls_id(u), bpe_token_id(u, "[CLS]"));
            CHECK_EQ_INT(bpe_sep_id(u), bpe_token_id(u, "[SEP]"));
            CHECK_EQ_INT(bpe_pad_id(u), bpe_token_id(u, "[PAD]"));
            CHECK(bpe_token_id(u, "##s") > 0);
            CHECK(bpe_is_special(u, bpe_token_id(u, "[MASK]")));
            bpe_free(u);
        }
        gguf_close(g);
    }

    /* byte-level BPE: single sequences through bpe_encode_pair, pairs only
     * without the template */
    peft_err e2 = {0};
    bpe_tokenizer *b = NULL;
    CHECK_OK(bpe_load_json("tests/fixtures/models/tiny-llama/tokenizer.json", &b, &e2));
    if (b) {
        int32_t *ty = NULL;
        CHECK_OK(bpe_encode_pair(b, "hi", 2, NULL, 0, false, true, &ids, &ty, &n, &e2));
        CHECK(n > 0 && ty && ty[0] == 0);
        free(ids);
        free(ty);
        CHECK_OK(bpe_encode_pair(b, "hi", 2, "yo", 2, false, true, &ids, &ty, &n, &e2));
        CHECK(n > 1 && ty[0] == 0 && ty[n - 1] == 1);
        free(ids);
        free(ty);
        CHECK(bpe_encode_pair(b, "hi", 2, "yo", 2, true, true, &ids, &ty, &n, &e2) == PEFT_ERR_UNSUPPORTED);
        bpe_free(b);
    }
}

static char tmpdir_[64];

static const char *write_tmp(const char *name, const char *content) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir_, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(content, f);
        fclose(f);
    }
    return path;
}

static void expect_load_error(const char *name, const char *content, int code, const char *needle) {
    const char *p = write_tmp(name, content);
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    int rc = bpe_load_json(p, &t, &err);
    CHECK_MSG(rc < 0, "%s loaded", name);
    if (code) CHECK_MSG(rc == code, "%s: rc %d, want %d (%s)", name, rc, code, err.msg);
    CHECK(t == NULL);
    CHECK_MSG(strstr(err.msg, p) != NULL, "message does not name the file: %s", err.msg);
    CHECK_MSG(!needle || strstr(err.msg, needle), "message \"%s\" lacks \"%s\"", err.msg, needle);
    bpe_free(t);
    unlink(p);
}

#define WPM(rest) "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"a\": 1, \"##b\": 2}" rest

/* Malformed and unsupported WordPiece files fail at load with the file and
 * the component named; a vocabulary without its unk token fails at encode. */
static void test_bad_files(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "/tmp/peft_wptest_XXXXXX");
    if (!mkdtemp(tmpdir_)) TEST_SKIP("cannot create a temporary directory");
    expect_load_error("novocab.json", "{\"model\": {\"type\": \"WordPiece\"}}", PEFT_ERR_FORMAT, "vocab");
    expect_load_error("emptyvocab.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", PEFT_ERR_FORMAT, "empty");
    expect_load_error("badid.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 99999999}}}", PEFT_ERR_FORMAT,
                      "vocab.a");
    expect_load_error("badnorm.json", WPM("}, \"normalizer\": {\"type\": \"Precompiled\"}}"), PEFT_ERR_UNSUPPORTED,
                      "Precompiled");
    expect_load_error("badpre.json", WPM("}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}"), PEFT_ERR_UNSUPPORTED,
                      "Metaspace");
    expect_load_error("badpost.json",
                      WPM("}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
                          "{\"id\": \"[CLS]\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
                          "\"special_tokens\": {}}}"),
                      PEFT_ERR_FORMAT, "[CLS]");
    expect_load_error("noA.json",
                      WPM("}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [], \"special_tokens\": {}}}"),
                      PEFT_ERR_FORMAT, "$A");
    expect_load_error("badbert.json", WPM("}, \"post_processor\": {\"type\": \"BertProcessing\", \"cls\": [\"x\", 7], "
                                          "\"sep\": [\"a\", 1]}}"),
                      PEFT_ERR_FORMAT, "cls");
    expect_load_error("baddec.json", WPM("}, \"decoder\": {\"type\": \"ByteLevel\"}}"), PEFT_ERR_UNSUPPORTED, "ByteLevel");
    expect_load_error("badmax.json",
                      "{\"model\": {\"type\": \"WordPiece\", \"max_input_chars_per_word\": -1, \"vocab\": {\"a\": 0}}}",
                      PEFT_ERR_FORMAT, "max_input_chars_per_word");

    /* minimal file: no normalizer, pre-tokenizer or decoder */
    const char *p = write_tmp("min.json", WPM("}}"));
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json(p, &t, &err));
    if (t) {
        int32_t *ids = NULL;
        int n = 0;
        CHECK_OK(bpe_encode(t, "abb", 3, true, true, &ids, &n, &err));
        CHECK(n == 3 && ids[0] == 1 && ids[1] == 2 && ids[2] == 2);
        free(ids);
        CHECK_OK(bpe_encode(t, "ba", 2, true, true, &ids, &n, &err));
        CHECK(n == 1 && ids[0] == 0);
        char *dec = NULL;
        int32_t d[3] = {1, 2, 1};
        CHECK_OK(bpe_decode(t, d, 3, &dec, &err));
        CHECK_MSG(dec && !strcmp(dec, "a ##b a"), "no decoder: HF joins with spaces: \"%s\"", dec ? dec : "");
        free(dec);
        free(ids);
        CHECK_EQ_INT(bpe_cls_id(t), -1);
        bpe_free(t);
    }
    unlink(p);
    p = write_tmp("nounk.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}");
    t = NULL;
    CHECK_OK(bpe_load_json(p, &t, &err));
    if (t) {
        int32_t *ids = NULL;
        int n = 0;
        CHECK(bpe_encode(t, "b", 1, true, true, &ids, &n, &err) == PEFT_ERR_INVALID);
        CHECK_MSG(strstr(err.msg, "unk") != NULL, "%s", err.msg);
        CHECK(ids == NULL);
        bpe_free(t);
    }
    unlink(p);
    rmdir(tmpdir_);
}

/* bpe_encode_input against tokenizer(a, b, truncation=True, max_length=m)
 * (tools/make_input_fixtures.py): templates, type ids, longest-first
 * truncation that keeps the special tokens, for WordPiece, RoBERTa's BPE
 * and a Llama tokenizer's single texts. */
static void test_inputs_match_hf(void) {
    cJSON *exp = read_json("tests/fixtures/tokenizer/inputs.json");
    CHECK_MSG(exp != NULL, "tests/fixtures/tokenizer/inputs.json missing");
    if (!exp) return;
    const cJSON *model;
    cJSON_ArrayForEach(model, exp) {
        char path[256];
        snprintf(path, sizeof path, "tests/fixtures/models/%s/tokenizer.json", model->string);
        bpe_tokenizer *t = NULL;
        peft_err err = {0};
        CHECK_MSG(bpe_load_json(path, &t, &err) == 0, "%s: %s", path, err.msg);
        if (!t) continue;
        int i = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, model) {
            const char *a = cJSON_GetObjectItemCaseSensitive(c, "a")->valuestring;
            const cJSON *bj = cJSON_GetObjectItemCaseSensitive(c, "b");
            const char *b = cJSON_IsString(bj) ? bj->valuestring : NULL;
            const int m = (int)cJSON_GetObjectItemCaseSensitive(c, "max_length")->valuedouble;
            int32_t *ids = NULL, *ty = NULL;
            int n = 0;
            bool cut = false;
            CHECK_OK(bpe_encode_input(t, a, strlen(a), b, b ? strlen(b) : 0, m, &ids, &ty, &n, &cut, &err));
            check_ids(model->string, "input ids", i, cJSON_GetObjectItemCaseSensitive(c, "ids"), ids, n);
            check_ids(model->string, "input type ids", i, cJSON_GetObjectItemCaseSensitive(c, "type_ids"), ty, n);
            free(ids);
            free(ty);
            i++;
        }
        /* the template alone longer than the limit is refused, not cut */
        int32_t *ids = NULL;
        int n = 0;
        const int rc = bpe_encode_input(t, "x", 1, bpe_get_kind(t) == BPE_WORDPIECE ? "y" : NULL, 1, 1, &ids, NULL, &n,
                                        NULL, &err);
        if (bpe_cls_id(t) >= 0) {
            CHECK_EQ_INT(rc, PEFT_ERR_INVALID);
            CHECK_MSG(strstr(err.msg, "special tokens") != NULL, "message: %s", err.msg);
        }
        free(ids);
        bpe_free(t);
    }
    cJSON_Delete(exp);
}

int main(void) {
    TEST_RUN(test_inputs_match_hf);
    TEST_RUN(test_corpus_matches_hf);
    TEST_RUN(test_real_text_matches_hf);
    TEST_RUN(test_every_codepoint_matches_hf);
    TEST_RUN(test_api);
    TEST_RUN(test_bad_files);
    TEST_MAIN_END();
}
