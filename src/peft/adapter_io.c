/* adapter_io.c — saving and loading adapters of every method, each through
 * its table (method.h, src/peft/methods/): the common adapter_config.json
 * keys here, the method's own from config_write / config_read (LORA with
 * use_dora: lora_io.c, whose load reads the ranks from the tensors); full
 * fine-tuning saves an HF model folder (its `save`).
 * Any method may carry a classification head (modules_to_save.c), listed in
 * modules_to_save as HF PEFT does for SEQ_CLS.
 * Every file is written to a temporary name, flushed and renamed. */
#include "peft/lora.h"
#include "core/limits.h"
#include "kernels/quant.h"

#include "peft/method.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tensors ----------------------------------------------------------------- */

/* An encoder's adapter without a head is HF peft's FEATURE_EXTRACTION on
 * the bare encoder (BertModel, what sentence-transformers holds): its keys
 * lack the task model's "bert." / "roberta." that a classifier's keep. */
static bool bare_encoder(const peft_model *m, bool has_head) {
    return m && m->cfg.desc->encoder && model_hf_prefix(m)[0] && !has_head;
}

#define PEFT_KEY_ROOT "base_model.model."

/* key as the bare encoder's file spells it (the task prefix dropped) */
static const char *bare_key(const peft_model *m, const char *key, char *buf, size_t cap) {
    const char *pfx = model_hf_prefix(m);
    const size_t n = strlen(PEFT_KEY_ROOT), pl = strlen(pfx);
    if (strncmp(key, PEFT_KEY_ROOT, n) || strncmp(key + n, pfx, pl)) return key;
    return snprintf(buf, cap, PEFT_KEY_ROOT "%s", key + n + pl) < (int)cap ? buf : key;
}

int adapter_write_folder(const adapter *a, const peft_model *m, const char *dir, const char *config_json,
                         peft_err *err) {
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    int n = 0;
    for (int i = 0; i < a->n_tensors; i++) n += a->tensors[i].saved;
    st_write_tensor *t = peft_calloc((size_t)n + 1, sizeof *t, err);
    char *cfg_path = peft_path_join(dir, "adapter_config.json", err);
    char *st_path = peft_path_join(dir, "adapter_model.safetensors", err);
    const bool bare = bare_encoder(m, mts_has_head(a));
    char (*names)[400] = bare ? peft_calloc((size_t)n + 1, sizeof *names, err) : NULL;
    if (!t || !cfg_path || !st_path || (bare && !names)) { rc = PEFT_ERR_NOMEM; goto done; }
    int k = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *at = &a->tensors[i];
        if (!at->saved) continue;
        st_write_tensor *w = &t[k];
        w->name = bare ? bare_key(m, at->key, names[k], sizeof names[k]) : at->key;
        k++;
        w->dtype = PEFT_DT_F32;
        w->ndim = at->ndim;
        w->shape[0] = at->shape[0];
        w->shape[1] = at->shape[1];
        w->data = at->p;
    }
    static const char *const meta[] = {"format", "pt", NULL};
    if ((rc = st_write(st_path, t, k, meta, err))) goto done;
    rc = peft_write_file_atomic(cfg_path, config_json, strlen(config_json), err);
done:
    free(t);
    free(names);
    free(cfg_path);
    free(st_path);
    return rc;
}

/* n f32 values of a F32/F16/BF16 tensor. */
static int to_f32(const st_tensor *t, float *dst, const char *file, peft_err *err) {
    if (t->dtype != PEFT_DT_F32 && t->dtype != PEFT_DT_F16 && t->dtype != PEFT_DT_BF16)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: %s has dtype %s (expected F32, F16 or BF16)", file,
                         t->name, peft_dtype_name(t->dtype));
    int rc = kern_dequant_row(t->dtype, t->data, dst, st_numel(t));
    if (rc) return peft_fail(err, rc, "%s: cannot convert %s", file, t->name);
    return 0;
}

int adapter_read_tensors(adapter *a, const st_archive *st, const char *st_path, peft_err *err) {
    int found = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        adapter_tensor *at = &a->tensors[i];
        if (!at->saved) continue;
        const st_tensor *t = st_find(st, at->key);
        if (!t) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing tensor %s", st_path, at->key);
        int64_t want1 = at->ndim > 1 ? at->shape[1] : 1, got1 = 1;
        for (int k = 1; k < t->ndim; k++) got1 *= t->shape[k];
        if (t->ndim < 1 || t->shape[0] != at->shape[0] || got1 != want1)
            return peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has shape [%lld%s%lld], this model needs [%lld, %lld]",
                             st_path, at->key, (long long)(t->ndim ? t->shape[0] : 0), t->ndim > 1 ? ", " : " x ",
                             (long long)got1, (long long)at->shape[0], (long long)want1);
        int rc = to_f32(t, at->p, st_path, err);
        if (rc) return rc;
        found++;
    }
    if (found != st_count(st)) {
        for (int i = 0; i < st_count(st); i++) {
            const char *nm = st_at(st, i)->name;
            /* an empty tensor carries nothing (HF's AdaLoRA writes a module that kept no rank so) */
            if (!adapter_find_tensor(a, nm) && st_numel(st_at(st, i)) > 0)
                return peft_fail(err, PEFT_ERR_SHAPE, "%s: tensor %s does not belong to this %s adapter on this model",
                                 st_path, nm, adapter_method_name(a));
        }
    }
    return 0;
}

