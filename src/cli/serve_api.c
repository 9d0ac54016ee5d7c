/* serve_api.c — OpenAI request bodies into jobs (every field checked for
 * its type and range, the prompt tokenized and measured against the
 * context), and jobs into OpenAI's response and stream-chunk JSON. */
#include "serve.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

char *srv_error_json(const char *message, const char *type, const char *param, const char *code) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char *out = NULL;
    if (e && cJSON_AddStringToObject(e, "message", message) && cJSON_AddStringToObject(e, "type", type) &&
        (param ? cJSON_AddStringToObject(e, "param", param) : cJSON_AddNullToObject(e, "param")) &&
        (code ? cJSON_AddStringToObject(e, "code", code) : cJSON_AddNullToObject(e, "code")))
        out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* A request error: status, OpenAI type and code, and a message naming the field. */
typedef struct {
    int status;
    const char *type, *param, *code;
    char msg[768];
} req_err;

static int fail(req_err *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(req_err *e, int status, const char *param, const char *code, const char *fmt, ...) {
    e->status = status;
    e->type = status == 404 ? "not_found_error" : status >= 500 ? "server_error" : "invalid_request_error";
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* A field, with JSON null read as absent (OpenAI's clients send nulls). */
static const cJSON *field(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static const char *type_name(const cJSON *v) {
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "null";
}

/* 1 present, 0 absent, -1 wrong (e filled). */
static int get_int(const cJSON *obj, const char *name, double lo, double hi, long long *out, req_err *e) {
    const cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return fail(e, 400, name, "invalid_type", "'%s' must be an integer, got %s", name,
                    cJSON_IsNumber(v) ? "a fraction" : type_name(v));
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return fail(e, 400, name, "invalid_value", "'%s' must be in [%.0f, %.0f], got %.0f", name, lo, hi,
                    v->valuedouble);
    *out = (long long)v->valuedouble;
    return 1;
}

static int get_num(const cJSON *obj, const char *name, double lo, double hi, double *out, req_err *e) {
    const cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v)) return fail(e, 400, name, "invalid_type", "'%s' must be a number, got %s", name, type_name(v));
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return fail(e, 400, name, "invalid_value", "'%s' must be in [%g, %g], got %g", name, lo, hi, v->valuedouble);
    *out = v->valuedouble;
    return 1;
}

static int get_bool(const cJSON *obj, const char *name, bool *out, req_err *e) {
    const cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return fail(e, 400, name, "invalid_type", "'%s' must be a boolean, got %s", name, type_name(v));
    *out = cJSON_IsTrue(v);
    return 1;
}

static int get_str(const cJSON *obj, const char *name, const char **out, req_err *e) {
    const cJSON *v = field(obj, name);
    if (!v) return 0;
    if (!cJSON_IsString(v)) return fail(e, 400, name, "invalid_type", "'%s' must be a string, got %s", name, type_name(v));
    *out = v->valuestring;
    return 1;
}

/* Fields of OpenAI's API this server does not implement: accepted at
 * their neutral values, refused otherwise (rather than silently ignored). */
static int check_unsupported(const cJSON *req, req_err *e) {
    static const char *const zero_nums[] = {"presence_penalty", "frequency_penalty", NULL};
    for (int i = 0; zero_nums[i]; i++) {
        double x = 0;
        if (get_num(req, zero_nums[i], -2, 2, &x, e) < 0) return -1;
        if (x != 0)
            return fail(e, 400, zero_nums[i], "unsupported_value", "'%s' is not supported (only 0)", zero_nums[i]);
    }
    const cJSON *v;
    long long k;
    int r = get_int(req, "n", 1, 1, &k, e);
    if (r < 0) {
        snprintf(e->msg, sizeof e->msg, "'n' must be 1: one choice per request");
        return -1;
    }
    if ((r = get_int(req, "best_of", 1, 1, &k, e)) < 0) {
        snprintf(e->msg, sizeof e->msg, "'best_of' must be 1");
        return -1;
    }
    if ((v = field(req, "logprobs")) && !cJSON_IsFalse(v))
        return fail(e, 400, "logprobs", "unsupported_value", "'logprobs' is not supported");
    if ((v = field(req, "top_logprobs")) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return fail(e, 400, "top_logprobs", "unsupported_value", "'top_logprobs' is not supported");
    if ((v = field(req, "logit_bias")) && !(cJSON_IsObject(v) && !v->child))
        return fail(e, 400, "logit_bias", "unsupported_value", "'logit_bias' is not supported");
    if ((v = field(req, "suffix")) && !(cJSON_IsString(v) && !v->valuestring[0]))
        return fail(e, 400, "suffix", "unsupported_value", "'suffix' is not supported");
    if ((v = field(req, "tools")) && !(cJSON_IsArray(v) && !v->child))
        return fail(e, 400, "tools", "unsupported_value", "'tools' are not supported");
    if ((v = field(req, "functions")) && !(cJSON_IsArray(v) && !v->child))
        return fail(e, 400, "functions", "unsupported_value", "'functions' are not supported");
    if ((v = field(req, "response_format"))) {
        const cJSON *t = cJSON_IsObject(v) ? field(v, "type") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0)
            return fail(e, 400, "response_format", "unsupported_value", "'response_format' must be {\"type\": \"text\"}");
    }
    const char *u;
    if (get_str(req, "user", &u, e) < 0) return -1;
    return 0;
}

static int parse_stops(const cJSON *req, srv_job *j, req_err *e) {
    const cJSON *v = field(req, "stop");
    if (!v) return 0;
    const cJSON *items[SRV_MAX_STOPS];
    int n = 0;
    if (cJSON_IsString(v)) items[n++] = v;
    else if (cJSON_IsArray(v)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            if (n == SRV_MAX_STOPS) return fail(e, 400, "stop", "invalid_value", "'stop' has more than %d strings", SRV_MAX_STOPS);
            if (!cJSON_IsString(it)) return fail(e, 400, "stop", "invalid_type", "'stop' must hold strings, got %s", type_name(it));
            items[n++] = it;
        }
    } else return fail(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings, got %s", type_name(v));
    for (int i = 0; i < n; i++) {
        const size_t len = strlen(items[i]->valuestring);
        if (len == 0) continue;   /* an empty stop can match nothing useful */
        if (len > 1024) return fail(e, 400, "stop", "invalid_value", "a 'stop' string is longer than 1024 bytes");
        if (!(j->stops[j->n_stops] = strdup(items[i]->valuestring)))
            return fail(e, 500, NULL, NULL, "out of memory");
        j->n_stops++;
    }
    return 0;
}

/* The text of a message's content: a string, or OpenAI's array of parts
 * ({"type": "text", "text": ...}). *owned is malloc'ed when parts were joined. */
static int message_text(const cJSON *content, const char **text, char **owned, req_err *e) {
    *owned = NULL;
    if (!content) { *text = ""; return 0; }
    if (cJSON_IsString(content)) { *text = content->valuestring; return 0; }
    if (!cJSON_IsArray(content))
        return fail(e, 400, "messages", "invalid_type", "a message's 'content' must be a string or an array of parts, got %s",
                    type_name(content));
    sbuf b = {0};
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const cJSON *t = cJSON_IsObject(part) ? field(part, "type") : NULL, *x = cJSON_IsObject(part) ? field(part, "text") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0 || !cJSON_IsString(x)) {
            sbuf_free(&b);
            return fail(e, 400, "messages", "invalid_value", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        }
        if (sbuf_add(&b, x->valuestring, strlen(x->valuestring))) { sbuf_free(&b); return fail(e, 500, NULL, NULL, "out of memory"); }
    }
    if (sbuf_add(&b, "", 0)) return fail(e, 500, NULL, NULL, "out of memory");
    *text = *owned = b.p;
    return 0;
}

static int chat_prompt(srv *s, const cJSON *req, char **prompt, req_err *e) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    if (!msgs) return fail(e, 400, "messages", "missing_required_parameter", "'messages' is required");
    if (!cJSON_IsArray(msgs)) return fail(e, 400, "messages", "invalid_type", "'messages' must be an array, got %s", type_name(msgs));
    const int n = cJSON_GetArraySize(msgs);
    if (n == 0) return fail(e, 400, "messages", "invalid_value", "'messages' is empty");
    if (n > 4096) return fail(e, 400, "messages", "invalid_value", "'messages' has more than 4096 messages");
    peft_chat_message *m = calloc((size_t)n, sizeof *m);
    char **owned = calloc((size_t)n, sizeof *owned);
    int rc = 0, i = 0;
    if (!m || !owned) rc = fail(e, 500, NULL, NULL, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        if (rc) break;
        const cJSON *role = cJSON_IsObject(it) ? field(it, "role") : NULL;
        if (!cJSON_IsObject(it)) { rc = fail(e, 400, "messages", "invalid_type", "messages[%d] must be an object", i); break; }
        if (!cJSON_IsString(role)) { rc = fail(e, 400, "messages", "invalid_type", "messages[%d].role must be a string", i); break; }
        const char *r = role->valuestring;
        if (!strcmp(r, "developer")) r = "system";   /* OpenAI's newer name for it */
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            rc = fail(e, 400, "messages", "invalid_value", "messages[%d].role must be system, user or assistant, got \"%s\"", i, r);
            break;
        }
        const char *text = "";
        if (message_text(field(it, "content"), &text, &owned[i], e)) { rc = -1; break; }
        m[i].role = r;
        m[i].content = text;
        i++;
    }
    if (!rc) {
        peft_error pe = {0};
        if (peft_chat_format(s->model, m, n, 1, prompt, &pe))
            rc = fail(e, 400, "messages", "invalid_value", "the chat template could not format the messages: %s", pe.msg);
    }
    for (int k = 0; owned && k < n; k++) free(owned[k]);
    free(owned);
    free(m);
    return rc;
}

