/* bpe.c — the tokenizer object, its hash tables, and the BPE merge loop
 * shared by byte-level and SentencePiece vocabularies: encode (added-token
 * split -> normalize -> pre-tokenize -> merge), decode, token bytes. */
#include "tokenizer/bpe_internal.h"
#include "tokenizer/wordpiece.h"
#include "core/limits.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int bpe_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int bpe_utf8_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return len;
}

static uint32_t utf8_decode(const unsigned char *s, int len) {
    if (len == 1) return s[0];
    uint32_t cp = s[0] & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (int i = 1; i < len; i++) cp = (cp << 6) | (s[i] & 0x3F);
    return cp;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', '¡'..'¬',
 * '®'..'ÿ') stand for themselves; the other 68 bytes, in order, become
 * U+0100, U+0101, ... so every byte is a visible, non-space character. */
void bpe_bytes_to_unicode(uint16_t byte2cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte2cp[b] = keep ? (uint16_t)b : (uint16_t)(256 + n++);
    }
}

/* ---- construction ------------------------------------------------------------- */

bpe_tokenizer *bpe_alloc(const char *source, peft_err *err) {
    bpe_tokenizer *t = peft_calloc(1, sizeof *t, err);
    if (!t) return NULL;
    t->source = peft_strdup(source ? source : "(memory)", err);
    if (!t->source) { free(t); return NULL; }
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = -1;
    for (int b = 0; b < 256; b++) t->byte_tok[b] = -1;
    bpe_bytes_to_unicode(t->byte2cp);
    for (int i = 0; i < 324; i++) t->cp2byte[i] = -1;
    for (int b = 0; b < 256; b++) t->cp2byte[t->byte2cp[b]] = (int16_t)b;
    return t;
}

int bpe_set_vocab_size(bpe_tokenizer *t, int n, peft_err *err) {
    if (n <= t->n_vocab) return 0;
    char **tok = realloc(t->tok, (size_t)n * sizeof *tok);
    if (!tok) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory for %d tokens", t->source, n);
    t->tok = tok;
    int *tl = realloc(t->tok_len, (size_t)n * sizeof *tl);
    if (!tl) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory for %d tokens", t->source, n);
    t->tok_len = tl;
    uint8_t *at = realloc(t->attr, (size_t)n);
    if (!at) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory for %d tokens", t->source, n);
    t->attr = at;
    if (t->scores) {
        float *sc = realloc(t->scores, (size_t)n * sizeof *sc);
        if (!sc) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", t->source);
        t->scores = sc;
        for (int i = t->n_vocab; i < n; i++) sc[i] = 0.0f;
    }
    for (int i = t->n_vocab; i < n; i++) { tok[i] = NULL; tl[i] = 0; at[i] = 0; }
    t->n_vocab = n;
    return 0;
}

int bpe_set_token(bpe_tokenizer *t, int id, const char *s, size_t len, peft_err *err) {
    if (id < 0) return peft_fail(err, PEFT_ERR_FORMAT, "%s: negative token id %d", t->source, id);
    if (len > PEFT_MAX_TOKEN_BYTES)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: token %d is %zu bytes long", t->source, id, len);
    if (id >= t->n_vocab) {
        int rc = bpe_set_vocab_size(t, id + 1, err);
        if (rc) return rc;
    }
    char *c = peft_strndup(s, len, err);
    if (!c) return PEFT_ERR_NOMEM;
    free(t->tok[id]);
    t->tok[id] = c;
    t->tok_len[id] = (int)len;
    return 0;
}

int bpe_build_index(bpe_tokenizer *t, peft_err *err) {
    free(t->str_tab);
    t->str_cap = pow2_at_least((size_t)t->n_vocab * 2 + 1);
    t->str_tab = peft_malloc(t->str_cap * sizeof *t->str_tab, err);
    if (!t->str_tab) return PEFT_ERR_NOMEM;
    memset(t->str_tab, 0xFF, t->str_cap * sizeof *t->str_tab); /* -1 */
    size_t mask = t->str_cap - 1;
    for (int id = 0; id < t->n_vocab; id++) {
        if (!t->tok[id]) continue;
        size_t h = fnv1a(t->tok[id], (size_t)t->tok_len[id]) & mask;
        bool dup = false;
        while (t->str_tab[h] >= 0) {
            int o = t->str_tab[h];
            if (t->tok_len[o] == t->tok_len[id] && !memcmp(t->tok[o], t->tok[id], (size_t)t->tok_len[id])) {
                dup = true;
                break;
            }
            h = (h + 1) & mask;
        }
        if (!dup) t->str_tab[h] = id;
    }
    return 0;
}

