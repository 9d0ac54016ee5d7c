/* serve_sched.c — continuous batching for `peft serve`. One thread owns the
 * peft_batch and every session. Each step: take queued jobs (up to
 * --max-batch running), one peft_batch_decode over every running job —
 * one token for those decoding, a chunk of the prompt for those still
 * prefilling, so a long prompt never stalls the others for longer than a
 * chunk — then sample each job's next token, apply stop tokens, stop
 * strings and limits, and hand the new text to its connection. */
#define _GNU_SOURCE   /* POLLRDHUP: a client that closed its side while waiting */
#include "serve.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

/* Prompt tokens per step, all prefilling jobs together (at least this many
 * minus the decoding rows, and never fewer than PREFILL_MIN). */
#define PREFILL_BUDGET 256
#define PREFILL_MIN 32
/* How often the sockets of waiting clients are checked for a hang-up. */
#define HANGUP_POLL_S 0.05

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void srv_job_free(srv_job *j) {
    if (!j) return;
    peft_session_free(j->sess);
    peft_sampler_free(j->smp);
    free(j->prompt);
    for (int i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->echo);
    free(j->model_name);
    free(j->body);
    free(j->new_body);
    sbuf_free(&j->text);
    sbuf_free(&j->stage);
    sbuf_free(&j->out);
    free(j);
}

void srv_job_unref_locked(srv *s, srv_job *j) {
    if (--j->refs > 0) return;
    s->n_live_jobs--;
    srv_job_free(j);
}

void srv_enqueue_locked(srv *s, srv_job *j) {
    j->refs++;   /* the scheduler's */
    j->state = JOB_QUEUED;
    j->t_queued = srv_now();
    j->next_queued = NULL;
    if (s->queue_tail) s->queue_tail->next_queued = j;
    else s->queue_head = j;
    s->queue_tail = j;
    s->n_queued++;
    pthread_cond_signal(&s->wake);
}

void srv_count_tokens_locked(srv *s, uint64_t n) {
    const long long sec = (long long)srv_now();
    const int k = (int)(sec % 16);
    if (s->tps_sec[k] != sec) { s->tps_sec[k] = sec; s->tps_bucket[k] = 0; }
    s->tps_bucket[k] += n;
}

/* Over the last 10 whole seconds. */
double srv_tokens_per_s_locked(srv *s) {
    const long long sec = (long long)srv_now();
    uint64_t n = 0;
    for (int k = 0; k < 16; k++)
        if (s->tps_sec[k] < sec && s->tps_sec[k] >= sec - 10) n += s->tps_bucket[k];
    return n / 10.0;
}

/* ---- the job's side (scheduler thread, no lock) ------------------------------ */