/* Completions' prompt: a string, one string in an array, token ids, or one
 * array of token ids. */
static int completion_prompt(srv *s, const cJSON *req, srv_job *j, bool echo, req_err *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(req, "prompt");
    if (!p) return fail(e, 400, "prompt", "missing_required_parameter", "'prompt' is required");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && (cJSON_IsString(p->child) || cJSON_IsArray(p->child))) p = p->child;
    if (cJSON_IsString(p)) {
        peft_error pe = {0};
        if (peft_tokenize_err(s->model, p->valuestring, 1, 1, &j->prompt, &j->n_prompt, &pe))
            return fail(e, 400, "prompt", "invalid_value", "the prompt could not be tokenized: %s", pe.msg);
        if (echo && !(j->echo = strdup(p->valuestring))) return fail(e, 500, NULL, NULL, "out of memory");
        return 0;
    }
    if (!cJSON_IsArray(p))
        return fail(e, 400, "prompt", "invalid_type", "'prompt' must be a string, an array of token ids or one of them in an array, got %s",
                    type_name(p));
    const int n = cJSON_GetArraySize(p);
    if (n < 0) return fail(e, 400, "prompt", "invalid_value", "'prompt' is too long");
    if (n > 0 && !cJSON_IsNumber(p->child))
        return fail(e, 400, "prompt", "invalid_value", "one prompt per request ('prompt' has %d)", n);
    if (n > s->n_ctx) return fail(e, 400, "prompt", "context_length_exceeded", "the prompt has %d tokens; the context is %d", n, s->n_ctx);
    if (echo) return fail(e, 400, "echo", "unsupported_value", "'echo' needs a text prompt");
    if (n && !(j->prompt = malloc((size_t)n * sizeof *j->prompt))) return fail(e, 500, NULL, NULL, "out of memory");
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, p) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble >= s->info.vocab)
            return fail(e, 400, "prompt", "invalid_value", "prompt[%d] is not a token id in [0, %d)", i, s->info.vocab);
        j->prompt[i++] = (int32_t)it->valuedouble;
    }
    j->n_prompt = n;
    return 0;
}

