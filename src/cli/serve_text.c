/* serve_text.c — the byte-level pieces of `peft serve`: growable buffers,
 * UTF-8 repair of token pieces, stop strings, API-key comparison. */
#include "serve.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int sbuf_add(sbuf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int sbuf_printf(sbuf *b, const char *fmt, ...) {
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof small) return sbuf_add(b, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sbuf_add(b, big, (size_t)n);
    free(big);
    return rc;
}

void sbuf_free(sbuf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* One unit at s[0, n): a well-formed character, or a maximal ill-formed
 * subpart (Unicode's "best practice" for U+FFFD, which Python follows).
 * *truncated: the unit ran into the end of the bytes while still a valid
 * prefix, so more bytes could complete it. */
static size_t utf8_unit(const unsigned char *s, size_t n, bool *valid, bool *truncated) {
    *truncated = false;
    const unsigned b = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (b < 0x80) { *valid = true; return 1; }
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;   /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;   /* nothing past U+10FFFF */
    } else { *valid = false; return 1; }
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) { *valid = false; *truncated = true; return (size_t)k; }
        const unsigned c = s[k];
        if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) { *valid = false; return (size_t)k; }
    }
    *valid = true;
    return (size_t)need + 1;
}

int utf8_sanitize_append(sbuf *out, const char *text, size_t n) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, run = 0;   /* run: start of the pending well-formed bytes */
    while (i < n) {
        bool valid, trunc;
        size_t u = utf8_unit(s + i, n - i, &valid, &trunc);
        if (!valid) {
            if (sbuf_add(out, text + run, i - run) || sbuf_add(out, "\xEF\xBF\xBD", 3)) return -1;
            run = i + u;
        }
        i += u;
    }
    return sbuf_add(out, text + run, n - run);
}

size_t utf8_complete_prefix(const char *text, size_t n) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        bool valid, trunc;
        size_t u = utf8_unit(s + i, n - i, &valid, &trunc);
        if (trunc) return i;
        i += u;
    }
    return n;
}

bool utf8_valid(const char *text, size_t n) {
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        bool valid, trunc;
        i += utf8_unit(s + i, n - i, &valid, &trunc);
        if (!valid) return false;
    }
    return true;
}

static bool find_bytes(const char *h, size_t hn, const char *nd, size_t nn, size_t *at) {
    if (nn == 0 || nn > hn) return false;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == nd[0] && memcmp(h + i, nd, nn) == 0) { *at = i; return true; }
    return false;
}

bool stop_find(const char *text, size_t n, size_t from, char *const *stops, int n_stops, size_t *at) {
    bool found = false;
    size_t best = 0;
    if (from > n) return false;
    for (int k = 0; k < n_stops; k++) {
        size_t p;
        if (find_bytes(text + from, n - from, stops[k], strlen(stops[k]), &p) && (!found || from + p < best)) {
            best = from + p;
            found = true;
        }
    }
    if (found) *at = best;
    return found;
}

size_t stop_holdback(const char *text, size_t n, char *const *stops, int n_stops) {
    size_t best = 0;
    for (int k = 0; k < n_stops; k++) {
        const size_t sl = strlen(stops[k]);
        if (sl == 0) continue;
        for (size_t m = (sl - 1 < n ? sl - 1 : n); m > best; m--)
            if (memcmp(text + n - m, stops[k], m) == 0) { best = m; break; }
    }
    return best;
}

bool auth_bearer_ok(const char *header, const char *key) {
    if (!header || strncasecmp(header, "Bearer ", 7) != 0) return false;
    const char *tok = header + 7;
    while (*tok == ' ') tok++;
    const size_t a = strlen(tok), b = strlen(key);
    /* the time depends on the lengths only, never on where they differ */
    unsigned diff = a != b;
    for (size_t i = 0; i < b; i++) diff |= (unsigned)(unsigned char)key[i] ^ (unsigned char)(i < a ? tok[i] : 0);
    return diff == 0;
}
