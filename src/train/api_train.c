/* api_train.c — the public training-run API (peft.h, "training runs and
 * tooling"): datasets, the memory plan, training and evaluation on loaded
 * data with a progress callback, over train/data.h and train/trainer.h. */
#include "core/ctx.h"
#include "train/trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AS_AD(a) ((adapter *)(a))

struct peft_dataset {
    data_set d;
};

_Static_assert(PEFT_DATA_TEXT == (int)DATA_TEXT && PEFT_DATA_PROMPT_COMPLETION == (int)DATA_PROMPT_COMPLETION &&
                   PEFT_DATA_MESSAGES == (int)DATA_MESSAGES && PEFT_DATA_CLASSIFICATION == (int)DATA_CLASSIFICATION &&
                   PEFT_DATA_PAIRS == (int)DATA_PAIRS,
               "public data kinds are data.h's");

/* ---- datasets ---------------------------------------------------------------- */

peft_dataset *peft_dataset_load(peft_model *m, const char *path, int seq, int skip_bad) {
    peft_err *err = &m->ctx->err;
    if (!m->tok) {
        peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
        return NULL;
    }
    peft_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) {
        peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    data_params dp = data_default_params();
    dp.seq_len = seq;
    dp.skip_bad = skip_bad != 0;
    if (data_load_jsonl(path, m->tok, &dp, &ds->d, err)) {
        free(ds);
        return NULL;
    }
    return ds;
}