/* The adapters of the request: `lora` (llama.cpp's per-request scales),
 * else the adapter `model` names, else the global scales. Takes one job
 * count on each (under mu). */
static int pick_adapters(srv *s, const cJSON *req, srv_job *j, const char *model, req_err *e) {
    const cJSON *lora = field(req, "lora");
    if (lora && !cJSON_IsArray(lora)) return fail(e, 400, "lora", "invalid_type", "'lora' must be an array of {\"id\", \"scale\"}, got %s", type_name(lora));
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    srv_adapter *named = NULL;
    if (model && !srv_is_base_name(s, model) && !(named = srv_adapter_find_locked(s, model)))
        rc = fail(e, 404, "model", "model_not_found", "The model `%s` does not exist: the base is \"%s\", adapters are listed by GET /v1/models",
                  model, s->base_name);
    else if (named && lora)
        rc = fail(e, 400, "lora", "invalid_value", "'lora' applies to the base model: 'model' names the adapter \"%s\"", model);
    else if (named) {
        j->ads[0] = named;
        j->scales[0] = 1.0f;
        j->n_ads = 1;
    } else if (lora) {
        const cJSON *it;
        int i = 0;
        cJSON_ArrayForEach(it, lora) {
            long long id = -1;
            double scale = 0;
            if (!cJSON_IsObject(it)) { rc = fail(e, 400, "lora", "invalid_type", "lora[%d] must be an object {\"id\", \"scale\"}", i); break; }
            if (get_int(it, "id", 0, 1e9, &id, e) <= 0) {
                rc = fail(e, 400, "lora", "invalid_value", "lora[%d].id must be the id of a loaded adapter (GET /lora-adapters)", i);
                break;
            }
            if (get_num(it, "scale", -100, 100, &scale, e) < 0) { rc = -1; break; }
            srv_adapter *a = srv_adapter_by_id_locked(s, (int)id);
            if (!a) { rc = fail(e, 400, "lora", "invalid_value", "lora[%d].id %lld is not a loaded adapter", i, id); break; }
            i++;
            int slot = -1;
            for (int k = 0; k < j->n_ads; k++)
                if (j->ads[k] == a) slot = k;
            if (slot < 0) {
                if (j->n_ads == SRV_MAX_JOB_ADAPTERS) { rc = fail(e, 400, "lora", "invalid_value", "more than %d adapters in 'lora'", SRV_MAX_JOB_ADAPTERS); break; }
                slot = j->n_ads++;
                j->ads[slot] = a;
            }
            j->scales[slot] = (float)scale;   /* the last one given wins, as llama.cpp's */
        }
        /* scale 0 is no adapter at all */
        int w = 0;
        for (int k = 0; k < j->n_ads; k++)
            if (j->scales[k] != 0) { j->ads[w] = j->ads[k]; j->scales[w++] = j->scales[k]; }
        j->n_ads = rc ? 0 : w;
    } else {
        for (int k = 0; k < s->n_ads && j->n_ads < SRV_MAX_JOB_ADAPTERS; k++)
            if (s->ads[k]->scale != 0) {
                j->ads[j->n_ads] = s->ads[k];
                j->scales[j->n_ads++] = s->ads[k]->scale;
            }
    }
    if (rc) j->n_ads = 0;
    for (int k = 0; k < j->n_ads; k++) j->ads[k]->jobs++;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

srv_job *srv_job_from_request(srv *s, job_kind kind, const char *body, size_t len, int *status, char **err_body) {
    req_err e = {0};
    srv_job *j = calloc(1, sizeof *j);
    cJSON *req = NULL;
    char *chat_text = NULL;
    if (!j) { fail(&e, 500, NULL, NULL, "out of memory"); goto out; }
    j->kind = kind;
    j->fd = -1;
    j->sp = peft_sample_default_params();
    const char *end = NULL;
    req = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!req) {
        fail(&e, 400, NULL, "invalid_json", "the body is not valid JSON (at byte %ld of %zu)", end ? (long)(end - body) : 0L, len);
        goto out;
    }
    if (!cJSON_IsObject(req)) { fail(&e, 400, NULL, "invalid_json", "the body must be a JSON object, got %s", type_name(req)); goto out; }
    if (check_unsupported(req, &e)) goto out;

    const char *model = NULL;
    if (get_str(req, "model", &model, &e) < 0) goto out;
    if (!(j->model_name = strdup(model ? model : s->base_name))) { fail(&e, 500, NULL, NULL, "out of memory"); goto out; }
    if (get_bool(req, "stream", &j->stream, &e) < 0) goto out;
    const cJSON *so = field(req, "stream_options");
    if (so && !cJSON_IsObject(so)) { fail(&e, 400, "stream_options", "invalid_type", "'stream_options' must be an object"); goto out; }
    if (so && get_bool(so, "include_usage", &j->include_usage, &e) < 0) goto out;
    bool echo = false;
    if (kind == JOB_COMPLETION && get_bool(req, "echo", &echo, &e) < 0) goto out;

    /* sampling: OpenAI's defaults are temperature 1, top_p 1 */
    double temp = 1.0, top_p = 1.0;
    long long top_k = 0, seed = 0, max_tokens = 0;
    int have_seed, have_max, have_max2;
    long long max2 = 0;
    if (get_num(req, "temperature", 0, 2, &temp, &e) < 0 || get_num(req, "top_p", 0, 1, &top_p, &e) < 0 ||
        get_int(req, "top_k", 0, 1e9, &top_k, &e) < 0 || (have_seed = get_int(req, "seed", -9.2e18, 9.2e18, &seed, &e)) < 0)
        goto out;
    if ((have_max = get_int(req, "max_tokens", -1e18, 1e18, &max_tokens, &e)) < 0 ||
        (have_max2 = get_int(req, "max_completion_tokens", -1e18, 1e18, &max2, &e)) < 0)
        goto out;
    if (!have_max && have_max2) { have_max = 1; max_tokens = max2; }
    const char *max_name = have_max2 && !field(req, "max_tokens") ? "max_completion_tokens" : "max_tokens";
    if (have_max && (max_tokens < 1 || max_tokens > s->n_ctx)) {
        fail(&e, 400, max_name, "invalid_value", "'%s' must be in [1, %d] (the context length), got %lld", max_name, s->n_ctx, max_tokens);
        goto out;
    }
    j->sp.temperature = top_p <= 0 ? 0.0f : (float)temp;
    j->sp.top_p = top_p <= 0 ? 1.0f : (float)top_p;
    j->sp.top_k = (int)top_k;
    if (have_seed) j->sp.seed = (uint64_t)seed;
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        j->sp.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)j;
    }
    if (parse_stops(req, j, &e)) goto out;

    if (pick_adapters(s, req, j, model, &e)) goto out;
    j->metric = j->n_ads == 1 ? j->ads[0] : NULL;

    if (kind == JOB_CHAT) {
        if (chat_prompt(s, req, &chat_text, &e)) goto out;
        peft_error pe = {0};
        /* a chat template writes any BOS itself (as apply_chat_template) */
        if (peft_tokenize_err(s->model, chat_text, 0, 1, &j->prompt, &j->n_prompt, &pe)) {
            fail(&e, 400, "messages", "invalid_value", "the conversation could not be tokenized: %s", pe.msg);
            goto out;
        }
    } else if (completion_prompt(s, req, j, echo, &e)) goto out;
    const char *pp = kind == JOB_CHAT ? "messages" : "prompt";
    if (j->n_prompt == 0) { fail(&e, 400, pp, "invalid_value", "the prompt is empty"); goto out; }
    if (j->n_prompt >= s->n_ctx) {
        fail(&e, 400, pp, "context_length_exceeded", "This model's maximum context length is %d tokens; the prompt has %d tokens",
             s->n_ctx, j->n_prompt);
        goto out;
    }
    if (have_max && j->n_prompt + max_tokens > s->n_ctx) {
        fail(&e, 400, max_name, "context_length_exceeded",
             "This model's maximum context length is %d tokens; you requested %lld tokens (%d in the prompt, %lld to generate)",
             s->n_ctx, j->n_prompt + max_tokens, j->n_prompt, max_tokens);
        goto out;
    }
    /* OpenAI's defaults: 16 new tokens for completions, the rest of the
     * context for chat */
    const int room = s->n_ctx - j->n_prompt;
    j->max_tokens = have_max ? (int)max_tokens : kind == JOB_CHAT ? room : (room < 16 ? room : 16);

