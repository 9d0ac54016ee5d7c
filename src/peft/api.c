/* api.c — the public adapter and training API (peft.h) over the internal
 * LoRA, data and trainer layers. */
#include "peft/lora.h"
#include "peft/method.h"
#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* peft_adapter is adapter behind the public name. */
struct peft_adapter;
#define AS_LORA(a) ((adapter *)(a))
#define AS_PUB(a) ((peft_adapter *)(a))

peft_lora_params peft_lora_default_params(void) {
    peft_lora_params p;
    memset(&p, 0, sizeof p);
    p.r = 8;
    p.alpha = 16;
    p.seed = 42;
    return p;
}

peft_adapter *peft_adapter_new(peft_model *m, const peft_lora_params *p) {
    peft_err *err = &m->ctx->err;
    peft_lora_params d = peft_lora_default_params();
    if (!p) p = &d;
    lora_config c = lora_default_config();
    c.r = p->r;
    c.alpha = p->alpha;
    c.dropout = p->dropout;
    c.rslora = p->rslora != 0;
    c.init = p->gaussian_init ? LORA_INIT_GAUSSIAN : LORA_INIT_KAIMING;
    c.layers = p->layers;
    c.seed = p->seed;
    if (p->r <= 0 || !(p->dropout >= 0 && p->dropout < 1)) {
        peft_fail(err, PEFT_ERR_INVALID, "LoRA rank must be positive and dropout in [0, 1)");
        return NULL;
    }
    if (p->targets && lora_parse_targets(m, p->targets, &c.targets, err)) return NULL;
    adapter *a = NULL;
    if (lora_new(m, &c, &a, err)) return NULL;
    return AS_PUB(a);
}

peft_method_params peft_method_default_params(const char *method) {
    peft_method_params p;
    memset(&p, 0, sizeof p);
    p.method = method ? method : "lora";
    p.lora = peft_lora_default_params();
    if (method_find(method) && method_find(method) != &method_lora &&
        method_find(method) != &method_dora) {   /* the method's own default rank and alpha */
        p.lora.r = 0;
        p.lora.alpha = 0;
    }
    p.reduction_factor = 16;
    p.num_virtual_tokens = 20;
    p.seed = 42;
    return p;
}