int bpe_lookup(const bpe_tokenizer *t, const char *s, size_t len) {
    if (!t->str_tab) return -1;
    size_t mask = t->str_cap - 1;
    size_t h = fnv1a(s, len) & mask;
    while (t->str_tab[h] >= 0) {
        int o = t->str_tab[h];
        if ((size_t)t->tok_len[o] == len && !memcmp(t->tok[o], s, len)) return o;
        h = (h + 1) & mask;
    }
    return -1;
}

int bpe_merges_reserve(bpe_tokenizer *t, size_t n, peft_err *err) {
    free(t->merge_tab);
    t->merge_cap = pow2_at_least(n * 2 + 1);
    t->merge_tab = peft_malloc(t->merge_cap * sizeof *t->merge_tab, err);
    if (!t->merge_tab) return PEFT_ERR_NOMEM;
    for (size_t i = 0; i < t->merge_cap; i++) t->merge_tab[i].key = UINT64_MAX;
    t->n_merges = 0;
    return 0;
}

static const bpe_merge_slot *merge_find(const bpe_tokenizer *t, int a, int b) {
    if (!t->merge_tab) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merge_cap - 1;
    size_t h = mix64(key) & mask;
    while (t->merge_tab[h].key != UINT64_MAX) {
        if (t->merge_tab[h].key == key) return &t->merge_tab[h];
        h = (h + 1) & mask;
    }
    return NULL;
}

int bpe_add_merge(bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                  int rank, peft_err *err) {
    int ia = bpe_lookup(t, a, alen), ib = bpe_lookup(t, b, blen);
    if (ia < 0 || ib < 0) return 1;
    char stack[256];
    char *cat = alen + blen <= sizeof stack ? stack : peft_malloc(alen + blen, err);
    if (!cat) return PEFT_ERR_NOMEM;
    memcpy(cat, a, alen);
    memcpy(cat + alen, b, blen);
    int r = bpe_lookup(t, cat, alen + blen);
    if (cat != stack) free(cat);
    if (r < 0) return 1;
    if ((size_t)(t->n_merges + 1) * 2 > t->merge_cap)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: merge table full", t->source);
    uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    size_t mask = t->merge_cap - 1;
    size_t h = mix64(key) & mask;
    while (t->merge_tab[h].key != UINT64_MAX) {
        if (t->merge_tab[h].key == key) return 0; /* duplicate: the earlier rank stands */
        h = (h + 1) & mask;
    }
    t->merge_tab[h].key = key;
    t->merge_tab[h].rank = rank;
    t->merge_tab[h].result = r;
    t->n_merges++;
    return 0;
}

int bpe_add_added(bpe_tokenizer *t, int id, bool special, bool lstrip, bool rstrip,
                  bool single_word, peft_err *err) {
    if (id < 0 || id >= t->n_vocab || !t->tok[id] || t->tok_len[id] == 0) return 0;
    /* An id -> slot table and a doubling array keep a file with many added
     * tokens (a GGUF marks every control token) linear, not quadratic. */
    if (t->added_at_n != t->n_vocab) {
        free(t->added_at);
        t->added_at = peft_malloc((size_t)t->n_vocab * sizeof *t->added_at, err);
        if (!t->added_at) { t->added_at_n = 0; return PEFT_ERR_NOMEM; }
        t->added_at_n = t->n_vocab;
        for (int i = 0; i < t->n_vocab; i++) t->added_at[i] = -1;
        for (int i = 0; i < t->n_added; i++) t->added_at[t->added[i].id] = i;
    }
    if (t->added_at[id] >= 0) {
        t->added[t->added_at[id]].special = special;
        if (special) t->attr[id] |= BPE_ATTR_SPECIAL;
        return 0;
    }
    if (t->n_added == t->added_cap) {
        int cap = t->added_cap ? 2 * t->added_cap : 16;
        bpe_added *a = realloc(t->added, (size_t)cap * sizeof *a);
        if (!a) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", t->source);
        t->added = a;
        t->added_cap = cap;
    }
    bpe_added *a = t->added;
    t->added_at[id] = t->n_added;
    a[t->n_added++] = (bpe_added){id, NULL, 0, special, lstrip, rstrip, single_word};
    t->attr[id] |= BPE_ATTR_ADDED | (special ? BPE_ATTR_SPECIAL : 0);
    return 0;
}