out:
    cJSON_Delete(req);
    free(chat_text);
    if (e.status) {
        *status = e.status;
        *err_body = srv_error_json(e.msg, e.type, e.param, e.code);
        if (j) {
            if (s && j->n_ads) {
                pthread_mutex_lock(&s->mu);
                for (int k = 0; k < j->n_ads; k++) j->ads[k]->jobs--;
                pthread_mutex_unlock(&s->mu);
                j->n_ads = 0;
            }
            srv_job_free(j);
        }
        return NULL;
    }
    return j;
}

/* ---- responses ------------------------------------------------------------------ */

static cJSON *envelope(const srv_job *j, const char *object) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    if (!cJSON_AddStringToObject(r, "id", j->id) || !cJSON_AddStringToObject(r, "object", object) ||
        !cJSON_AddNumberToObject(r, "created", (double)j->created) || !cJSON_AddStringToObject(r, "model", j->model_name) ||
        !cJSON_AddStringToObject(r, "system_fingerprint", "peft-" PEFT_VERSION)) {
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}

static bool add_usage(cJSON *r, const srv_job *j) {
    cJSON *u = cJSON_AddObjectToObject(r, "usage");
    return u && cJSON_AddNumberToObject(u, "prompt_tokens", j->n_prompt) &&
           cJSON_AddNumberToObject(u, "completion_tokens", j->n_gen) &&
           cJSON_AddNumberToObject(u, "total_tokens", j->n_prompt + j->n_gen);
}

