/* wordpiece.c — WordPiece tokenizers (BERT, MiniLM, DistilBERT) from a
 * Hugging Face tokenizer.json: the BERT normalizer (or a sequence of NFD /
 * NFC / NFKD / NFKC / Lowercase / StripAccents), the BERT pre-tokenizer
 * (or WhitespaceSplit), greedy longest-match-first WordPiece with "##"
 * continuations, the [CLS] A [SEP] B [SEP] templates with token type ids,
 * added tokens matched before (or, normalized ones, after) normalization,
 * and the WordPiece decoder. Character classes and normalization come from
 * utf8proc; the rules on top of them are BERT's (as HF `tokenizers` writes
 * them), so ids are HF's. */
#include "tokenizer/wordpiece.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- the model ------------------------------------------------------------------ */

typedef enum {
    WP_CLEAN = 0,  /* BERT clean_text: drop NUL, U+FFFD and controls; whitespace -> ' ' */
    WP_CHINESE,    /* spaces around CJK ideographs */
    WP_NFD, WP_NFKD, WP_NFC, WP_NFKC,
    WP_STRIP_MN,   /* drop nonspacing marks (Mn: BERT's strip_accents, after NFD) */
    WP_STRIP_M,    /* drop all marks (Mn, Mc, Me: the StripAccents normalizer) */
    WP_LOWER,
} wp_norm_step;

typedef enum { WP_PRE_NONE = 0, WP_PRE_BERT, WP_PRE_WS_SPLIT } wp_pre_kind;

/* One added token, matched in raw (normalized = false) or normalized text. */
typedef struct {
    int id;
    char *text;   /* raw content, or its normalized form */
    int len;
    bool special, lstrip, rstrip, single_word;
} wp_added;

/* Sorted by first byte, then longest first; v[first[b] .. first[b + 1])
 * start with byte b, so matching at a position looks at those alone. */
typedef struct {
    wp_added *v;
    int n;
    int first[257];
} wp_added_list;

/* A template item: a run of special tokens, or sequence A (seq 0) / B (seq 1). */
typedef struct {
    int seq;          /* -1 special tokens, 0 A, 1 B */
    int type_id;
    int32_t *ids;
    int n_ids;
} wp_item;

typedef struct {
    wp_item *v;
    int n;
} wp_template;

struct wp_model {
    wp_norm_step steps[16];
    int n_steps;
    wp_pre_kind pre[4];
    int n_pre;

    char *prefix;            /* continuing_subword_prefix ("##") */
    int prefix_len;
    int max_chars;           /* max_input_chars_per_word */
    int max_tok_len;         /* longest model token (bytes, without the prefix) */
    uint8_t *in_model;       /* [n_vocab] 1 when the id is in model.vocab */

    wp_added_list raw_added, norm_added;
    wp_template single, pair;
    bool have_single, have_pair;

    bool decoder_wordpiece, decoder_cleanup;
    char *dec_prefix;
    int dec_prefix_len;

    int cls_id, sep_id;
};

void wp_free(wp_model *m) {
    if (!m) return;
    free(m->prefix);
    free(m->dec_prefix);
    free(m->in_model);
    for (int i = 0; i < m->raw_added.n; i++) free(m->raw_added.v[i].text);
    for (int i = 0; i < m->norm_added.n; i++) free(m->norm_added.v[i].text);
    free(m->raw_added.v);
    free(m->norm_added.v);
    for (int k = 0; k < 2; k++) {
        wp_template *tp = k ? &m->pair : &m->single;
        for (int i = 0; i < tp->n; i++) free(tp->v[i].ids);
        free(tp->v);
    }
    free(m);
}

/* ---- character classes (BERT's, on utf8proc's Unicode categories) ---------------- */

static bool cat_is(int32_t cp, utf8proc_category_t c) { return utf8proc_category(cp) == c; }

/* Rust's char::is_whitespace (Unicode White_Space): the separators Z*,
 * plus the C0/C1 controls TAB..CR and NEL that the property adds. */
static bool wp_white_space(int32_t cp) {
    if ((cp >= 9 && cp <= 13) || cp == 0x85) return true;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

/* BERT's _is_control: the "other" categories that are characters (Cc, Cf,
 * Co); tab, newline and carriage return count as whitespace instead. */
static bool wp_control(int32_t cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r') return false;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CO;
}

/* BERT's _is_punctuation: all ASCII non-alphanumeric printables (so $, +,
 * ^, ` count though Unicode files them as symbols) and the P* categories. */
static bool wp_punct(int32_t cp) {
    if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126))
        return true;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        return true;
    default:
        return false;
    }
}

/* BERT's _is_chinese_char: the CJK Unified Ideographs blocks and their
 * extensions A-F plus the compatibility ideographs, as BERT lists them
 * (a definition of which blocks get spaces, not a character table). */
static bool wp_cjk(int32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B920 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* ---- normalization ----------------------------------------------------------------- */

/* Next code point of valid UTF-8 (the input was validated). */
static int32_t next_cp(const char *s, size_t n, size_t *i) {
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (l <= 0) { /* cannot happen on validated text: take the byte */
        cp = (unsigned char)s[*i];
        l = 1;
    }
    *i += (size_t)l;
    return cp;
}

static int put_cp(peft_buf *o, int32_t cp) {
    utf8proc_uint8_t b[4];
    utf8proc_ssize_t l = utf8proc_encode_char(cp, b);
    return peft_buf_append(o, b, (size_t)l) ? PEFT_ERR_NOMEM : 0;
}

static int norm_step(wp_norm_step st, const char *s, size_t n, peft_buf *o) {
    int rc = 0;
    if (st >= WP_NFD && st <= WP_NFKC) {
        int flags = UTF8PROC_STABLE;
        flags |= (st == WP_NFD || st == WP_NFKD) ? UTF8PROC_DECOMPOSE : UTF8PROC_COMPOSE;
        if (st == WP_NFKD || st == WP_NFKC) flags |= UTF8PROC_COMPAT;
        utf8proc_uint8_t *m = NULL;
        utf8proc_ssize_t l = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &m,
                                          (utf8proc_option_t)flags);
        if (l < 0) {
            free(m);
            return l == UTF8PROC_ERROR_NOMEM ? PEFT_ERR_NOMEM : PEFT_ERR_INVALID;
        }
        rc = peft_buf_append(o, m, (size_t)l) ? PEFT_ERR_NOMEM : 0;
        free(m);
        return rc;
    }
    for (size_t i = 0; i < n && !rc;) {
        size_t at = i;
        int32_t cp = next_cp(s, n, &i);
        switch (st) {
        case WP_CLEAN:
            if (cp == 0 || cp == 0xFFFD || wp_control(cp)) break;
            rc = wp_white_space(cp) ? put_cp(o, ' ') : peft_buf_append(o, s + at, i - at);
            break;
        case WP_CHINESE:
            if (wp_cjk(cp)) {
                rc = put_cp(o, ' ');
                if (!rc) rc = peft_buf_append(o, s + at, i - at);
                if (!rc) rc = put_cp(o, ' ');
            } else {
                rc = peft_buf_append(o, s + at, i - at);
            }
            break;
        case WP_STRIP_MN:
            if (!cat_is(cp, UTF8PROC_CATEGORY_MN)) rc = peft_buf_append(o, s + at, i - at);
            break;
        case WP_STRIP_M: {
            utf8proc_category_t c = utf8proc_category(cp);
            if (c != UTF8PROC_CATEGORY_MN && c != UTF8PROC_CATEGORY_MC && c != UTF8PROC_CATEGORY_ME)
                rc = peft_buf_append(o, s + at, i - at);
            break;
        }
        case WP_LOWER:
            /* Rust's char::to_lowercase, the full mapping: besides the
             * simple one, SpecialCasing's only unconditional lowercase
             * expansion, U+0130 -> "i" + U+0307. */
            if (cp == 0x130) {
                rc = put_cp(o, 'i');
                if (!rc) rc = put_cp(o, 0x307);
            } else {
                rc = put_cp(o, utf8proc_tolower(cp));
            }
            break;
        default:
            rc = peft_buf_append(o, s + at, i - at);
        }
        if (rc) rc = PEFT_ERR_NOMEM;
    }
    return rc;
}

