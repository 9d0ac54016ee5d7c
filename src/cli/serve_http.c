/* serve_http.c — the HTTP side of `peft serve` on libmicrohttpd: routing,
 * the API key, request bodies, the adapter registry and its endpoints
 * (OpenAI-style /v1/models and /v1/adapters, llama.cpp's /lora-adapters),
 * /health and /metrics, and the connections that wait for a job: suspended
 * until the scheduler has something for them, then answered whole
 * (non-streaming) or streamed as server-sent events. */
#include "serve.h"

#include <cjson/cJSON.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

/* Request bodies larger than this are refused with 413. */
#define MAX_BODY (8u << 20)
#define HTTP_THREADS 4

typedef struct {
    sbuf body;
    bool too_large;
    srv_job *job;
} req_ctx;

/* ---- the registry ------------------------------------------------------------ */

bool srv_is_base_name(const srv *s, const char *name) {
    return !strcmp(name, "base") || !strcmp(name, s->base_name) || !strcmp(name, s->base_stem) ||
           !strcmp(name, s->model_path);
}

srv_adapter *srv_adapter_find_locked(srv *s, const char *name) {
    for (int i = 0; i < s->n_ads; i++)
        if (!strcmp(s->ads[i]->name, name)) return s->ads[i];
    return NULL;
}

srv_adapter *srv_adapter_by_id_locked(srv *s, int id) {
    for (int i = 0; i < s->n_ads; i++)
        if (s->ads[i]->id == id) return s->ads[i];
    return NULL;
}

int srv_adapter_add_locked(srv *s, const char *name, const char *path, peft_adapter *a) {
    if (s->n_ads == s->cap_ads) {
        int cap = s->cap_ads ? s->cap_ads * 2 : 16;
        srv_adapter **p = realloc(s->ads, (size_t)cap * sizeof *p);
        if (!p) return -1;
        s->ads = p;
        s->cap_ads = cap;
    }
    srv_adapter *e = calloc(1, sizeof *e);
    if (!e || !(e->name = strdup(name)) || !(e->path = strdup(path))) {
        if (e) free(e->name);
        free(e);
        return -1;
    }
    e->a = a;
    e->id = s->next_ad_id++;
    s->ads[s->n_ads++] = e;
    return 0;
}

/* ---- responses ------------------------------------------------------------------ */

static void count_status_locked(srv *s, unsigned status) {
    static const unsigned codes[SRV_N_CODES] = {200, 400, 401, 404, 409, 413, 429};
    s->http_requests++;
    for (int i = 0; i < SRV_N_CODES; i++)
        if (codes[i] == status) s->http_errors[i]++;
    if (status >= 500) s->http_5xx++;
}