/* text (any bytes) as a valid-UTF-8 string item */
static cJSON *add_text(cJSON *obj, const char *name, const char *prefix, const char *text, size_t len) {
    sbuf b = {0};
    if ((prefix && utf8_sanitize_append(&b, prefix, strlen(prefix))) || utf8_sanitize_append(&b, text, len)) {
        sbuf_free(&b);
        return NULL;
    }
    cJSON *it = cJSON_AddStringToObject(obj, name, b.p ? b.p : "");
    sbuf_free(&b);
    return it;
}

char *srv_job_result_json(const srv_job *j, const char *text, size_t text_len) {
    const bool chat = j->kind == JOB_CHAT;
    cJSON *r = envelope(j, chat ? "chat.completion" : "text_completion");
    char *out = NULL;
    cJSON *choices = r ? cJSON_AddArrayToObject(r, "choices") : NULL, *c = cJSON_CreateObject();
    if (!choices || !c) { cJSON_Delete(c); goto done; }
    cJSON_AddItemToArray(choices, c);
    bool ok = cJSON_AddNumberToObject(c, "index", 0) != NULL;
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        ok = ok && m && cJSON_AddStringToObject(m, "role", "assistant") && add_text(m, "content", NULL, text, text_len);
    } else ok = ok && add_text(c, "text", j->echo, text, text_len);
    ok = ok && cJSON_AddNullToObject(c, "logprobs") && cJSON_AddStringToObject(c, "finish_reason", j->finish ? j->finish : "stop") &&
         add_usage(r, j);
    if (ok) out = cJSON_PrintUnformatted(r);
