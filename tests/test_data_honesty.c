/* test_data_honesty.c — what loading a JSONL file tells about it: why rows
 * were dropped (malformed, empty, no target token, every target cut by
 * seq_len), the loss tokens the cut removed, the whole-length distribution
 * (min / median / p95 / max, so the seq that keeps 95 % / 100 % whole);
 * the Alpaca and ShareGPT row styles read as prompt/completion and
 * messages; and the errors for a JSON array file, an object spread over
 * lines and a row of unknown fields. Tiny-llama's tokenizer (ChatML). */
#include "train/data.h"
#include "test.h"

#include <unistd.h>

#define TOK "tests/fixtures/models/tiny-llama/tokenizer.json"
#define FIX "tests/fixtures/data/"

static char tmpdir[256];
static bpe_tokenizer *tok;

static const char *write_str(const char *name, const char *text) {
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return p;
}

static int n_tokens(const char *s) {
    int32_t *x = NULL;
    int k = 0;
    peft_err err = {0};
    CHECK_OK(bpe_encode(tok, s, strlen(s), false, true, &x, &k, &err));
    free(x);
    return k;
}

static data_params params(int seq_len) {
    data_params p = data_default_params();
    p.seq_len = seq_len;
    return p;
}

/* Each reason for a dropped row counted apart, and the cut loss tokens. */
static void drop_reasons_are_counted(void) {
    const int bos = bpe_adds_bos(tok) ? 1 : 0;
    const char *long_prompt = "one two three four five six seven eight nine ten eleven twelve";
    char text[2048];
    snprintf(text, sizeof text,
             "{\"prompt\": \"%s\", \"completion\": \" yes\"}\n"       /* every target past seq: cut_no_target */
             "{\"prompt\": \"a\", \"completion\": \" b c d e f g h i j k l m n o p\"}\n" /* kept, cut */
             "{\"prompt\": \"a\", \"completion\": \" b\"}\n"          /* kept whole */
             "not json\n",                                            /* bad (skip_bad) */
             long_prompt);
    const char *path = write_str("reasons.jsonl", text);
    data_set d;
    peft_err err = {0};
    data_params p = params(8);
    p.skip_bad = true;
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.n_lines, 4);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.n_bad, 1);
    CHECK_EQ_INT(d.n_cut_no_target, 1);
    CHECK_EQ_INT(d.n_no_target, 0);
    CHECK_EQ_INT(d.n_empty, 0);
    CHECK_EQ_INT(d.n_skipped, d.n_bad + d.n_cut_no_target + d.n_no_target + d.n_empty);
    /* row 1 loses " yes" + EOS; row 2 keeps seq - bos - len("a") targets
     * of its completion + EOS */
    const int c2 = n_tokens(" b c d e f g h i j k l m n o p") + 1;
    const int kept2 = 8 - bos - n_tokens("a");
    const int64_t want_cut = (n_tokens(" yes") + 1) + (c2 - kept2);
    CHECK_MSG(d.n_loss_cut == want_cut, "cut %lld, want %lld", (long long)d.n_loss_cut, (long long)want_cut);
    /* whole lengths: the longest is row 1 or 2; the smallest row 3 */
    const int l1 = bos + n_tokens(long_prompt) + n_tokens(" yes") + 1;
    const int l2 = bos + n_tokens("a") + c2;
    const int l3 = bos + n_tokens("a") + n_tokens(" b") + 1;
    CHECK_EQ_INT(d.len_min, l3);
    CHECK_EQ_INT(d.len_max, PEFT_MAX(l1, l2));
    CHECK_EQ_INT(d.len_median, PEFT_MIN(l1, l2));   /* nearest rank of three: the second */
    CHECK_EQ_INT(d.len_p95, PEFT_MAX(l1, l2));
    data_free(&d);

    /* no target even whole, and an empty row (no BOS, no EOS: no token) */
    path = write_str("reasons2.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n"
                                       "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                                       "{\"role\": \"assistant\", \"content\": \"Yo\"}]}\n");
    p = params(0);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.n_no_target, 1);
    CHECK_EQ_INT(d.n_cut_no_target, 0);
    CHECK_EQ_INT(d.n_loss_cut, 0);
    data_free(&d);
    p.add_eos = false;
    path = write_str("reasons3.jsonl", "{\"text\": \"\"}\n{\"text\": \"some words here\"}\n");
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.n, 1);
    CHECK_EQ_INT(d.n_empty, 1);
    data_free(&d);
}

