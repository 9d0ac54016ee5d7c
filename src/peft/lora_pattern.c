/* lora_pattern.c — HF peft's per-module LoRA settings: rank_pattern,
 * alpha_pattern and target_modules given as module names.
 *
 * HF matches a pattern key K against a module's full name (e.g.
 * "model.layers.3.self_attn.q_proj") with re.match(r"(.*\.)?(K)$") and takes
 * the first key in order that matches (peft.utils.other.get_pattern_key);
 * a target_modules list entry T selects a module whose name is T or ends in
 * "." + T. Keys are compiled with PCRE2 (as LoHa's, methods/loha.c), whose
 * syntax is Python's for what pattern keys use.
 *
 * A spec is what the CLI's --rank-pattern / --alpha-pattern /
 * --target-modules carry: a JSON object {"KEY": N} (a list ["NAME"]) as
 * LoHa's options, "KEY=N,KEY=N" ("NAME,NAME"), or "@FILE" for the object
 * (the list) under that key of a JSON file — the `peft train --config` file
 * or an adapter_config.json, which a method option string (1 KiB) cannot
 * hold for a model's every module. */
#include "peft/lora.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lora_pattern_free(lora_pattern *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        pcre2_code_free((pcre2_code *)p->it[i].re);
        free(p->it[i].key);
    }
    free(p->it);
    memset(p, 0, sizeof *p);
}

static int add_item(lora_pattern *p, const char *key, size_t kl, double v, const char *what, peft_err *err) {
    if (kl == 0) return peft_fail(err, PEFT_ERR_INVALID, "%s: an empty module name", what);
    if (kl > 512) return peft_fail(err, PEFT_ERR_INVALID, "%s: a module name of %zu characters", what, kl);
    if (p->n >= 100000) return peft_fail(err, PEFT_ERR_INVALID, "%s: more than 100000 entries", what);
    lora_pattern_item *it = realloc(p->it, (size_t)(p->n + 1) * sizeof *it);
    if (!it) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", what);
    p->it = it;
    lora_pattern_item *e = &p->it[p->n];
    memset(e, 0, sizeof *e);
    e->key = malloc(kl + 1);
    if (!e->key) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", what);
    memcpy(e->key, key, kl);
    e->key[kl] = 0;
    e->v = v;
    p->n++;
    if (p->targets) return 0;
    /* get_pattern_key's r"(.*\.)?(K)$", anchored at the start as re.match is */
    char *rx = malloc(kl + 16);
    if (!rx) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", what);
    snprintf(rx, kl + 16, "(.*\\.)?(%s)$", e->key);
    int ec;
    PCRE2_SIZE eo;
    e->re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_UTF, &ec, &eo, NULL);
    free(rx);
    if (!e->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return peft_fail(err, PEFT_ERR_INVALID, "%s: key \"%.200s\" is not a regular expression: %s", what, e->key,
                         (const char *)msg);
    }
    return 0;
}

int lora_pattern_from_json(const cJSON *v, bool targets, const char *what, lora_pattern *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    out->targets = targets;
    if (!v || cJSON_IsNull(v)) return 0;
    int rc = 0;
    const cJSON *it;
    if (targets) {
        if (cJSON_IsString(v)) return add_item(out, v->valuestring, strlen(v->valuestring), 0, what, err);
        if (!cJSON_IsArray(v)) return peft_fail(err, PEFT_ERR_FORMAT, "%s must be a list of module names", what);
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsString(it)) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s must be a list of module names", what); break; }
            if ((rc = add_item(out, it->valuestring, strlen(it->valuestring), 0, what, err))) break;
        }
    } else {
        if (!cJSON_IsObject(v)) return peft_fail(err, PEFT_ERR_FORMAT, "%s must be an object of module: number", what);
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) {
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must map to a number", what, it->string);
                break;
            }
            if ((rc = add_item(out, it->string, strlen(it->string), it->valuedouble, what, err))) break;
        }
    }
    if (rc) lora_pattern_free(out);
    return rc;
}

int lora_pattern_parse(const char *spec, const char *json_key, bool targets, lora_pattern *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    out->targets = targets;
    if (!spec || !*spec) return 0;
    if (spec[0] == '@') {
        const char *path = spec + 1;
        char *text = NULL;
        size_t len = 0;
        int rc = peft_read_file_max(path, PEFT_MAX_CONFIG_BYTES, &text, &len, err);
        if (rc) return rc;
        cJSON *o = cJSON_ParseWithLength(text, len);
        free(text);
        if (!cJSON_IsObject(o)) {
            cJSON_Delete(o);
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", path);
        }
        char what[600];
        snprintf(what, sizeof what, "%s: \"%s\"", path, json_key);
        rc = lora_pattern_from_json(cJSON_GetObjectItemCaseSensitive(o, json_key), targets, what, out, err);
        cJSON_Delete(o);
        return rc;
    }
    char what[64];
    snprintf(what, sizeof what, "%s", json_key);
    if (spec[0] == '{' || spec[0] == '[') {
        cJSON *o = cJSON_Parse(spec);
        if (!o) return peft_fail(err, PEFT_ERR_INVALID, "%s: not valid JSON: \"%.200s\"", what, spec);
        int rc = lora_pattern_from_json(o, targets, what, out, err);
        cJSON_Delete(o);
        return rc;
    }
    for (const char *p = spec; *p;) {
        const char *e = strchr(p, ',');
        const size_t n = e ? (size_t)(e - p) : strlen(p);
        int rc = 0;
        if (targets) {
            rc = add_item(out, p, n, 0, what, err);
        } else {
            const char *eq = memchr(p, '=', n);
            char num[64], *end = NULL;
            const size_t nl = eq ? n - (size_t)(eq - p) - 1 : 0;
            if (!eq || nl == 0 || nl >= sizeof num) {
                rc = peft_fail(err, PEFT_ERR_INVALID, "%s: expected MODULE=NUMBER, got \"%.*s\"", what, (int)PEFT_MIN(n, 200), p);
            } else {
                memcpy(num, eq + 1, nl);
                num[nl] = 0;
                const double v = strtod(num, &end);
                if (*end || !isfinite(v))
                    rc = peft_fail(err, PEFT_ERR_INVALID, "%s: \"%s\" is not a number", what, num);
                else
                    rc = add_item(out, p, (size_t)(eq - p), v, what, err);
            }
        }
        if (rc) { lora_pattern_free(out); return rc; }
        p += n + (e ? 1 : 0);
    }
    return 0;
}

int lora_pattern_find(const lora_pattern *p, const char *module) {
    if (!p) return -1;
    const size_t ml = strlen(module);
    for (int i = 0; i < p->n; i++) {
        const lora_pattern_item *e = &p->it[i];
        if (p->targets) {
            const size_t kl = strlen(e->key);
            if (!strcmp(module, e->key) || (ml > kl && module[ml - kl - 1] == '.' && !strcmp(module + ml - kl, e->key)))
                return i;
        } else if (e->re) {
            pcre2_match_data *md = pcre2_match_data_create_from_pattern((pcre2_code *)e->re, NULL);
            const int mrc = md ? pcre2_match((pcre2_code *)e->re, (PCRE2_SPTR)module, ml, 0, 0, md, NULL) : -1;
            pcre2_match_data_free(md);
            if (mrc >= 0) return i;
        }
    }
    return -1;
}
