/* test_chat_cli.c — `peft chat` on the real SmolLM2 model, as a user types
 * into it: under a pseudo-terminal (forkpty), three turns with a /reset
 * between the second and the third, then /exit.
 *   - the first reply, and the reply after /reset, are what
 *     `peft generate --chat` gives for the same message (greedy);
 *   - the second reply sees the first turn: it equals a fresh session's
 *     greedy continuation of the whole two-turn conversation formatted by
 *     the template (the chat keeps the cache between turns instead);
 *   - with stdin not a terminal, the same replies, without prompts;
 *   - mistakes get one line each. */
#include "peft.h"
#include "test.h"

#include <stdbool.h>

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXTOK 24

static const char *model_path(void) {
    const char *p = getenv("PEFT_TEST_GGUF");
    return p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

typedef struct {
    char buf[65536];
    size_t n;
} term;

/* Reads from fd into t until what came after byte `from` of t's text
 * (without '\r') ends with `end`, or the deadline passes. */
static bool read_until(int fd, term *t, size_t from, const char *end, time_t deadline) {
    const size_t el = strlen(end);
    while (time(NULL) < deadline) {
        if (t->n >= from + el && !memcmp(t->buf + t->n - el, end, el)) return true;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 1000) <= 0) continue;
        char c[4096];
        ssize_t r = read(fd, c, sizeof c);
        if (r <= 0) return false;
        for (ssize_t i = 0; i < r && t->n + 1 < sizeof t->buf; i++)
            if (c[i] != '\r') t->buf[t->n++] = c[i];
        t->buf[t->n] = 0;
    }
    return false;
}

/* Sends a line and returns (malloc'ed) what the chat printed after the
 * echoed line, up to its next prompt. */
static char *say(int fd, term *t, const char *line) {
    const size_t start = t->n;
    char msg[512];
    snprintf(msg, sizeof msg, "%s\n", line);
    if (write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg)) return NULL;
    if (!read_until(fd, t, start, "\n> ", time(NULL) + 300)) {
        fprintf(stderr, "  no prompt after \"%s\"; the terminal shows:\n%s\n", line, t->buf + start);
        return NULL;
    }
    const char *s = strchr(t->buf + start, '\n');   /* past the echo */
    if (!s) return NULL;
    s++;
    const size_t len = (size_t)(t->buf + t->n - 3 - s);
    char *out = malloc(len + 1);
    if (!out) return NULL;
    memcpy(out, s, len);
    out[len] = 0;
    return out;
}

/* peft generate --chat's reply to one message (trailing newline dropped);
 * both run with --exact-decode, so that the prompt's products are the same
 * f32 ones whether its tokens came in one call or turn by turn (8-bit
 * activations, the default, round differently for 1-4 rows than a GEMM). */
static char *generate_reply(const char *msg) {
    char args[1024], out[16384];
    snprintf(args, sizeof args,
             "generate --model %s --chat --no-echo --threads 2 --max-tokens %d --exact-decode --prompt '%s'",
             model_path(), MAXTOK, msg);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null", getenv("PEFT_CLI"), args);
    if (test_run_shell(cmd, out, sizeof out)) return NULL;
    size_t n = strlen(out);
    while (n && out[n - 1] == '\n') out[--n] = 0;
    return strdup(out);
}

/* A fresh session's greedy reply to msgs formatted by the template. */
static char *fresh_reply(peft_model *m, const peft_chat_message *msgs, int n) {
    peft_error e;
    char *text = NULL;
    int32_t *ids = NULL;
    int n_ids = 0;
    CHECK_OK(peft_chat_format(m, msgs, n, 1, &text, &e));
    if (!text) return NULL;
    CHECK_OK(peft_tokenize_err(m, text, 0, 1, &ids, &n_ids, &e));
    free(text);
    peft_session *s = peft_session_new(m, &e);
    peft_model_info info;
    peft_model_get_info(m, &info);
    float *lg = malloc(sizeof *lg * (size_t)info.vocab);
    char *out = calloc(1, 4096);
    size_t len = 0;
    if (s && lg && out && ids && !peft_session_decode(s, ids, n_ids, lg)) {
        for (int i = 0; i < MAXTOK; i++) {
            int32_t best = 0;
            for (int v = 1; v < info.vocab; v++)
                if (lg[v] > lg[best]) best = v;
            if (peft_token_is_stop(m, best)) break;
            char piece[256];
            int pl = peft_token_to_piece(m, best, piece, (int)sizeof piece);
            if (pl > 0 && len + (size_t)pl < 4095) { memcpy(out + len, piece, (size_t)pl); len += (size_t)pl; }
            if (peft_session_decode(s, &best, 1, lg)) break;
        }
    }
    free(ids);
    free(lg);
    peft_session_free(s);
    return out;
}

static const char *q1 = "What is the capital of France?", *q2 = "And of Italy?", *q3 = "What is 2+2?";

