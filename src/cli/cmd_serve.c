/* cmd_serve.c — `peft serve`: one base model and many adapters behind an
 * OpenAI-compatible HTTP API (serve.h). Runs until SIGINT or SIGTERM, then
 * answers what is still open (503) and exits 0. */
#define _GNU_SOURCE   /* ppoll: wait for the pipe with the stop signals unblocked */
#include "cli.h"
#include "serve.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft serve --model PATH [--adapter NAME=DIR]... [options]\n\n"
            "  --model PATH         HF model folder or .gguf file (the base; its name is the file or folder name, or \"base\")\n"
            "  --adapter NAME=DIR   load an adapter at start, requested as \"model\": \"NAME\" (repeat; DIR alone: NAME = its folder name)\n"
            "  --host ADDR          address to listen on (default 127.0.0.1; 0.0.0.0 or :: for every interface)\n"
            "  --port N             port (default 8080; 0: any free one, printed at start)\n"
            "  --api-key KEY        every request needs \"Authorization: Bearer KEY\" (default: $PEFT_API_KEY, else none)\n"
            "  --threads N          threads of the batched forward (default: all cores)\n"
            "  --max-batch N        requests decoding together (default 32)\n"
            "  --max-queue N        requests waiting beyond those; more are refused with 429 (default 64)\n"
            "  --ctx N              context per request, prompt and generation (default and most: the model's)\n"
            "  --exact-decode       decode on f32 activations (default: 8-bit on quantized weights, as llama.cpp)\n"
            "  --step-delay-ms N    pause N ms after every batch step (testing: keeps requests in flight; default 0)\n"
            "  --verbose            log loads, unloads and libmicrohttpd's errors to stderr\n");
}

/* The write end of the pipe the stop signals' handler writes to (a
 * handler can only reach it through a global). */
static int stop_fd = -1;

static void on_stop_signal(int sig) {
    const unsigned char c = (unsigned char)sig;
    const int saved = errno;
    if (write(stop_fd, &c, 1) < 0) {
        /* nothing a handler can do */
    }
    errno = saved;
}

static char *base_name_of(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    char *out = malloc(n - b + 1);
    if (out) {
        memcpy(out, path + b, n - b);
        out[n - b] = 0;
    }
    return out;
}

static void free_server(srv *s) {
    for (int i = 0; i < s->n_ads; i++) {
        peft_adapter_free(s->ads[i]->a);
        free(s->ads[i]->name);
        free(s->ads[i]->path);
        free(s->ads[i]);
    }
    free(s->ads);
    free(s->base_name);
    free(s->base_stem);
    free(s->model_path);
    peft_model_free(s->model);
    peft_free(s->ctx);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
}