static enum MHD_Result respond(srv *s, struct MHD_Connection *c, unsigned status, const char *type, const char *body,
                               size_t len) {
    pthread_mutex_lock(&s->mu);
    count_status_locked(s, status);
    pthread_mutex_unlock(&s->mu);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result respond_json(srv *s, struct MHD_Connection *c, unsigned status, char *body) {
    if (!body) return respond(s, c, 500, "application/json", "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}", 57);
    enum MHD_Result rc = respond(s, c, status, "application/json", body, strlen(body));
    free(body);
    return rc;
}

static enum MHD_Result respond_cjson(srv *s, struct MHD_Connection *c, unsigned status, cJSON *j) {
    char *body = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return respond_json(s, c, status, body);
}

static enum MHD_Result error(srv *s, struct MHD_Connection *c, unsigned status, const char *param, const char *code,
                             const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result error(srv *s, struct MHD_Connection *c, unsigned status, const char *param, const char *code,
                             const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error" : status == 429 ? "rate_limit_error"
                       : status >= 500 ? "server_error" : "invalid_request_error";
    return respond_json(s, c, status, srv_error_json(msg, type, param, code));
}

/* ---- streaming ------------------------------------------------------------------ */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_job *j = cls;
    srv *s = j->owner;
    pthread_mutex_lock(&s->mu);
    ssize_t rc;
    if (j->out.len > j->out_pos) {
        size_t n = j->out.len - j->out_pos;
        if (n > max) n = max;
        memcpy(buf, j->out.p + j->out_pos, n);
        j->out_pos += n;
        if (j->out_pos == j->out.len) j->out_pos = j->out.len = 0;
        rc = (ssize_t)n;
    } else if (j->state == JOB_FINISHED) rc = MHD_CONTENT_READER_END_OF_STREAM;
    else if (j->cancelled || !j->conn) rc = MHD_CONTENT_READER_END_WITH_ERROR;
    else {
        /* nothing yet: wait, without spinning, for the scheduler's resume */
        j->suspended = true;
        MHD_suspend_connection(j->conn);
        rc = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void stream_free(void *cls) {
    srv_job *j = cls;
    srv *s = j->owner;
    pthread_mutex_lock(&s->mu);
    srv_job_unref_locked(s, j);
    pthread_mutex_unlock(&s->mu);
}

/* A connection whose job the scheduler has woken. */
static enum MHD_Result answer_job(srv *s, struct MHD_Connection *c, srv_job *j) {
    pthread_mutex_lock(&s->mu);
    if (j->cancelled) {
        pthread_mutex_unlock(&s->mu);
        return MHD_NO;
    }
    if (!j->status) {   /* woken early: wait on */
        j->suspended = true;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&s->mu);
        return MHD_YES;
    }
    if (j->stream && j->status == 200) {
        count_status_locked(s, 200);
        j->refs++;   /* the response's */
        pthread_mutex_unlock(&s->mu);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, j, stream_free);
        if (!r) {
            stream_free(j);
            return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        enum MHD_Result rc = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return rc;
    }
    const int status = j->status;
    char *body = j->body ? strdup(j->body) : NULL;
    pthread_mutex_unlock(&s->mu);
    return respond_json(s, c, (unsigned)status, body);
}

static enum MHD_Result start_job(srv *s, struct MHD_Connection *c, req_ctx *r, job_kind kind) {
    pthread_mutex_lock(&s->mu);
    const bool full = s->n_queued + s->n_active >= s->max_batch + s->max_queue, stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stopping) return error(s, c, 503, NULL, "shutting_down", "the server is shutting down");
    if (full) return error(s, c, 429, NULL, "rate_limit_exceeded", "too many requests: %d running and %d waiting (--max-batch, --max-queue): try again later",
                             s->max_batch, s->max_queue);
    int status = 0;
    char *err_body = NULL;
    srv_job *j = srv_job_from_request(s, kind, r->body.p ? r->body.p : "", r->body.len, &status, &err_body);
    if (!j) return respond_json(s, c, (unsigned)status, err_body);
    j->owner = s;
    j->conn = c;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_lock(&s->mu);
    const char *why = s->stopping                                          ? "shutting_down"
                      : s->n_queued + s->n_active >= s->max_batch + s->max_queue ? "rate_limit_exceeded"
                                                                               : NULL;
    if (why) {
        for (int k = 0; k < j->n_ads; k++) j->ads[k]->jobs--;
        j->n_ads = 0;
        pthread_mutex_unlock(&s->mu);
        srv_job_free(j);
        return !strcmp(why, "shutting_down") ? error(s, c, 503, NULL, why, "the server is shutting down")
                                             : error(s, c, 429, NULL, why, "too many requests: %d running and %d waiting (--max-batch, --max-queue): try again later",
                                                     s->max_batch, s->max_queue);
    }
    s->job_seq++;
    snprintf(j->id, sizeof j->id, "%s-%llu%04llx", kind == JOB_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)s->job_seq,
             (unsigned long long)(j->sp.seed & 0xffff));
    j->created = (long long)time(NULL);
    j->refs = 1;   /* the connection's */
    s->n_live_jobs++;
    r->job = j;
    srv_enqueue_locked(s, j);
    j->suspended = true;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&s->mu);
    return MHD_YES;
}

/* ---- adapters ------------------------------------------------------------------- */

bool srv_name_ok(const char *n) {
    size_t len = strlen(n);
    if (len == 0 || len > 128) return false;
    for (size_t i = 0; i < len; i++) {
        const char ch = n[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
              ch == '.' || ch == ':' || ch == '/'))
            return false;
    }
    return true;
}

