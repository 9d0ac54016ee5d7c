/* adapter_io.c — saving and loading adapters of every method.
 *
 *   LORA (+ use_dora)        lora_io.c (HF PEFT LoraConfig)
 *   plug-in methods          their table (method.h, src/peft/methods/): IA3, VERA,
 *                            BOTTLENECK, PROMPT_TUNING, PREFIX_TUNING, ...
 *   BITFIT                   peft.c: base_model.model.<HF parameter>.bias
 *   full fine-tuning         an HF model folder (model.safetensors, config.json, tokenizer)
 * Any method may carry a classification head, base_model.model.score.weight
 * (n_labels, d), listed in modules_to_save as HF PEFT does for SEQ_CLS.
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

int adapter_write_folder(const adapter *a, const char *dir, const char *config_json, peft_err *err) {
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    int n = 0;
    for (int i = 0; i < a->n_tensors; i++) n += a->tensors[i].saved;
    st_write_tensor *t = peft_calloc((size_t)n + 1, sizeof *t, err);
    char *cfg_path = peft_path_join(dir, "adapter_config.json", err);
    char *st_path = peft_path_join(dir, "adapter_model.safetensors", err);
    if (!t || !cfg_path || !st_path) { rc = PEFT_ERR_NOMEM; goto done; }
    int k = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *at = &a->tensors[i];
        if (!at->saved) continue;
        st_write_tensor *w = &t[k++];
        w->name = at->key;
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
            if (!adapter_find_tensor(a, nm))
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
    if (a->score) {
        cJSON *ms = cJSON_AddArrayToObject(o, "modules_to_save");
        ok &= ms && cJSON_AddItemToArray(ms, cJSON_CreateString("score"));
        ok &= cJSON_AddNumberToObject(o, "num_labels", a->mc.n_labels) != NULL;
    } else ok &= cJSON_AddNullToObject(o, "modules_to_save") != NULL;
    ok &= cJSON_AddStringToObject(o, "peft_type", peft_type) != NULL;
    ok &= cJSON_AddNullToObject(o, "revision") != NULL;
    ok &= cJSON_AddStringToObject(o, "task_type", a->score ? "SEQ_CLS" : "CAUSAL_LM") != NULL;
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

/* ---- full fine-tuning: an HF model folder -------------------------------------- */


/* GGUF base: dir/model.gguf with the base's metadata and every tensor as
 * F32 (llama.cpp's Q/K row order restored). */
