/* cmd_chat.c — `peft chat`: an interactive conversation in the model's chat
 * template, on one session whose cache keeps the conversation.
 *
 * Each turn formats the whole history (as apply_chat_template does) and
 * tokenizes it; the tokens the session already holds and the new text
 * share a prefix, which stays in the cache (peft_session_keep), so a turn
 * costs its own tokens only. Uses include/peft.h only. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft chat --model PATH [options]\n\n"
            "An interactive conversation in the model's chat template: type a message and press Enter.\n"
            "  /reset  forget the conversation   /exit  quit (or Ctrl-D)\n\n"
            "  --model PATH       HF model folder or .gguf file\n"
            "  --adapter DIR      apply an adapter of any method (HF PEFT format or peft.c's)\n"
            "  --system TEXT      system prompt (default: the template's)\n"
            "  --max-tokens N     new tokens per reply at most (default 512)\n"
            "  --temperature T    0 = greedy (default 0)\n"
            "  --top-k K          sample from the K most likely tokens (0 = off)\n"
            "  --top-p P          nucleus sampling mass (1 = off)\n"
            "  --seed S           sampling seed (default 42)\n"
            "  --threads N        threads (default: all cores)\n"
            "  --exact-decode     decode on f32 activations (default: 8-bit on quantized weights, as llama.cpp)\n");
}

typedef struct {
    peft_chat_message *m;
    int n, cap;
} history;

static int hist_add(history *h, const char *role, const char *text) {
    if (h->n == h->cap) {
        int cap = h->cap ? 2 * h->cap : 16;
        peft_chat_message *m = realloc(h->m, sizeof *m * (size_t)cap);
        if (!m) return -1;
        h->m = m;
        h->cap = cap;
    }
    char *c = strdup(text);
    if (!c) return -1;
    h->m[h->n++] = (peft_chat_message){role, c};
    return 0;
}

static void hist_clear(history *h, int keep) {
    while (h->n > keep) free((char *)h->m[--h->n].content);
}

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* One reply: the history formatted and tokenized, the part the cache lacks
 * decoded, then tokens sampled and printed until a stop token. The reply's
 * text goes to *reply. 0, or 1 after printing the error. */
static int turn(peft_model *m, peft_session *s, const history *h, int32_t **fed, int *n_fed, peft_sampler *smp,
                int max_tokens, int vocab, float *logits, buf *reply) {
    peft_error e;
    char *text = NULL;
    int32_t *ids = NULL;
    int n = 0;
    if (peft_chat_format(m, h->m, h->n, 1, &text, &e) || peft_tokenize_err(m, text, 0, 1, &ids, &n, &e)) {
        fprintf(stderr, "peft chat: %s\n", e.msg);
        free(text);
        return 1;
    }
    free(text);
    int common = 0;
    while (common < n && common < *n_fed && ids[common] == (*fed)[common]) common++;
    if (common == n) common--;   /* the last prompt token is decoded again for its logits */
    if (peft_session_keep(s, common) || peft_session_decode(s, ids + common, n - common, logits)) {
        fprintf(stderr, "peft chat: %s%s\n", peft_session_error(s),
                strstr(peft_session_error(s), "context") ? " (/reset starts a new conversation)" : "");
        free(ids);
        peft_session_reset(s);
        *n_fed = 0;
        return 1;
    }
    free(*fed);
    *fed = ids;
    *n_fed = n;
    reply->n = 0;
    buf_add(reply, "", 0);
    char piece[256];
    for (int i = 0; i < max_tokens; i++) {
        const int32_t t = peft_sampler_sample(smp, logits, vocab);
        if (t < 0) { fprintf(stderr, "peft chat: out of memory\n"); return 1; }
        if (peft_token_is_stop(m, t)) break;
        int len = peft_token_to_piece(m, t, piece, (int)sizeof piece);
        if (len > (int)sizeof piece) len = (int)sizeof piece;
        if (len > 0) {
            fwrite(piece, 1, (size_t)len, stdout);
            fflush(stdout);
            if (buf_add(reply, piece, (size_t)len)) { fprintf(stderr, "peft chat: out of memory\n"); return 1; }
        }
        if (peft_session_decode(s, &t, 1, logits)) {
            fprintf(stderr, "\npeft chat: %s (/reset starts a new conversation)\n", peft_session_error(s));
            return 1;
        }
        int32_t *f = realloc(*fed, sizeof *f * (size_t)(*n_fed + 1));
        if (!f) { fprintf(stderr, "peft chat: out of memory\n"); return 1; }
        *fed = f;
        (*fed)[(*n_fed)++] = t;
    }
    fputc('\n', stdout);
    fflush(stdout);
    return 0;
}

