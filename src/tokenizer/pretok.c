/* pretok.c — pre-tokenization: split text into pieces with a chain of
 * regexes (PCRE2, UTF + Unicode properties), each step re-splitting the
 * pieces of the one before, as HF's Sequence of Split / ByteLevel / Digits
 * and llama.cpp's regex lists do. Merges never cross a piece boundary. */
#include "tokenizer/bpe_internal.h"

#include <stdlib.h>
#include <string.h>

/* GPT-2 (also ByteLevel's built-in regex): contractions, optional space +
 * letters / digits / other, whitespace runs (all but the last space when
 * followed by a non-space, which then leads the next word). */
const char *const bpe_re_gpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Llama 3: case-insensitive contractions, a word may take one leading
 * non-letter, digits in groups of at most 3, newlines kept apart. */
static const char RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Qwen2: as Llama 3 but every digit alone. */
static const char RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

int bpe_pretok_add(bpe_tokenizer *t, const char *pattern, bpe_split_behavior b, bool invert,
                   bool prefix_space, peft_err *err) {
    pcre2_code *re = NULL;
    if (pattern) {
        int ec;
        PCRE2_SIZE eo;
        re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "%s: pre-tokenizer regex does not compile at offset %zu: %s (pattern: %.200s)",
                             t->source, (size_t)eo, (const char *)msg, pattern);
        }
        /* JIT is an optimisation only: where it is unavailable the
         * interpreter runs the same pattern. */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    }
    bpe_pretok_step *s = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *s);
    if (!s) {
        pcre2_code_free(re);
        return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", t->source);
    }
    t->steps = s;
    s[t->n_steps++] = (bpe_pretok_step){re, b, invert, prefix_space};
    return 0;
}

void bpe_pretok_free(bpe_tokenizer *t) {
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->steps);
    t->steps = NULL;
    t->n_steps = 0;
}

/* The pre-tokenizer llama.cpp associates with each tokenizer.ggml.pre name
 * (families grouped by the split they share). Unknown names fall back to
 * GPT-2's, as transformers does for any byte-level vocabulary. */
int bpe_pretok_preset(bpe_tokenizer *t, const char *pre, peft_err *err) {
    static const char *const digits_then_gpt2[] = {"smollm", "starcoder", "refact", "command-r",
                                                   "codeshell", "exaone", "minerva", NULL};
    static const char *const llama3[] = {"llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral",
                                         "dbrx", "smaug-bpe", "falcon-h1", "lfm2", NULL};
    static const char *const qwen2[] = {"qwen2", "deepseek-r1-qwen", "megrez", "kormo", NULL};
    if (!pre) pre = "default";
    for (int i = 0; digits_then_gpt2[i]; i++)
        if (!strcmp(pre, digits_then_gpt2[i])) {
            int rc = bpe_pretok_add(t, "\\p{N}", BPE_SPLIT_ISOLATED, false, false, err);
            return rc ? rc : bpe_pretok_add(t, bpe_re_gpt2, BPE_SPLIT_ISOLATED, false, false, err);
        }
    for (int i = 0; llama3[i]; i++)
        if (!strcmp(pre, llama3[i])) return bpe_pretok_add(t, RE_LLAMA3, BPE_SPLIT_ISOLATED, false, false, err);
    for (int i = 0; qwen2[i]; i++)
        if (!strcmp(pre, qwen2[i])) return bpe_pretok_add(t, RE_QWEN2, BPE_SPLIT_ISOLATED, false, false, err);
    return bpe_pretok_add(t, bpe_re_gpt2, BPE_SPLIT_ISOLATED, false, false, err);
}

int bpe_spans_push(bpe_spans *s, size_t off, size_t len) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        bpe_span *v = realloc(s->v, nc * sizeof *v);
        if (!v) return PEFT_ERR_NOMEM;
        s->v = v;
        s->cap = nc;
    }
    s->v[s->n++] = (bpe_span){off, len};
    return 0;
}

/* A segment of a piece: [start, end) and whether the regex matched it. */
typedef struct { size_t start, end; bool match; } seg;
typedef struct { seg *v; size_t n, cap; } segs;

static int segs_push(segs *s, size_t a, size_t b, bool m) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        seg *v = realloc(s->v, nc * sizeof *v);
        if (!v) return PEFT_ERR_NOMEM;
        s->v = v;
        s->cap = nc;
    }
    s->v[s->n++] = (seg){a, b, m};
    return 0;
}

/* Splits buf[off, off+len) with step st, appending pieces to out.
 * Matches are found left to right (empty matches skipped), the gaps
 * between them are the non-matching segments; then the behavior decides
 * how segments form pieces (HF SplitDelimiterBehavior). */
