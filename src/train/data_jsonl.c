/* data_jsonl.c — JSONL datasets read line by line and tokenized into
 * examples with loss masks the way Hugging Face TRL's SFTTrainer builds
 * them, plus the seeded train/validation split. The batch loader lives in
 * data_loader.c. */
#include "train/data.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

data_params data_default_params(void) {
    data_params p = {.seq_len = 1024, .skip_bad = false, .add_eos = true};
    return p;
}

int data_cols(const data_set *d) { return d->kind == DATA_PAIRS ? PEFT_MAX(1, d->n_cols) : 1; }

bool data_has_types(const data_set *d) {
    for (int i = 0; i < d->n; i++)
        if (d->ex[i].types) return true;
    return false;
}

const int32_t *data_example_text(const data_example *e, int col, int *len) {
    if (e->n_cols <= 1) {
        *len = e->n;
        return e->ids;
    }
    int off = 0;
    for (int c = 0; c < col; c++) off += e->col_len[c];
    *len = e->col_len[col];
    return e->ids + off;
}

void data_free(data_set *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) {
        free(d->ex[i].ids);
        free(d->ex[i].loss);
        free(d->ex[i].types);
    }
    free(d->ex);
    memset(d, 0, sizeof *d);
}

static const char *kind_name(data_kind k) {
    switch (k) {
    case DATA_TEXT: return "text";
    case DATA_PROMPT_COMPLETION: return "prompt/completion";
    case DATA_MESSAGES: return "messages";
    case DATA_CLASSIFICATION: return "text/label";
    case DATA_PAIRS: return "anchor/positive";
    }
    return "?";
}

/* The Stanford Alpaca template (tatsu-lab/stanford_alpaca's PROMPT_DICT),
 * which axolotl's "alpaca" type and most Alpaca-style fine-tunes use; it
 * needs no chat template, so base models train on it as they are. */
char *data_alpaca_prompt(const char *instruction, const char *input) {
    static const char *const head_in = "Below is an instruction that describes a task, paired with an input that "
                                       "provides further context. Write a response that appropriately completes the "
                                       "request.\n\n### Instruction:\n";
    static const char *const head = "Below is an instruction that describes a task. Write a response that "
                                    "appropriately completes the request.\n\n### Instruction:\n";
    const bool has_in = input && input[0];
    const size_t n = strlen(has_in ? head_in : head) + strlen(instruction) + (has_in ? strlen(input) : 0) + 64;
    char *s = malloc(n);
    if (!s) return NULL;
    if (has_in) snprintf(s, n, "%s%s\n\n### Input:\n%s\n\n### Response:\n", head_in, instruction, input);
    else snprintf(s, n, "%s%s\n\n### Response:\n", head, instruction);
    return s;
}

/* One example under construction: ids and loss grow together. */
typedef struct {
    int32_t *ids;
    uint8_t *loss;
    int n, cap;
    /* pair classification: token types (cap entries); contrastive: texts */
    uint8_t *types;
    bool has_types, truncated;
    int n_cols, col_len[DATA_MAX_COLS];
    int whole;   /* a classification input's untruncated length (a pair's longest text) */
} ex_buf;

static int ex_push(ex_buf *e, const int32_t *ids, int n, uint8_t loss) {
    if (n <= 0) return 0;   /* an empty text: ids may be NULL, and so may e->ids */
    if (n > INT_MAX / 2 - e->n) return PEFT_ERR_NOMEM;
    if (e->n + n > e->cap) {
        int cap = e->cap ? e->cap : 64;
        while (cap < e->n + n) cap *= 2;
        int32_t *ni = realloc(e->ids, (size_t)cap * sizeof *ni);
        if (!ni) return PEFT_ERR_NOMEM;
        e->ids = ni;
        uint8_t *nl = realloc(e->loss, (size_t)cap);
        if (!nl) return PEFT_ERR_NOMEM;
        e->loss = nl;
        uint8_t *nt = realloc(e->types, (size_t)cap);
        if (!nt) return PEFT_ERR_NOMEM;
        e->types = nt;
        e->cap = cap;
    }
    memcpy(e->ids + e->n, ids, (size_t)n * sizeof *ids);
    memset(e->loss + e->n, loss, (size_t)n);
    memset(e->types + e->n, 0, (size_t)n);
    e->n += n;
    return 0;
}