static cJSON *adapter_json(const srv *s, const srv_adapter *a) {
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddNumberToObject(o, "id", a->id);
        cJSON_AddStringToObject(o, "name", a->name);
        cJSON_AddStringToObject(o, "path", a->path);
        cJSON_AddNumberToObject(o, "scale", a->scale);
        cJSON_AddStringToObject(o, "method", peft_adapter_method(a->a));
        cJSON_AddStringToObject(o, "parent", s->base_name);
    }
    return o;
}

static enum MHD_Result list_models(srv *s, struct MHD_Connection *c) {
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddStringToObject(root, "object", "list");
    const double created = (double)time(NULL) - (srv_now() - s->t_start);
    pthread_mutex_lock(&s->mu);
    for (int i = -1; data && i < s->n_ads; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddItemToArray(data, o);
        cJSON_AddStringToObject(o, "id", i < 0 ? s->base_name : s->ads[i]->name);
        cJSON_AddStringToObject(o, "object", "model");
        cJSON_AddNumberToObject(o, "created", (double)(long long)created);
        cJSON_AddStringToObject(o, "owned_by", "peft");
        cJSON_AddStringToObject(o, "root", i < 0 ? s->model_path : s->ads[i]->path);
        if (i < 0) {
            cJSON_AddNullToObject(o, "parent");
            cJSON_AddNumberToObject(o, "max_model_len", s->n_ctx);
        } else {
            cJSON_AddStringToObject(o, "parent", s->base_name);
            cJSON_AddStringToObject(o, "method", peft_adapter_method(s->ads[i]->a));
        }
    }
    pthread_mutex_unlock(&s->mu);
    return respond_cjson(s, c, 200, root);
}

static cJSON *parse_body(srv *s, struct MHD_Connection *c, req_ctx *r, enum MHD_Result *rc) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(r->body.p ? r->body.p : "", r->body.len, &end, 0);
    if (!j) *rc = error(s, c, 400, NULL, "invalid_json", "the body is not valid JSON (at byte %ld of %zu)",
                        end && r->body.p ? (long)(end - r->body.p) : 0L, r->body.len);
    return j;
}