peft_adapter *peft_adapter_new_method(peft_model *m, const peft_method_params *p) {
    peft_err *err = &m->ctx->err;
    peft_method_params d = peft_method_default_params(NULL);
    if (!p) p = &d;
    method_config mc;
    memset(&mc, 0, sizeof mc);
    const method_ops *plug = method_find(p->method ? p->method : "lora");
    if (!plug) {
        peft_fail(err, PEFT_ERR_INVALID, "unknown method \"%s\"", p->method);
        return NULL;
    }
    mc.ops = plug;
    if (p->options && snprintf(mc.options, sizeof mc.options, "%s", p->options) >= (int)sizeof mc.options) {
        peft_fail(err, PEFT_ERR_INVALID, "%s: options longer than %zu bytes", plug->name, sizeof mc.options - 1);
        return NULL;
    }
    mc.r = p->lora.r;
    mc.alpha = p->lora.alpha;
    mc.dropout = p->lora.dropout;
    mc.layers = p->lora.layers;
    mc.seed = p->seed;
    /* peft_lora_params' LoRA fields, as the options of the methods that have them */
    if ((p->lora.rslora && method_has_option(plug, "rslora") && method_option_add(&mc, "rslora", "true", err)) ||
        (p->lora.gaussian_init && method_has_option(plug, "init") && method_option_add(&mc, "init", "gaussian", err)))
        return NULL;
    if (p->lora.targets && lora_parse_targets(m, p->lora.targets, &mc.targets, err)) return NULL;
    /* the struct's per-method fields, as options of the methods that have them */
    char num[32];
    snprintf(num, sizeof num, "%d", p->reduction_factor);
    if (plug && ((p->reduction_factor > 0 && method_has_option(plug, "reduction_factor") &&
                  method_option_add(&mc, "reduction_factor", num, err)) ||
                 (p->non_linearity && method_has_option(plug, "non_linearity") &&
                  method_option_add(&mc, "non_linearity", p->non_linearity, err)) ||
                 (p->bert_init && method_has_option(plug, "adapter_init") &&
                  method_option_add(&mc, "adapter_init", "bert", err))))
        return NULL;
    char nv[32], eh[32];
    snprintf(nv, sizeof nv, "%d", p->num_virtual_tokens);
    snprintf(eh, sizeof eh, "%d", p->encoder_hidden_size);
    if (plug && ((p->num_virtual_tokens > 0 && method_has_option(plug, "num_virtual_tokens") &&
                  method_option_add(&mc, "num_virtual_tokens", nv, err)) ||
                 (p->prompt_init && method_has_option(plug, "prompt_init") &&
                  method_option_add(&mc, "prompt_init", p->prompt_init, err)) ||
                 (p->prefix_projection && method_has_option(plug, "prefix_projection") &&
                  method_option_add(&mc, "prefix_projection", "true", err)) ||
                 (p->encoder_hidden_size > 0 && method_has_option(plug, "encoder_hidden_size") &&
                  method_option_add(&mc, "encoder_hidden_size", eh, err))))
        return NULL;
    /* the older per-method fields: ia3_targets is a target list, ia3_feedforward
     * the option "feedforward" */
    if (p->ia3_targets && method_has_option(plug, "feedforward") && lora_parse_targets(m, p->ia3_targets, &mc.targets, err))
        return NULL;
    if (p->ia3_feedforward && method_option_add(&mc, "feedforward", p->ia3_feedforward, err)) return NULL;
    if (p->num_labels == 1 || p->num_labels < 0) {
        peft_fail(err, PEFT_ERR_INVALID, "num_labels must be 0 (no head) or at least 2, got %d", p->num_labels);
        return NULL;
    }
    mc.n_labels = p->num_labels;
    adapter *a = NULL;
    if (adapter_new(m, &mc, &a, err)) return NULL;
    return AS_PUB(a);
}

const char *peft_adapter_method(const peft_adapter *a) { return a ? adapter_method_name(AS_LORA(a)) : NULL; }

peft_adapter *peft_adapter_load(peft_model *m, const char *dir) {
    adapter *a = NULL;
    if (adapter_load(m, dir, &a, &m->ctx->err)) return NULL;
    return AS_PUB(a);
}

int peft_adapter_save(peft_model *m, const peft_adapter *a, const char *dir) {
    return adapter_save(AS_LORA(a), m, dir, &m->ctx->err);
}

void peft_adapter_free(peft_adapter *a) { if (a) adapter_release(AS_LORA(a)); }

int peft_adapter_users(const peft_adapter *a) { return a ? atomic_load(&AS_LORA(a)->users) : 0; }

peft_adapter *peft_adapter_load_err(peft_model *m, const char *dir, peft_error *e) {
    peft_err err = {0};
    adapter *a = NULL;
    if (adapter_load(m, dir, &a, &err)) {
        if (e) peft_error_set(e, &err);
        return NULL;
    }
    if (e) e->status = 0, e->msg[0] = 0;
    return AS_PUB(a);
}

int64_t peft_adapter_n_params(const peft_adapter *a) { return AS_LORA(a)->n_params; }

int peft_adapter_attach(peft_model *m, const peft_adapter *a) {
    if (a && adapter_fits(AS_LORA(a), m, &m->ctx->err)) return m->ctx->err.code;
    m->attached = AS_LORA(a);
    return 0;
}

int peft_adapter_merge(peft_model *m, const peft_adapter *a, const char *out_path) {
    return lora_merge_save(AS_LORA(a), m, out_path, &m->ctx->err);
}