static void chat_in_a_terminal(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    if (access(model_path(), R_OK)) TEST_SKIP("%s not found (run `bash scripts/setup.sh --model`)", model_path());
    char *want1 = generate_reply(q1), *want3 = generate_reply(q3);
    CHECK(want1 && want3 && want1[0] && want3[0]);
    peft_ctx *ctx = peft_init(NULL);
    peft_model *m = ctx ? peft_model_load(ctx, model_path()) : NULL;
    CHECK(m != NULL);
    char maxtok[16];
    snprintf(maxtok, sizeof maxtok, "%d", MAXTOK);
    int fd = -1;
    pid_t pid = forkpty(&fd, NULL, NULL, NULL);
    if (pid == 0) {
        char *argv[] = {(char *)getenv("PEFT_CLI"), "chat", "--model", (char *)model_path(), "--threads", "2",
                        "--max-tokens", maxtok, "--exact-decode", NULL};
        execv(argv[0], argv);
        _exit(127);
    }
    CHECK(pid > 0);
    static term t;
    t.n = 0;
    if (pid > 0 && m) {
        CHECK_MSG(read_until(fd, &t, 0, "> ", time(NULL) + 120), "no first prompt; the terminal shows:\n%s", t.buf);
        CHECK(strstr(t.buf, "/reset") != NULL);   /* the banner says how to reset and quit */
        char *r1 = say(fd, &t, q1), *r2 = say(fd, &t, q2), *r0 = say(fd, &t, "/reset"), *r3 = say(fd, &t, q3);
        char *bad = say(fd, &t, "/frobnicate");
        const peft_chat_message conv[3] = {{"user", q1}, {"assistant", r1 ? r1 : ""}, {"user", q2}};
        char *want2 = fresh_reply(m, conv, 3);
        CHECK_MSG(r1 && want1 && !strcmp(r1, want1), "first reply \"%s\", peft generate --chat \"%s\"", r1 ? r1 : "(none)",
                  want1 ? want1 : "(none)");
        CHECK_MSG(r2 && want2 && !strcmp(r2, want2), "second reply \"%s\", the whole conversation afresh \"%s\"",
                  r2 ? r2 : "(none)", want2 ? want2 : "(none)");
        CHECK(r0 && strstr(r0, "forgotten"));
        CHECK_MSG(r3 && want3 && !strcmp(r3, want3), "after /reset \"%s\", peft generate --chat \"%s\"",
                  r3 ? r3 : "(none)", want3 ? want3 : "(none)");
        CHECK(bad && strstr(bad, "unknown command /frobnicate"));
        printf("    in a terminal: \"%s\" / \"%s\" / (reset) / \"%s\"\n", r1 ? r1 : "", r2 ? r2 : "", r3 ? r3 : "");
        const ssize_t w = write(fd, "/exit\n", 6);
        CHECK(w == 6);
        int st = 0;
        for (int i = 0; i < 100 && waitpid(pid, &st, WNOHANG) == 0; i++) {
            term drain = {.n = 0};
            read_until(fd, &drain, 0, "\x01", time(NULL) + 1);
        }
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "chat did not exit 0 after /exit");

        /* piped: the same replies, one per line, no prompts */
        char cmd[2048], out[16384];
        snprintf(cmd, sizeof cmd, "printf '%%s\\n%%s\\n/reset\\n%%s\\n' '%s' '%s' '%s' | %s chat --model %s --threads 2 "
                 "--max-tokens %d --exact-decode 2>/dev/null", q1, q2, q3, getenv("PEFT_CLI"), model_path(), MAXTOK);
        CHECK_OK(test_run_shell(cmd, out, sizeof out));
        char want[16384];
        snprintf(want, sizeof want, "%s\n%s\n%s\n", want1 ? want1 : "", want2 ? want2 : "", want3 ? want3 : "");
        CHECK_MSG(!strcmp(out, want), "piped chat printed\n%s\nwant\n%s", out, want);
        free(r1);
        free(r2);
        free(r0);
        free(r3);
        free(bad);
        free(want2);
    }
    if (pid > 0) { kill(pid, SIGKILL); waitpid(pid, NULL, 0); }
    if (fd >= 0) close(fd);
    free(want1);
    free(want3);
    peft_model_free(m);
    peft_free(ctx);
}

static void mistakes_get_one_line(void) {
    if (!getenv("PEFT_CLI")) TEST_SKIP("PEFT_CLI not set (run through ctest)");
    char out[8192];
    CHECK_EQ_INT(test_run_cli("chat", out, sizeof out), 2);
    CHECK(strstr(out, "--model is required") != NULL);
    CHECK_EQ_INT(test_run_cli("chat --model tests/fixtures/models/tiny-llama --temperature -1", out, sizeof out), 2);
    CHECK(strstr(out, "--temperature must be") != NULL);
    CHECK_EQ_INT(test_run_cli("chat --model tests/fixtures/models/no-such-model", out, sizeof out), 1);
    CHECK(strstr(out, "no-such-model") != NULL);
    /* an encoder has nothing to chat with */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "echo hi | %s chat --model tests/fixtures/models/tiny-bert 2>&1", getenv("PEFT_CLI"));
    CHECK_EQ_INT(test_run_shell(cmd, out, sizeof out), 1);
    CHECK(strstr(out, "encoder") != NULL);
    /* a conversation longer than the context says how to go on */
    snprintf(cmd, sizeof cmd, "echo 'a long message' | %s chat --model tests/fixtures/models/tiny-llama --max-tokens 500 2>&1",
             getenv("PEFT_CLI"));
    CHECK_EQ_INT(test_run_shell(cmd, out, sizeof out), 1);
    CHECK(strstr(out, "context length") != NULL && strstr(out, "/reset") != NULL);
}

int main(void) {
    TEST_RUN(chat_in_a_terminal);
    TEST_RUN(mistakes_get_one_line);
    TEST_MAIN_END();
}