/* Applies the normalizer: *out (malloc'ed, NUL-terminated) and its length. */
static int normalize(const wp_model *m, const char *s, size_t n, char **out, size_t *out_len) {
    peft_buf a = {0}, b = {0};
    int rc = peft_buf_append(&a, s, n) ? PEFT_ERR_NOMEM : 0;
    for (int k = 0; k < m->n_steps && !rc; k++) {
        b.len = 0;
        rc = norm_step(m->steps[k], a.data ? a.data : "", a.len, &b);
        peft_buf tmp = a;
        a = b;
        b = tmp;
    }
    peft_buf_free(&b);
    if (!rc && peft_buf_append(&a, "", 0)) rc = PEFT_ERR_NOMEM;
    if (rc) {
        peft_buf_free(&a);
        return rc;
    }
    *out = a.data;
    *out_len = a.len;
    return 0;
}

/* ---- pre-tokenization ------------------------------------------------------------- */

typedef struct { size_t off, len; } wp_span;
typedef struct { wp_span *v; size_t n, cap; } wp_spans;

static int spans_push(wp_spans *s, size_t off, size_t len) {
    if (len == 0) return 0;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        wp_span *v = realloc(s->v, nc * sizeof *v);
        if (!v) return PEFT_ERR_NOMEM;
        s->v = v;
        s->cap = nc;
    }
    s->v[s->n++] = (wp_span){off, len};
    return 0;
}

/* One pre-tokenizer over the spans of in: whitespace removed, and (BERT)
 * every punctuation character a piece of its own. */
static int pre_step(wp_pre_kind k, const char *s, const wp_spans *in, wp_spans *out) {
    int rc = 0;
    for (size_t w = 0; w < in->n && !rc; w++) {
        size_t i = in->v[w].off, end = in->v[w].off + in->v[w].len, start = i;
        while (i < end && !rc) {
            size_t at = i;
            int32_t cp = next_cp(s, end, &i);
            if (wp_white_space(cp)) {
                rc = spans_push(out, start, at - start);
                start = i;
            } else if (k == WP_PRE_BERT && wp_punct(cp)) {
                rc = spans_push(out, start, at - start);
                if (!rc) rc = spans_push(out, at, i - at);
                start = i;
            }
        }
        if (!rc) rc = spans_push(out, start, end - start);
    }
    return rc;
}

static int pretokenize(const wp_model *m, const char *s, size_t n, wp_spans *out) {
    out->n = 0;
    int rc = spans_push(out, 0, n);
    wp_spans tmp = {0};
    for (int k = 0; k < m->n_pre && !rc; k++) {
        tmp.n = 0;
        rc = pre_step(m->pre[k], s, out, &tmp);
        wp_spans sw = *out;
        *out = tmp;
        tmp = sw;
    }
    free(tmp.v);
    return rc;
}

/* ---- WordPiece ---------------------------------------------------------------------- */

typedef struct { int32_t *v, *ty; int n, cap; } wp_ids;

static int ids_push(wp_ids *o, int32_t id, int32_t type) {
    if (o->n == o->cap) {
        if (o->cap > (1 << 29)) return PEFT_ERR_NOMEM; /* int counts; 2^30 ids is 4 GB anyway */
        int nc = o->cap ? o->cap * 2 : 64;
        int32_t *v = realloc(o->v, (size_t)nc * sizeof *v);
        if (!v) return PEFT_ERR_NOMEM;
        o->v = v;
        int32_t *ty = realloc(o->ty, (size_t)nc * sizeof *ty);
        if (!ty) return PEFT_ERR_NOMEM;
        o->ty = ty;
        o->cap = nc;
    }
    o->v[o->n] = id;
    o->ty[o->n++] = type;
    return 0;
}

static int model_lookup(const bpe_tokenizer *t, const char *s, size_t n) {
    int id = bpe_lookup(t, s, n);
    return id >= 0 && t->wp->in_model[id] ? id : -1;
}

/* Greedy longest-match-first over one word; a word with a part no token
 * covers, or longer than max_input_chars_per_word characters, is one unk. */
static int wordpiece_word(const bpe_tokenizer *t, const char *w, size_t n, peft_buf *scratch, wp_ids *out,
                          int type, peft_err *err) {
    const wp_model *m = t->wp;
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)w[i] & 0xC0) != 0x80;
    int first = out->n;
    if (chars <= (size_t)m->max_chars) {
        scratch->len = 0;
        if (peft_buf_append(scratch, m->prefix, (size_t)m->prefix_len)) return PEFT_ERR_NOMEM;
        size_t start = 0;
        while (start < n) {
            /* No token is longer than max_tok_len bytes: start there, so a
             * long word costs O(n * max_tok_len), not O(n^2). */
            size_t end = n - start > (size_t)m->max_tok_len ? start + (size_t)m->max_tok_len : n;
            if (end < n)
                while (end > start && ((unsigned char)w[end] & 0xC0) == 0x80) end--;
            int id = -1;
            while (end > start) {
                if (start == 0) {
                    id = model_lookup(t, w, end);
                } else {
                    scratch->len = (size_t)m->prefix_len;
                    if (peft_buf_append(scratch, w + start, end - start)) return PEFT_ERR_NOMEM;
                    id = model_lookup(t, scratch->data, scratch->len);
                }
                if (id >= 0) break;
                do end--; while (end > start && ((unsigned char)w[end] & 0xC0) == 0x80);
            }
            if (id < 0) break;
            int rc = ids_push(out, id, type);
            if (rc) return rc;
            start = end;
        }
        if (start == n) return 0;
    }
    out->n = first;
    if (t->unk_id < 0)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: a word has no WordPiece tokens and the unk_token is not in the "
                         "vocabulary", t->source);
    return ids_push(out, t->unk_id, type);
}

/* ---- added tokens ------------------------------------------------------------------ */

static bool ascii_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Longest allowed added token of l at text[pos]. */
static const wp_added *match_added(const wp_added_list *l, const char *text, size_t len, size_t pos,
                                   bool parse_special) {
    unsigned char b0 = (unsigned char)text[pos];
    for (int i = l->first[b0]; i < l->first[b0 + 1]; i++) {
        const wp_added *a = &l->v[i];
        if (a->special && !parse_special) continue;
        if ((size_t)a->len > len - pos || memcmp(text + pos, a->text, (size_t)a->len)) continue;
        if (a->single_word) {
            bool lw = pos > 0 && !ascii_ws((unsigned char)text[pos - 1]);
            size_t e = pos + (size_t)a->len;
            if (lw || (e < len && !ascii_ws((unsigned char)text[e]))) continue;
        }
        return a;
    }
    return NULL;
}