/* Nearest-rank statistics over 20 rows of 1..20 words (same-length words
 * give distinct token counts). */
static void length_distribution(void) {
    char text[8192];
    size_t o = 0;
    int len[20];
    for (int i = 0; i < 20; i++) {
        char words[512];
        size_t w = 0;
        words[0] = 0;
        for (int k = 0; k <= i; k++) w += (size_t)snprintf(words + w, sizeof words - w, "%sword", k ? " " : "");
        len[i] = (bpe_adds_bos(tok) ? 1 : 0) + n_tokens(words) + 1;
        o += (size_t)snprintf(text + o, sizeof text - o, "{\"text\": \"%s\"}\n", words);
    }
    const char *path = write_str("lens.jsonl", text);
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    /* sorted already (more words, more tokens): rank 10 and 19 of 20 */
    for (int i = 1; i < 20; i++) CHECK(len[i] > len[i - 1]);
    CHECK_EQ_INT(d.len_min, len[0]);
    CHECK_EQ_INT(d.len_median, len[9]);
    CHECK_EQ_INT(d.len_p95, len[18]);
    CHECK_EQ_INT(d.len_max, len[19]);
    CHECK_EQ_INT(d.n_truncated, 0);
    data_free(&d);
    /* the same with a cut: the lengths stay the whole ones */
    p = params(len[9]);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.len_max, len[19]);
    CHECK_EQ_INT(d.n_truncated, 10);
    CHECK(d.n_loss_cut > 0);
    data_free(&d);
}

/* Nothing usable: the error says why, with the numbers. */
static void no_usable_examples_says_why(void) {
    const char *path = write_str("short.jsonl", "{\"prompt\": \"one two three four five six\", \"completion\": \" x\"}\n"
                                                "{\"prompt\": \"one two three four five six\", \"completion\": \" y\"}\n");
    data_set d;
    peft_err err = {0};
    data_params p = params(3);
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "no usable examples") && strstr(err.msg, "2 had no target token left after truncation to 3"),
              "%s", err.msg);
    CHECK_MSG(strstr(err.msg, "keeps 95 % of them whole"), "%s", err.msg);
}