static int save_full_gguf(const adapter *a, const peft_model *m, const char *dir, peft_err *err) {
    const gguf_file *g = m->gguf;
    const int n = gguf_n_tensors(g), L = m->cfg.n_layer;
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    char *path = peft_path_join(dir, "model.gguf", err);
    gguf_writer *w = gguf_writer_new(err);
    float **bufs = peft_calloc((size_t)n + 1, sizeof *bufs, err);
    bool writer_err = false;
    if (!path || !w || !bufs) { rc = PEFT_ERR_NOMEM; goto done; }
    if ((rc = gguf_w_copy_kv(w, g, "general.file_type"))) {
        rc = peft_fail(err, rc, "%s: cannot copy the metadata of %s", path, m->path);
        goto done;
    }
    for (int k = 0; k < n && !rc; k++) {
        const gguf_tensor *t = gguf_tensor_at(g, k);
        const float *src = NULL;
        int perm = 0;
        char nm[128];
        if (!strcmp(t->name, "token_embd.weight")) src = a->femb;
        else if (!strcmp(t->name, "position_embd.weight")) src = a->fpos;
        else if (!strcmp(t->name, "output.weight")) src = a->fhead;
        else if (!strcmp(t->name, "output_norm.weight")) src = a->fnw[2 * L];
        else if (!strcmp(t->name, "output_norm.bias")) src = a->fnb[2 * L];
        for (int l = 0; l < L && !src; l++) {
            for (int which = 0; which < 2 && !src; which++) {
                snprintf(nm, sizeof nm, "blk.%d.%s_norm.weight", l, which ? "ffn" : "attn");
                if (!strcmp(t->name, nm)) src = a->fnw[l * 2 + which];
                snprintf(nm, sizeof nm, "blk.%d.%s_norm.bias", l, which ? "ffn" : "attn");
                if (!strcmp(t->name, nm)) src = a->fnb[l * 2 + which];
            }
            for (int r = 0; r < ROLE_N_LINEAR && !src; r++) {
                const int s = l * ROLE_N_LINEAR + r;
                if (!a->fw[s].data) continue;
                lora_gguf_weight_name(l, (model_linear_role)r, nm, sizeof nm);
                if (!strcmp(t->name, nm)) {
                    src = a->fw[s].data;
                    if (!model_gguf_permutes(m, (model_linear_role)r, &perm)) perm = 0;
                }
                size_t ln = strlen(nm);
                snprintf(nm + ln - 7, sizeof nm - (ln - 7), ".bias");
                if (!src && !strcmp(t->name, nm)) src = a->fb[s];
            }
        }
        if (!src) {
            /* not trained (llama3's rope_freqs, ...): copied as it is; a
             * previous head is replaced by the trained one below */
            if (a->score && !strcmp(t->name, "score.weight")) continue;
            if ((rc = gguf_w_tensor(w, t->name, t->dtype, t->ndim, t->ne, t->data, t->nbytes))) {
                writer_err = true;
                break;
            }
            continue;
        }
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->ne[d];
        bufs[k] = peft_malloc((size_t)numel * sizeof(float), err);
        if (!bufs[k]) { rc = PEFT_ERR_NOMEM; break; }
        if (perm) model_permute_rows(bufs[k], src, t->ne[1], (size_t)t->ne[0] * sizeof(float), perm, true);
        else memcpy(bufs[k], src, (size_t)numel * sizeof(float));
        if ((rc = gguf_w_tensor(w, t->name, PEFT_DT_F32, t->ndim, t->ne, bufs[k], (size_t)numel * sizeof(float)))) {
            writer_err = true;   /* the message is on the writer: save reports it */
            break;
        }
    }
    float *score_copy = NULL;
    if (!rc && a->score) {
        /* the head as score.weight (peft.c reads it back; llama.cpp ignores it) */
        const int64_t ne[2] = {m->cfg.d_model, a->mc.n_labels};
        const size_t nb = (size_t)ne[0] * (size_t)ne[1] * sizeof(float);
        score_copy = peft_malloc(nb, err);
        if (!score_copy) rc = PEFT_ERR_NOMEM;
        else {
            memcpy(score_copy, a->score, nb);
            rc = gguf_w_tensor(w, "score.weight", PEFT_DT_F32, 2, ne, score_copy, nb);
            writer_err = rc != 0;
        }
    }
    if (!rc || writer_err) rc = gguf_writer_save(w, path, err);
    free(score_copy);
done:
    gguf_writer_free(w);
    for (int k = 0; bufs && k < n; k++) free(bufs[k]);
    free(bufs);
    free(path);
    return rc;
}

/* With a head, config.json names transformers' *ForSequenceClassification
 * class and the labels, so the folder loads there as a classifier. */