typedef struct {
    const bpe_tokenizer *t;
    bool parse_special;
    int type;
    wp_ids *out;
    peft_buf scratch;
    wp_spans words;
    peft_err *err;
} wp_ctx;

static int words_of(wp_ctx *c, const char *s, size_t n) {
    if (n == 0) return 0;
    int rc = pretokenize(c->t->wp, s, n, &c->words);
    for (size_t k = 0; k < c->words.n && !rc; k++)
        rc = wordpiece_word(c->t, s + c->words.v[k].off, c->words.v[k].len, &c->scratch, c->out, c->type, c->err);
    return rc;
}

/* Splits text at the added tokens of l (HF's AddedVocabulary: leftmost,
 * longest, lstrip/rstrip eat the whitespace beside the token) and passes
 * the stretches between them to f. */
static int split_added(wp_ctx *c, const wp_added_list *l, const char *text, size_t len,
                       int (*f)(wp_ctx *, const char *, size_t)) {
    size_t seg = 0, pos = 0;
    int rc = 0;
    while (!rc && pos < len) {
        const wp_added *a = l->n ? match_added(l, text, len, pos, c->parse_special) : NULL;
        if (!a) { pos++; continue; }
        size_t end = pos;
        if (a->lstrip) while (end > seg && ascii_ws((unsigned char)text[end - 1])) end--;
        rc = f(c, text + seg, end - seg);
        if (!rc) rc = ids_push(c->out, a->id, c->type);
        pos += (size_t)a->len;
        if (a->rstrip) while (pos < len && ascii_ws((unsigned char)text[pos])) pos++;
        seg = pos;
    }
    if (!rc) rc = f(c, text + seg, len - seg);
    return rc;
}

static int normalized_segment(wp_ctx *c, const char *s, size_t n) {
    if (n == 0) return 0;
    char *nb;
    size_t nl;
    int rc = normalize(c->t->wp, s, n, &nb, &nl);
    if (rc) return rc;
    rc = split_added(c, &c->t->wp->norm_added, nb, nl, words_of);
    free(nb);
    return rc;
}

/* One sequence: ids appended to c->out. */
static int encode_seq(wp_ctx *c, const char *text, size_t len) {
    return split_added(c, &c->t->wp->raw_added, text, len, normalized_segment);
}

static int check_text(const char *text, size_t len, peft_err *err) {
    if (!text && len) return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: NULL text");
    if (len > (size_t)1 << 30)
        return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: text of %zu bytes is too long", len);
    for (size_t i = 0; i < len;) {
        int l = bpe_utf8_len((const unsigned char *)text + i, len - i);
        if (!l) return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: text is not valid UTF-8 at byte %zu", i);
        i += (size_t)l;
    }
    return 0;
}

int wp_encode(const bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen, bool add_special,
              bool parse_special, int32_t **ids, int32_t **types, int *n_ids, peft_err *err) {
    *ids = NULL;
    if (types) *types = NULL;
    *n_ids = 0;
    int rc = check_text(a, alen, err);
    if (!rc && b) rc = check_text(b, blen, err);
    if (rc) return rc;
    const wp_model *m = t->wp;
    wp_ids seq[2] = {{0}, {0}}, out = {0};
    wp_ctx c = {t, parse_special, 0, NULL, {0}, {0}, err};
    for (int k = 0; k < (b ? 2 : 1) && !rc; k++) {
        c.out = &seq[k];
        c.type = k;
        rc = k ? encode_seq(&c, b, blen) : encode_seq(&c, a, alen);
    }
    const wp_template *tp = b ? &m->pair : &m->single;
    if (!rc && add_special && (b ? m->have_pair : m->have_single)) {
        for (int i = 0; i < tp->n && !rc; i++) {
            const wp_item *it = &tp->v[i];
            if (it->seq < 0) {
                for (int j = 0; j < it->n_ids && !rc; j++) rc = ids_push(&out, it->ids[j], it->type_id);
            } else {
                const wp_ids *s = &seq[it->seq];
                for (int j = 0; j < s->n && !rc; j++) rc = ids_push(&out, s->v[j], it->type_id);
            }
        }
    } else {
        /* No template (or add_special false): A then B, B's type 1 as HF's default. */
        for (int k = 0; k < 2 && !rc; k++)
            for (int j = 0; j < seq[k].n && !rc; j++) rc = ids_push(&out, seq[k].v[j], k);
    }
    for (int k = 0; k < 2; k++) {
        free(seq[k].v);
        free(seq[k].ty);
    }
    peft_buf_free(&c.scratch);
    free(c.words.v);
    if (!rc && !out.v && (rc = ids_push(&out, 0, 0)) == 0) out.n = 0; /* an allocated, empty result */
    if (rc) {
        free(out.v);
        free(out.ty);
        if (!err || err->code != rc) peft_fail(err, rc, "%s: encode failed (%s)", t->source, peft_status_name(rc));
        return rc;
    }
    *ids = out.v;
    *n_ids = out.n;
    if (types) *types = out.ty;
    else free(out.ty);
    return 0;
}

int wp_pretokenize(const bpe_tokenizer *t, const char *text, size_t len, char **words, size_t *words_len,
                   peft_err *err) {
    *words = NULL;
    *words_len = 0;
    if (t->kind != BPE_WORDPIECE) return peft_fail(err, PEFT_ERR_INVALID, "%s: not a WordPiece tokenizer", t->source);
    int rc = check_text(text, len, err);
    if (rc) return rc;
    char *nb = NULL;
    size_t nl = 0;
    wp_spans sp = {0};
    peft_buf o = {0};
    rc = normalize(t->wp, text, len, &nb, &nl);
    if (!rc) rc = pretokenize(t->wp, nb, nl, &sp);
    for (size_t k = 0; k < sp.n && !rc; k++)
        if (peft_buf_append(&o, nb + sp.v[k].off, sp.v[k].len) || peft_buf_append(&o, "", 1)) rc = PEFT_ERR_NOMEM;
    if (!rc && peft_buf_append(&o, "", 0)) rc = PEFT_ERR_NOMEM;
    free(nb);
    free(sp.v);
    if (rc) {
        peft_buf_free(&o);
        return peft_fail(err, rc, "%s: normalize failed (%s)", t->source, peft_status_name(rc));
    }
    *words = o.data;
    *words_len = o.len;
    return 0;
}

/* ---- decode ---------------------------------------------------------------------- */

int wp_token_bytes(const bpe_tokenizer *t, int id, char *buf, int cap) {
    const wp_model *m = t->wp;
    const char *s = t->tok[id];
    int n = t->tok_len[id];
    /* the decoder's prefix, or without a decoder the model's */
    const char *pre = m->decoder_wordpiece ? m->dec_prefix : m->prefix;
    int pl = m->decoder_wordpiece ? m->dec_prefix_len : m->prefix_len;
    if (pl && n >= pl && !memcmp(s, pre, (size_t)pl) && !(t->attr[id] & BPE_ATTR_SPECIAL)) {
        s += pl;
        n -= pl;
    }
    if (cap > 0) memcpy(buf, s, (size_t)PEFT_MIN(n, cap));
    return n;
}

/* HF's WordPiece decoder cleanup: the spaces tokenization put before
 * punctuation and English contractions go. Applied to each token's text. */