/* Alpaca rows: prompt/completion with the Stanford Alpaca template. */
static void alpaca_rows(void) {
    char *with = data_alpaca_prompt("Translate to German.", "Good morning");
    char *without = data_alpaca_prompt("Name the capital of France.", "");
    CHECK(with && without);
    if (!with || !without) return;
    CHECK_MSG(!strcmp(with, "Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                       "Translate to German.\n\n### Input:\nGood morning\n\n### Response:\n"), "%s", with);
    CHECK_MSG(!strcmp(without, "Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\nName the capital of France.\n\n### Response:\n"), "%s", without);
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(FIX "alpaca.jsonl", tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.kind, DATA_PROMPT_COMPLETION);
    CHECK_EQ_INT(d.style, DATA_STYLE_ALPACA);
    CHECK_EQ_INT(d.n, 3);
    if (d.n >= 2) {
        /* row 2 as the prompt/completion row it stands for */
        int32_t *ids = NULL;
        int n = 0, np;
        CHECK_OK(bpe_encode(tok, with, strlen(with), true, true, &ids, &n, &err));
        np = n;
        CHECK(d.ex[1].n == np + n_tokens("Guten Morgen") + 1);
        CHECK(d.ex[1].n > np && !memcmp(d.ex[1].ids, ids, (size_t)np * sizeof *ids));
        for (int i = 0; i < d.ex[1].n; i++) CHECK_EQ_INT(d.ex[1].loss[i], i >= np);
        CHECK_EQ_INT(d.ex[1].ids[d.ex[1].n - 1], bpe_eos_id(tok));
        free(ids);
    }
    data_free(&d);
    free(with);
    free(without);
    /* a row without "output" names it */
    const char *path = write_str("alp_bad.jsonl", "{\"instruction\": \"x\", \"input\": \"\"}\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "alp_bad.jsonl:1:") && strstr(err.msg, "missing field \"output\""), "%s", err.msg);
}

/* ShareGPT rows: the same examples as the messages rows they map to. */
static void sharegpt_rows(void) {
    data_set a, b;
    peft_err err = {0};
    data_params p = params(0);
    CHECK_OK(data_load_jsonl(FIX "sharegpt.jsonl", tok, &p, &a, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_OK(data_load_jsonl(FIX "sharegpt_as_messages.jsonl", tok, &p, &b, &err));
    CHECK_EQ_INT(a.kind, DATA_MESSAGES);
    CHECK_EQ_INT(a.style, DATA_STYLE_SHAREGPT);
    CHECK_EQ_INT(b.style, DATA_STYLE_NATIVE);
    CHECK_EQ_INT(a.n, 2);
    CHECK_EQ_INT(a.n, b.n);
    for (int i = 0; i < a.n && i < b.n; i++) {
        CHECK_EQ_INT(a.ex[i].n, b.ex[i].n);
        CHECK(a.ex[i].n == b.ex[i].n && !memcmp(a.ex[i].ids, b.ex[i].ids, (size_t)a.ex[i].n * 4) &&
              !memcmp(a.ex[i].loss, b.ex[i].loss, (size_t)a.ex[i].n));
    }
    CHECK(a.n_loss_tokens > 0 && a.n_loss_tokens == b.n_loss_tokens);
    data_free(&a);
    data_free(&b);
    const char *path = write_str("sg_bad.jsonl", "{\"conversations\": [{\"from\": \"bot\", \"value\": \"x\"}]}\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &a, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "conversations[0]") && strstr(err.msg, "not human, gpt or system"), "%s", err.msg);
    path = write_str("sg_bad2.jsonl", "{\"conversations\": [{\"from\": \"human\", \"text\": \"x\"}]}\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &a, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "\"value\" must be a string"), "%s", err.msg);
}

/* The near misses of JSONL get a message that says what to do. */
static void near_miss_errors(void) {
    data_set d;
    peft_err err = {0};
    data_params p = params(0);
    p.skip_bad = true;   /* an array file is refused even so */
    const char *path = write_str("array.json", "[{\"text\": \"a\"}, {\"text\": \"b\"}]\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "is a JSON array") && strstr(err.msg, "JSONL") && strstr(err.msg, "jq -c '.[]'"), "%s",
              err.msg);
    path = write_str("array2.json", "[\n  {\"text\": \"a\"}\n]\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "is a JSON array"), "%s", err.msg);
    p.skip_bad = false;
    path = write_str("pretty.json", "{\n  \"text\": \"a\"\n}\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "pretty.json:1:") && strstr(err.msg, "several lines") && strstr(err.msg, "jq -c ."), "%s",
              err.msg);
    path = write_str("bom.jsonl", "\xEF\xBB\xBF{\"text\": \"a b\"}\n");
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    CHECK_EQ_INT(d.n, 1);
    if (d.n == 1) data_free(&d);
    path = write_str("unknown.jsonl", "{\"question\": \"a\", \"answer\": \"b\"}\n");
    CHECK_EQ_INT(data_load_jsonl(path, tok, &p, &d, &err), PEFT_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "found \"question\", \"answer\"") && strstr(err.msg, "Alpaca") &&
                  strstr(err.msg, "ShareGPT") && strstr(err.msg, "{prompt, completion}"),
              "%s", err.msg);
}

/* ../shared/data's Alpaca rows load as they are. */
static void shared_alpaca(void) {
    const char *path = "../shared/data/alpaca/alpaca_5000.jsonl";
    if (!peft_file_exists(path)) TEST_SKIP("../shared/data/alpaca not present (see ../shared/data/README.md)");
    data_set d;
    peft_err err = {0};
    data_params p = params(512);
    CHECK_OK(data_load_jsonl(path, tok, &p, &d, &err));
    if (err.code) fprintf(stderr, "  %s\n", err.msg);
    CHECK_EQ_INT(d.style, DATA_STYLE_ALPACA);
    CHECK_EQ_INT(d.n_lines, 5000);
    CHECK_EQ_INT(d.n + d.n_skipped, 5000);
    CHECK(d.len_min > 30 && d.len_min <= d.len_median && d.len_median <= d.len_p95 && d.len_p95 <= d.len_max);
    printf("    alpaca_5000: %d examples, lengths %d / %d / %d / %d\n", d.n, d.len_min, d.len_median, d.len_p95,
           d.len_max);
    data_free(&d);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/peft_honesty_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    peft_err err = {0};
    if (bpe_load_json(TOK, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    TEST_RUN(drop_reasons_are_counted);
    TEST_RUN(length_distribution);
    TEST_RUN(no_usable_examples_says_why);
    TEST_RUN(alpaca_rows);
    TEST_RUN(sharegpt_rows);
    TEST_RUN(near_miss_errors);
    TEST_RUN(shared_alpaca);
    bpe_free(tok);
    if (test_rm_rf(tmpdir) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_MAIN_END();
}