static int classifier_config(const peft_model *m, const char *dir, int n_labels, peft_err *err) {
    char *path = peft_path_join(dir, "config.json", err);
    char *text = NULL;
    size_t len = 0;
    int rc = path ? peft_read_file(path, &text, &len, err) : PEFT_ERR_NOMEM;
    cJSON *o = rc ? NULL : cJSON_ParseWithLength(text, len);
    if (!rc && !o) rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: invalid JSON", path);
    if (!rc) {
        cJSON_DeleteItemFromObjectCaseSensitive(o, "architectures");
        cJSON *arr = cJSON_AddArrayToObject(o, "architectures");
        bool ok = arr != NULL;
        const bool gpt2 = m->cfg.arch == PEFT_ARCH_GPT2, qwen = !strcmp(m->cfg.arch_name, "qwen2"),
                   mistral = !strcmp(m->cfg.arch_name, "mistral");
        ok &= cJSON_AddItemToArray(arr, cJSON_CreateString(gpt2 ? "GPT2ForSequenceClassification"
                                                                : qwen ? "Qwen2ForSequenceClassification"
                                                                : mistral ? "MistralForSequenceClassification"
                                                                          : "LlamaForSequenceClassification"));
        /* transformers pools at the last non-pad token: it needs a pad id */
        const cJSON *pad = cJSON_GetObjectItemCaseSensitive(o, "pad_token_id");
        if (!cJSON_IsNumber(pad) && m->tok) {
            int pid = bpe_pad_id(m->tok);
            if (pid < 0) pid = bpe_eos_id(m->tok);
            if (pid >= 0) {
                cJSON_DeleteItemFromObjectCaseSensitive(o, "pad_token_id");
                ok &= cJSON_AddNumberToObject(o, "pad_token_id", pid) != NULL;
            }
        }
        cJSON_DeleteItemFromObjectCaseSensitive(o, "id2label");
        cJSON_DeleteItemFromObjectCaseSensitive(o, "label2id");
        cJSON *i2l = cJSON_AddObjectToObject(o, "id2label"), *l2i = cJSON_AddObjectToObject(o, "label2id");
        ok &= i2l && l2i;
        for (int k = 0; ok && k < n_labels; k++) {
            char key[32], val[32];
            snprintf(key, sizeof key, "%d", k);
            snprintf(val, sizeof val, "LABEL_%d", k);
            ok &= cJSON_AddStringToObject(i2l, key, val) != NULL;
            ok &= cJSON_AddNumberToObject(l2i, val, k) != NULL;
        }
        char *js = ok ? cJSON_Print(o) : NULL;
        rc = js ? peft_write_file_atomic(path, js, strlen(js), err)
                : peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory building the classifier config", path);
        free(js);
    }
    cJSON_Delete(o);
    free(text);
    free(path);
    return rc;
}

static int save_full(const adapter *a, const peft_model *m, const char *dir, peft_err *err) {
    if (!strcmp(dir, m->path)) return peft_fail(err, PEFT_ERR_INVALID, "%s: the fine-tuned model cannot overwrite its base", dir);
    if (m->gguf) return save_full_gguf(a, m, dir, err);
    if (strcmp(m->source, "hf") != 0)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: cannot save a fully fine-tuned %s model", dir, m->source);
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    int n = 0;
    for (int i = 0; i < a->n_tensors; i++) n += a->tensors[i].saved;
    st_write_tensor *t = peft_calloc((size_t)n + 1, sizeof *t, err);
    float **tmp = peft_calloc((size_t)n + 1, sizeof *tmp, err);
    char *st_path = peft_path_join(dir, "model.safetensors", err);
    if (!t || !tmp || !st_path) { rc = PEFT_ERR_NOMEM; goto done; }
    int k = 0;
    for (int i = 0; i < a->n_tensors && !rc; i++) {
        const adapter_tensor *at = &a->tensors[i];
        if (!at->saved) continue;
        st_write_tensor *w = &t[k];
        /* the head under transformers' *ForSequenceClassification name */
        w->name = at->p == a->score ? "score.weight" : at->key;
        w->dtype = PEFT_DT_F32;
        w->ndim = at->ndim;
        w->shape[0] = at->shape[0];
        w->shape[1] = at->shape[1];
        w->data = at->p;
        /* GPT-2's Conv1D stores (in, out): transpose back */
        if (m->cfg.arch == PEFT_ARCH_GPT2 && at->ndim == 2 && a->fw) {
            for (int s = 0; s < m->cfg.n_layer * ROLE_N_LINEAR; s++)
                if (a->fw[s].data == at->p && m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR].w.transposed) {
                    const int64_t R = at->shape[0], C = at->shape[1];
                    tmp[k] = peft_malloc((size_t)(R * C) * sizeof(float), err);
                    if (!tmp[k]) { rc = PEFT_ERR_NOMEM; break; }
                    for (int64_t r = 0; r < R; r++)
                        for (int64_t c = 0; c < C; c++) tmp[k][c * R + r] = at->p[r * C + c];
                    w->shape[0] = C;
                    w->shape[1] = R;
                    w->data = tmp[k];
                }
        }
        k++;
    }
    static const char *const meta[] = {"format", "pt", NULL};
    if (!rc) rc = st_write(st_path, t, k, meta, err);
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
                                        "chat_template.jinja", NULL};
    for (int i = 0; files[i] && !rc; i++) rc = peft_copy_file_if_exists(m->path, dir, files[i], err);
    if (!rc && a->score) rc = classifier_config(m, dir, a->mc.n_labels, err);