static int cleanup_append(peft_buf *o, const char *s, size_t n) {
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " do not", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", " don't", "'s", "'ve", "'re"};
    peft_buf a = {0}, b = {0};
    if (peft_buf_append(&a, s, n)) return PEFT_ERR_NOMEM;
    for (size_t r = 0; r < sizeof from / sizeof *from; r++) {
        size_t fl = strlen(from[r]);
        b.len = 0;
        for (size_t i = 0; i < a.len;) {
            if (i + fl <= a.len && !memcmp(a.data + i, from[r], fl)) {
                if (peft_buf_append(&b, to[r], strlen(to[r]))) goto nomem;
                i += fl;
            } else {
                if (peft_buf_append(&b, a.data + i, 1)) goto nomem;
                i++;
            }
        }
        peft_buf tmp = a;
        a = b;
        b = tmp;
    }
    int rc = peft_buf_append(o, a.data ? a.data : "", a.len) ? PEFT_ERR_NOMEM : 0;
    peft_buf_free(&a);
    peft_buf_free(&b);
    return rc;
nomem:
    peft_buf_free(&a);
    peft_buf_free(&b);
    return PEFT_ERR_NOMEM;
}

int wp_decode(const bpe_tokenizer *t, const int32_t *ids, int n, char **out, peft_err *err) {
    *out = NULL;
    const wp_model *m = t->wp;
    peft_buf o = {0}, tok = {0};
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_vocab || !t->tok[ids[i]])
            return peft_fail(err, PEFT_ERR_INVALID, "%s: decode: token id %d out of range [0, %d)", t->source,
                             ids[i], t->n_vocab);
    for (int i = 0; i < n && !rc; i++) {
        const char *s = t->tok[ids[i]];
        size_t l = (size_t)t->tok_len[ids[i]];
        if (!m->decoder_wordpiece) {
            /* No decoder: HF joins the tokens with spaces. */
            if ((i && peft_buf_append(&o, " ", 1)) || peft_buf_append(&o, s, l)) rc = PEFT_ERR_NOMEM;
            continue;
        }
        tok.len = 0;
        if (i) {
            if (m->dec_prefix_len && l >= (size_t)m->dec_prefix_len && !memcmp(s, m->dec_prefix, (size_t)m->dec_prefix_len)) {
                s += m->dec_prefix_len;
                l -= (size_t)m->dec_prefix_len;
            } else if (peft_buf_append(&tok, " ", 1)) {
                rc = PEFT_ERR_NOMEM;
                break;
            }
        }
        if (peft_buf_append(&tok, s, l)) { rc = PEFT_ERR_NOMEM; break; }
        rc = m->decoder_cleanup ? cleanup_append(&o, tok.data, tok.len)
                                : (peft_buf_append(&o, tok.data, tok.len) ? PEFT_ERR_NOMEM : 0);
    }
    peft_buf_free(&tok);
    if (!rc && peft_buf_append(&o, "", 0)) rc = PEFT_ERR_NOMEM;
    if (rc) {
        peft_buf_free(&o);
        return peft_fail(err, rc, "%s: decode failed (%s)", t->source, peft_status_name(rc));
    }
    *out = o.data;
    return 0;
}

/* ---- the public entry points WordPiece adds --------------------------------------- */

int bpe_cls_id(const bpe_tokenizer *t) {
    if (t->kind == BPE_WORDPIECE) return t->wp->cls_id;
    return t->n_prefix > 0 ? t->prefix_ids[0] : -1;
}

int bpe_sep_id(const bpe_tokenizer *t) {
    if (t->kind == BPE_WORDPIECE) return t->wp->sep_id;
    return t->n_suffix > 0 ? t->suffix_ids[0] : -1;
}

int bpe_encode_pair(const bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                    bool add_special, bool parse_special, int32_t **ids, int32_t **type_ids, int *n_ids,
                    peft_err *err) {
    if (t->kind == BPE_WORDPIECE) return wp_encode(t, a, alen, b, blen, add_special, parse_special, ids, type_ids, n_ids, err);
    *ids = NULL;
    if (type_ids) *type_ids = NULL;
    *n_ids = 0;
    if (b && add_special)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: pair templates are read for WordPiece tokenizers only (%s)",
                         t->source, t->desc);
    int32_t *ia = NULL, *ib = NULL;
    int na = 0, nb = 0;
    int rc = bpe_encode(t, a, alen, add_special, parse_special, &ia, &na, err);
    if (!rc && b) rc = bpe_encode(t, b, blen, false, parse_special, &ib, &nb, err);
    int32_t *all = NULL, *ty = NULL;
    if (!rc) {
        all = peft_malloc((size_t)(na + nb + 1) * sizeof *all, err);
        ty = type_ids ? peft_malloc((size_t)(na + nb + 1) * sizeof *ty, err) : NULL;
        if (!all || (type_ids && !ty)) rc = PEFT_ERR_NOMEM;
    }
    if (!rc) {
        memcpy(all, ia, (size_t)na * sizeof *all);
        if (nb) memcpy(all + na, ib, (size_t)nb * sizeof *all);
        for (int i = 0; ty && i < na + nb; i++) ty[i] = i >= na;
    }
    free(ia);
    free(ib);
    if (rc) {
        free(all);
        free(ty);
        return rc;
    }
    *ids = all;
    if (type_ids) *type_ids = ty;
    *n_ids = na + nb;
    return 0;
}

/* A template, either tokenizer kind's: runs of special tokens and the
 * places of A (seq 0) and B (seq 1), each with its type id. */
typedef struct {
    int seq, type_id;
    const int32_t *ids;
    int n_ids;
} tmpl_item;

static int template_of(const bpe_tokenizer *t, bool pair, tmpl_item *v, int cap, peft_err *err) {
    int n = 0;
    if (t->kind == BPE_WORDPIECE) {
        const wp_model *m = t->wp;
        const wp_template *tp = pair ? &m->pair : &m->single;
        if (pair ? m->have_pair : m->have_single) {
            for (int i = 0; i < tp->n && n < cap; i++)
                v[n++] = (tmpl_item){tp->v[i].seq, tp->v[i].type_id, tp->v[i].ids, tp->v[i].n_ids};
            return n;
        }
    } else {
        const tmpl_item pre = {-1, 0, t->prefix_ids, t->n_prefix}, suf = {-1, 0, t->suffix_ids, t->n_suffix};
        if (!pair) {
            v[0] = pre;
            v[1] = (tmpl_item){0, 0, NULL, 0};
            v[2] = suf;
            return 3;
        }
        if (t->pair_kind == BPE_PAIR_NONE)
            return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: the tokenizer has no pair template (%s)", t->source, t->desc);
        const bool rob = t->pair_kind == BPE_PAIR_ROBERTA;
        v[n++] = pre;
        v[n++] = (tmpl_item){0, 0, NULL, 0};
        v[n++] = suf;
        if (rob) v[n++] = suf;
        v[n++] = (tmpl_item){1, rob ? 0 : 1, NULL, 0};
        v[n++] = suf;
        if (rob) return n;
        for (int i = 0; i < n; i++)   /* BertProcessing: B's [SEP] is type 1 too */
            if (i > 2) v[i].type_id = 1;
        return n;
    }
    /* no template: A then B, B's type 1 as HF's default */
    v[n++] = (tmpl_item){0, 0, NULL, 0};
    if (pair) v[n++] = (tmpl_item){1, 1, NULL, 0};
    return n;
}