int cmd_serve(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "serve"};
    const char *model = NULL, *host = "127.0.0.1", *api_key = getenv("PEFT_API_KEY"), *v;
    const char *adapters[256];
    int n_adapters = 0, port = 8080, threads = 0, max_batch = 32, max_queue = 64, ctx_len = 0, step_delay = 0;
    bool bad = false, verbose = false, exact = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) {
            if (n_adapters == 256) { fprintf(stderr, "peft serve: more than 256 --adapter\n"); return 2; }
            adapters[n_adapters++] = v;
        } else if ((v = cli_opt(&a, "--host", &bad))) host = v;
        else if ((v = cli_opt(&a, "--port", &bad))) bad = cli_int(a.cmd, "--port", v, 0, 65535, &port) != 0;
        else if ((v = cli_opt(&a, "--api-key", &bad))) api_key = v;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &threads) != 0;
        else if ((v = cli_opt(&a, "--max-batch", &bad))) bad = cli_int(a.cmd, "--max-batch", v, 1, 1024, &max_batch) != 0;
        else if ((v = cli_opt(&a, "--max-queue", &bad))) bad = cli_int(a.cmd, "--max-queue", v, 0, 1000000, &max_queue) != 0;
        else if ((v = cli_opt(&a, "--ctx", &bad))) bad = cli_int(a.cmd, "--ctx", v, 2, 1 << 24, &ctx_len) != 0;
        else if ((v = cli_opt(&a, "--step-delay-ms", &bad))) bad = cli_int(a.cmd, "--step-delay-ms", v, 0, 10000, &step_delay) != 0;
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
        fprintf(stderr, "peft serve: --model is required\n");
        usage(stderr);
        return 2;
    }
    if (api_key && !*api_key) api_key = NULL;

    /* SIGINT and SIGTERM write to a pipe that the main thread waits on.
     * They are blocked in every thread but the main one while it waits
     * (the threads started from here inherit the mask), and a handler still
     * catches them on threads that predate it (OpenBLAS starts its own
     * before main): a second signal during the shutdown must not kill us,
     * and ThreadSanitizer runs handlers only in a thread that is blocked
     * in a call it knows. */
    int stop_pipe[2];
    if (pipe(stop_pipe)) {
        perror("peft serve: pipe");
        return 1;
    }
    stop_fd = stop_pipe[1];
    sigset_t stop_sigs, wait_mask;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, &wait_mask);
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGTERM);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv s;
    memset(&s, 0, sizeof s);
    s.cmd = "serve";
    s.threads = threads;
    s.max_batch = max_batch;
    s.max_queue = max_queue;
    s.step_delay_ms = step_delay;
    s.api_key = api_key;
    s.verbose = verbose;
    s.t_start = srv_now();
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.wake, NULL);
    if (!(s.ctx = cli_ctx(threads, verbose))) return 1;
    if (!(s.model = peft_model_load(s.ctx, model))) {
        fprintf(stderr, "peft serve: %s\n", peft_last_error(s.ctx));
        free_server(&s);
        return 1;
    }
    peft_model_set_decode(s.model, exact ? PEFT_DECODE_EXACT : PEFT_DECODE_FAST);
    peft_model_get_info(s.model, &s.info);
    if (s.info.arch == PEFT_ARCH_BERT) {
        fprintf(stderr, "peft serve: %s is an encoder (%s): it has no language-model head to generate with\n", model,
                s.info.arch_name);
        free_server(&s);
        return 1;
    }
    s.n_ctx = ctx_len && ctx_len < s.info.n_ctx ? ctx_len : s.info.n_ctx;
    s.model_path = strdup(model);
    s.base_name = base_name_of(model);
    s.base_stem = s.base_name ? strdup(s.base_name) : NULL;
    if (!s.model_path || !s.base_name || !s.base_stem) {
        fprintf(stderr, "peft serve: out of memory\n");
        free_server(&s);
        return 1;
    }
    size_t bl = strlen(s.base_stem);
    if (bl > 5 && !strcmp(s.base_stem + bl - 5, ".gguf")) s.base_stem[bl - 5] = 0;

    for (int i = 0; i < n_adapters; i++) {
        const char *eq = strchr(adapters[i], '=');
        char name[256];
        const char *dir = eq ? eq + 1 : adapters[i];
        if (eq) snprintf(name, sizeof name, "%.*s", (int)(eq - adapters[i]), adapters[i]);
        else {
            char *b = base_name_of(adapters[i]);
            snprintf(name, sizeof name, "%s", b ? b : "");
            free(b);
        }
        pthread_mutex_lock(&s.mu);
        const bool dup = srv_adapter_find_locked(&s, name) != NULL;
        pthread_mutex_unlock(&s.mu);
        if (!srv_name_ok(name) || srv_is_base_name(&s, name) || dup) {
            fprintf(stderr, "peft serve: --adapter %s: the name \"%s\" is %s\n", adapters[i], name,
                    !srv_name_ok(name) ? "not 1-128 of A-Z a-z 0-9 - _ . : /" : dup ? "given twice" : "the base model's");
            free_server(&s);
            return 2;
        }
        peft_error pe = {0};
        peft_adapter *ad = peft_adapter_load_err(s.model, dir, &pe);
        if (!ad) {
            fprintf(stderr, "peft serve: --adapter %s: %s\n", adapters[i], pe.msg);
            free_server(&s);
            return 1;
        }
        pthread_mutex_lock(&s.mu);
        int rc = srv_adapter_add_locked(&s, name, dir, ad);
        pthread_mutex_unlock(&s.mu);
        if (rc) {
            peft_adapter_free(ad);
            fprintf(stderr, "peft serve: out of memory\n");
            free_server(&s);
            return 1;
        }
    }

    if (srv_sched_start(&s)) {
        free_server(&s);
        return 1;
    }
    int bound = 0;
    const int n_loaded = s.n_ads;   /* read before requests can change it */
    if (srv_http_start(&s, host, port, &bound)) {
        srv_sched_stop(&s);
        free_server(&s);
        return 1;
    }
    printf("peft serve: listening on http://%s%s%s:%d (model %s, %d adapter%s, context %d, batch %d)\n",
           strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", bound, s.base_name, n_loaded, n_loaded == 1 ? "" : "s",
           s.n_ctx, s.max_batch);
    fflush(stdout);

    unsigned char sig = 0;
    for (;;) {
        struct pollfd pfd = {.fd = stop_pipe[0], .events = POLLIN};
        if (ppoll(&pfd, 1, NULL, &wait_mask) > 0 && read(stop_pipe[0], &sig, 1) == 1) break;
    }
    fprintf(stderr, "peft serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv_sched_stop(&s);
    /* let the answers of the jobs the scheduler just closed reach their
     * clients (up to 5 s) before the daemon closes every connection */
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&s.mu);
        const int open = s.n_live_jobs;
        pthread_mutex_unlock(&s.mu);
        if (!open) break;
        nanosleep(&(struct timespec){0, 10000000L}, NULL);
    }
    srv_http_stop(&s);
    free_server(&s);
    close(stop_pipe[0]);
    /* the write end stays open: a late signal's handler still has it */
    return 0;
}
