/* adapter_describe.c — what an adapter file or folder holds, read without
 * its base model (peft_adapter_file_describe, for `peft info`): an HF PEFT
 * folder (adapter_config.json + adapter_model.safetensors, peft.c's own
 * methods included) or a llama.cpp GGUF LoRA file (general.type "adapter").
 * Only headers and the config are read; no tensor data is touched. */
#include "core/ctx.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends s to a comma list in buf unless it is there already. */
static void list_add(char *buf, size_t cap, const char *s) {
    const size_t n = strlen(s);
    for (const char *p = buf; (p = strstr(p, s)); p += n)
        if ((p == buf || p[-1] == ' ') && (p[n] == ',' || p[n] == 0)) return;
    const size_t o = strlen(buf);
    if (o + n + 3 < cap) snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", s);
}

/* The layer number after "layers." / "h." / "layer." / "blk." in a tensor
 * name, or -1. */
static int layer_of(const char *name) {
    static const char *const keys[] = {".layers.", ".h.", ".layer.", "blk."};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        const char *p = strstr(name, keys[k]);
        if (p && (k < 3 || p == name)) {
            p += strlen(keys[k]);
            if (isdigit((unsigned char)*p)) return atoi(p);
        }
    }
    return -1;
}

static void count_layer(uint64_t seen[4], int *n, int l) {
    if (l < 0 || l >= 256) return;
    if (!(seen[l / 64] >> (l % 64) & 1)) (*n)++;
    seen[l / 64] |= 1ULL << (l % 64);
}

static int describe_gguf(const char *path, gguf_file *g, peft_adapter_file_info *o, peft_err *err) {
    const char *type = gguf_get_str(g, "general.type");
    if (!type || strcmp(type, "adapter")) return 0;   /* a model: not ours to describe */
    o->is_adapter = 1;
    snprintf(o->format, sizeof o->format, "llama.cpp GGUF adapter");
    const char *at = gguf_get_str(g, "adapter.type");
    snprintf(o->method, sizeof o->method, "%s", at ? at : "?");
    const char *arch = gguf_get_str(g, "general.architecture");
    snprintf(o->base, sizeof o->base, "%s", arch ? arch : "");
    double alpha;
    peft_err e2 = {0};
    o->alpha = gguf_find_key(g, "adapter.lora.alpha") >= 0 && !gguf_get_float(g, "adapter.lora.alpha", &alpha, &e2)
                   ? (float)alpha : NAN;
    uint64_t seen[4] = {0};
    o->n_tensors = gguf_n_tensors(g);
    for (int i = 0; i < o->n_tensors; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        int64_t ne = 1;
        for (int k = 0; k < t->ndim; k++) ne *= t->ne[k];
        o->n_params += ne;
        list_add(o->dtypes, sizeof o->dtypes, t->dtype < PEFT_DT_COUNT ? peft_dtype_name(t->dtype) : "?");
        count_layer(seen, &o->n_layers, layer_of(t->name));
        const size_t nl = strlen(t->name);
        if (nl > 7 && !strcmp(t->name + nl - 7, ".lora_a")) {
            o->n_modules++;
            /* ne = [in, r] */
            const int r = t->ndim == 2 ? (int)t->ne[1] : 0;
            if (o->r == 0) o->r = r;
            else if (o->r != r) o->r = -1;
            /* blk.N.attn_q.weight.lora_a: the role between the layer and .weight */
            const char *p = strncmp(t->name, "blk.", 4) ? t->name : strchr(t->name + 4, '.');
            if (p && *p == '.') p++;
            char role[64];
            snprintf(role, sizeof role, "%.*s", (int)strcspn(p ? p : "", "."), p ? p : "");
            if (role[0]) list_add(o->targets, sizeof o->targets, role);
        }
    }
    if (o->r > 0 && !isnan(o->alpha)) o->scale = o->alpha / (float)o->r;
    (void)path;
    (void)err;
    return 0;
}

