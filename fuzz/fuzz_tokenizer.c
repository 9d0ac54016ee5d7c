/* fuzz_tokenizer.c — tokenizer loading, encode, decode and chat format.
 * A multi-file input (fuzz.h) with any of tokenizer.json (BPE or WordPiece),
 * tokenizer_config.json, vocab.json + merges.txt (GPT-2 files) and text (the
 * text to encode); an input without headers is tokenizer.json. Without a
 * tokenizer file the text goes through the tiny-llama fixture's tokenizer
 * (byte-level BPE with ChatML special tokens), so the same harness fuzzes
 * the text side too. */
#include "fuzz.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char default_text[] =
    "Hello, world!  It's 3.14 -- caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\n\n"
    "<|im_start|>user\nhi<|im_end|><|endoftext|> \t end";

static int run(const bpe_tokenizer *t, const char *text, size_t len) {
    volatile size_t sum = bpe_vocab_size(t) + (size_t)bpe_bos_id(t) + (size_t)bpe_eos_id(t) +
                          (size_t)bpe_pad_id(t) + bpe_adds_bos(t) + bpe_get_kind(t) + (size_t)bpe_cls_id(t) +
                          (size_t)bpe_sep_id(t);
    const char *d = bpe_describe(t);
    if (d) sum += strlen(d);
    int bad = 0;
    for (int mode = 0; mode < 4; mode++) {
        int32_t *ids = NULL;
        int n = 0;
        peft_err err = {0};
        int rc = bpe_encode(t, text, len, mode & 1, mode & 2, &ids, &n, &err);
        if (rc != 0) { bad |= fuzz_err_msg(&err); continue; }
        char buf[32];
        for (int i = 0; i < n; i++) {
            sum += bpe_is_special(t, ids[i]);
            const char *tx = bpe_token_text(t, ids[i]);
            if (tx) sum += strlen(tx);
            int l = bpe_token_bytes(t, ids[i], buf, sizeof buf);
            if (l > 0) sum += (unsigned char)buf[0];
        }
        char *out = NULL;
        peft_err e2 = {0};
        if (bpe_decode(t, ids, n, &out, &e2) == 0) { sum += strlen(out); free(out); }
        else bad |= fuzz_err_msg(&e2);
        free(ids);
    }
    /* the text's halves as a pair (WordPiece: the pair template, type ids) */
    for (int mode = 0; mode < 2; mode++) {
        int32_t *ids = NULL, *ty = NULL;
        int n = 0;
        peft_err err = {0};
        size_t h = len / 2;
        while (h > 0 && h < len && ((unsigned char)text[h] & 0xC0) == 0x80) h--;
        int rc = bpe_encode_pair(t, text, h, text + h, len - h, mode, true, &ids, &ty, &n, &err);
        if (rc != 0) { bad |= fuzz_err_msg(&err); continue; }
        for (int i = 0; i < n; i++) sum += (size_t)ty[i];
        free(ids);
        free(ty);
    }
    /* every token's bytes, and ids just outside the vocabulary */
    int nv = bpe_vocab_size(t);
    char buf[8];
    for (int id = -2; id < nv + 2 && id < 70000; id++) {
        int l = bpe_token_bytes(t, id, buf, sizeof buf);
        if (l > 0) sum += (unsigned char)buf[0];
        const char *tx = bpe_token_text(t, id);
        if (tx) sum += bpe_token_id(t, tx) == id;
    }
    /* the text as a token id sequence */
    if (nv > 0) {
        int n = (int)(len / 2 < 64 ? len / 2 : 64);
        int32_t ids[64];
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(((unsigned char)text[2 * i] << 8 | (unsigned char)text[2 * i + 1]) % nv);
        char *out = NULL;
        peft_err e2 = {0};
        if (bpe_decode(t, ids, n, &out, &e2) == 0) { sum += strlen(out); free(out); }
        else bad |= fuzz_err_msg(&e2);
    }
    char *content = malloc(len + 1);
    if (content) {
        memcpy(content, text, len);
        content[len] = 0;   /* the chat API takes C strings: the text up to its first NUL */
        bpe_chat_msg msgs[4] = {{"system", "Be brief."}, {"user", content}, {"assistant", content}, {"user", "ok"}};
        for (int k = 0; k < 3; k++) {
            char *out = NULL;
            peft_err e2 = {0};
            const bpe_chat_msg *ms = k == 2 ? msgs + 1 : msgs;
            int nm = k == 0 ? 4 : k == 1 ? 2 : 3;
            if (bpe_chat_format(t, ms, nm, k != 1, &out, &e2) == 0) { sum += strlen(out); free(out); }
            else bad |= fuzz_err_msg(&e2);
        }
        free(content);
    }
    int32_t stop[16];
    sum += (size_t)bpe_stop_tokens(t, stop, 16);
    (void)sum;
    return bad;
}

int fuzz_tokenizer_one(const uint8_t *data, size_t size) {
    static bpe_tokenizer *fixture;
    if (!fuzz_dir()) return 0;
    fuzz_write_parts(data, size, "tokenizer.json");
    char *text = NULL;
    size_t len = 0;
    if (fuzz_has("text")) {
        FILE *f = fopen(fuzz_path("text"), "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            rewind(f);
            text = malloc(n > 0 ? (size_t)n : 1);
            if (text && n > 0 && fread(text, 1, (size_t)n, f) == (size_t)n) len = (size_t)n;
            fclose(f);
        }
    }
    const char *tx = text ? text : default_text;
    if (!text) len = sizeof default_text - 1;
    bpe_tokenizer *t = NULL;
    peft_err err = {0};
    int rc = 1, bad = 0;
    if (fuzz_has("tokenizer.json")) {
        rc = bpe_load_json(fuzz_path("tokenizer.json"), &t, &err);
    } else if (fuzz_has("vocab.json") && fuzz_has("merges.txt")) {
        char v[600];
        snprintf(v, sizeof v, "%s", fuzz_path("vocab.json"));
        rc = bpe_load_gpt2_files(v, fuzz_path("merges.txt"), &t, &err);
    }
    if (rc < 0) {
        bad = fuzz_err_msg(&err);
    } else if (rc == 0) {
        bad = run(t, tx, len) < 0 ? -1 : 1;
        bpe_free(t);
    } else {
        if (!fixture && bpe_load_json(fuzz_fixture("models/tiny-llama/tokenizer.json"), &fixture, &err) != 0) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
            free(text);
            return -1;
        }
        bad = run(fixture, tx, len) < 0 ? -1 : 1;
    }
    free(text);
    return bad;
}

FUZZ_MAIN(fuzz_tokenizer_one)