static void ex_reset(ex_buf *e) {
    e->n = 0;
    e->has_types = e->truncated = false;
    e->n_cols = 1;
    e->whole = 0;
}

/* Encodes s[0..len) and appends it with the given loss flag. */
static int push_text(ex_buf *e, const bpe_tokenizer *tok, const char *s, size_t len, bool add_special,
                     uint8_t loss, peft_err *err) {
    int32_t *ids = NULL;
    int n = 0;
    int rc = bpe_encode(tok, s, len, add_special, true, &ids, &n, err);
    if (!rc && ex_push(e, ids, n, loss)) rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
    free(ids);
    return rc;
}

/* Appends EOS unless the sequence already ends with it (as TRL does). */
static int push_eos(ex_buf *e, const bpe_tokenizer *tok, uint8_t loss, peft_err *err) {
    int32_t eos = bpe_eos_id(tok);
    if (eos < 0 || (e->n > 0 && e->ids[e->n - 1] == eos)) return 0;
    if (ex_push(e, &eos, 1, loss)) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
    return 0;
}

/* A model input (a text, or a pair when b): the tokenizer's template with
 * type ids, truncated to max_len as HF's tokenizer(truncation=True) does. */
static int push_input(ex_buf *e, const bpe_tokenizer *tok, const char *a, const char *b, int max_len, peft_err *err) {
    int32_t *ids = NULL, *ty = NULL;
    int n = 0;
    bool cut = false;
    int rc = bpe_encode_input(tok, a, strlen(a), b, b ? strlen(b) : 0, max_len, &ids, b ? &ty : NULL, &n, &cut, err);
    const int at = e->n;
    if (!rc && ex_push(e, ids, n, 0)) rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && ty && i < n; i++) {
        e->types[at + i] = (uint8_t)(ty[i] != 0);
        e->has_types |= ty[i] != 0;
    }
    e->truncated |= cut;
    free(ids);
    free(ty);
    /* the untruncated length, for the length statistics */
    int whole = n;
    if (!rc && cut) {
        int32_t *w = NULL;
        if (!(rc = bpe_encode_input(tok, a, strlen(a), b, b ? strlen(b) : 0, 0, &w, NULL, &whole, NULL, err))) free(w);
    }
    if (whole > e->whole) e->whole = whole;
    return rc;
}

/* A string field of a row. Writes the "missing"/"must be a string" message. */
static int get_string(const cJSON *row, const char *key, const char **out, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, key);
    if (!v) return peft_fail(err, PEFT_ERR_FORMAT, "missing field \"%s\"", key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return peft_fail(err, PEFT_ERR_FORMAT, "\"%s\" must be a string", key);
    *out = v->valuestring;
    return 0;
}

#define ACCEPTED_ROWS                                                                                                 \
    "{text} | {prompt, completion} | {messages} | {text, label} | {text, text_pair, label} | "                        \
    "{anchor, positive[, negative]} | Alpaca {instruction[, input], output} | ShareGPT {conversations: [{from, value}]}"

/* The kind (and style) a row claims by its fields; the fields themselves
 * are checked when the row is tokenized. */