static int describe_folder(const char *dir, peft_adapter_file_info *o, peft_err *err) {
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    if (!peft_file_exists(p)) return 0;
    o->is_adapter = 1;
    snprintf(o->format, sizeof o->format, "HF PEFT adapter folder");
    char *text = NULL;
    if (peft_read_file(p, &text, NULL, err)) return err->code;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", p);
    }
    const cJSON *v;
    if (cJSON_IsString(v = cJSON_GetObjectItem(j, "peft_type")))
        for (size_t i = 0; v->valuestring[i] && i + 1 < sizeof o->method; i++)
            o->method[i] = (char)tolower((unsigned char)v->valuestring[i]);
    if (cJSON_IsString(v = cJSON_GetObjectItem(j, "base_model_name_or_path")))
        snprintf(o->base, sizeof o->base, "%s", v->valuestring);
    if (cJSON_IsString(v = cJSON_GetObjectItem(j, "task_type"))) snprintf(o->task, sizeof o->task, "%s", v->valuestring);
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "r")) || cJSON_IsNumber(v = cJSON_GetObjectItem(j, "init_r")))
        o->r = v->valueint;
    o->alpha = NAN;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "lora_alpha")) || cJSON_IsNumber(v = cJSON_GetObjectItem(j, "alpha")))
        o->alpha = (float)v->valuedouble;
    o->rslora = cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora"));
    o->dora = cJSON_IsTrue(cJSON_GetObjectItem(j, "use_dora"));
    if (o->r > 0 && !isnan(o->alpha)) o->scale = o->rslora ? o->alpha / sqrtf((float)o->r) : o->alpha / (float)o->r;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "num_virtual_tokens"))) o->n_virtual_tokens = v->valueint;
    v = cJSON_GetObjectItem(j, "target_modules");
    if (cJSON_IsString(v)) snprintf(o->targets, sizeof o->targets, "%s", v->valuestring);
    else if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) if (cJSON_IsString(e)) list_add(o->targets, sizeof o->targets, e->valuestring);
    }
    v = cJSON_GetObjectItem(j, "modules_to_save");
    if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) if (cJSON_IsString(e)) list_add(o->modules_to_save, sizeof o->modules_to_save, e->valuestring);
    }
    v = cJSON_GetObjectItem(j, "layers_to_transform");
    if (cJSON_IsNumber(v)) snprintf(o->layers, sizeof o->layers, "%d", v->valueint);
    else if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) if (cJSON_IsNumber(e)) {
            char n[16];
            snprintf(n, sizeof n, "%d", e->valueint);
            list_add(o->layers, sizeof o->layers, n);
        }
    }
    cJSON_Delete(j);

    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    if (!peft_file_exists(p)) {
        char bin[4096];
        snprintf(bin, sizeof bin, "%s/adapter_model.bin", dir);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing%s", p,
                         peft_file_exists(bin) ? " (adapter_model.bin is PyTorch pickle, which is not read: save with "
                                                 "safe_serialization=True)" : "");
    }
    st_archive *st = NULL;
    if (st_open(p, &st, err)) return err->code;
    uint64_t seen[4] = {0};
    o->n_tensors = st_count(st);
    for (int i = 0; i < o->n_tensors; i++) {
        const st_tensor *t = st_at(st, i);
        o->n_params += st_numel(t);
        list_add(o->dtypes, sizeof o->dtypes, peft_dtype_name(t->dtype));
        count_layer(seen, &o->n_layers, layer_of(t->name));
        if (strstr(t->name, "lora_A.") || strstr(t->name, "adapter_down.weight") || strstr(t->name, "hada_w1_a") ||
            strstr(t->name, "lokr_w1") || strstr(t->name, ".ia3_l") || strstr(t->name, "vera_lambda_b"))
            o->n_modules++;
    }
    st_close(st);
    return 0;
}

int peft_adapter_file_describe(const char *path, peft_adapter_file_info *out, peft_error *err) {
    memset(out, 0, sizeof *out);
    out->alpha = NAN;
    peft_err e = {0};
    int rc = 0;
    if (peft_is_dir(path)) rc = describe_folder(path, out, &e);
    else {
        const size_t n = strlen(path);
        if (n < 5 || strcmp(path + n - 5, ".gguf")) return 0;
        gguf_file *g = NULL;
        if (gguf_open(path, &g, &e)) return peft_error_set(err, &e);
        rc = describe_gguf(path, g, out, &e);
        gguf_close(g);
    }
    return rc ? peft_error_set(err, &e) : 0;
}