int bpe_encode_input(const bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen, int max_len,
                     int32_t **ids, int32_t **types, int *n_ids, bool *truncated, peft_err *err) {
    *ids = NULL;
    if (types) *types = NULL;
    *n_ids = 0;
    if (truncated) *truncated = false;
    tmpl_item tp[64];
    int nt = template_of(t, b != NULL, tp, 64, err);
    if (nt < 0) return nt;
    int n_special = 0;
    for (int i = 0; i < nt; i++) n_special += tp[i].seq < 0 ? tp[i].n_ids : 0;
    if (max_len > 0 && n_special >= max_len)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: a length of %d leaves no room beside %d special tokens", t->source,
                         max_len, n_special);
    int32_t *seq[2] = {NULL, NULL};
    int len[2] = {0, 0};
    int rc = bpe_encode(t, a, alen, false, true, &seq[0], &len[0], err);
    if (!rc && b) rc = bpe_encode(t, b, blen, false, true, &seq[1], &len[1], err);
    const int room = max_len - n_special;
    if (!rc && max_len > 0 && len[0] + len[1] > room) {
        if (truncated) *truncated = true;
        if (!b) len[0] = room;
        else {
            /* HF's longest_first: the shorter keeps its length if the longer
             * can take the rest and still be as long; else both get half, the
             * longer (the second on a tie) the odd token */
            const int s = len[1] < len[0];   /* index of the shorter */
            int n1 = len[s], n2 = n1 > room ? n1 : PEFT_MAX(n1, room - n1);
            if (n1 + n2 > room) {
                n1 = room / 2;
                n2 = n1 + room % 2;
            }
            len[s] = PEFT_MIN(len[s], n1);
            len[1 - s] = PEFT_MIN(len[1 - s], n2);
        }
    }
    const int n = len[0] + len[1] + n_special;
    int32_t *out = rc ? NULL : peft_malloc((size_t)(n + 1) * sizeof *out, err);
    int32_t *ty = !rc && types ? peft_malloc((size_t)(n + 1) * sizeof *ty, err) : NULL;
    if (!rc && (!out || (types && !ty))) rc = PEFT_ERR_NOMEM;
    for (int i = 0, k = 0; !rc && i < nt; i++) {
        const int32_t *src = tp[i].seq < 0 ? tp[i].ids : seq[tp[i].seq];
        const int cnt = tp[i].seq < 0 ? tp[i].n_ids : len[tp[i].seq];
        for (int j = 0; j < cnt; j++, k++) {
            out[k] = src[j];
            if (ty) ty[k] = tp[i].type_id;
        }
    }
    free(seq[0]);
    free(seq[1]);
    if (rc) {
        free(out);
        free(ty);
        return rc;
    }
    *ids = out;
    if (types) *types = ty;
    *n_ids = n;
    return 0;
}

/* ---- loading ---------------------------------------------------------------------- */

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jbool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int add_step(bpe_tokenizer *t, wp_norm_step s, peft_err *err) {
    wp_model *m = t->wp;
    if (m->n_steps == (int)(sizeof m->steps / sizeof *m->steps))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: normalizer has more than %d steps", t->source, m->n_steps);
    m->steps[m->n_steps++] = s;
    return 0;
}

static int parse_normalizer(bpe_tokenizer *t, const cJSON *n, int depth, peft_err *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *ty = jstr(n, "type");
    if (!ty) return peft_fail(err, PEFT_ERR_FORMAT, "%s: normalizer without a \"type\"", t->source);
    int rc = 0;
    if (!strcmp(ty, "Sequence") && depth < 4) {
        const cJSON *e, *l = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(l)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: normalizer Sequence without a \"normalizers\" list", t->source);
        cJSON_ArrayForEach(e, l) if ((rc = parse_normalizer(t, e, depth + 1, err))) return rc;
        return 0;
    }
    if (!strcmp(ty, "BertNormalizer")) {
        bool lower = jbool(n, "lowercase", true);
        /* strip_accents null (the usual) follows lowercase, as in HF. */
        bool strip = jbool(n, "strip_accents", lower);
        if (jbool(n, "clean_text", true)) rc = add_step(t, WP_CLEAN, err);
        if (!rc && jbool(n, "handle_chinese_chars", true)) rc = add_step(t, WP_CHINESE, err);
        if (!rc && strip) rc = add_step(t, WP_NFD, err);
        if (!rc && strip) rc = add_step(t, WP_STRIP_MN, err);
        if (!rc && lower) rc = add_step(t, WP_LOWER, err);
        return rc;
    }
    static const struct { const char *name; wp_norm_step s; } simple[] = {
        {"NFD", WP_NFD}, {"NFKD", WP_NFKD}, {"NFC", WP_NFC}, {"NFKC", WP_NFKC},
        {"Lowercase", WP_LOWER}, {"StripAccents", WP_STRIP_M},
    };
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++)
        if (!strcmp(ty, simple[i].name)) return add_step(t, simple[i].s, err);
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: normalizer \"%s\" is not supported with WordPiece (BertNormalizer, "
                     "NFD, NFKD, NFC, NFKC, Lowercase, StripAccents and Sequences of them are)", t->source, ty);
}

static int parse_pretok(bpe_tokenizer *t, const cJSON *p, int depth, peft_err *err) {
    if (!p || cJSON_IsNull(p)) return 0;
    wp_model *m = t->wp;
    const char *ty = jstr(p, "type");
    if (!ty) return peft_fail(err, PEFT_ERR_FORMAT, "%s: pre_tokenizer without a \"type\"", t->source);
    if (!strcmp(ty, "Sequence") && depth < 4) {
        const cJSON *e, *l = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(l)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: pre_tokenizer Sequence without a \"pretokenizers\" list", t->source);
        int rc;
        cJSON_ArrayForEach(e, l) if ((rc = parse_pretok(t, e, depth + 1, err))) return rc;
        return 0;
    }
    wp_pre_kind k;
    if (!strcmp(ty, "BertPreTokenizer")) k = WP_PRE_BERT;
    else if (!strcmp(ty, "WhitespaceSplit")) k = WP_PRE_WS_SPLIT;
    else
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: pre_tokenizer \"%s\" is not supported with WordPiece "
                         "(BertPreTokenizer and WhitespaceSplit are)", t->source, ty);
    if (m->n_pre == (int)(sizeof m->pre / sizeof *m->pre))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: more than %d pre-tokenizers", t->source, m->n_pre);
    m->pre[m->n_pre++] = k;
    return 0;
}

static int tp_push(bpe_tokenizer *t, wp_template *tp, int seq, int type_id, const int32_t *ids, int n, peft_err *err) {
    if (tp->n >= 64) return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor template longer than 64 items", t->source);
    wp_item *v = realloc(tp->v, (size_t)(tp->n + 1) * sizeof *v);
    if (!v) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", t->source);
    tp->v = v;
    wp_item *it = &v[tp->n++];
    *it = (wp_item){seq, type_id, NULL, 0};
    if (n) {
        if (!(it->ids = peft_malloc((size_t)n * sizeof *it->ids, err))) return PEFT_ERR_NOMEM;
        memcpy(it->ids, ids, (size_t)n * sizeof *ids);
        it->n_ids = n;
    }
    return 0;
}