static int row_kind(const cJSON *row, data_kind *k, int *style, peft_err *err) {
#define HAS(key) (cJSON_GetObjectItemCaseSensitive(row, key) != NULL)
    *style = DATA_STYLE_NATIVE;
    if (HAS("messages")) *k = DATA_MESSAGES;
    else if (HAS("conversations")) *k = DATA_MESSAGES, *style = DATA_STYLE_SHAREGPT;
    else if (HAS("prompt") || HAS("completion")) *k = DATA_PROMPT_COMPLETION;
    /* before "text": some Alpaca copies also hold the formatted text */
    else if (HAS("instruction") || HAS("output")) *k = DATA_PROMPT_COMPLETION, *style = DATA_STYLE_ALPACA;
    else if (HAS("label")) *k = DATA_CLASSIFICATION;
    else if (HAS("anchor") || HAS("positive")) *k = DATA_PAIRS;
    else if (HAS("text")) *k = DATA_TEXT;
    else {
        char found[200];
        size_t o = 0;
        int nf = 0;
        found[0] = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, row) {
            if (nf++ == 8) { o += (size_t)snprintf(found + o, sizeof found - o, ", ..."); break; }
            if (o < sizeof found)
                o += (size_t)snprintf(found + o, sizeof found - o, "%s\"%.30s\"", o ? ", " : "", it->string);
            if (o >= sizeof found) break;
        }
        return peft_fail(err, PEFT_ERR_FORMAT, "no known fields (found %s); rows can be " ACCEPTED_ROWS,
                         nf ? found : "none");
    }
    return 0;
#undef HAS
}

static bool is_stop(const bpe_tokenizer *tok, const int32_t *stops, int n_stops, int32_t id) {
    if (id == bpe_eos_id(tok)) return true;
    for (int i = 0; i < n_stops; i++)
        if (stops[i] == id) return true;
    return false;
}

/* Messages: the whole conversation through the chat template, loss on each
 * assistant message's content and its end-of-turn token. The assistant
 * spans come from formatting prefixes of the conversation (with and without
 * the generation prompt) so that we never parse the template's output; each
 * span between two prefixes is tokenized on its own, which is only sound if
 * the pieces tokenize as the whole does (true for ChatML and Llama 3, whose
 * special tokens split the text) — checked, not assumed. */