static void set_error(srv_job *j, int status, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void set_error(srv_job *j, int status, const char *type, const char *code, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *body = srv_error_json(msg, type, NULL, code);
    if (j->status || j->new_status) {
        /* the stream has begun: the error is its last event */
        if (body) {
            sbuf_add(&j->stage, "data: ", 6);
            sbuf_add(&j->stage, body, strlen(body));
            sbuf_add(&j->stage, "\n\n", 2);
        }
        sbuf_add(&j->stage, "data: [DONE]\n\n", 14);
        free(body);
    } else {
        j->new_status = status;
        free(j->new_body);
        j->new_body = body;
    }
    j->finish = NULL;
    j->done = true;
}

static void release_run_state(srv_job *j) {
    peft_session_free(j->sess);
    j->sess = NULL;
    peft_sampler_free(j->smp);
    j->smp = NULL;
}

static int setup_job(srv *s, srv_job *j) {
    peft_error pe = {0};
    if (!(j->sess = peft_session_new(s->model, &pe))) {
        set_error(j, 503, "server_error", "session_failed", "could not open a session: %s", pe.msg);
        return -1;
    }
    peft_session_set_threads(j->sess, s->threads);
    int rc = 0;
    if (j->n_ads == 1 && j->scales[0] == 1.0f) rc = peft_session_set_adapter(j->sess, j->ads[0]->a);
    else if (j->n_ads) {
        peft_adapter *a[SRV_MAX_JOB_ADAPTERS];
        for (int k = 0; k < j->n_ads; k++) a[k] = j->ads[k]->a;
        rc = peft_session_set_adapters(j->sess, a, j->scales, j->n_ads);
    }
    if (rc) {
        set_error(j, 400, "invalid_request_error", "adapter_unusable", "these adapters cannot be applied together: %s",
                  peft_session_error(j->sess));
        return -1;
    }
    if (!(j->smp = peft_sampler_new(&j->sp))) {
        set_error(j, 503, "server_error", "out_of_memory", "out of memory for the sampler");
        return -1;
    }
    j->phase = JOB_PREFILL;
    return 0;
}

/* Passes on the text that can no longer change: not the tail that could
 * still start a stop string, nor a character cut between two pieces.
 * Everything when the job is done. */
static void flush_text(srv_job *j) {
    if (!j->stream) return;
    if (!j->status && !j->new_status) {
        j->new_status = 200;
        if (j->kind == JOB_CHAT) srv_job_chunk(&j->stage, j, NULL, 0, NULL);
        else if (j->echo) srv_job_chunk(&j->stage, j, j->echo, strlen(j->echo), NULL);
    }
    if (j->sent > j->text.len) j->sent = j->text.len;
    size_t end = j->text.len;
    if (!j->done) {
        end -= stop_holdback(j->text.p, j->text.len, j->stops, j->n_stops);
        end = j->sent + utf8_complete_prefix(j->text.p + j->sent, end - j->sent);
    }
    if (end > j->sent) {
        srv_job_chunk(&j->stage, j, j->text.p + j->sent, end - j->sent, NULL);
        j->sent = end;
    }
    if (j->done) {
        srv_job_chunk(&j->stage, j, NULL, 0, j->finish ? j->finish : "stop");
        if (j->include_usage) srv_job_usage_chunk(&j->stage, j);
        sbuf_add(&j->stage, "data: [DONE]\n\n", 14);
    }
}

static void finish(srv_job *j, const char *reason) {
    j->finish = reason;
    j->done = true;
    release_run_state(j);
    if (j->stream) flush_text(j);
    else {
        free(j->new_body);
        j->new_body = srv_job_result_json(j, j->text.p ? j->text.p : "", j->text.len);
        j->new_status = j->new_body ? 200 : 500;
        if (!j->new_body) j->new_body = srv_error_json("out of memory writing the response", "server_error", NULL, NULL);
    }
}

/* A token sampled for j: the end, or one more piece of text. */
static void take_token(srv *s, srv_job *j, int32_t t) {
    if (!j->t_first) j->t_first = srv_now();
    if (peft_token_is_stop(s->model, t)) { finish(j, "stop"); return; }
    j->n_gen++;
    char piece[256];
    int len = peft_token_to_piece(s->model, t, piece, (int)sizeof piece);
    if (len > (int)sizeof piece) len = (int)sizeof piece;
    const size_t before = j->text.len;
    if (len > 0 && sbuf_add(&j->text, piece, (size_t)len)) {
        set_error(j, 503, "server_error", "out_of_memory", "out of memory for the generated text");
        release_run_state(j);
        return;
    }
    size_t at;
    /* a stop string can begin in text already held back, never before */
    const size_t from = before > 1024 ? before - 1024 : 0;
    if (j->n_stops && stop_find(j->text.p, j->text.len, from < j->sent ? j->sent : from, j->stops, j->n_stops, &at)) {
        j->text.len = at;
        finish(j, "stop");
        return;
    }
    if (j->n_gen >= j->max_tokens || peft_session_n_past(j->sess) >= s->n_ctx) { finish(j, "length"); return; }
    j->next = t;
    j->phase = JOB_DECODE;
    flush_text(j);
}

/* ---- publishing (under mu) ---------------------------------------------------- */

typedef struct {
    struct MHD_Connection **c;
    int n, cap;
} conn_list;

static void wake_conn(conn_list *l, srv_job *j) {
    if (!j->suspended || !j->conn) return;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        struct MHD_Connection **c = realloc(l->c, (size_t)cap * sizeof *c);
        if (!c) return;   /* resumed at the next step instead */
        l->c = c;
        l->cap = cap;
    }
    j->suspended = false;
    l->c[l->n++] = j->conn;
}