done:
    cJSON_Delete(r);
    return out;
}

static int emit(sbuf *out, cJSON *r) {
    char *s = r ? cJSON_PrintUnformatted(r) : NULL;
    cJSON_Delete(r);
    if (!s) return -1;
    int rc = sbuf_add(out, "data: ", 6) || sbuf_add(out, s, strlen(s)) || sbuf_add(out, "\n\n", 2) ? -1 : 0;
    free(s);
    return rc;
}

int srv_job_chunk(sbuf *out, const srv_job *j, const char *text, size_t len, const char *finish) {
    const bool chat = j->kind == JOB_CHAT;
    cJSON *r = envelope(j, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = r ? cJSON_AddArrayToObject(r, "choices") : NULL, *c = cJSON_CreateObject();
    if (!choices || !c) { cJSON_Delete(c); cJSON_Delete(r); return -1; }
    cJSON_AddItemToArray(choices, c);
    bool ok = cJSON_AddNumberToObject(c, "index", 0) != NULL;
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        ok = ok && d;
        if (ok && !text && !finish) ok = cJSON_AddStringToObject(d, "role", "assistant") && cJSON_AddStringToObject(d, "content", "");
        else if (ok && text) ok = add_text(d, "content", NULL, text, len) != NULL;
    } else ok = ok && add_text(c, "text", NULL, text ? text : "", text ? len : 0);
    ok = ok && cJSON_AddNullToObject(c, "logprobs") &&
         (finish ? cJSON_AddStringToObject(c, "finish_reason", finish) : cJSON_AddNullToObject(c, "finish_reason"));
    if (!ok) { cJSON_Delete(r); return -1; }
    return emit(out, r);
}

int srv_job_usage_chunk(sbuf *out, const srv_job *j) {
    cJSON *r = envelope(j, j->kind == JOB_CHAT ? "chat.completion.chunk" : "text_completion");
    if (!r || !cJSON_AddArrayToObject(r, "choices") || !add_usage(r, j)) { cJSON_Delete(r); return -1; }
    return emit(out, r);
}