static int added_cmp(const void *pa, const void *pb) {
    const bpe_added *a = pa, *b = pb;
    unsigned ca = (unsigned char)a->text[0], cb = (unsigned char)b->text[0];
    if (ca != cb) return ca < cb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1; /* longer first */
    return a->id - b->id;
}

int bpe_finish(bpe_tokenizer *t, peft_err *err) {
    (void)err;
    free(t->added_at);   /* the sort below reorders added */
    t->added_at = NULL;
    t->added_at_n = 0;
    for (int i = 0; i < t->n_added; i++) {
        t->added[i].text = t->tok[t->added[i].id];
        t->added[i].len = t->tok_len[t->added[i].id];
    }
    if (t->n_added) qsort(t->added, (size_t)t->n_added, sizeof *t->added, added_cmp);
    int j = 0;
    for (int b = 0; b <= 256; b++) {
        while (j < t->n_added && (unsigned char)t->added[j].text[0] < b) j++;
        t->added_first[b] = j;
    }
    for (int b = 0; b < 256 && t->kind != BPE_WORDPIECE; b++) {
        char s[8];
        int n;
        if (t->kind == BPE_BYTE_LEVEL) {
            n = bpe_utf8_encode(t->byte2cp[b], s);
        } else {
            static const char hex[] = "0123456789ABCDEF";
            memcpy(s, "<0x", 3);
            s[3] = hex[b >> 4];
            s[4] = hex[b & 15];
            s[5] = '>';
            n = 6;
        }
        t->byte_tok[b] = bpe_lookup(t, s, (size_t)n);
        if (t->kind == BPE_SENTENCEPIECE && t->byte_tok[b] >= 0) t->attr[t->byte_tok[b]] |= BPE_ATTR_BYTE;
    }
    const char *kind = t->kind == BPE_BYTE_LEVEL ? "byte-level BPE" : t->kind == BPE_WORDPIECE ? "WordPiece" : "SentencePiece BPE";
    snprintf(t->desc, sizeof t->desc, "%s (%s), %d tokens", kind, t->pre_name ? t->pre_name : "default",
             t->n_vocab);
    return 0;
}

void bpe_free(bpe_tokenizer *t) {
    if (!t) return;
    wp_free(t->wp);
    for (int i = 0; i < t->n_vocab; i++) free(t->tok[i]);
    free(t->tok);
    free(t->tok_len);
    free(t->scores);
    free(t->attr);
    free(t->str_tab);
    free(t->merge_tab);
    free(t->added);
    free(t->added_at);
    bpe_pretok_free(t);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t->chat_template);
    free(t->pre_name);
    free(t->source);
    free(t);
}

/* ---- accessors ------------------------------------------------------------------ */

bpe_kind bpe_get_kind(const bpe_tokenizer *t) { return t->kind; }
int bpe_vocab_size(const bpe_tokenizer *t) { return t->n_vocab; }
int bpe_bos_id(const bpe_tokenizer *t) { return t->bos_id; }
int bpe_eos_id(const bpe_tokenizer *t) { return t->eos_id; }
int bpe_pad_id(const bpe_tokenizer *t) { return t->pad_id; }
const char *bpe_describe(const bpe_tokenizer *t) { return t->desc; }

bool bpe_adds_bos(const bpe_tokenizer *t) {
    for (int i = 0; i < t->n_prefix; i++)
        if (t->prefix_ids[i] == t->bos_id) return true;
    return false;
}

const char *bpe_token_text(const bpe_tokenizer *t, int id) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    return t->tok[id];
}

int bpe_token_id(const bpe_tokenizer *t, const char *text) {
    return text ? bpe_lookup(t, text, strlen(text)) : -1;
}