static void count_done_locked(srv *s, srv_job *j) {
    const bool ok = j->finish != NULL;
    if (ok) s->jobs_done++;
    else if (j->cancelled) s->jobs_cancelled++;
    else s->jobs_failed++;
    s->prompt_tokens += (uint64_t)j->n_prompt;
    s->gen_tokens += (uint64_t)j->n_gen;
    if (j->t_first) s->ttft_sum += j->t_first - j->t_queued;
    s->latency_sum += j->t_done - j->t_queued;
    if (j->n_ads == 0) {
        s->base_requests++;
        s->base_prompt_tokens += (uint64_t)j->n_prompt;
        s->base_gen_tokens += (uint64_t)j->n_gen;
    }
    for (int k = 0; k < j->n_ads; k++) {
        j->ads[k]->requests++;
        j->ads[k]->prompt_tokens += (uint64_t)j->n_prompt;
        j->ads[k]->gen_tokens += (uint64_t)j->n_gen;
        j->ads[k]->jobs--;
    }
    j->n_ads = 0;
}

/* Moves what the step made for j to its connection; wakes the connection
 * when it has something to do. Returns whether j is done. */
static bool publish_locked(srv *s, srv_job *j, conn_list *wake) {
    if (j->stage.len) {
        if (sbuf_add(&j->out, j->stage.p, j->stage.len) == 0) j->stage.len = 0;
    }
    if (j->new_status && !j->status) {
        j->status = j->new_status;
        free(j->body);
        j->body = j->new_body;
        j->new_body = NULL;
    }
    j->new_status = 0;
    if (j->done) {
        j->t_done = srv_now();
        j->state = JOB_FINISHED;
        count_done_locked(s, j);
    }
    const bool ready = j->stream ? j->status && (j->out.len > j->out_pos || j->state == JOB_FINISHED)
                                 : j->state == JOB_FINISHED;
    if (ready || j->cancelled) wake_conn(wake, j);
    return j->done;
}

static void resume_all(conn_list *l) {
    for (int i = 0; i < l->n; i++) MHD_resume_connection(l->c[i]);
    l->n = 0;
}

/* Clients that hung up while waiting: their jobs are cancelled, and their
 * connections woken so that libmicrohttpd sees the close. */
static void poll_hangups_locked(srv_job *active, srv_job *queued, conn_list *wake) {
    struct pollfd fds[256];
    srv_job *who[256];
    int n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (srv_job *j = pass ? queued : active; j && n < 256; j = pass ? j->next_queued : j->next_active)
            if (j->suspended && j->fd >= 0 && !j->cancelled) {
                fds[n] = (struct pollfd){.fd = j->fd, .events = POLLRDHUP};
                who[n++] = j;
            }
    if (n == 0 || poll(fds, (nfds_t)n, 0) <= 0) return;
    for (int i = 0; i < n; i++)
        if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            who[i]->cancelled = true;
            wake_conn(wake, who[i]);
        }
}

/* ---- the loop -------------------------------------------------------------------- */

typedef struct {
    srv *s;
    peft_batch *b;
    srv_job *active, **rows;
    peft_session **sess;
    int32_t *ids;
    int *n_ids;
    float *logits;
    int cap_tokens;
    conn_list wake;
} sched;

static void drop_active(sched *S, srv_job *j) {
    for (srv_job **p = &S->active; *p; p = &(*p)->next_active)
        if (*p == j) { *p = j->next_active; break; }
    S->s->n_active--;
}