static int split_piece(const bpe_pretok_step *st, const char *buf, size_t off, size_t len,
                       pcre2_match_data *md, segs *sg, bpe_spans *out) {
    sg->n = 0;
    PCRE2_SPTR subj = (PCRE2_SPTR)(buf + off);
    size_t pos = 0, last = 0;
    int rc;
    while (pos <= len) {
        int r = pcre2_match(st->re, subj, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (r == PCRE2_ERROR_JIT_STACKLIMIT)
            r = pcre2_match(st->re, subj, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (r == PCRE2_ERROR_NOMATCH) break;
        if (r < 0) return PEFT_ERR_INVALID;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a) {
            /* Empty match: step over one character. */
            pos = a + 1;
            while (pos < len && ((unsigned char)buf[off + pos] & 0xC0) == 0x80) pos++;
            if (a >= len) break;
            continue;
        }
        if (a > last && (rc = segs_push(sg, last, a, false))) return rc;
        if ((rc = segs_push(sg, a, b, true))) return rc;
        last = pos = b;
    }
    if (last < len && (rc = segs_push(sg, last, len, false))) return rc;
    if (st->invert)
        for (size_t i = 0; i < sg->n; i++) sg->v[i].match = !sg->v[i].match;

    /* Fold segments into pieces in place (sg->v[0..k) are the pieces). */
    size_t k = 0;
    bool prev = false;
    switch (st->behavior) {
    case BPE_SPLIT_ISOLATED:
        k = sg->n;
        break;
    case BPE_SPLIT_REMOVED:
        for (size_t i = 0; i < sg->n; i++)
            if (!sg->v[i].match) sg->v[k++] = sg->v[i];
        break;
    case BPE_SPLIT_MERGED_PREV: /* a match closes the piece before it */
        for (size_t i = 0; i < sg->n; i++) {
            seg s = sg->v[i];
            if (s.match && !prev && k > 0) sg->v[k - 1].end = s.end;
            else sg->v[k++] = s;
            prev = s.match;
        }
        break;
    case BPE_SPLIT_MERGED_NEXT: /* a match opens the piece after it */
        for (size_t i = 0; i < sg->n; i++) {
            seg s = sg->v[i];
            if (!s.match && prev && k > 0) sg->v[k - 1].end = s.end;
            else sg->v[k++] = s;
            prev = s.match;
        }
        break;
    case BPE_SPLIT_CONTIGUOUS: /* runs of matches (or of gaps) join */
        for (size_t i = 0; i < sg->n; i++) {
            seg s = sg->v[i];
            if (k > 0 && s.match == prev) sg->v[k - 1].end = s.end;
            else sg->v[k++] = s;
            prev = s.match;
        }
        break;
    }
    for (size_t i = 0; i < k; i++)
        if (sg->v[i].end > sg->v[i].start &&
            (rc = bpe_spans_push(out, off + sg->v[i].start, sg->v[i].end - sg->v[i].start)))
            return rc;
    return 0;
}

int bpe_pretokenize(const bpe_tokenizer *t, const char **text, size_t *len, char **owned,
                    bpe_spans *out, peft_err *err) {
    *owned = NULL;
    bpe_spans cur = {0}, next = {0};
    segs sg = {0};
    pcre2_match_data *md = NULL;
    int rc = 0;
    if ((rc = bpe_spans_push(&cur, 0, *len))) goto done;
    for (int si = 0; si < t->n_steps && !rc; si++) {
        const bpe_pretok_step *st = &t->steps[si];
        if (st->prefix_space) {
            /* ByteLevel(add_prefix_space): every piece not starting with ' '
             * gets one; rebuild the buffer with the spaces in. */
            size_t extra = 0;
            for (size_t i = 0; i < cur.n; i++) extra += (*text)[cur.v[i].off] != ' ';
            if (extra) {
                char *nb = malloc(*len + extra + 1);
                if (!nb) { rc = PEFT_ERR_NOMEM; break; }
                size_t m = 0;
                for (size_t i = 0; i < cur.n; i++) {
                    size_t o = m;
                    if ((*text)[cur.v[i].off] != ' ') nb[m++] = ' ';
                    memcpy(nb + m, *text + cur.v[i].off, cur.v[i].len);
                    m += cur.v[i].len;
                    cur.v[i].off = o;
                    cur.v[i].len = m - o;
                }
                nb[m] = 0;
                free(*owned);
                *owned = nb;
                *text = nb;
                *len = m;
            }
        }
        if (!st->re) continue;
        if (!md) {
            md = pcre2_match_data_create(4, NULL);
            if (!md) { rc = PEFT_ERR_NOMEM; break; }
        }
        next.n = 0;
        for (size_t i = 0; i < cur.n && !rc; i++) rc = split_piece(st, *text, cur.v[i].off, cur.v[i].len, md, &sg, &next);
        bpe_spans tmp = cur;
        cur = next;
        next = tmp;
    }
done:
    pcre2_match_data_free(md);
    free(sg.v);
    free(next.v);
    if (rc) {
        free(cur.v);
        free(*owned);
        *owned = NULL;
        return peft_fail(err, rc, "%s: pre-tokenization failed (%s)", t->source, peft_status_name(rc));
    }
    *out = cur;
    return 0;
}