bool bpe_is_special(const bpe_tokenizer *t, int id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & BPE_ATTR_SPECIAL);
}

/* ---- encode ----------------------------------------------------------------------- */

typedef struct { int32_t *v; int n, cap; } ids_vec;

static int ids_push(ids_vec *o, int32_t id) {
    if (o->n == o->cap) {
        int nc = o->cap ? o->cap * 2 : 64;
        int32_t *v = realloc(o->v, (size_t)nc * sizeof *v);
        if (!v) return PEFT_ERR_NOMEM;
        o->v = v;
        o->cap = nc;
    }
    o->v[o->n++] = id;
    return 0;
}

/* One symbol of the word being merged: a byte range of the piece. id: -1
 * unknown, -2 SentencePiece byte fallback (expanded to <0xNN> at output). */
typedef struct { int start, len, prev, next, id; } sym;

/* Heap entry for a candidate merge of symbols left and right (adjacent).
 * key: rank (lower first) or -score; ties broken by left position, which
 * is what HF's BPE and llama.cpp's SPM both do. sum = len(left)+len(right)
 * when pushed: lengths only grow, so a changed sum means the entry is stale. */
typedef struct { double key; int left, right, sum, result; } cand;

typedef struct {
    sym *syms;
    size_t syms_cap;
    cand *heap;
    size_t heap_n, heap_cap;
    char *buf;
    size_t buf_cap;
} scratch;

static bool cand_less(const cand *a, const cand *b) {
    if (a->key != b->key) return a->key < b->key;
    return a->left < b->left;
}

static int heap_push(scratch *s, cand c) {
    if (s->heap_n == s->heap_cap) {
        size_t nc = s->heap_cap ? s->heap_cap * 2 : 256;
        cand *h = realloc(s->heap, nc * sizeof *h);
        if (!h) return PEFT_ERR_NOMEM;
        s->heap = h;
        s->heap_cap = nc;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
    return 0;
}

static cand heap_pop(scratch *s) {
    cand top = s->heap[0];
    cand last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cand *best = &last;
        if (l < n && cand_less(&s->heap[l], best)) { m = l; best = &s->heap[l]; }
        if (r < n && cand_less(&s->heap[r], best)) { m = r; }
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n) s->heap[i] = last;
    return top;
}

static int buf_reserve(scratch *s, size_t n) {
    if (n <= s->buf_cap) return 0;
    size_t nc = s->buf_cap ? s->buf_cap : 256;
    while (nc < n) nc *= 2;
    char *b = realloc(s->buf, nc);
    if (!b) return PEFT_ERR_NOMEM;
    s->buf = b;
    s->buf_cap = nc;
    return 0;
}

/* Pushes the candidate merge of symbols a and b (adjacent) if there is one. */
static int try_pair(const bpe_tokenizer *t, scratch *s, const char *piece, int a, int b) {
    if (a < 0 || b < 0) return 0;
    const sym *sa = &s->syms[a], *sb = &s->syms[b];
    if (t->merge_mode == BPE_MERGE_SCORES) {
        /* SentencePiece: the pair merges when its text is a token; the token
         * with the highest score merges first. */
        int id = bpe_lookup(t, piece + sa->start, (size_t)(sa->len + sb->len));
        if (id < 0) return 0;
        return heap_push(s, (cand){-(double)t->scores[id], a, b, sa->len + sb->len, id});
    }
    if (sa->id < 0 || sb->id < 0) return 0;
    const bpe_merge_slot *m = merge_find(t, sa->id, sb->id);
    if (!m) return 0;
    return heap_push(s, (cand){(double)m->rank, a, b, sa->len + sb->len, m->result});
}

/* Appends id, or for unknown symbols unk (fused runs count once when fuse_unk). */
static int emit_unk(const bpe_tokenizer *t, ids_vec *out, bool *last_unk) {
    if (t->unk_id < 0) return 0;
    if (t->fuse_unk && *last_unk) return 0;
    *last_unk = true;
    return ids_push(out, t->unk_id);
}

/* BPE on one pre-tokenized piece (raw bytes for byte-level; normalized
 * text for SentencePiece). Symbols start as bytes (byte-level) or UTF-8
 * characters (SentencePiece); the best adjacent pair merges until none is
 * left. O(n log n) with the heap, so one huge piece (SentencePiece has no
 * pre-tokenizer: a whole paragraph is one piece) stays fast. */