static void step(sched *S) {
    srv *s = S->s;
    const int V = s->info.vocab;
    int n = 0, n_tok = 0, n_dec = 0;
    for (srv_job *j = S->active; j; j = j->next_active)
        if (j->phase == JOB_DECODE && !j->done) {
            S->rows[n] = j;
            S->sess[n] = j->sess;
            S->n_ids[n++] = 1;
            S->ids[n_tok++] = j->next;
            n_dec++;
        }
    int budget = PREFILL_BUDGET - n_dec;
    if (budget < PREFILL_MIN) budget = PREFILL_MIN;
    for (srv_job *j = S->active; j && budget > 0; j = j->next_active)
        if (j->phase == JOB_PREFILL && !j->done) {
            int k = j->n_prompt - j->n_fed;
            if (k > budget) k = budget;
            if (k <= 0) continue;
            S->rows[n] = j;
            S->sess[n] = j->sess;
            S->n_ids[n++] = k;
            memcpy(S->ids + n_tok, j->prompt + j->n_fed, (size_t)k * sizeof *S->ids);
            n_tok += k;
            budget -= k;
        }
    if (n == 0) return;
    int rc = peft_batch_decode(S->b, S->sess, n, S->ids, S->n_ids, S->logits);
    bool failed[n];
    memset(failed, 0, sizeof failed);
    if (rc) {
        /* nothing has changed: run the rows one by one, so that one
         * session's trouble (say, a context that is full, or adapters
         * that cannot share a batch) fails only its own request */
        if (s->verbose) fprintf(stderr, "peft serve: a batch of %d failed (%s); its rows run one by one\n", n, peft_batch_error(S->b));
        for (int i = 0, off = 0; i < n; off += S->n_ids[i], i++)
            if (peft_session_decode(S->sess[i], S->ids + off, S->n_ids[i], S->logits + (size_t)i * V)) {
                failed[i] = true;
                set_error(S->rows[i], 500, "server_error", "decode_failed", "decoding failed: %s", peft_session_error(S->sess[i]));
                release_run_state(S->rows[i]);
            }
    }
    uint64_t new_tokens = 0;
    for (int i = 0; i < n; i++) {
        srv_job *j = S->rows[i];
        if (failed[i]) continue;
        if (j->phase == JOB_PREFILL) {
            j->n_fed += S->n_ids[i];
            if (j->n_fed < j->n_prompt) continue;
        }
        const int before = j->n_gen;
        take_token(s, j, peft_sampler_sample(j->smp, S->logits + (size_t)i * V, V));
        new_tokens += (uint64_t)(j->n_gen - before);
    }
    if (s->step_delay_ms) nanosleep(&(struct timespec){s->step_delay_ms / 1000, (s->step_delay_ms % 1000) * 1000000L}, NULL);
    pthread_mutex_lock(&s->mu);
    s->steps++;
    s->step_rows += (uint64_t)n;
    srv_count_tokens_locked(s, new_tokens);
    pthread_mutex_unlock(&s->mu);
}