static int tok_messages(const cJSON *row, bool sharegpt, const bpe_tokenizer *tok, ex_buf *e, peft_err *err) {
    /* ShareGPT names the list, the role and the text otherwise, and its
     * roles human/gpt */
    const char *key = sharegpt ? "conversations" : "messages";
    const char *rkey = sharegpt ? "from" : "role", *ckey = sharegpt ? "value" : "content";
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(row, key);
    if (!cJSON_IsArray(arr)) return peft_fail(err, PEFT_ERR_FORMAT, "\"%s\" must be an array", key);
    int n = cJSON_GetArraySize(arr);
    if (n == 0) return peft_fail(err, PEFT_ERR_FORMAT, "\"%s\" is empty", key);
    bpe_chat_msg *msgs = peft_calloc((size_t)n, sizeof *msgs, err);
    if (!msgs) return PEFT_ERR_NOMEM;
    int rc = 0, i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, arr) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, rkey);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, ckey);
        const char *r = cJSON_IsString(role) ? role->valuestring : NULL;
        if (r && sharegpt) {
            if (!strcmp(r, "human") || !strcmp(r, "user")) r = "user";
            else if (!strcmp(r, "gpt") || !strcmp(r, "assistant")) r = "assistant";
            else if (strcmp(r, "system")) {
                rc = peft_fail(err, PEFT_ERR_FORMAT, "conversations[%d]: \"from\" \"%.40s\" is not human, gpt or system",
                               i, r);
                break;
            }
        }
        if (!cJSON_IsObject(m)) rc = peft_fail(err, PEFT_ERR_FORMAT, "%s[%d] must be an object", key, i);
        else if (!r) rc = peft_fail(err, PEFT_ERR_FORMAT, "%s[%d]: \"%s\" must be a string", key, i, rkey);
        else if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s[%d]: role \"%.40s\" is not system, user or assistant", key, i, r);
        else if (!cJSON_IsString(content) || !content->valuestring)
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s[%d]: \"%s\" must be a string", key, i, ckey);
        if (rc) break;
        msgs[i].role = r;
        msgs[i].content = content->valuestring;
        i++;
    }
    char *full = NULL;
    int32_t *whole = NULL;
    int n_whole = 0;
    /* One formatting of the whole conversation with the end of every
     * message: formatting each prefix again would be quadratic in the
     * number of messages. */
    size_t *ends = rc ? NULL : peft_malloc(((size_t)n + 1) * sizeof *ends, err);
    if (!rc && !ends) rc = PEFT_ERR_NOMEM;
    if (!rc) rc = bpe_chat_format_ends(tok, msgs, n, &full, ends, err);
    if (!rc) rc = bpe_encode(tok, full, strlen(full), false, true, &whole, &n_whole, err);

    int32_t stops[16];
    int n_stops = bpe_stop_tokens(tok, stops, 16);
    const char *gen = bpe_chat_gen_prompt(tok);
    const size_t gen_len = strlen(gen);
    size_t full_len = full ? strlen(full) : 0, prev = 0;
    for (i = 0; i < n && !rc; i++) {
        bool asst = !strcmp(msgs[i].role, "assistant");
        size_t end = prev;
        if (asst) {
            /* Everything up to and including the assistant header is
             * context: the text before the message plus the generation
             * prompt, which must be how the message starts. */
            end = ends[i] + gen_len;
            if (ends[i] < prev || end > full_len || memcmp(full + ends[i], gen, gen_len) != 0) {
                rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                               "the chat template does not format a conversation's prefix as a prefix of it");
                break;
            }
            if (end > prev) rc = push_text(e, tok, full + prev, end - prev, false, 0, err);
            if (rc) break;
            prev = end;
        }
        end = ends[i + 1];
        if (end < prev || end > full_len) {
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                           "the chat template does not format a conversation's prefix as a prefix of it");
            break;
        }
        int start = e->n;
        if (end > prev) rc = push_text(e, tok, full + prev, end - prev, false, 0, err);
        if (rc) break;
        prev = end;
        if (asst) {
            /* The content and the end-of-turn token; whatever the template
             * writes after that token (ChatML's "\n") is not the model's. */
            int last = e->n - 1;
            while (last >= start && !is_stop(tok, stops, n_stops, e->ids[last])) last--;
            if (last < start) last = e->n - 1;
            memset(e->loss + start, 1, (size_t)(last + 1 - start));
        }
    }
    if (!rc && prev < full_len) rc = push_text(e, tok, full + prev, full_len - prev, false, 0, err);
    if (!rc && (e->n != n_whole || memcmp(e->ids, whole, (size_t)n_whole * sizeof *whole) != 0))
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                       "the chat template's turns do not tokenize the same apart as together, "
                       "so the assistant tokens cannot be found");
    free(whole);
    free(full);
    free(ends);
    free(msgs);
    return rc;
}