static int encode_piece(const bpe_tokenizer *t, scratch *s, const char *piece, size_t n,
                        ids_vec *out) {
    if (n == 0) return 0;
    if (n > (size_t)1 << 30) return PEFT_ERR_INVALID;
    const unsigned char *p = (const unsigned char *)piece;
    int rc;

    if (t->kind == BPE_BYTE_LEVEL && t->ignore_merges) {
        /* Llama 3: a piece that is itself a token is emitted whole. */
        if ((rc = buf_reserve(s, n * 2))) return rc;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += (size_t)bpe_utf8_encode(t->byte2cp[p[i]], s->buf + m);
        int id = bpe_lookup(t, s->buf, m);
        if (id >= 0) return ids_push(out, id);
    } else if (t->kind == BPE_SENTENCEPIECE && t->ignore_merges) {
        int id = bpe_lookup(t, piece, n);
        if (id >= 0) return ids_push(out, id);
    }

    if (s->syms_cap < n) {
        sym *ns = realloc(s->syms, n * sizeof *ns);
        if (!ns) return PEFT_ERR_NOMEM;
        s->syms = ns;
        s->syms_cap = n;
    }
    int ns = 0;
    for (size_t i = 0; i < n;) {
        int len, id;
        if (t->kind == BPE_BYTE_LEVEL) {
            len = 1;
            id = t->byte_tok[p[i]];
        } else {
            len = bpe_utf8_len(p + i, n - i);
            if (len == 0) len = 1; /* cannot happen: input validated */
            id = bpe_lookup(t, piece + i, (size_t)len);
            if (id < 0 && t->byte_fallback) id = -2;
        }
        s->syms[ns] = (sym){(int)i, len, ns - 1, -1, id};
        if (ns > 0) s->syms[ns - 1].next = ns;
        ns++;
        i += (size_t)len;
    }

    s->heap_n = 0;
    for (int i = 0; i + 1 < ns; i++)
        if ((rc = try_pair(t, s, piece, i, i + 1))) return rc;
    while (s->heap_n) {
        cand c = heap_pop(s);
        sym *l = &s->syms[c.left], *r = &s->syms[c.right];
        if (l->len == 0 || r->len == 0 || l->next != c.right || l->len + r->len != c.sum) continue;
        l->len += r->len;
        l->id = c.result;
        l->next = r->next;
        if (r->next >= 0) s->syms[r->next].prev = c.left;
        r->len = 0;
        if ((rc = try_pair(t, s, piece, l->prev, c.left))) return rc;
        if ((rc = try_pair(t, s, piece, c.left, l->next))) return rc;
    }

    bool last_unk = false;
    for (int i = 0; i >= 0; i = s->syms[i].next) {
        const sym *y = &s->syms[i];
        if (y->id >= 0) {
            last_unk = false;
            if ((rc = ids_push(out, y->id))) return rc;
            continue;
        }
        bool fallback = y->id == -2 || (t->merge_mode == BPE_MERGE_SCORES && t->byte_fallback);
        if (fallback) {
            for (int k = 0; k < y->len; k++) {
                int bt = t->byte_tok[p[y->start + k]];
                if (bt >= 0) {
                    last_unk = false;
                    rc = ids_push(out, bt);
                } else {
                    rc = emit_unk(t, out, &last_unk);
                }
                if (rc) return rc;
            }
        } else if ((rc = emit_unk(t, out, &last_unk))) {
            return rc;
        }
    }
    return 0;
}

static const char META[] = "\xE2\x96\x81"; /* U+2581 "▁" */

/* Encodes one stretch of text between added tokens. first: the stretch
 * starts at offset 0 of the input (Metaspace prepend_scheme "first"). */