/* ---- configs ------------------------------------------------------------------ */

/* Both return whether every key could be added (cJSON leaves out what it
 * cannot allocate). */
static bool add_common(cJSON *o, const adapter *a, const peft_model *m, const char *peft_type) {
    bool ok = true;
    ok &= cJSON_AddNullToObject(o, "auto_mapping") != NULL;
    ok &= cJSON_AddStringToObject(o, "base_model_name_or_path", a->base_model ? a->base_model : m->path) != NULL;
    ok &= cJSON_AddBoolToObject(o, "inference_mode", true) != NULL;
    ok &= mts_config_write(a, o);
    ok &= cJSON_AddStringToObject(o, "peft_type", peft_type) != NULL;
    ok &= cJSON_AddNullToObject(o, "revision") != NULL;
    ok &= cJSON_AddStringToObject(o, "task_type", mts_task_type(a, m)) != NULL;
    return ok;
}

static bool add_layers(cJSON *o, const adapter *a) {
    if (!a->mc.layers) return cJSON_AddNullToObject(o, "layers_to_transform") != NULL;
    cJSON *arr = cJSON_AddArrayToObject(o, "layers_to_transform");
    bool ok = arr != NULL;
    for (int l = 0; l < 64 && arr; l++)
        if ((a->mc.layers >> l) & 1u) ok &= cJSON_AddItemToArray(arr, cJSON_CreateNumber(l));
    return ok;
}

/* ---- dispatch -------------------------------------------------------------------- */

/* A method's config: the common keys, layers_to_transform, then the
 * method's own. */
char *adapter_config_json(const adapter *a, const peft_model *m, peft_err *err) {
    cJSON *o = cJSON_CreateObject();
    char *js = NULL;
    if (o && add_common(o, a, m, a->ops->peft_type) && ((a->ops->flags & METHOD_PROMPT_LEARNING) || add_layers(o, a)) &&
        (!a->ops->config_write || !a->ops->config_write(a, m, o)))
        js = cJSON_Print(o);
    cJSON_Delete(o);
    if (!js) peft_fail(err, PEFT_ERR_NOMEM, "cannot build the %s adapter config", a->ops->name);
    return js;
}

int adapter_save(const adapter *a, const peft_model *m, const char *dir, peft_err *err) {
    if (a->ops && a->ops->save) return a->ops->save(a, m, dir, err);
    char *js = adapter_config_json(a, m, err);
    if (!js) return peft_fail(err, PEFT_ERR_NOMEM, "%s: cannot build the adapter config", dir);
    int rc = adapter_write_folder(a, m, dir, js, err);
    free(js);
    return rc;
}

/* target names (a list, or a string) into role bits */
int adapter_json_targets(const peft_model *m, const cJSON *v, uint32_t *bits, const char *path, peft_err *err) {
    *bits = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    char buf[512] = "";
    size_t used = 0;   /* what the names need: a cut name would match another module */
    if (cJSON_IsString(v)) used = (size_t)snprintf(buf, sizeof buf, "%s", v->valuestring);
    else if (cJSON_IsArray(v)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            if (!cJSON_IsString(it)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: target names must be strings", path);
            size_t l = strlen(buf);
            used += (size_t)snprintf(buf + l, sizeof buf - l, "%s%s", l ? "," : "", it->valuestring);
            if (used >= sizeof buf) break;
        }
    } else return peft_fail(err, PEFT_ERR_FORMAT, "%s: target modules must be a list of names", path);
    if (used >= sizeof buf)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: target module names are longer than %zu bytes in all", path,
                         sizeof buf - 1);
    if (!buf[0]) return 0;
    int rc = lora_parse_targets(m, buf, bits, err);
    if (rc) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return peft_fail(err, rc, "%s: %s", path, msg);
    }
    return 0;
}