/* Tokenizes one parsed row of kind k into e (and *label). */
static int tok_row(const cJSON *row, data_kind k, int style, const bpe_tokenizer *tok, const data_params *p, ex_buf *e,
                   int *label, peft_err *err) {
    const char *a = NULL, *b = NULL;
    int rc = 0;
    *label = -1;
    switch (k) {
    case DATA_TEXT:
        /* Every token but the first is a target: nothing predicts token 0. */
        if ((rc = get_string(row, "text", &a, err))) return rc;
        if ((rc = push_text(e, tok, a, strlen(a), true, 1, err))) return rc;
        if (p->add_eos && (rc = push_eos(e, tok, 1, err))) return rc;
        if (e->n > 0) e->loss[0] = 0;
        return 0;
    case DATA_PROMPT_COMPLETION: {
        /* Tokenized apart and concatenated, as TRL does, so the boundary
         * is exact even where BPE would merge across it. */
        char *built = NULL;
        if (style == DATA_STYLE_ALPACA) {
            const char *in = NULL;
            if ((rc = get_string(row, "instruction", &a, err)) || (rc = get_string(row, "output", &b, err))) return rc;
            if (cJSON_GetObjectItemCaseSensitive(row, "input") && (rc = get_string(row, "input", &in, err))) return rc;
            if (!(built = data_alpaca_prompt(a, in))) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
            a = built;
        } else if ((rc = get_string(row, "prompt", &a, err)) || (rc = get_string(row, "completion", &b, err)))
            return rc;
        rc = push_text(e, tok, a, strlen(a), true, 0, err);
        free(built);
        if (rc) return rc;
        if ((rc = push_text(e, tok, b, strlen(b), false, 1, err))) return rc;
        if (p->add_eos && (rc = push_eos(e, tok, 1, err))) return rc;
        return 0;
    }
    case DATA_MESSAGES:
        return tok_messages(row, style == DATA_STYLE_SHAREGPT, tok, e, err);
    case DATA_CLASSIFICATION: {
        if ((rc = get_string(row, "text", &a, err))) return rc;
        /* Labels size the classification head (labels x hidden), so they
         * are capped before anything is allocated for them. */
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(row, "label");
        double v = cJSON_IsNumber(l) ? l->valuedouble : -1;
        if (!cJSON_IsNumber(l) || !(v >= 0) || v != floor(v) || v >= PEFT_MAX_LABELS)
            return peft_fail(err, PEFT_ERR_FORMAT, "\"label\" must be a non-negative integer below %d (the limit on "
                             "labels)", PEFT_MAX_LABELS);
        *label = (int)v;
        const cJSON *pair = cJSON_GetObjectItemCaseSensitive(row, "text_pair");
        if (pair && (rc = get_string(row, "text_pair", &b, err))) return rc;
        /* No EOS: the classifier reads the last real token. The template's
         * tokens ([CLS] … [SEP]) survive truncation, as in HF. */
        return push_input(e, tok, a, b, p->seq_len, err);
    }
    case DATA_PAIRS: {
        /* each text its own model input: [CLS] text [SEP] */
        static const char *const cols[DATA_MAX_COLS] = {"anchor", "positive", "negative"};
        e->n_cols = cJSON_GetObjectItemCaseSensitive(row, "negative") ? 3 : 2;
        for (int c = 0; c < e->n_cols; c++) {
            const int at = e->n;
            if ((rc = get_string(row, cols[c], &a, err)) || (rc = push_input(e, tok, a, NULL, p->seq_len, err)))
                return rc;
            if (e->n == at) return peft_fail(err, PEFT_ERR_FORMAT, "\"%s\" gives no tokens", cols[c]);
            e->col_len[c] = e->n - at;
        }
        return 0;
    }
    }
    return peft_fail(err, PEFT_ERR_INVALID, "unknown data kind");
}

static int add_example(data_set *d, int *cap, const ex_buf *e, int label, peft_err *err) {
    if (d->n == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        data_example *ne = realloc(d->ex, (size_t)nc * sizeof *ne);
        if (!ne) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
        d->ex = ne;
        *cap = nc;
    }
    data_example *x = &d->ex[d->n];
    x->ids = peft_malloc((size_t)e->n * sizeof *x->ids, err);
    x->loss = peft_malloc((size_t)e->n, err);
    if (!x->ids || !x->loss) {
        free(x->ids);
        free(x->loss);
        return PEFT_ERR_NOMEM;
    }
    memcpy(x->ids, e->ids, (size_t)e->n * sizeof *x->ids);
    memcpy(x->loss, e->loss, (size_t)e->n);
    x->types = NULL;
    if (e->has_types) {
        if (!(x->types = peft_malloc((size_t)e->n, err))) {
            free(x->ids);
            free(x->loss);
            return PEFT_ERR_NOMEM;
        }
        memcpy(x->types, e->types, (size_t)e->n);
    }
    x->n = e->n;
    x->label = label;
    x->n_cols = e->n_cols;
    memcpy(x->col_len, e->col_len, sizeof x->col_len);
    d->n++;
    return 0;
}