static int encode_segment(const bpe_tokenizer *t, scratch *s, const char *text, size_t len,
                          bool first, ids_vec *out, peft_err *err) {
    if (len == 0) return 0;
    int rc;
    if (t->kind == BPE_SENTENCEPIECE) {
        /* Normalize: optional leading "▁", every ' ' -> "▁" (3 bytes). */
        bool prepend = false, replace = t->norm_replace_space || t->metaspace;
        if (t->norm_prepend) prepend = true;
        if (t->metaspace && (t->metaspace_prepend == BPE_PREPEND_ALWAYS ||
                             (t->metaspace_prepend == BPE_PREPEND_FIRST && first)))
            prepend = true;
        size_t cap = 3 + len * 3;
        char *nb = malloc(cap);
        if (!nb) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory encoding %zu bytes", len);
        size_t m = 0;
        if (prepend) {
            bool already = t->metaspace && ((replace && text[0] == ' ') ||
                                            (len >= 3 && !memcmp(text, META, 3)));
            if (!already) { memcpy(nb, META, 3); m = 3; }
        }
        for (size_t i = 0; i < len; i++) {
            if (replace && text[i] == ' ') { memcpy(nb + m, META, 3); m += 3; }
            else nb[m++] = text[i];
        }
        if (t->metaspace && t->metaspace_split) {
            /* Split before every "▁" (MergedWithNext). */
            size_t start = 0;
            for (size_t i = 3; i + 3 <= m; i++) {
                if (!memcmp(nb + i, META, 3)) {
                    if ((rc = encode_piece(t, s, nb + start, i - start, out))) break;
                    start = i;
                }
            }
            rc = rc ? rc : encode_piece(t, s, nb + start, m - start, out);
        } else {
            rc = encode_piece(t, s, nb, m, out);
        }
        free(nb);
        if (rc) return peft_fail(err, rc, "%s: encode failed (%s)", t->source, peft_status_name(rc));
        return 0;
    }

    const char *buf = text;
    size_t blen = len;
    char *owned = NULL;
    bpe_spans sp = {0};
    if ((rc = bpe_pretokenize(t, &buf, &blen, &owned, &sp, err))) {
        free(sp.v);
        return rc;
    }
    for (size_t i = 0; i < sp.n && !rc; i++) rc = encode_piece(t, s, buf + sp.v[i].off, sp.v[i].len, out);
    free(sp.v);
    free(owned);
    if (rc) return peft_fail(err, rc, "%s: encode failed (%s)", t->source, peft_status_name(rc));
    return 0;
}

static bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Longest added token starting at text[pos] that is allowed, or NULL. */
static const bpe_added *match_added(const bpe_tokenizer *t, const char *text, size_t len, size_t pos,
                                    bool parse_special) {
    unsigned char b = (unsigned char)text[pos];
    for (int i = t->added_first[b]; i < t->added_first[b + 1]; i++) {
        const bpe_added *a = &t->added[i];
        if (a->special && !parse_special) continue;
        if ((size_t)a->len > len - pos || memcmp(text + pos, a->text, (size_t)a->len)) continue;
        if (a->single_word) {
            /* Only as a whole word: no word character on either side. */
            bool lw = pos > 0 && !is_ws((unsigned char)text[pos - 1]);
            size_t e = pos + (size_t)a->len;
            bool rw = e < len && !is_ws((unsigned char)text[e]);
            if (lw || rw) continue;
        }
        return a; /* sorted longest first */
    }
    return NULL;
}

int bpe_encode(const bpe_tokenizer *t, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t **ids, int *n_ids, peft_err *err) {
    if (t->kind == BPE_WORDPIECE) return wp_encode(t, text, len, NULL, 0, add_special, parse_special, ids, NULL, n_ids, err);
    *ids = NULL;
    *n_ids = 0;
    if (!text && len) return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: NULL text");
    if (len > (size_t)1 << 30)
        return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: text of %zu bytes is too long", len);
    for (size_t i = 0; i < len;) {
        int l = bpe_utf8_len((const unsigned char *)text + i, len - i);
        if (!l) return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: text is not valid UTF-8 at byte %zu", i);
        i += (size_t)l;
    }
    ids_vec out = {0};
    scratch s = {0};
    int rc = 0;
    if (add_special)
        for (int i = 0; i < t->n_prefix && !rc; i++) rc = ids_push(&out, t->prefix_ids[i]);

    size_t seg = 0, pos = 0;
    while (!rc && pos < len) {
        const bpe_added *a = t->n_added ? match_added(t, text, len, pos, parse_special) : NULL;
        if (!a) { pos++; continue; }
        size_t end = pos;
        if (a->lstrip) while (end > seg && is_ws((unsigned char)text[end - 1])) end--;
        rc = encode_segment(t, &s, text + seg, end - seg, seg == 0, &out, err);
        if (!rc) rc = ids_push(&out, a->id);
        pos += (size_t)a->len;
        if (a->rstrip) while (pos < len && is_ws((unsigned char)text[pos])) pos++;
        seg = pos;
    }
    if (!rc) rc = encode_segment(t, &s, text + seg, len - seg, seg == 0, &out, err);
    if (add_special)
        for (int i = 0; i < t->n_suffix && !rc; i++) rc = ids_push(&out, t->suffix_ids[i]);

    free(s.syms);
    free(s.heap);
    free(s.buf);
    if (rc) {
        free(out.v);
        if (!err || err->code != rc) peft_fail(err, rc, "%s: encode failed: out of memory", t->source);
        return rc;
    }
    if (!out.v) {
        out.v = malloc(sizeof *out.v);
        if (!out.v) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
    }
    *ids = out.v;
    *n_ids = out.n;
    return 0;
}