static enum MHD_Result load_adapter(srv *s, struct MHD_Connection *c, req_ctx *r) {
    enum MHD_Result rc = MHD_NO;
    cJSON *req = parse_body(s, c, r, &rc);
    if (!req) return rc;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(req, "name"), *path = cJSON_GetObjectItemCaseSensitive(req, "path");
    if (!cJSON_IsObject(req) || !cJSON_IsString(name) || !cJSON_IsString(path)) {
        cJSON_Delete(req);
        return error(s, c, 400, !cJSON_IsString(name) ? "name" : "path", "invalid_type",
                     "the body must be {\"name\": string, \"path\": string (an adapter folder on the server)}");
    }
    if (!srv_name_ok(name->valuestring) || srv_is_base_name(s, name->valuestring)) {
        rc = error(s, c, 400, "name", "invalid_value",
                   "adapter name \"%.128s\" must be 1-128 of A-Z a-z 0-9 - _ . : / and not the base's name", name->valuestring);
        cJSON_Delete(req);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    bool taken = srv_adapter_find_locked(s, name->valuestring) != NULL;
    pthread_mutex_unlock(&s->mu);
    if (taken) {
        rc = error(s, c, 409, "name", "adapter_exists", "an adapter named \"%s\" is already loaded", name->valuestring);
        cJSON_Delete(req);
        return rc;
    }
    peft_error pe = {0};
    peft_adapter *a = peft_adapter_load_err(s->model, path->valuestring, &pe);
    if (!a) {
        rc = error(s, c, 400, "path", "adapter_load_failed", "adapter \"%s\" failed to load: %s", name->valuestring,
                   pe.msg[0] ? pe.msg : "unknown error");
        cJSON_Delete(req);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    int add = srv_adapter_find_locked(s, name->valuestring) ? 1 : srv_adapter_add_locked(s, name->valuestring, path->valuestring, a);
    cJSON *out = add == 0 ? adapter_json(s, s->ads[s->n_ads - 1]) : NULL;
    pthread_mutex_unlock(&s->mu);
    if (add) {
        peft_adapter_free(a);
        rc = add > 0 ? error(s, c, 409, "name", "adapter_exists", "an adapter named \"%s\" is already loaded", name->valuestring)
                     : error(s, c, 503, NULL, "out_of_memory", "out of memory");
    } else {
        if (s->verbose) fprintf(stderr, "peft serve: loaded adapter %s from %s\n", name->valuestring, path->valuestring);
        rc = respond_cjson(s, c, 200, out);
    }
    cJSON_Delete(req);
    return rc;
}

static enum MHD_Result unload_adapter(srv *s, struct MHD_Connection *c, const char *name) {
    pthread_mutex_lock(&s->mu);
    int idx = -1;
    for (int i = 0; i < s->n_ads; i++)
        if (!strcmp(s->ads[i]->name, name)) idx = i;
    if (idx < 0) {
        pthread_mutex_unlock(&s->mu);
        return error(s, c, 404, "name", "adapter_not_found", "no adapter named \"%.200s\" is loaded", name);
    }
    srv_adapter *e = s->ads[idx];
    const int users = e->jobs, sessions = peft_adapter_users(e->a);
    if (users > 0 || sessions > 0) {
        pthread_mutex_unlock(&s->mu);
        return error(s, c, 409, "name", "adapter_in_use", "adapter \"%s\" is in use by %d request%s: unload it when they are done",
                     name, users > sessions ? users : sessions, (users > sessions ? users : sessions) == 1 ? "" : "s");
    }
    memmove(s->ads + idx, s->ads + idx + 1, (size_t)(s->n_ads - idx - 1) * sizeof *s->ads);
    s->n_ads--;
    pthread_mutex_unlock(&s->mu);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "id", e->name);
    cJSON_AddStringToObject(out, "object", "adapter");
    cJSON_AddTrueToObject(out, "deleted");
    if (s->verbose) fprintf(stderr, "peft serve: unloaded adapter %s\n", e->name);
    peft_adapter_free(e->a);
    free(e->name);
    free(e->path);
    free(e);
    return respond_cjson(s, c, 200, out);
}

static enum MHD_Result list_lora(srv *s, struct MHD_Connection *c) {
    cJSON *arr = cJSON_CreateArray();
    pthread_mutex_lock(&s->mu);
    for (int i = 0; arr && i < s->n_ads; i++) cJSON_AddItemToArray(arr, adapter_json(s, s->ads[i]));
    pthread_mutex_unlock(&s->mu);
    return respond_cjson(s, c, 200, arr);
}

/* llama.cpp's POST /lora-adapters: [{"id", "scale"}]; adapters not listed
 * go to scale 0. */
static enum MHD_Result set_lora(srv *s, struct MHD_Connection *c, req_ctx *r) {
    enum MHD_Result rc = MHD_NO;
    cJSON *req = parse_body(s, c, r, &rc);
    if (!req) return rc;
    if (!cJSON_IsArray(req)) {
        cJSON_Delete(req);
        return error(s, c, 400, NULL, "invalid_type", "the body must be an array of {\"id\": int, \"scale\": number}");
    }
    pthread_mutex_lock(&s->mu);
    const cJSON *it;
    int i = 0;
    char bad[256] = "";
    cJSON_ArrayForEach(it, req) {
        const cJSON *id = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "id") : NULL;
        const cJSON *sc = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "scale") : NULL;
        if (!cJSON_IsNumber(id) || !srv_adapter_by_id_locked(s, (int)id->valuedouble) || id->valuedouble != (int)id->valuedouble)
            snprintf(bad, sizeof bad, "[%d].id is not the id of a loaded adapter (GET /lora-adapters)", i);
        else if (sc && !(cJSON_IsNumber(sc) && sc->valuedouble >= -100 && sc->valuedouble <= 100))
            snprintf(bad, sizeof bad, "[%d].scale must be a number in [-100, 100]", i);
        if (bad[0]) break;
        i++;
    }
    if (!bad[0]) {
        for (int k = 0; k < s->n_ads; k++) s->ads[k]->scale = 0;
        cJSON_ArrayForEach(it, req) {
            const cJSON *sc = cJSON_GetObjectItemCaseSensitive(it, "scale");
            srv_adapter_by_id_locked(s, (int)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble)->scale =
                sc ? (float)sc->valuedouble : 0.0f;
        }
    }
    pthread_mutex_unlock(&s->mu);
    cJSON_Delete(req);
    if (bad[0]) return error(s, c, 400, "id", "invalid_value", "%s", bad);
    return respond(s, c, 200, "application/json", "{\"success\":true}", 16);
}