/* A \u0000 escape: cJSON decodes it into a NUL that silently ends the C
 * string. Backslash pairs are skipped so "\\u0000" (an escaped backslash
 * and the text u0000) is not one. */
static bool has_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && i + 5 < n && s[i + 2] == '0' && s[i + 3] == '0' && s[i + 4] == '0' && s[i + 5] == '0')
            return true;
        i++;
    }
    return false;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

static int cmp_int(const void *a, const void *b) {
    const int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* min / nearest-rank median and p95 / max of lens (sorted in place). */
static void length_stats(data_set *d, int *lens, int n) {
    if (n <= 0) return;
    qsort(lens, (size_t)n, sizeof *lens, cmp_int);
    d->len_min = lens[0];
    d->len_max = lens[n - 1];
    d->len_median = lens[(n + 1) / 2 - 1];
    /* the smallest length that at least 95 % of the rows do not exceed */
    const int64_t k = ((int64_t)n * 95 + 99) / 100;
    d->len_p95 = lens[k - 1];
}

/* "seq_len 16 leaves no target token in 200 rows; ..." for the error of a
 * file that gives no example: what went wrong, in numbers. */
static void no_examples_reason(const data_set *d, const data_params *dp, char *buf, size_t cap) {
    size_t o = 0;
    buf[0] = 0;
#define ADD(...) (o < cap ? (void)(o += (size_t)snprintf(buf + o, cap - o, __VA_ARGS__)) : (void)0)
    if (d->n_lines == 0) { ADD("the file has no rows"); return; }
    ADD("%d lines", d->n_lines);
    if (d->n_cut_no_target)
        ADD("; %d had no target token left after truncation to %d tokens (seq)", d->n_cut_no_target, dp->seq_len);
    if (d->n_no_target) ADD("; %d have no target token (an empty completion, no assistant turn)", d->n_no_target);
    if (d->n_empty) ADD("; %d are empty", d->n_empty);
    if (d->n_bad) ADD("; %d malformed, skipped", d->n_bad);
    if (d->len_max > 0)
        ADD("; whole rows are %d to %d tokens long (median %d): a seq of %d keeps 95 %% of them whole, %d all",
            d->len_min, d->len_max, d->len_median, d->len_p95, d->len_max);
#undef ADD
}

int data_load_jsonl(const char *path, const bpe_tokenizer *tok, const data_params *p, data_set *out,
                    peft_err *err) {
    memset(out, 0, sizeof *out);
    data_params dp = p ? *p : data_default_params();
    FILE *f = fopen(path, "rb");
    if (!f) return peft_fail(err, PEFT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));

    data_set d = {0};
    int cap = 0, rc = 0;
    bool have_kind = false;
    long first_line = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ex_buf e = {0};
    peft_err rerr = {0};
    int *lens = NULL, n_lens = 0, lens_cap = 0;
    for (long lineno = 1;; lineno++) {
        errno = 0;
        ssize_t got = getline(&line, &line_cap, f);
        if (got < 0) {
            if (ferror(f)) rc = peft_fail(err, PEFT_ERR_IO, "%s:%ld: read error: %s", path, lineno, strerror(errno));
            break;
        }
        size_t len = (size_t)got;
        if (len > PEFT_MAX_LINE_BYTES) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s:%ld: a line of %zu bytes, more than the %zu MiB limit", path, lineno,
                           len, PEFT_MAX_LINE_BYTES >> 20);
            break;
        }
        /* \n and \r\n endings alike; the last line may have neither. */
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        /* a UTF-8 byte-order mark (Windows editors write one) is not part of the first row */
        if (lineno == 1 && len >= 3 && !memcmp(line, "\xEF\xBB\xBF", 3)) {
            memmove(line, line + 3, len - 2);
            len -= 3;
        }
        if (blank(line, len)) continue;
        d.n_lines++;
        const char *lead = line + strspn(line, " \t");
        /* A JSON file holding one array of rows, the commonest near miss:
         * no line of it is a row, so no amount of skipping helps. */
        if (d.n_lines == 1 && *lead == '[') {
            rc = peft_fail(err, PEFT_ERR_FORMAT,
                           "%s:%ld: the file is a JSON array, but JSONL is expected: one JSON object per line "
                           "(convert it with: jq -c '.[]' %s > rows.jsonl)", path, lineno, path);
            break;
        }

        int row_rc = 0, label = -1, style = DATA_STYLE_NATIVE;
        data_kind k = DATA_TEXT;
        cJSON *row = NULL;
        ex_reset(&e);
        peft_err_clear(&rerr);
        if (strlen(line) != len) row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT, "contains a NUL byte");
        else if (has_nul_escape(line, len))
            row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT,
                               "a string holds \\u0000 (a NUL character), which would cut the text short");
        else if (!(row = cJSON_ParseWithOpts(line, NULL, 1))) {
            if (*lead == '{' && !strchr(lead, '}'))
                row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT,
                                   "not valid JSON: an object spread over several lines? JSONL wants each object on "
                                   "one line (jq -c . in.json > rows.jsonl joins them)");
            else row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT, "not valid JSON");
        } else if (!cJSON_IsObject(row))
            row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT, "not a JSON object%s (JSONL: one object per line)",
                               cJSON_IsArray(row) ? " but an array" : "");
        else row_rc = row_kind(row, &k, &style, &rerr);
        if (!row_rc && have_kind && k != d.kind)
            row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT, "a %s row, but the file's rows are %s rows (line %ld)",
                               kind_name(k), kind_name(d.kind), first_line);
        if (!row_rc) row_rc = tok_row(row, k, style, tok, &dp, &e, &label, &rerr);
        if (!row_rc && have_kind && e.n_cols != d.n_cols)
            row_rc = peft_fail(&rerr, PEFT_ERR_FORMAT, "a row %s \"negative\", but the first row (line %ld) %s",
                               e.n_cols > d.n_cols ? "with" : "without", first_line,
                               d.n_cols > e.n_cols ? "has one" : "has none");
        cJSON_Delete(row);
        /* The tokenizer calls text it cannot take (bad UTF-8) an invalid
         * argument; here it is a malformed line of the file. */
        if (row_rc == PEFT_ERR_INVALID) row_rc = PEFT_ERR_FORMAT;
        if (row_rc == PEFT_ERR_NOMEM) {
            rc = peft_fail(err, row_rc, "%s:%ld: %s", path, lineno, rerr.msg);
            break;
        }
        if (row_rc) {
            if (dp.skip_bad) {
                d.n_skipped++;
                d.n_bad++;
                continue;
            }
            rc = peft_fail(err, row_rc, "%s:%ld: %s", path, lineno, rerr.msg);
            break;
        }
        if (!have_kind) {
            have_kind = true;
            d.kind = k;
            d.n_cols = e.n_cols;
            d.style = style;
            first_line = lineno;
        }
        if (n_lens == lens_cap) {
            const int nc = lens_cap ? lens_cap * 2 : 256;
            int *nl = realloc(lens, (size_t)nc * sizeof *nl);
            if (!nl) { rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory"); break; }
            lens = nl;
            lens_cap = nc;
        }
        /* classification and pairs truncate themselves and know their whole length */
        lens[n_lens++] = k == DATA_CLASSIFICATION || k == DATA_PAIRS ? PEFT_MAX(e.whole, e.n) : e.n;
        bool had_loss = false;
        for (int i = 1; i < e.n && !had_loss; i++) had_loss = e.loss[i];
        if (e.truncated) d.n_truncated++;
        else if (dp.seq_len > 0 && e.n > dp.seq_len && k != DATA_PAIRS) {
            for (int i = PEFT_MAX(dp.seq_len, 1); i < e.n; i++) d.n_loss_cut += e.loss[i];
            e.n = dp.seq_len; /* keeps the start: the prompt, the first turns */
            d.n_truncated++;
        }
        bool any_loss = false;
        for (int i = 1; i < e.n && !any_loss; i++) any_loss = e.loss[i];
        /* A row that trains nothing (a prompt cut before its completion, a
         * conversation without an assistant turn) is dropped, not kept as
         * dead weight; classification rows train through their label. */
        if (e.n == 0 || (k != DATA_CLASSIFICATION && k != DATA_PAIRS && !any_loss)) {
            d.n_skipped++;
            d.n_no_loss++;
            if (lens[n_lens - 1] <= 1) d.n_empty++;
            else if (had_loss) d.n_cut_no_target++;
            else d.n_no_target++;
            continue;
        }
        if ((rc = add_example(&d, &cap, &e, label, err))) break;
        d.n_tokens += e.n;
        for (int i = 1; i < e.n; i++) d.n_loss_tokens += e.loss[i];
        if (label + 1 > d.n_labels) d.n_labels = label + 1;
    }
    free(line);
    free(e.ids);
    free(e.loss);
    free(e.types);
    fclose(f);
    if (!rc) length_stats(&d, lens, n_lens);
    free(lens);
    if (!rc && d.n == 0) {
        char why[512];
        no_examples_reason(&d, &dp, why, sizeof why);
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: no usable examples (%s)", path, why);
    }
    if (rc) {
        data_free(&d);
        return rc;
    }
    *out = d;
    return 0;
}