/* TemplateProcessing's "single" or "pair": [{"SpecialToken": {"id", "type_id"}} | {"Sequence": {"id": "A"|"B", "type_id"}}]. */
static int parse_template(bpe_tokenizer *t, const cJSON *items, const cJSON *specials, bool pair, wp_template *tp,
                          peft_err *err) {
    const char *what = pair ? "pair" : "single";
    if (!cJSON_IsArray(items))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" is not a list", t->source, what);
    const cJSON *item;
    bool seen[2] = {false, false};
    cJSON_ArrayForEach(item, items) {
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(item, "Sequence");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        const cJSON *body = sq ? sq : st;
        int type_id = 0, rc;
        if (!cJSON_IsObject(body))
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" item is neither Sequence nor SpecialToken",
                             t->source, what);
        if ((rc = peft_json_get_int(body, "type_id", 0, false, 0, 255, &type_id, t->source, err))) return rc;
        const char *id = jstr(body, "id");
        if (!id) return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" item without an \"id\"", t->source, what);
        if (sq) {
            int seq = !strcmp(id, "A") ? 0 : !strcmp(id, "B") ? 1 : -1;
            if (seq < 0 || (seq == 1 && !pair))
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" names sequence \"%s\"", t->source, what, id);
            seen[seq] = true;
            if ((rc = tp_push(t, tp, seq, type_id, NULL, 0, err))) return rc;
            continue;
        }
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, id);
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(def, "ids"), *e;
        int32_t v[16];
        int n = 0;
        if (!cJSON_IsArray(l)) {
            int tid = bpe_lookup(t, id, strlen(id));
            if (tid < 0)
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor special token \"%s\" unknown", t->source, id);
            v[n++] = tid;
        } else {
            cJSON_ArrayForEach(e, l) {
                int64_t x;
                if ((rc = peft_json_to_int(e, t->source, "post_processor.special_tokens.ids", 0, t->n_vocab - 1, &x, err)))
                    return rc;
                if (n == 16)
                    return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor special token \"%s\" has over 16 ids", t->source, id);
                if (!t->tok[x])
                    return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor special token \"%s\": id %lld is no token",
                                     t->source, id, (long long)x);
                v[n++] = (int32_t)x;
            }
        }
        if ((rc = tp_push(t, tp, -1, type_id, v, n, err))) return rc;
    }
    if (!seen[0] || (pair && !seen[1]))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" lacks $A%s", t->source, what, pair ? " or $B" : "");
    return 0;
}

static int parse_post(bpe_tokenizer *t, const cJSON *p, peft_err *err) {
    wp_model *m = t->wp;
    if (!p || cJSON_IsNull(p)) return 0;
    const char *ty = jstr(p, "type");
    if (!ty) return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor without a \"type\"", t->source);
    int rc;
    if (!strcmp(ty, "TemplateProcessing")) {
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
        if ((rc = parse_template(t, cJSON_GetObjectItemCaseSensitive(p, "single"), specials, false, &m->single, err)))
            return rc;
        m->have_single = true;
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(p, "pair");
        if (pr && !cJSON_IsNull(pr)) {
            if ((rc = parse_template(t, pr, specials, true, &m->pair, err))) return rc;
            m->have_pair = true;
        }
        return 0;
    }
    if (!strcmp(ty, "BertProcessing")) {
        /* {"sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}: [CLS] A [SEP] (type 0) B [SEP] (type 1). */
        int32_t id[2];
        static const char *const keys[2] = {"cls", "sep"};
        for (int k = 0; k < 2; k++) {
            const cJSON *pair = cJSON_GetObjectItemCaseSensitive(p, keys[k]);
            if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 || !cJSON_IsString(cJSON_GetArrayItem(pair, 0)))
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: post_processor \"%s\" must be [token, id]", t->source, keys[k]);
            char key[32];
            snprintf(key, sizeof key, "post_processor.%s", keys[k]);
            int64_t x;
            if ((rc = peft_json_to_int(cJSON_GetArrayItem(pair, 1), t->source, key, 0, t->n_vocab - 1, &x, err))) return rc;
            if (!t->tok[x]) return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s id %lld is no token", t->source, key, (long long)x);
            id[k] = (int32_t)x;
        }
        if ((rc = tp_push(t, &m->single, -1, 0, &id[0], 1, err)) || (rc = tp_push(t, &m->single, 0, 0, NULL, 0, err)) ||
            (rc = tp_push(t, &m->single, -1, 0, &id[1], 1, err)))
            return rc;
        if ((rc = tp_push(t, &m->pair, -1, 0, &id[0], 1, err)) || (rc = tp_push(t, &m->pair, 0, 0, NULL, 0, err)) ||
            (rc = tp_push(t, &m->pair, -1, 0, &id[1], 1, err)) || (rc = tp_push(t, &m->pair, 1, 1, NULL, 0, err)) ||
            (rc = tp_push(t, &m->pair, -1, 1, &id[1], 1, err)))
            return rc;
        m->have_single = m->have_pair = true;
        return 0;
    }
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: post_processor \"%s\" is not supported with WordPiece "
                     "(TemplateProcessing and BertProcessing are)", t->source, ty);
}