/* ---- decode --------------------------------------------------------------------- */

/* Byte-level: each character maps back to its byte; a token with a
 * character outside the 256-character alphabet (an added token written as
 * plain text) contributes its raw UTF-8, as HF's ByteLevel decoder does. */
static int bytelevel_bytes(const bpe_tokenizer *t, const char *s, int n, char *buf, int cap) {
    const unsigned char *p = (const unsigned char *)s;
    int m = 0;
    for (int i = 0; i < n;) {
        int l = bpe_utf8_len(p + i, (size_t)(n - i));
        if (!l) goto raw;
        uint32_t cp = utf8_decode(p + i, l);
        if (cp >= 324 || t->cp2byte[cp] < 0) goto raw;
        if (m < cap) buf[m] = (char)t->cp2byte[cp];
        m++;
        i += l;
    }
    return m;
raw:
    if (cap > 0) memcpy(buf, s, (size_t)PEFT_MIN(n, cap));
    return n;
}

/* SentencePiece: "▁" -> ' ', <0xNN> -> byte NN. */
static int sp_bytes(const bpe_tokenizer *t, int id, char *buf, int cap) {
    if (t->attr[id] & BPE_ATTR_BYTE) {
        for (int b = 0; b < 256; b++)
            if (t->byte_tok[b] == id) {
                if (cap > 0) buf[0] = (char)b;
                return 1;
            }
    }
    const char *s = t->tok[id];
    int n = t->tok_len[id], m = 0;
    for (int i = 0; i < n;) {
        if (i + 3 <= n && !memcmp(s + i, META, 3)) {
            if (m < cap) buf[m] = ' ';
            m++;
            i += 3;
        } else {
            if (m < cap) buf[m] = s[i];
            m++;
            i++;
        }
    }
    return m;
}

int bpe_token_bytes(const bpe_tokenizer *t, int id, char *buf, int cap) {
    if (!t || id < 0 || id >= t->n_vocab || !t->tok[id]) return PEFT_ERR_INVALID;
    if (cap < 0) cap = 0;
    if (t->kind == BPE_BYTE_LEVEL) return bytelevel_bytes(t, t->tok[id], t->tok_len[id], buf, cap);
    if (t->kind == BPE_WORDPIECE) return wp_token_bytes(t, id, buf, cap);
    return sp_bytes(t, id, buf, cap);
}

/* Appends bytes as UTF-8, replacing each invalid sequence with U+FFFD the
 * way Rust's String::from_utf8_lossy does (one per maximal invalid prefix). */
static int append_lossy(peft_buf *o, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        int l = bpe_utf8_len(p + i, n - i);
        if (l) { i += (size_t)l; continue; }
        if (peft_buf_append(o, s + run, i - run)) return PEFT_ERR_NOMEM;
        /* Length of the maximal prefix of a valid sequence starting at i. */
        size_t skip = 1;
        unsigned c = p[i];
        int need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
        for (size_t k = 1; k < (size_t)need && i + k < n; k++) {
            unsigned d = p[i + k];
            unsigned lo = 0x80, hi = 0xBF;
            if (k == 1) {
                if (c == 0xE0) lo = 0xA0;
                else if (c == 0xED) hi = 0x9F;
                else if (c == 0xF0) lo = 0x90;
                else if (c == 0xF4) hi = 0x8F;
            }
            if (d < lo || d > hi) break;
            skip++;
        }
        if (peft_buf_append(o, "\xEF\xBF\xBD", 3)) return PEFT_ERR_NOMEM;
        i += skip;
        run = i;
    }
    return peft_buf_append(o, s + run, n - run) ? PEFT_ERR_NOMEM : 0;
}