/* Recounts the token totals after a split. */
static void recount(data_set *d) {
    d->n_tokens = d->n_loss_tokens = 0;
    for (int i = 0; i < d->n; i++) {
        d->n_tokens += d->ex[i].n;
        for (int t = 1; t < d->ex[i].n; t++) d->n_loss_tokens += d->ex[i].loss[t];
    }
}

int data_split(data_set *d, double val_fraction, uint64_t seed, data_set *val, peft_err *err) {
    memset(val, 0, sizeof *val);
    if (!(val_fraction >= 0 && val_fraction < 1))
        return peft_fail(err, PEFT_ERR_INVALID, "validation fraction %g is not in [0, 1)", val_fraction);
    int n = d->n;
    int k = (int)llround(n * val_fraction);
    if (k == 0 && val_fraction > 0 && n > 1) k = 1;
    if (k > n - 1) k = n > 0 ? n - 1 : 0; /* training keeps at least one */
    val->kind = d->kind;
    val->n_labels = d->n_labels;
    val->n_cols = d->n_cols;
    if (k == 0) return 0;

    /* The first k of a seeded partial Fisher-Yates shuffle choose val. */
    int *idx = peft_malloc((size_t)n * sizeof *idx, err);
    uint8_t *pick = peft_calloc((size_t)n, 1, err);
    data_example *tr = peft_malloc((size_t)(n - k) * sizeof *tr, err);
    data_example *va = peft_malloc((size_t)k * sizeof *va, err);
    if (!idx || !pick || !tr || !va) {
        free(idx); free(pick); free(tr); free(va);
        return PEFT_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) idx[i] = i;
    peft_rng r;
    peft_rng_seed(&r, seed);
    for (int i = 0; i < k; i++) {
        int j = i + (int)(peft_rng_u64(&r) % (uint64_t)(n - i));
        int t = idx[i]; idx[i] = idx[j]; idx[j] = t;
        pick[idx[i]] = 1;
    }
    int a = 0, b = 0;
    for (int i = 0; i < n; i++) {
        if (pick[i]) va[b++] = d->ex[i];
        else tr[a++] = d->ex[i];
    }
    free(idx);
    free(pick);
    free(d->ex);
    d->ex = tr;
    d->n = a;
    val->ex = va;
    val->n = b;
    recount(d);
    recount(val);
    return 0;
}