peft_dataset *peft_dataset_split(peft_model *m, peft_dataset *d, double fraction, uint64_t seed) {
    peft_err *err = &m->ctx->err;
    peft_dataset *v = calloc(1, sizeof *v);
    if (!v) {
        peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (data_split(&d->d, fraction, seed, &v->d, err)) {
        free(v);
        return NULL;
    }
    return v;
}

void peft_dataset_free(peft_dataset *d) {
    if (!d) return;
    data_free(&d->d);
    free(d);
}

void peft_dataset_get_info(const peft_dataset *ds, peft_dataset_info *out) {
    const data_set *d = &ds->d;
    memset(out, 0, sizeof *out);
    out->kind = (peft_data_kind)d->kind;
    out->n = d->n;
    out->n_cols = d->n_cols;
    out->n_labels = d->n_labels;
    out->n_truncated = d->n_truncated;
    out->n_skipped = d->n_skipped;
    out->n_tokens = d->n_tokens;
    out->n_loss_tokens = d->n_loss_tokens;
    out->n_lines = d->n_lines;
    out->n_bad = d->n_bad;
    out->n_empty = d->n_empty;
    out->n_no_target = d->n_no_target;
    out->n_cut_no_target = d->n_cut_no_target;
    out->n_loss_cut = d->n_loss_cut;
    out->len_min = d->len_min;
    out->len_median = d->len_median;
    out->len_p95 = d->len_p95;
    out->len_max = d->len_max;
    out->style = d->style;
}

/* ---- runs --------------------------------------------------------------------- */

int train_params_from_public(const peft_train_params *p, const peft_train_hooks *h, train_params *t, peft_err *err) {
    *t = train_default_params();
    if (!p) return 0;
    t->batch = p->batch;
    t->seq = p->seq;
    t->accum = p->accum;
    t->steps = p->steps;
    t->epochs = p->epochs;
    t->pack = p->pack != 0;
    t->opt.lr = p->lr;
    t->opt.weight_decay = p->weight_decay;
    t->opt.beta1 = p->beta1;
    t->opt.beta2 = p->beta2;
    t->opt.eps = p->eps;
    t->opt.max_grad_norm = p->max_grad_norm;
    t->opt.warmup_steps = p->warmup_steps;
    t->opt.loraplus_lr_ratio = p->loraplus_lr_ratio;
    t->opt.loraplus_lr_embedding = p->loraplus_lr_embedding;
    t->checkpoint_every = p->checkpoint_every;
    if (p->schedule && sched_parse(p->schedule, &t->opt.sched))
        return peft_fail(err, PEFT_ERR_INVALID, "unknown schedule \"%s\" (constant, linear, cosine)", p->schedule);
    t->eval_every = p->eval_every;
    t->eval_max_batches = p->eval_max_batches;
    t->save_every = p->save_every;
    t->seed = p->seed;
    t->out_dir = p->out_dir;
    t->resume = p->resume;
    t->run_config = p->run_config;
    if (h) {
        t->should_stop = h->should_stop;
        t->stop_user = h->user;
        if (h->pair_scale > 0) t->pair_scale = h->pair_scale;
        t->pair_pool = h->pair_pool == PEFT_POOL_CLS ? TG_POOL_CLS : TG_POOL_MEAN;
    }
    return 0;
}

static void to_plan(const train_memplan *in, peft_memory_plan *out) {
    out->base = in->base;
    out->weights = in->weights;
    out->grads = in->grads;
    out->optimizer = in->optimizer;
    out->eval_graph = in->eval_graph;
    out->peak = in->peak;
    out->graph_total = in->graph.total;
    out->graph_layers = in->graph.layers;
    out->graph_layer = in->graph.layer;
    out->graph_hooks = in->graph.hooks;
    out->graph_shared = in->graph.shared;
}

int peft_train_plan(peft_model *m, peft_adapter *a, const peft_dataset *train, const peft_dataset *val,
                    const peft_train_params *p, int checkpoint_every, peft_memory_plan *out) {
    peft_err *err = &m->ctx->err;
    train_params t;
    train_memplan plan;
    if (train_params_from_public(p, NULL, &t, err) ||
        train_memory_plan(m, AS_AD(a), &train->d, val ? &val->d : NULL, &t, checkpoint_every, &plan, err))
        return err->code;
    to_plan(&plan, out);
    return 0;
}

int peft_train_fit(peft_model *m, peft_adapter *a, const peft_dataset *train, const peft_dataset *val,
                   const peft_train_params *p, size_t budget, int *checkpoint_every, peft_memory_plan *out) {
    peft_err *err = &m->ctx->err;
    train_params t;
    train_memplan plan;
    if (train_params_from_public(p, NULL, &t, err) ||
        train_fit_memory(m, AS_AD(a), &train->d, val ? &val->d : NULL, &t, budget, checkpoint_every, &plan, err))
        return err->code;
    to_plan(&plan, out);
    return 0;
}

/* The trainer's progress as the public struct, to the caller's callback. */
typedef struct {
    peft_train_progress_fn fn;
    void *user;
} progress_relay;

static void relay(const train_progress *p, void *user) {
    const progress_relay *r = user;
    peft_train_progress q = {
        .step = p->step, .total_steps = p->total_steps, .epoch = p->epoch, .loss = p->loss, .lr = p->lr,
        .grad_norm = p->grad_norm, .tokens_per_s = p->tokens_per_s, .elapsed_s = p->elapsed_s, .eta_s = p->eta_s,
        .is_eval = p->is_eval, .val_loss = p->val_loss, .val_ppl = p->val_ppl, .val_acc = p->val_acc,
        .tokens = p->tokens};
    r->fn(&q, r->user);
}

int peft_train_dataset(peft_model *m, peft_adapter *a, const peft_dataset *train, const peft_dataset *val,
                       const peft_train_params *p, const peft_train_hooks *h, peft_train_report *out) {
    peft_err *err = &m->ctx->err;
    if (!p || !p->out_dir) return peft_fail(err, PEFT_ERR_INVALID, "training needs an output folder");
    train_params t;
    if (train_params_from_public(p, h, &t, err)) return err->code;
    progress_relay r = {h ? h->progress : NULL, h ? h->user : NULL};
    if (r.fn) {
        t.progress = relay;
        t.user = &r;
    }
    train_result res;
    if (train_run(m, AS_AD(a), &train->d, val ? &val->d : NULL, &t, &res, err)) return err->code;
    if (out) {
        memset(out, 0, sizeof *out);
        out->steps = res.steps_done;
        out->first_loss = res.first_loss;
        out->last_loss = res.last_loss;
        out->val_loss_before = res.val_loss_before;
        out->val_loss_after = res.val_loss_after;
        out->val_accuracy = res.val_accuracy;
        out->seconds = res.seconds;
        out->tokens_per_s = res.tokens_per_s;
        out->tokens = res.tokens;
        out->checkpoint_every = res.checkpoint_every;
        out->graph_bytes = res.graph_bytes;
        out->interrupted = res.interrupted;
        out->step = res.step;
        out->total_steps = res.total_steps;
    }
    return 0;
}

int peft_eval_dataset(peft_model *m, const peft_adapter *a, const peft_dataset *d, int batch, int seq,
                      const peft_train_hooks *h, double *loss, int64_t *n, double *accuracy) {
    peft_err *err = &m->ctx->err;
    const float scale = h && h->pair_scale > 0 ? h->pair_scale : 20.0f;
    const int pool = h && h->pair_pool == PEFT_POOL_CLS ? TG_POOL_CLS : TG_POOL_MEAN;
    double acc = NAN;
    if (train_eval_pairs(m, AS_AD(a), &d->d, batch, seq, 0, scale, pool, loss, n, &acc, err)) return err->code;
    if (accuracy) *accuracy = acc;
    return 0;
}