done:
    for (int i = 0; tmp && i < n; i++) free(tmp[i]);
    free(tmp);
    free(t);
    free(st_path);
    return rc;
}

/* ---- dispatch -------------------------------------------------------------------- */

/* A plug-in method's config: the common keys, layers_to_transform, then the
 * method's own. */
static char *plugin_config_json(const adapter *a, const peft_model *m, peft_err *err) {
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
    if (a->method == METHOD_FULL) return save_full(a, m, dir, err);
    char *js = a->ops ? plugin_config_json(a, m, err) : lora_config_json(a, m);
    if (!js) return peft_fail(err, PEFT_ERR_NOMEM, "%s: cannot build the adapter config", dir);
    int rc = adapter_write_folder(a, dir, js, err);
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
    if (!strcmp(pt->valuestring, "LORA")) { rc = lora_load(m, dir, out, err); goto done; }
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.seed = 42;
    const char *t = pt->valuestring;
    const method_ops *plug = method_find_peft_type(t);
    if (plug) {
        mc.method = METHOD_PLUGIN;
        mc.ops = plug;
        if (plug->config_read && (rc = plug->config_read(o, cfg_path, m, &mc, err))) goto done;
    } else {
        char known[512];
        size_t kl = (size_t)snprintf(known, sizeof known, "LORA");
        for (const method_ops *const *p = method_registry(); *p && kl < sizeof known; p++)
            kl += (size_t)snprintf(known + kl, sizeof known - kl, ", %s", (*p)->peft_type);
        rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: peft_type %s is not supported (%s load)", cfg_path, t, known);
        goto done;
    }
    /* An int or a list of ints (PeftConfig); each must be a layer of m, and
     * the layer mask has 64 bits. */
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layers_to_transform");
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
    if (!peft_file_exists(st_path)) { rc = peft_fail(err, PEFT_ERR_IO, "%s: no such file", st_path); goto done; }
    if ((rc = st_open(st_path, &st, err))) goto done;
    /* Shapes that size what adapter_new allocates are checked first: a
     * [4000000, 0] head holds no bytes but would ask for 4M x hidden floats. */
    const st_tensor *head = st_find(st, "base_model.model.score.weight");
    if (!head) head = st_find(st, "base_model.score.weight");
    if (head) {
        if (head->ndim != 2 || head->shape[1] != m->cfg.d_model || head->shape[0] < 1 ||
            head->shape[0] > PEFT_MAX_LABELS) {
            rc = peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has shape [%lld, %lld], expected [n_labels, %d] with n_labels "
                           "in 1..%d", st_path, head->name, (long long)(head->ndim > 0 ? head->shape[0] : 0),
                           (long long)(head->ndim > 1 ? head->shape[1] : 0), m->cfg.d_model, PEFT_MAX_LABELS);
            goto done;
        }
        mc.n_labels = (int)head->shape[0];
    }
    if (mc.method == METHOD_PLUGIN) mc.layers = mc.lora.layers = mc.layers | mc.lora.layers;
    if ((rc = mc.method == METHOD_PLUGIN ? method_adapter_new(m, &mc, false, &a, err) : adapter_new(m, &mc, &a, err)))
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
