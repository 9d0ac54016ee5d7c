/* test_serve_text.c — the byte-level parts of `peft serve` (src/cli/
 * serve_text.c, built into this test): token pieces repaired to valid UTF-8
 * exactly as Python's bytes.decode(errors="replace") does (the OpenAI client
 * decodes that way), a stream cut only where the cut cannot change the text,
 * stop strings found and held back, the API key compared whole. */
#include "cli/serve.h"
#include "core/core.h"
#include "test.h"

static void sanitize_matches_python_replace(void) {
    /* expected: Python 3's b.decode("utf-8", "replace").encode() */
    static const struct { const char *in; size_t n; const char *want; } cases[] = {
        {"\x70\x6c\x61\x69\x6e", 5, "\x70\x6c\x61\x69\x6e"},
        {"\x63\x61\x66\xc3\xa9", 5, "\x63\x61\x66\xc3\xa9"},
        {"\xe2\x82", 2, "\xef\xbf\xbd"},
        {"\xe2\x82\x78", 3, "\xef\xbf\xbd\x78"},
        {"\xc0\x80", 2, "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf0\x9f\x98\x80\x21", 5, "\xf0\x9f\x98\x80\x21"},
        {"\xf0\x9f\x98", 3, "\xef\xbf\xbd"},
        {"\xf4\x90\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xff\xfe", 2, "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\x61\x80\x62", 3, "\x61\xef\xbf\xbd\x62"},
        {"\xe0\x80\xaf", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf0\x8f\xbf\xbf", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe1\x80\xe2\xf0\x91\x92\xf1\xbf\x41", 9, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\x41"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sbuf b = {0};
        CHECK_OK(utf8_sanitize_append(&b, cases[i].in, cases[i].n));
        CHECK_MSG(b.len == strlen(cases[i].want) && memcmp(b.p, cases[i].want, b.len) == 0, "case %zu", i);
        CHECK(utf8_valid(b.p, b.len));
        CHECK_EQ_INT(utf8_valid(cases[i].in, cases[i].n), strcmp(cases[i].in, cases[i].want) == 0);
        sbuf_free(&b);
    }
}

static void complete_prefix_holds_only_what_could_still_complete(void) {
    CHECK_EQ_INT(utf8_complete_prefix("abc\xe2\x82", 5), 3);           /* € cut after 2 of 3 bytes */
    CHECK_EQ_INT(utf8_complete_prefix("abc\xe2\x82\xac", 6), 6);
    CHECK_EQ_INT(utf8_complete_prefix("a\xf0\x9f", 3), 1);
    CHECK_EQ_INT(utf8_complete_prefix("a\xc0", 2), 2);                 /* never valid: passed on as U+FFFD */
    CHECK_EQ_INT(utf8_complete_prefix("a\xed\xa0", 3), 3);             /* a surrogate: never valid */
    CHECK_EQ_INT(utf8_complete_prefix("\xe2", 1), 0);
    CHECK_EQ_INT(utf8_complete_prefix("", 0), 0);
}

/* Random bytes arriving in random pieces, passed on at the cuts the server
 * makes, give the text of the whole repaired at once. */
static void streamed_pieces_equal_the_whole(void) {
    peft_rng r;
    peft_rng_seed(&r, 7);
    static const unsigned char alphabet[] = {'a', ' ', 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xed, 0xa0, 0xc0, 0xff, 0xbf};
    for (int trial = 0; trial < 2000; trial++) {
        char text[64];
        const int n = 1 + (int)(peft_rng_u64(&r) % 40);
        for (int i = 0; i < n; i++) text[i] = (char)alphabet[peft_rng_u64(&r) % sizeof alphabet];
        sbuf whole = {0}, streamed = {0};
        utf8_sanitize_append(&whole, text, (size_t)n);
        size_t sent = 0, have = 0;
        while (have < (size_t)n) {
            have += 1 + peft_rng_u64(&r) % 4;
            if (have > (size_t)n) have = (size_t)n;
            const size_t end = sent + utf8_complete_prefix(text + sent, have - sent);
            utf8_sanitize_append(&streamed, text + sent, end - sent);
            sent = end;
        }
        utf8_sanitize_append(&streamed, text + sent, (size_t)n - sent);
        CHECK_MSG(whole.len == streamed.len && memcmp(whole.p, streamed.p, whole.len) == 0, "trial %d", trial);
        sbuf_free(&whole);
        sbuf_free(&streamed);
        if (test_failures_) return;
    }
}

static void stop_strings_found_and_held_back(void) {
    char *stops[] = {"END", "\n\n"};
    size_t at = 99;
    CHECK(stop_find("abcEND", 6, 0, stops, 2, &at) && at == 3);
    CHECK(stop_find("a\n\nbEND", 7, 0, stops, 2, &at) && at == 1);   /* the first of any */
    CHECK(!stop_find("abcEN", 5, 0, stops, 2, &at));
    CHECK(!stop_find("ENDabc", 6, 1, stops, 2, &at));                /* before `from`: not looked at */
    CHECK_EQ_INT(stop_holdback("abcEN", 5, stops, 2), 2);
    CHECK_EQ_INT(stop_holdback("abcE", 4, stops, 2), 1);
    CHECK_EQ_INT(stop_holdback("abc\n", 4, stops, 2), 1);
    CHECK_EQ_INT(stop_holdback("abc", 3, stops, 2), 0);
    CHECK_EQ_INT(stop_holdback("E", 1, stops, 2), 1);
    CHECK_EQ_INT(stop_holdback("abc", 3, stops, 0), 0);
}

static void api_key_compared_whole(void) {
    CHECK(auth_bearer_ok("Bearer sk-1", "sk-1"));
    CHECK(auth_bearer_ok("bearer sk-1", "sk-1"));
    CHECK(!auth_bearer_ok("Bearer sk-12", "sk-1"));
    CHECK(!auth_bearer_ok("Bearer sk-", "sk-1"));
    CHECK(!auth_bearer_ok("Bearer ", "sk-1"));
    CHECK(!auth_bearer_ok("sk-1", "sk-1"));
    CHECK(!auth_bearer_ok(NULL, "sk-1"));
    CHECK(!auth_bearer_ok("Basic c2stMQ==", "sk-1"));
}

static void sbuf_grows(void) {
    sbuf b = {0};
    for (int i = 0; i < 1000; i++) CHECK_OK(sbuf_printf(&b, "%04d", i));
    CHECK_EQ_INT(b.len, 4000);
    CHECK(memcmp(b.p + 3996, "0999", 4) == 0 && b.p[4000] == 0);
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK_OK(sbuf_printf(&b, "%s", big));
    CHECK_EQ_INT(b.len, 4000 + 1999);
    sbuf_free(&b);
}

int main(void) {
    TEST_RUN(sanitize_matches_python_replace);
    TEST_RUN(complete_prefix_holds_only_what_could_still_complete);
    TEST_RUN(streamed_pieces_equal_the_whole);
    TEST_RUN(stop_strings_found_and_held_back);
    TEST_RUN(api_key_compared_whole);
    TEST_RUN(sbuf_grows);
    TEST_MAIN_END();
}