static int parse_decoder(bpe_tokenizer *t, const cJSON *d, peft_err *err) {
    wp_model *m = t->wp;
    if (!d || cJSON_IsNull(d)) return 0;
    const char *ty = jstr(d, "type");
    if (!ty || strcmp(ty, "WordPiece"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: decoder \"%s\" is not supported with WordPiece (WordPiece is)",
                         t->source, ty ? ty : "(no type)");
    const char *pre = jstr(d, "prefix");
    m->decoder_wordpiece = true;
    m->decoder_cleanup = jbool(d, "cleanup", true);
    if (!(m->dec_prefix = peft_strdup(pre ? pre : "##", err))) return PEFT_ERR_NOMEM;
    m->dec_prefix_len = (int)strlen(m->dec_prefix);
    return 0;
}

/* The largest token id a file defining n_defined tokens may use (as bpe_json.c). */
static int64_t max_token_id(int64_t n_defined) {
    int64_t m = n_defined * PEFT_VOCAB_SPARSENESS + PEFT_VOCAB_SLACK;
    return PEFT_MIN(m, (int64_t)PEFT_MAX_VOCAB) - 1;
}

static int added_cmp(const void *pa, const void *pb) {
    const wp_added *a = pa, *b = pb;
    unsigned ca = (unsigned char)a->text[0], cb = (unsigned char)b->text[0];
    if (ca != cb) return ca < cb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id - b->id;
}

static void sort_added(wp_added_list *l) {
    if (l->n) qsort(l->v, (size_t)l->n, sizeof *l->v, added_cmp);
    int j = 0;
    for (int b = 0; b <= 256; b++) {
        while (j < l->n && (unsigned char)l->v[j].text[0] < b) j++;
        l->first[b] = j;
    }
}

static int add_to_list(bpe_tokenizer *t, wp_added_list *l, wp_added a, peft_err *err) {
    wp_added *v = realloc(l->v, (size_t)(l->n + 1) * sizeof *v);
    if (!v) {
        free(a.text);
        return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", t->source);
    }
    l->v = v;
    v[l->n++] = a;
    return 0;
}

static int load_added(bpe_tokenizer *t, const cJSON *added, const char *path, peft_err *err) {
    wp_model *m = t->wp;
    const cJSON *e;
    int rc;
    int n = cJSON_GetArraySize(added);
    if (n > PEFT_MAX_VOCAB) return peft_fail(err, PEFT_ERR_FORMAT, "%s: %d added_tokens", path, n);
    cJSON_ArrayForEach(e, added) {
        const char *content = jstr(e, "content");
        int id = (int)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble; /* checked by the caller */
        bool special = jbool(e, "special", false);
        if ((rc = bpe_add_added(t, id, special, jbool(e, "lstrip", false), jbool(e, "rstrip", false),
                                jbool(e, "single_word", false), err)))
            return rc;
        if (!*content) continue;
        wp_added a = {id, NULL, 0, special, jbool(e, "lstrip", false), jbool(e, "rstrip", false),
                      jbool(e, "single_word", false)};
        /* HF: an added token with normalized = true (the default for
         * non-special ones) is matched by its normalized content in
         * normalized text. */
        if (jbool(e, "normalized", !special)) {
            size_t l;
            if ((rc = normalize(m, content, strlen(content), &a.text, &l)))
                return peft_fail(err, rc, "%s: normalizing added token %d failed", path, id);
            if (l == 0 || l > PEFT_MAX_TOKEN_BYTES) { free(a.text); continue; }
            a.len = (int)l;
            if ((rc = add_to_list(t, &m->norm_added, a, err))) return rc;
        } else {
            if (!(a.text = peft_strdup(content, err))) return PEFT_ERR_NOMEM;
            a.len = (int)strlen(content);
            if ((rc = add_to_list(t, &m->raw_added, a, err))) return rc;
        }
    }
    sort_added(&m->raw_added);
    sort_added(&m->norm_added);
    return 0;
}

int wp_load_json(const char *path, const cJSON *j, bpe_tokenizer **out, peft_err *err) {
    *out = NULL;
    bpe_tokenizer *t = bpe_alloc(path, err);
    if (!t) return PEFT_ERR_NOMEM;
    int rc = 0;
    t->kind = BPE_WORDPIECE;
    wp_model *m = t->wp = peft_calloc(1, sizeof *t->wp, err);
    if (!m) { rc = PEFT_ERR_NOMEM; goto fail; }
    m->cls_id = m->sep_id = -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    const cJSON *e;
    if (!cJSON_IsObject(vocab)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: WordPiece model has no \"vocab\" object", path);
        goto fail;
    }
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"added_tokens\" is not an array", path);
        goto fail;
    }
    const char *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix") ? jstr(model, "continuing_subword_prefix") : "##";
    if (!prefix) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: model.continuing_subword_prefix is not a string", path);
        goto fail;
    }
    if (!(m->prefix = peft_strdup(prefix, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    m->prefix_len = (int)strlen(prefix);
    if ((rc = peft_json_get_int(model, "max_input_chars_per_word", 100, false, 0, 1 << 30, &m->max_chars, path, err)))
        goto fail;
    if (!(t->pre_name = peft_strdup("bert", err))) { rc = PEFT_ERR_NOMEM; goto fail; }

    /* Vocabulary, then added tokens: ids bounded by what the file defines. */
    int n_vocab = cJSON_GetArraySize(vocab), n_added = cJSON_GetArraySize(added), max_id = -1;
    if (n_vocab == 0) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: vocab is empty", path); goto fail; }
    const int64_t lim = max_token_id((int64_t)n_vocab + n_added);
    cJSON_ArrayForEach(e, vocab) {
        char key[96];
        int64_t id;
        snprintf(key, sizeof key, "vocab.%.60s", e->string ? e->string : "?");
        if ((rc = peft_json_to_int(e, path, key, 0, lim, &id, err))) goto fail;
        max_id = PEFT_MAX(max_id, (int)id);
    }
    cJSON_ArrayForEach(e, added) {
        int64_t id;
        if (!jstr(e, "content")) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: added_tokens entry without a \"content\" string", path);
            goto fail;
        }
        if ((rc = peft_json_to_int(cJSON_GetObjectItemCaseSensitive(e, "id"), path, "added_tokens.id", 0, lim, &id, err)))
            goto fail;
        max_id = PEFT_MAX(max_id, (int)id);
    }
    if ((rc = bpe_set_vocab_size(t, max_id + 1, err))) goto fail;
    if (!(m->in_model = peft_calloc((size_t)max_id + 1, 1, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    cJSON_ArrayForEach(e, vocab) {
        int id = (int)e->valuedouble;
        size_t l = strlen(e->string);
        if ((rc = bpe_set_token(t, id, e->string, l, err))) goto fail;
        m->in_model[id] = 1;
        m->max_tok_len = PEFT_MAX(m->max_tok_len, (int)l);
    }
    cJSON_ArrayForEach(e, added) {
        const char *content = jstr(e, "content");
        int id = (int)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        if (t->tok[id] && !strcmp(t->tok[id], content)) continue;
        if ((rc = bpe_set_token(t, id, content, strlen(content), err))) goto fail;
        m->in_model[id] = 0; /* an added token replacing a vocabulary entry is no model token */
    }
    if ((rc = bpe_build_index(t, err))) goto fail;
    const char *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token") ? jstr(model, "unk_token") : "[UNK]";
    if (unk) t->unk_id = model_lookup(t, unk, strlen(unk));

    if ((rc = parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(j, "normalizer"), 0, err))) goto fail;
    if ((rc = parse_pretok(t, cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"), 0, err))) goto fail;
    if ((rc = load_added(t, added, path, err))) goto fail;
    if ((rc = parse_post(t, cJSON_GetObjectItemCaseSensitive(j, "post_processor"), err))) goto fail;
    if ((rc = parse_decoder(t, cJSON_GetObjectItemCaseSensitive(j, "decoder"), err))) goto fail;

    /* [CLS]: the first special token before $A in the single template;
     * [SEP]: the first after it. */
    bool after = false;
    for (int i = 0; i < m->single.n; i++) {
        const wp_item *it = &m->single.v[i];
        if (it->seq >= 0) { after = true; continue; }
        if (!it->n_ids) continue;
        if (!after && m->cls_id < 0) m->cls_id = it->ids[0];
        if (after && m->sep_id < 0) m->sep_id = it->ids[0];
    }
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(j, "padding");
    const char *pad_tok = jstr(pad, "pad_token");
    t->pad_id = pad_tok ? bpe_lookup(t, pad_tok, strlen(pad_tok)) : bpe_lookup(t, "[PAD]", 5);
    if ((rc = bpe_finish(t, err))) goto fail;
    *out = t;
    return 0;
fail:
    bpe_free(t);
    return rc;
}

/* ---- GGUF ("bert", as llama.cpp's converter writes it) --------------------------- */

/* llama.cpp's converter respells the vocabulary: control tokens stay,
 * "##x" continuations become "x", every other token gains a leading U+2581
 * ("phantom space"). Undone here, so the tokenizer is HF's again. GGUF has
 * no normalizer settings; llama.cpp's WordPiece always lowercases and strips
 * accents, so that is BERT's uncased normalizer here too. */
static const char PHANTOM[] = "\xE2\x96\x81";

static int gguf_opt_id(const gguf_file *g, const char *key, uint64_t n_tok, int *out, peft_err *err) {
    *out = -1;
    if (gguf_find_key(g, key) < 0) return 0;
    int64_t v;
    int rc = gguf_get_int(g, key, &v, err);
    if (rc) return rc;
    if (v >= (int64_t)n_tok)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s = %lld is outside the vocabulary (%llu)", gguf_path(g), key,
                         (long long)v, (unsigned long long)n_tok);
    *out = v < 0 ? -1 : (int)v;
    return 0;
}

static int gguf_opt_bool(const gguf_file *g, const char *key, bool dflt, bool *out, peft_err *err) {
    *out = dflt;
    if (gguf_find_key(g, key) < 0) return 0;
    int64_t v;
    int rc = gguf_get_int(g, key, &v, err);
    if (!rc) *out = v != 0;
    return rc;
}

/* tokenizer.ggml.token_type[i] (1, normal, when absent); the array sits
 * in the file unaligned. */
static int32_t token_type(const void *raw, uint64_t i) {
    int32_t v = 1;
    if (raw) memcpy(&v, (const char *)raw + i * sizeof v, sizeof v);
    return v;
}

int wp_load_gguf(const gguf_file *g, bpe_tokenizer **out, peft_err *err) {
    *out = NULL;
    const char *path = gguf_path(g);
    gguf_vtype et;
    uint64_t n_tok = 0, nt = 0;
    const void *raw, *traw = NULL;
    int rc = gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok, &raw, err);
    if (rc) return rc;
    if (et != GGUF_TYPE_STRING || n_tok == 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens is not a non-empty string array", path);
    if (n_tok > PEFT_MAX_VOCAB)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu tokens, the limit is %d", path,
                         (unsigned long long)n_tok, PEFT_MAX_VOCAB);
    if (gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        if ((rc = gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &nt, &traw, err))) return rc;
        if ((et != GGUF_TYPE_INT32 && et != GGUF_TYPE_UINT32) || nt != n_tok)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.token_type is not an int32 array of %llu", path,
                             (unsigned long long)n_tok);
    }
    bpe_tokenizer *t = bpe_alloc(path, err);
    if (!t) return PEFT_ERR_NOMEM;
    t->kind = BPE_WORDPIECE;
    wp_model *m = t->wp = peft_calloc(1, sizeof *t->wp, err);
    peft_buf b = {0};
    if (!m) { rc = PEFT_ERR_NOMEM; goto fail; }
    m->cls_id = m->sep_id = -1;
    m->max_chars = 100;
    if (!(m->prefix = peft_strdup("##", err)) || !(t->pre_name = peft_strdup("bert", err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    m->prefix_len = 2;
    if ((rc = bpe_set_vocab_size(t, (int)n_tok, err))) goto fail;
    if (!(m->in_model = peft_calloc(n_tok, 1, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    for (uint64_t i = 0; i < n_tok; i++) {
        const char *s = gguf_get_arr_str(g, "tokenizer.ggml.tokens", i);
        if (!s) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] unreadable", path, (unsigned long long)i);
            goto fail;
        }
        int32_t ty = token_type(traw, i);
        size_t l = strlen(s);
        b.len = 0;
        int brc;
        if (ty == 3) brc = peft_buf_append(&b, s, l);                       /* control: as written */
        else if (l >= 3 && !memcmp(s, PHANTOM, 3)) brc = peft_buf_append(&b, s + 3, l - 3); /* word start */
        else brc = peft_buf_append(&b, "##", 2) || peft_buf_append(&b, s, l);            /* continuation */
        if (brc) { rc = peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path); goto fail; }
        if ((rc = bpe_set_token(t, (int)i, b.data, b.len, err))) goto fail;
        m->in_model[i] = 1;
        m->max_tok_len = PEFT_MAX(m->max_tok_len, (int)b.len);
    }
    if ((rc = bpe_build_index(t, err))) goto fail;
    for (uint64_t i = 0; traw && i < n_tok; i++) {
        if (token_type(traw, i) != 3 || !t->tok_len[i]) continue;
        if ((rc = bpe_add_added(t, (int)i, true, false, false, false, err))) goto fail;
        wp_added a = {(int)i, NULL, t->tok_len[i], true, false, false, false};
        if (!(a.text = peft_strdup(t->tok[i], err))) { rc = PEFT_ERR_NOMEM; goto fail; }
        if ((rc = add_to_list(t, &m->raw_added, a, err))) goto fail;
    }
    sort_added(&m->raw_added);
    static const wp_norm_step uncased[] = {WP_CLEAN, WP_CHINESE, WP_NFD, WP_STRIP_MN, WP_LOWER};
    for (size_t k = 0; k < sizeof uncased / sizeof *uncased; k++) m->steps[m->n_steps++] = uncased[k];
    m->pre[m->n_pre++] = WP_PRE_BERT;
    m->decoder_wordpiece = m->decoder_cleanup = true;
    if (!(m->dec_prefix = peft_strdup("##", err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    m->dec_prefix_len = 2;

    /* gguf-py writes [CLS] as BOS (there is no CLS key) and [SEP] as EOS and
     * the separator; add_bos_token says whether [CLS] opens a sequence,
     * add_eos_token (or add_sep_token) whether [SEP] closes it; neither
     * written: both, as BERT. */
    int cls, sep, eos, unk, pad;
    bool add_cls, add_eos, add_sep;
    bool flags = gguf_find_key(g, "tokenizer.ggml.add_eos_token") >= 0 || gguf_find_key(g, "tokenizer.ggml.add_sep_token") >= 0;
    if ((rc = gguf_opt_id(g, "tokenizer.ggml.bos_token_id", n_tok, &cls, err)) ||
        (rc = gguf_opt_id(g, "tokenizer.ggml.seperator_token_id", n_tok, &sep, err)) ||
        (rc = gguf_opt_id(g, "tokenizer.ggml.eos_token_id", n_tok, &eos, err)) ||
        (rc = gguf_opt_id(g, "tokenizer.ggml.unknown_token_id", n_tok, &unk, err)) ||
        (rc = gguf_opt_id(g, "tokenizer.ggml.padding_token_id", n_tok, &pad, err)) ||
        (rc = gguf_opt_bool(g, "tokenizer.ggml.add_bos_token", true, &add_cls, err)) ||
        (rc = gguf_opt_bool(g, "tokenizer.ggml.add_eos_token", false, &add_eos, err)) ||
        (rc = gguf_opt_bool(g, "tokenizer.ggml.add_sep_token", false, &add_sep, err)))
        goto fail;
    add_sep = flags ? add_eos || add_sep : true;
    if (cls < 0) cls = bpe_lookup(t, "[CLS]", 5);
    if (sep < 0) sep = eos >= 0 ? eos : bpe_lookup(t, "[SEP]", 5);
    t->unk_id = unk >= 0 ? unk : bpe_lookup(t, "[UNK]", 5);
    t->pad_id = pad;
    if (!add_cls) cls = -1;
    if (!add_sep) sep = -1;
    m->cls_id = cls;
    m->sep_id = sep;
    int32_t c = cls, s = sep;
    for (int k = 0; k < 2 && !rc; k++) {
        wp_template *tp = k ? &m->pair : &m->single;
        if (cls >= 0) rc = tp_push(t, tp, -1, 0, &c, 1, err);
        if (!rc) rc = tp_push(t, tp, 0, 0, NULL, 0, err);
        if (!rc && sep >= 0) rc = tp_push(t, tp, -1, 0, &s, 1, err);
        if (!rc && k) rc = tp_push(t, tp, 1, 1, NULL, 0, err);
        if (!rc && k && sep >= 0) rc = tp_push(t, tp, -1, 1, &s, 1, err);
    }
    if (rc) goto fail;
    m->have_single = m->have_pair = true;
    if ((rc = bpe_finish(t, err))) goto fail;
    peft_buf_free(&b);
    *out = t;
    return 0;
fail:
    peft_buf_free(&b);
    bpe_free(t);
    return rc;
}