int peft_adapter_merge_as(peft_model *m, const peft_adapter *a, const char *out_path, const char *outtype) {
    int t = MERGE_OUT_DEFAULT;
    if (outtype && lora_merge_outtype_parse(outtype, &t, &m->ctx->err)) return m->ctx->err.code;
    return lora_merge_save_as(AS_LORA(a), m, out_path, t, NULL, &m->ctx->err);
}

int peft_adapter_merge_check(peft_model *m, const peft_adapter *a, const char *merged_path, peft_merge_check *out) {
    return lora_merge_verify(AS_LORA(a), m, merged_path, out, &m->ctx->err);
}

int peft_adapter_export_gguf(peft_model *m, const peft_adapter *a, const char *path) {
    return adapter_export_gguf(AS_LORA(a), m, path, &m->ctx->err);
}

peft_train_params peft_train_default_params(void) {
    train_params t = train_default_params();
    peft_train_params p;
    memset(&p, 0, sizeof p);
    p.batch = t.batch;
    p.seq = t.seq;
    p.accum = t.accum;
    p.steps = t.steps;
    p.lr = t.opt.lr;
    p.weight_decay = t.opt.weight_decay;
    p.beta1 = t.opt.beta1;
    p.beta2 = t.opt.beta2;
    p.eps = t.opt.eps;
    p.max_grad_norm = t.opt.max_grad_norm;
    p.loraplus_lr_ratio = t.opt.loraplus_lr_ratio;
    p.loraplus_lr_embedding = t.opt.loraplus_lr_embedding;
    p.checkpoint_every = t.checkpoint_every;
    p.schedule = sched_name(t.opt.sched);
    p.seed = t.seed;
    return p;
}

int peft_train(peft_model *m, peft_adapter *a, const peft_train_params *p, peft_train_result *res) {
    peft_err *err = &m->ctx->err;
    peft_err_clear(err);
    if (!m->tok) return peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    if (!p || !p->data || !p->out_dir) return peft_fail(err, PEFT_ERR_INVALID, "training needs data and an output folder");
    train_params t;
    if (train_params_from_public(p, NULL, &t, err)) return err->code;
    data_params dp = data_default_params();
    dp.seq_len = p->seq;
    dp.skip_bad = p->skip_bad != 0;
    data_set train = {0}, val = {0};
    bool have_val = false;
    int rc = data_load_jsonl(p->data, m->tok, &dp, &train, err);
    if (!rc && p->val) {
        rc = data_load_jsonl(p->val, m->tok, &dp, &val, err);
        have_val = rc == 0;
    } else if (!rc && p->val_split > 0) {
        rc = data_split(&train, p->val_split, p->seed, &val, err);
        have_val = rc == 0;
    }
    train_result r;
    if (!rc) rc = train_run(m, AS_LORA(a), &train, have_val ? &val : NULL, &t, &r, err);
    if (!rc && res) {
        res->steps = r.steps_done;
        res->first_loss = r.first_loss;
        res->last_loss = r.last_loss;
        res->val_loss_before = r.val_loss_before;
        res->val_loss_after = r.val_loss_after;
        res->val_accuracy = r.val_accuracy;
        res->seconds = r.seconds;
        res->tokens_per_s = r.tokens_per_s;
    }
    data_free(&train);
    if (have_val) data_free(&val);
    return rc;
}

int peft_eval(peft_model *m, const peft_adapter *a, const char *data, int batch, int seq, double *loss,
              int64_t *n_tokens) {
    peft_err *err = &m->ctx->err;
    if (!m->tok) return peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    data_params dp = data_default_params();
    dp.seq_len = seq;
    data_set d = {0};
    int rc = data_load_jsonl(data, m->tok, &dp, &d, err);
    if (rc) return rc;
    rc = train_eval(m, AS_LORA(a), &d, batch, seq, 0, loss, n_tokens, err);
    data_free(&d);
    return rc;
}