/* ---- /metrics ------------------------------------------------------------------- */

static enum MHD_Result metrics(srv *s, struct MHD_Connection *c) {
    sbuf b = {0};
    pthread_mutex_lock(&s->mu);
    const uint64_t finished = s->jobs_done + s->jobs_failed + s->jobs_cancelled;
    sbuf_printf(&b,
                "# HELP peft_requests_total Generation requests finished, by result.\n# TYPE peft_requests_total counter\n"
                "peft_requests_total{result=\"ok\"} %llu\npeft_requests_total{result=\"error\"} %llu\n"
                "peft_requests_total{result=\"cancelled\"} %llu\n",
                (unsigned long long)s->jobs_done, (unsigned long long)s->jobs_failed, (unsigned long long)s->jobs_cancelled);
    sbuf_printf(&b, "# HELP peft_http_responses_total HTTP responses, by status.\n# TYPE peft_http_responses_total counter\n");
    static const char *const codes[SRV_N_CODES] = {"200", "400", "401", "404", "409", "413", "429"};
    uint64_t errs = 0;
    for (int i = 0; i < SRV_N_CODES; i++) {
        sbuf_printf(&b, "peft_http_responses_total{code=\"%s\"} %llu\n", codes[i], (unsigned long long)s->http_errors[i]);
        errs += s->http_errors[i];
    }
    sbuf_printf(&b, "peft_http_responses_total{code=\"5xx\"} %llu\npeft_http_responses_total{code=\"other\"} %llu\n",
                (unsigned long long)s->http_5xx, (unsigned long long)(s->http_requests - errs - s->http_5xx));
    sbuf_printf(&b,
                "# HELP peft_prompt_tokens_total Prompt tokens of finished requests.\n# TYPE peft_prompt_tokens_total counter\n"
                "peft_prompt_tokens_total %llu\n"
                "# HELP peft_generated_tokens_total Tokens generated by finished requests.\n# TYPE peft_generated_tokens_total counter\n"
                "peft_generated_tokens_total %llu\n"
                "# HELP peft_tokens_per_second Tokens generated per second over the last 10 s.\n# TYPE peft_tokens_per_second gauge\n"
                "peft_tokens_per_second %.2f\n"
                "# HELP peft_queue_length Requests waiting for a place in the batch.\n# TYPE peft_queue_length gauge\n"
                "peft_queue_length %d\n"
                "# HELP peft_running_requests Requests in the running batch.\n# TYPE peft_running_requests gauge\n"
                "peft_running_requests %d\n"
                "# HELP peft_open_requests Requests held anywhere (queued, running, or being answered).\n# TYPE peft_open_requests gauge\n"
                "peft_open_requests %d\n"
                "# HELP peft_batch_steps_total Batched forward steps.\n# TYPE peft_batch_steps_total counter\n"
                "peft_batch_steps_total %llu\n"
                "# HELP peft_batch_rows_total Sessions in those steps, summed (rows / steps = mean batch).\n# TYPE peft_batch_rows_total counter\n"
                "peft_batch_rows_total %llu\n"
                "# HELP peft_time_to_first_token_seconds Queue to first token, finished requests.\n# TYPE peft_time_to_first_token_seconds summary\n"
                "peft_time_to_first_token_seconds_sum %.6f\npeft_time_to_first_token_seconds_count %llu\n"
                "# HELP peft_request_seconds Queue to last token, finished requests.\n# TYPE peft_request_seconds summary\n"
                "peft_request_seconds_sum %.6f\npeft_request_seconds_count %llu\n",
                (unsigned long long)s->prompt_tokens, (unsigned long long)s->gen_tokens, srv_tokens_per_s_locked(s), s->n_queued,
                s->n_active, s->n_live_jobs, (unsigned long long)s->steps, (unsigned long long)s->step_rows, s->ttft_sum,
                (unsigned long long)finished, s->latency_sum, (unsigned long long)finished);
    sbuf_printf(&b, "# HELP peft_adapter_requests_total Finished requests per adapter (\"base\": none).\n"
                    "# TYPE peft_adapter_requests_total counter\n");
    sbuf_printf(&b, "peft_adapter_requests_total{adapter=\"base\"} %llu\n", (unsigned long long)s->base_requests);
    for (int i = 0; i < s->n_ads; i++)
        sbuf_printf(&b, "peft_adapter_requests_total{adapter=\"%s\"} %llu\n", s->ads[i]->name, (unsigned long long)s->ads[i]->requests);
    sbuf_printf(&b, "# HELP peft_adapter_generated_tokens_total Tokens generated per adapter.\n"
                    "# TYPE peft_adapter_generated_tokens_total counter\n");
    sbuf_printf(&b, "peft_adapter_generated_tokens_total{adapter=\"base\"} %llu\n", (unsigned long long)s->base_gen_tokens);
    for (int i = 0; i < s->n_ads; i++)
        sbuf_printf(&b, "peft_adapter_generated_tokens_total{adapter=\"%s\"} %llu\n", s->ads[i]->name,
                    (unsigned long long)s->ads[i]->gen_tokens);
    sbuf_printf(&b, "# HELP peft_adapter_prompt_tokens_total Prompt tokens per adapter.\n"
                    "# TYPE peft_adapter_prompt_tokens_total counter\n");
    sbuf_printf(&b, "peft_adapter_prompt_tokens_total{adapter=\"base\"} %llu\n", (unsigned long long)s->base_prompt_tokens);
    for (int i = 0; i < s->n_ads; i++)
        sbuf_printf(&b, "peft_adapter_prompt_tokens_total{adapter=\"%s\"} %llu\n", s->ads[i]->name,
                    (unsigned long long)s->ads[i]->prompt_tokens);
    sbuf_printf(&b, "# HELP peft_adapter_open_requests Requests queued or running per adapter.\n"
                    "# TYPE peft_adapter_open_requests gauge\n");
    for (int i = 0; i < s->n_ads; i++)
        sbuf_printf(&b, "peft_adapter_open_requests{adapter=\"%s\"} %d\n", s->ads[i]->name, s->ads[i]->jobs);
    sbuf_printf(&b, "# HELP peft_adapter_scale Global scale (POST /lora-adapters).\n# TYPE peft_adapter_scale gauge\n");
    for (int i = 0; i < s->n_ads; i++)
        sbuf_printf(&b, "peft_adapter_scale{adapter=\"%s\"} %g\n", s->ads[i]->name, s->ads[i]->scale);
    pthread_mutex_unlock(&s->mu);
    if (!b.p) return error(s, c, 503, NULL, "out_of_memory", "out of memory");
    enum MHD_Result rc = respond(s, c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
    sbuf_free(&b);
    return rc;
}

/* ---- routing -------------------------------------------------------------------- */

static enum MHD_Result route(srv *s, struct MHD_Connection *c, const char *url, const char *method, req_ctx *r) {
    const bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"), del = !strcmp(method, "DELETE");
    /* llama.cpp and vLLM also answer without the /v1 prefix */
    const char *u = !strncmp(url, "/v1/", 4) ? url + 3 : url;
    if (!strcmp(u, "/completions") && post) return start_job(s, c, r, JOB_COMPLETION);
    if (!strcmp(u, "/chat/completions") && post) return start_job(s, c, r, JOB_CHAT);
    if (!strcmp(u, "/models") && get) return list_models(s, c);
    if (!strncmp(u, "/models/", 8) && get) {
        const char *name = u + 8;
        pthread_mutex_lock(&s->mu);
        srv_adapter *a = srv_adapter_find_locked(s, name);
        cJSON *o = a || srv_is_base_name(s, name) ? cJSON_CreateObject() : NULL;
        if (o) {
            cJSON_AddStringToObject(o, "id", a ? a->name : s->base_name);
            cJSON_AddStringToObject(o, "object", "model");
            cJSON_AddStringToObject(o, "owned_by", "peft");
            cJSON_AddStringToObject(o, "root", a ? a->path : s->model_path);
        }
        pthread_mutex_unlock(&s->mu);
        if (!o) return error(s, c, 404, "model", "model_not_found", "The model `%.200s` does not exist", name);
        return respond_cjson(s, c, 200, o);
    }
    if (!strcmp(u, "/adapters") && post) return load_adapter(s, c, r);
    if (!strcmp(u, "/adapters") && get) return list_lora(s, c);
    if (!strncmp(u, "/adapters/", 10) && del) return unload_adapter(s, c, u + 10);
    if (!strcmp(url, "/lora-adapters") && get) return list_lora(s, c);
    if (!strcmp(url, "/lora-adapters") && post) return set_lora(s, c, r);
    if (!strcmp(url, "/health") && get) {
        pthread_mutex_lock(&s->mu);
        const bool stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stopping) return error(s, c, 503, NULL, "shutting_down", "the server is shutting down");
        return respond(s, c, 200, "application/json", "{\"status\":\"ok\"}", 15);
    }
    if (!strcmp(url, "/metrics") && get) return metrics(s, c);
    const bool known = !strcmp(u, "/completions") || !strcmp(u, "/chat/completions") || !strcmp(u, "/models") ||
                       !strcmp(u, "/adapters") || !strncmp(u, "/adapters/", 10) || !strcmp(url, "/lora-adapters") ||
                       !strcmp(url, "/health") || !strcmp(url, "/metrics");
    if (known) return error(s, c, 405, NULL, "method_not_allowed", "%s is not allowed on %s", method, url);
    return error(s, c, 404, NULL, "not_found", "no such endpoint: %s %s", method, url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **req_cls) {
    (void)version;
    srv *s = cls;
    req_ctx *r = *req_cls;
    if (!r) {
        /* the headers: the key and the size are checked before any body */
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *req_cls = r;
        if (s->api_key && !auth_bearer_ok(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION), s->api_key))
            return error(s, c, 401, NULL, "invalid_api_key", "a valid API key is needed: Authorization: Bearer KEY");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > MAX_BODY)
            return error(s, c, 413, NULL, "request_too_large", "the body is larger than %u bytes", MAX_BODY);
        return MHD_YES;
    }
    if (r->job) return answer_job(s, c, r->job);
    if (*upload_size) {
        if (!r->too_large && r->body.len + *upload_size > MAX_BODY) {
            r->too_large = true;
            sbuf_free(&r->body);
        }
        if (!r->too_large && sbuf_add(&r->body, upload, *upload_size)) return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->too_large) return error(s, c, 413, NULL, "request_too_large", "the body is larger than %u bytes", MAX_BODY);
    return route(s, c, url, method, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    (void)toe;
    srv *s = cls;
    req_ctx *r = *req_cls;
    if (!r) return;
    if (r->job) {
        pthread_mutex_lock(&s->mu);
        srv_job *j = r->job;
        j->conn = NULL;
        j->fd = -1;
        if (j->state != JOB_FINISHED) {
            /* the client went away: the scheduler frees its session */
            j->cancelled = true;
            pthread_cond_signal(&s->wake);
        }
        srv_job_unref_locked(s, j);
        pthread_mutex_unlock(&s->mu);
    }
    sbuf_free(&r->body);
    free(r);
    *req_cls = NULL;
}

int srv_http_start(srv *s, const char *host, int port, int *bound_port) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g || !ai) {
        fprintf(stderr, "peft serve: --host %s: %s\n", host, gai_strerror(g));
        return -1;
    }
    unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (s->verbose) flags |= MHD_USE_ERROR_LOG;
    s->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        fprintf(stderr, "peft serve: cannot listen on %s port %d (in use, or not an address of this machine)\n", host, port);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *bound_port = di ? di->port : port;
    return 0;
}

void srv_http_stop(srv *s) {
    if (s->daemon) MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