static void *sched_main(void *arg) {
    sched *S = arg;
    srv *s = S->s;
    double last_poll = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stopping && !s->queue_head && !S->active) pthread_cond_wait(&s->wake, &s->mu);
        if (s->stopping) { pthread_mutex_unlock(&s->mu); break; }
        srv_job *admit = NULL, **tail = &admit;
        while (s->queue_head && s->n_active < s->max_batch) {
            srv_job *j = s->queue_head;
            if (!(s->queue_head = j->next_queued)) s->queue_tail = NULL;
            s->n_queued--;
            j->next_queued = NULL;
            s->n_active++;
            *tail = j;
            tail = &j->next_active;
            j->next_active = NULL;
        }
        pthread_mutex_unlock(&s->mu);
        /* sessions are opened here, not at request time: a queued request
         * holds no cache */
        for (srv_job *j = admit; j;) {
            srv_job *nx = j->next_active;
            bool cancelled;
            pthread_mutex_lock(&s->mu);
            cancelled = j->cancelled;
            pthread_mutex_unlock(&s->mu);
            if (!cancelled) setup_job(s, j);
            j->next_active = S->active;
            S->active = j;
            j = nx;
        }
        /* keep admission order: the oldest prefill goes first */
        srv_job *rev = NULL;
        while (S->active) { srv_job *j = S->active; S->active = j->next_active; j->next_active = rev; rev = j; }
        S->active = rev;

        pthread_mutex_lock(&s->mu);
        if (srv_now() - last_poll >= HANGUP_POLL_S) {
            poll_hangups_locked(S->active, s->queue_head, &S->wake);
            last_poll = srv_now();
        }
        for (srv_job *j = S->active; j; j = j->next_active)
            if (j->cancelled && !j->done) { j->done = true; j->finish = NULL; }
        pthread_mutex_unlock(&s->mu);
        for (srv_job *j = S->active; j; j = j->next_active)
            if (j->done) release_run_state(j);

        step(S);

        pthread_mutex_lock(&s->mu);
        for (srv_job *j = S->active, *nx; j; j = nx) {
            nx = j->next_active;
            if (publish_locked(s, j, &S->wake)) {
                drop_active(S, j);
                srv_job_unref_locked(s, j);
            }
        }
        pthread_mutex_unlock(&s->mu);
        resume_all(&S->wake);
    }
    /* stopping: every job still here gets a 503 (or, mid-stream, an error
     * event), and its connection back */
    pthread_mutex_lock(&s->mu);
    srv_job *q = s->queue_head;
    s->queue_head = s->queue_tail = NULL;
    s->n_queued = 0;
    pthread_mutex_unlock(&s->mu);
    for (srv_job *j = q, *nx; j; j = nx) {
        nx = j->next_queued;
        j->next_active = S->active;
        S->active = j;
        s->n_active++;
    }
    for (srv_job *j = S->active; j; j = j->next_active) {
        release_run_state(j);
        if (!j->done) set_error(j, 503, "server_error", "shutting_down", "the server is shutting down");
    }
    pthread_mutex_lock(&s->mu);
    for (srv_job *j = S->active, *nx; j; j = nx) {
        nx = j->next_active;
        publish_locked(s, j, &S->wake);
        wake_conn(&S->wake, j);
        drop_active(S, j);
        srv_job_unref_locked(s, j);
    }
    pthread_mutex_unlock(&s->mu);
    resume_all(&S->wake);
    return NULL;
}

int srv_sched_start(srv *s) {
    sched *S = calloc(1, sizeof *S);
    if (!S) return -1;
    S->s = s;
    peft_error pe = {0};
    if (!(S->b = peft_batch_new(s->model, &pe))) {
        fprintf(stderr, "peft serve: cannot make a batch: %s\n", pe.msg);
        free(S);
        return -1;
    }
    peft_batch_set_threads(S->b, s->threads);
    /* a step holds at most max_batch rows and PREFILL_BUDGET + max_batch tokens */
    S->cap_tokens = PREFILL_BUDGET + s->max_batch + PREFILL_MIN;
    S->rows = calloc((size_t)s->max_batch, sizeof *S->rows);
    S->sess = calloc((size_t)s->max_batch, sizeof *S->sess);
    S->n_ids = calloc((size_t)s->max_batch, sizeof *S->n_ids);
    S->ids = calloc((size_t)S->cap_tokens, sizeof *S->ids);
    S->logits = malloc((size_t)s->max_batch * (size_t)s->info.vocab * sizeof *S->logits);
    if (!S->rows || !S->sess || !S->n_ids || !S->ids || !S->logits ||
        pthread_create(&s->sched, NULL, sched_main, S) != 0) {
        fprintf(stderr, "peft serve: out of memory for the scheduler\n");
        peft_batch_free(S->b);
        free(S->rows); free(S->sess); free(S->n_ids); free(S->ids); free(S->logits);
        free(S);
        return -1;
    }
    s->sched_state = S;
    return 0;
}

void srv_sched_stop(srv *s) {
    sched *S = s->sched_state;
    if (!S) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->sched, NULL);
    peft_batch_free(S->b);
    free(S->rows); free(S->sess); free(S->n_ids); free(S->ids); free(S->logits);
    free(S->wake.c);
    free(S);
    s->sched_state = NULL;
}