int cmd_chat(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "chat"};
    const char *model = NULL, *adapter_dir = NULL, *system = NULL, *v;
    peft_sample_params sp = peft_sample_default_params();
    sp.max_tokens = 512;
    int threads = 0;
    bool bad = false, verbose = false, exact = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--system", &bad))) system = v;
        else if (cli_sample_opt(&a, &sp, &bad)) continue;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &threads) != 0;
        else if (cli_flag(&a, "--verbose")) verbose = true;
        else if (cli_flag(&a, "--exact-decode")) exact = true;
        else if (cli_flag(&a, "--help")) { usage(stdout); return 0; }
        else if (!bad) {
            cli_unknown_option(&a);
            usage(stderr);
            return 2;
        }
    }
    if (bad) return 2;
    if (!model) {
        fprintf(stderr, "peft chat: --model is required\n");
        usage(stderr);
        return 2;
    }
    peft_ctx *ctx = cli_ctx(threads, verbose);
    if (!ctx) return 1;
    peft_model *m = peft_model_load(ctx, model);
    peft_adapter *ad = NULL;
    peft_session *s = NULL;
    peft_sampler *smp = NULL;
    float *logits = NULL;
    int rc = 1;
    peft_error e = {0};
    peft_model_info info;
    if (!m || peft_model_get_info(m, &info)) { fprintf(stderr, "peft chat: %s\n", peft_last_error(ctx)); goto out; }
    peft_model_set_decode(m, exact ? PEFT_DECODE_EXACT : PEFT_DECODE_FAST);
    if (info.arch == PEFT_ARCH_BERT) {
        fprintf(stderr, "peft chat: %s is an encoder (%s): it has no language-model head to talk with\n", model,
                info.arch_name);
        goto out;
    }
    if (adapter_dir && !(ad = peft_adapter_load(m, adapter_dir))) {
        fprintf(stderr, "peft chat: %s\n", peft_last_error(ctx));
        goto out;
    }
    if (peft_classifier_num_labels(m, ad) > 0) {
        fprintf(stderr, "peft chat: %s is a %d-label classifier (a sequence-classification head), which predicts "
                "labels, not text: use `peft predict --model %s%s%s --data FILE`\n", adapter_dir ? adapter_dir : model,
                peft_classifier_num_labels(m, ad), model, adapter_dir ? " --adapter " : "", adapter_dir ? adapter_dir : "");
        goto out;
    }
    if (!(s = peft_session_new(m, &e)) || peft_session_set_adapter(s, ad)) {
        fprintf(stderr, "peft chat: %s\n", s ? peft_session_error(s) : e.msg);
        goto out;
    }
    /* the template must exist: a model without one is refused here, not after the first message */
    char *probe = NULL;
    const peft_chat_message hello = {"user", "hello"};
    if (peft_chat_format(m, &hello, 1, 1, &probe, &e)) { fprintf(stderr, "peft chat: %s\n", e.msg); goto out; }
    free(probe);
    smp = peft_sampler_new(&sp);
    logits = malloc(sizeof *logits * (size_t)info.vocab);
    if (!smp || !logits) { fprintf(stderr, "peft chat: out of memory\n"); goto out; }

    const bool tty = isatty(STDIN_FILENO);
    history h = {0};
    if (system && hist_add(&h, "system", system)) { fprintf(stderr, "peft chat: out of memory\n"); goto out; }
    const int base = h.n;
    int32_t *fed = NULL;
    int n_fed = 0;
    buf reply = {0};
    char *line = NULL;
    size_t cap = 0;
    rc = 0;
    if (tty) fprintf(stderr, "peft chat: %s%s%s. /reset forgets the conversation, /exit quits.\n", model,
                     adapter_dir ? " + " : "", adapter_dir ? adapter_dir : "");
    for (;;) {
        if (tty) { fputs("> ", stdout); fflush(stdout); }
        ssize_t len = getline(&line, &cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            hist_clear(&h, base);
            peft_session_reset(s);
            n_fed = 0;
            if (tty) fputs("(conversation forgotten)\n", stdout);
            continue;
        }
        if (line[0] == '/' && strchr(line, ' ') == NULL) {
            fprintf(stderr, "peft chat: unknown command %s (/reset, /exit)\n", line);
            continue;
        }
        if (hist_add(&h, "user", line)) { fprintf(stderr, "peft chat: out of memory\n"); rc = 1; break; }
        if (turn(m, s, &h, &fed, &n_fed, smp, sp.max_tokens, info.vocab, logits, &reply)) {
            hist_clear(&h, h.n - 1);   /* the message that failed is not kept */
            if (!tty) { rc = 1; break; }
            continue;
        }
        if (hist_add(&h, "assistant", reply.p ? reply.p : "")) { fprintf(stderr, "peft chat: out of memory\n"); rc = 1; break; }
    }
    free(line);
    free(reply.p);
    free(fed);
    hist_clear(&h, 0);
    free(h.m);
out:
    free(logits);
    peft_sampler_free(smp);
    peft_session_free(s);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}