/* Flushes a run of SentencePiece byte tokens: valid UTF-8 passes through,
 * otherwise each byte becomes U+FFFD (HF ByteFallback). */
static int flush_bytes(peft_buf *o, peft_buf *raw) {
    size_t l = 0;
    bool ok = true;
    while (l < raw->len) {
        int q = bpe_utf8_len((unsigned char *)raw->data + l, raw->len - l);
        if (!q) { ok = false; break; }
        l += (size_t)q;
    }
    int rc = 0;
    if (ok) rc = peft_buf_append(o, raw->data, raw->len);
    else
        for (size_t q = 0; q < raw->len && !rc; q++) rc = peft_buf_append(o, "\xEF\xBF\xBD", 3);
    raw->len = 0;
    return rc;
}

/* Appends the decoded bytes of one token to b. */
static int append_token(const bpe_tokenizer *t, int id, peft_buf *b) {
    char small[128];
    int need = bpe_token_bytes(t, id, small, (int)sizeof small);
    if (need < 0) return need;
    if (need <= (int)sizeof small) return peft_buf_append(b, small, (size_t)need);
    char *big = malloc((size_t)need);
    if (!big) return PEFT_ERR_NOMEM;
    bpe_token_bytes(t, id, big, need);
    int rc = peft_buf_append(b, big, (size_t)need);
    free(big);
    return rc;
}

int bpe_decode(const bpe_tokenizer *t, const int32_t *ids, int n, char **out, peft_err *err) {
    if (t->kind == BPE_WORDPIECE) return wp_decode(t, ids, n, out, err);
    *out = NULL;
    peft_buf raw = {0}, o = {0};
    int rc = 0;
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_vocab || !t->tok[id]) {
            peft_buf_free(&raw);
            peft_buf_free(&o);
            return peft_fail(err, PEFT_ERR_INVALID, "%s: decode: token id %d out of range [0, %d)",
                             t->source, id, t->n_vocab);
        }
    }
    if (t->kind == BPE_BYTE_LEVEL) {
        /* All bytes first, then one lossy UTF-8 pass over the whole text. */
        for (int i = 0; i < n && !rc; i++) rc = append_token(t, ids[i], &raw);
        if (!rc) rc = append_lossy(&o, raw.data ? raw.data : "", raw.len);
    } else {
        for (int i = 0; i < n && !rc; i++) {
            if (t->attr[ids[i]] & BPE_ATTR_BYTE) {
                rc = append_token(t, ids[i], &raw);
            } else {
                if (raw.len) rc = flush_bytes(&o, &raw);
                if (!rc && i == 0 && t->meta_drop_first) {
                    /* HF Metaspace decoder: every "▁" of the first token is dropped. */
                    const char *s = t->tok[ids[i]];
                    int len = t->tok_len[ids[i]];
                    for (int k = 0; k < len && !rc;) {
                        if (k + 3 <= len && !memcmp(s + k, META, 3)) { k += 3; continue; }
                        rc = peft_buf_append(&o, s + k, 1);
                        k++;
                    }
                } else if (!rc) {
                    rc = append_token(t, ids[i], &o);
                }
            }
        }
        if (!rc && raw.len) rc = flush_bytes(&o, &raw);
    }
    peft_buf_free(&raw);
    if (!rc) rc = peft_buf_append(&o, "", 0); /* ensure an allocated, NUL-terminated buffer */
    if (rc) {
        peft_buf_free(&o);
        return peft_fail(err, rc, "%s: decode failed (%s)", t->source, peft_status_name(rc));
    }
    char *res = o.data;
    if (t->kind == BPE_SENTENCEPIECE && t->strip_leading_space && res[0] == ' ')
        memmove(res, res + 1, o.len); /* includes the NUL */
    *out = res;
    return 0;
}