int adapter_load(const peft_model *m, const char *dir, adapter **out, peft_err *err) {
    *out = NULL;
    char *cfg_path = peft_path_join(dir, "adapter_config.json", err);
    char *st_path = peft_path_join(dir, "adapter_model.safetensors", err);
    char *text = NULL;
    cJSON *o = NULL;
    st_archive *st = NULL;
    adapter *a = NULL;
    int rc = 0;
    if (!cfg_path || !st_path) { rc = PEFT_ERR_NOMEM; goto done; }
    if (!peft_is_dir(dir)) { rc = peft_fail(err, PEFT_ERR_IO, "%s: no such adapter folder", dir); goto done; }
    if (!peft_file_exists(cfg_path)) {
        char *mc = peft_path_join(dir, "config.json", err);
        bool model = mc && peft_file_exists(mc);
        free(mc);
        rc = model ? peft_fail(err, PEFT_ERR_INVALID, "%s: this is a model folder (full fine-tuning output?), not an "
                                                      "adapter: use it as --model", dir)
                   : peft_fail(err, PEFT_ERR_IO, "%s: no such file", cfg_path);
        goto done;
    }
    size_t len = 0;
    if ((rc = peft_read_file_max(cfg_path, PEFT_MAX_CONFIG_BYTES, &text, &len, err))) goto done;
    o = cJSON_ParseWithLength(text, len);
    if (!o || !cJSON_IsObject(o)) {
        rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: %s", cfg_path, o ? "not a JSON object" : "not valid JSON");
        goto done;
    }
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (!cJSON_IsString(pt)) { rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: missing \"peft_type\"", cfg_path); goto done; }
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.seed = 42;
    mc.alpha = NAN;
    const char *t = pt->valuestring;
    const method_ops *plug = method_find_peft_type(t);
    if (plug) {
        mc.ops = plug;
        if (!plug->load && plug->config_read && (rc = plug->config_read(o, cfg_path, m, &mc, err))) goto done;
    } else {
        char known[512];
        size_t kl = 0;
        known[0] = '\0';
        for (const method_ops *const *p = method_registry(); *p && kl < sizeof known; p++) {
            if (!(*p)->peft_type || method_find_peft_type((*p)->peft_type) != *p) continue;   /* LORA once */
            kl += (size_t)snprintf(known + kl, sizeof known - kl, "%s%s", kl ? ", " : "", (*p)->peft_type);
        }
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: peft_type %s is not supported (%s load)", cfg_path, t, known);
        goto done;
    }
    /* An int or a list of ints (PeftConfig); each must be a layer of m, and
     * the layer mask has 64 bits. A method that loads itself reads its
     * layers from the tensors. */
    const cJSON *lt = plug->load ? NULL : cJSON_GetObjectItemCaseSensitive(o, "layers_to_transform");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) && !cJSON_IsNumber(lt)) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: \"layers_to_transform\" must be an integer or a list of them",
                           cfg_path);
            goto done;
        }
        const cJSON *it = cJSON_IsArray(lt) ? lt->child : lt;
        for (; it; it = cJSON_IsArray(lt) ? it->next : NULL) {
            int64_t l;
            if ((rc = peft_json_to_int(it, cfg_path, "layers_to_transform", 0, PEFT_MIN(m->cfg.n_layer, 64) - 1, &l,
                                       err)))
                goto done;
            mc.layers |= (uint64_t)1 << l;
        }
    }
    if (!peft_file_exists(st_path)) {
        rc = peft_fail(err, PEFT_ERR_IO, "%s: no such file (adapter_model.bin is not supported)", st_path);
        goto done;
    }
    if ((rc = st_open(st_path, &st, err))) goto done;
    /* the head's shape sizes what the adapter allocates: checked first */
    if ((rc = mts_labels_of_file(st, st_path, m, &mc.n_labels, err))) goto done;
    /* a bare encoder's adapter (FEATURE_EXTRACTION) is read in the task
     * model's names every method knows */
    if (bare_encoder(m, mc.n_labels > 0) && (rc = st_insert_after_prefix(st, PEFT_KEY_ROOT, model_hf_prefix(m), err)))
        goto done;
    if ((rc = plug->load ? plug->load(m, o, cfg_path, st, st_path, mc.n_labels, &a, err)
                         : method_adapter_new(m, &mc, false, &a, err)))
        goto done;
    if ((rc = adapter_read_tensors(a, st, st_path, err))) goto done;
    if ((rc = adapter_refresh(a, m, err))) goto done;
    const cJSON *bm = cJSON_GetObjectItemCaseSensitive(o, "base_model_name_or_path");
    if (cJSON_IsString(bm)) {
        free(a->base_model);
        if (!(a->base_model = peft_strdup(bm->valuestring, err))) { rc = PEFT_ERR_NOMEM; goto done; }
    }
    *out = a;
    a = NULL;
done:
    adapter_free(a);
    st_close(st);
    cJSON_Delete(o);
    free(text);
    free(cfg_path);
    free(st_path);
    return rc;
}

int adapter_export_gguf(const adapter *a, const peft_model *m, const char *path, peft_err *err) {
    if (!a->ops->export_gguf)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: llama.cpp's GGUF adapters hold plain LoRA only, not a %s adapter",
                         path, adapter_method_name(a));
    return a->ops->export_gguf(a, m, path, err);
}
