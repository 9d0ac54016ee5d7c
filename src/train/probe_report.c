/* probe_report.c — the public probe API (peft.h, "probe"): checks, the run
 * over the user's data, the budgeted proposal, and its JSON, config, table
 * and SVG heat map. The measure is probe.h's. */
#include "core/ctx.h"
#include "peft/lora.h"
#include "train/probe.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_MAX_RANKS 16

struct peft_probe {
    peft_model *m;
    adapter *a;
    peft_probe_params p;
    int ranks[PROBE_MAX_RANKS], n_ranks;
    uint32_t targets;
    char *data_path;
    data_kind kind;
    int n_examples;
    int64_t n_tokens;         /* input tokens (not padding) of the probed batches */
    int64_t budget;           /* parameters; 0: no proposal */
    int *pick;                /* per module: the proposed rank, 0: not adapted */
    int64_t pick_params;
    double pick_energy, total_energy;
};

static const char *const kind_names[] = {"text", "prompt_completion", "messages", "classification", "pairs"};

peft_probe_params peft_probe_default_params(void) {
    peft_probe_params p;
    memset(&p, 0, sizeof p);
    p.batches = 8;
    p.batch = 4;
    p.seq = 256;
    p.seed = 42;
    p.alpha_per_rank = 2.0f;
    return p;
}

/* Σ_{i<r} σ_i²: the energy a rank-r update captures */
static double energy(const probe_module *md, int r) {
    double e = 0;
    for (int i = 0; i < PEFT_MIN(r, md->n_sv); i++) e += md->sv[i] * md->sv[i];
    return e;
}

static int64_t cost(const probe_module *md, int r) { return (int64_t)r * (md->in + md->out); }

/* The probed linears' shapes without allocating: (in, out) of slot s, or 0 */
static bool probed_slot(const peft_model *m, uint32_t targets, uint64_t layers, int l, int r) {
    return m->layers[l].lin[r].present && ((targets >> r) & 1u) && (!layers || (l < 64 && ((layers >> l) & 1u)));
}

/* ranks, targets, layers, budget and memory of p for m, with no data */
static int check(peft_model *m, const peft_probe_params *p, int *ranks, int *n_ranks, uint32_t *targets, int64_t *budget,
                 peft_err *err) {
    static const int dflt[] = {4, 8, 16};
    const int *rk = p->ranks ? p->ranks : dflt;
    const int nr = p->ranks ? p->n_ranks : 3;
    if (p->batches < 1 || p->batches > 100000) return peft_fail(err, PEFT_ERR_INVALID, "probe: --batches must be in 1..100000, got %d", p->batches);
    if (p->batch < 1 || p->batch > 65536) return peft_fail(err, PEFT_ERR_INVALID, "probe: --batch must be in 1..65536, got %d", p->batch);
    if (p->seq < 2) return peft_fail(err, PEFT_ERR_INVALID, "probe: --seq must be at least 2, got %d", p->seq);
    if (nr < 1 || nr > PROBE_MAX_RANKS)
        return peft_fail(err, PEFT_ERR_INVALID, "probe: --ranks needs 1 to %d ranks, got %d", PROBE_MAX_RANKS, nr);
    for (int i = 0; i < nr; i++) {
        if (rk[i] < 1 || rk[i] > PEFT_MAX_RANK)
            return peft_fail(err, PEFT_ERR_INVALID, "probe: rank %d in --ranks is not in 1..%d", rk[i], PEFT_MAX_RANK);
        if (i > 0 && rk[i] <= rk[i - 1])
            return peft_fail(err, PEFT_ERR_INVALID, "probe: --ranks must increase (%d after %d)", rk[i], rk[i - 1]);
        ranks[i] = rk[i];
    }
    *n_ranks = nr;
    *targets = lora_all_linear_targets(m);
    if (p->targets && lora_parse_targets(m, p->targets, targets, err)) return err->code;
    const int nl = m->cfg.n_layer;
    if (p->layers && nl < 64 && (p->layers >> nl))
        return peft_fail(err, PEFT_ERR_INVALID, "probe: --layers names a layer past the last (%s has %d)", m->path, nl);
    /* the smallest candidate, and whether the largest rank fits a module */
    int64_t smallest = INT64_MAX;
    int widest = 0, n_mod = 0;
    char where[256] = "";
    for (int l = 0; l < nl; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            if (!probed_slot(m, *targets, p->layers, l, r)) continue;
            const kern_weight *w = &m->layers[l].lin[r].w;
            const int64_t c = (int64_t)ranks[0] * (w->rows + w->cols);
            if (c < smallest) {
                smallest = c;
                model_linear_hf_path(m, l, (model_linear_role)r, where, sizeof where);
            }
            widest = PEFT_MAX(widest, (int)PEFT_MIN(w->rows, w->cols));
            n_mod++;
        }
    if (n_mod == 0) return model_no_targets(m, "probe", err);
    if (ranks[nr - 1] > widest)
        return peft_fail(err, PEFT_ERR_INVALID, "probe: rank %d in --ranks is larger than any probed module allows (%d)",
                         ranks[nr - 1], widest);
    *budget = p->budget_params > 0 ? p->budget_params
              : p->budget_fraction > 0 ? (int64_t)floor(p->budget_fraction * (double)m->n_params)
                                       : 0;
    if (p->budget_fraction < 0 || p->budget_fraction >= 1 || p->budget_params < 0)
        return peft_fail(err, PEFT_ERR_INVALID, "probe: the budget must be a fraction in (0, 1) or a positive count");
    if ((p->budget_params > 0 || p->budget_fraction > 0) && *budget < smallest)
        return peft_fail(err, PEFT_ERR_INVALID,
                         "probe: a budget of %lld parameters is smaller than the smallest candidate (rank %d on %s: %lld "
                         "parameters)", (long long)*budget, ranks[0], where, (long long)smallest);
    const size_t limit = p->max_bytes ? p->max_bytes : (size_t)8 << 30;
    const size_t need = probe_grad_bytes(m, *targets, p->layers);
    if (need > limit)
        return peft_fail(err, PEFT_ERR_NOMEM,
                         "%s: the probe keeps every probed linear's full weight gradient in f32: %.2f GiB, over the limit "
                         "of %.2f GiB (--max-memory); probe fewer kinds (--target) or layers (--layers)",
                         m->path, (double)need / (1u << 30), (double)limit / (1u << 30));
    return 0;
}

int peft_probe_check(peft_model *m, const peft_probe_params *p) {
    int ranks[PROBE_MAX_RANKS], nr;
    uint32_t t;
    int64_t b;
    peft_probe_params d = peft_probe_default_params();
    return check(m, p ? p : &d, ranks, &nr, &t, &b, &m->ctx->err);
}

void peft_probe_free(peft_probe *pr) {
    if (!pr) return;
    adapter_free(pr->a);
    free(pr->data_path);
    free(pr->pick);
    free(pr);
}

static int pad_id(const peft_model *m) {
    int p = m->tok ? bpe_pad_id(m->tok) : -1;
    if (p < 0 && m->tok) p = bpe_eos_id(m->tok);
    return p < 0 ? 0 : p;
}

/* Greedy over (module, rank) choices: repeatedly the step from a module's
 * rank to its next candidate with the largest energy gained per parameter
 * added that fits the budget left. E(r) is concave in r (σ descending),
 * so steps of one module come in order. */
static void propose(peft_probe *pr) {
    const probe_state *st = probe_of(pr->a);
    int *idx = pr->pick;   /* the rank index + 1 while choosing, 0: none */
    int64_t left = pr->budget;
    for (;;) {
        int best = -1;
        double best_ratio = 0;
        for (int i = 0; i < st->n_modules; i++) {
            const probe_module *md = &st->mods[i];
            const int j = idx[i];
            if (j >= pr->n_ranks || pr->ranks[j] > PEFT_MIN(md->in, md->out)) continue;
            const int r0 = j ? pr->ranks[j - 1] : 0;
            const int64_t dc = cost(md, pr->ranks[j]) - cost(md, r0);
            const double de = energy(md, pr->ranks[j]) - energy(md, r0);
            if (dc > left || !(de > 0)) continue;
            const double ratio = de / (double)dc;
            if (best < 0 || ratio > best_ratio) { best = i; best_ratio = ratio; }
        }
        if (best < 0) break;
        const probe_module *md = &st->mods[best];
        const int j = idx[best];
        left -= cost(md, pr->ranks[j]) - cost(md, j ? pr->ranks[j - 1] : 0);
        idx[best] = j + 1;
    }
    pr->pick_params = 0;
    pr->pick_energy = 0;
    for (int i = 0; i < st->n_modules; i++) {
        pr->pick[i] = idx[i] ? pr->ranks[idx[i] - 1] : 0;
        pr->pick_params += cost(&st->mods[i], pr->pick[i]);
        pr->pick_energy += energy(&st->mods[i], pr->pick[i]);
    }
}

peft_probe *peft_probe_run(peft_model *m, const char *data_path, const peft_probe_params *pp) {
    peft_err *err = &m->ctx->err;
    peft_probe_params d = peft_probe_default_params();
    const peft_probe_params *p = pp ? pp : &d;
    peft_probe *pr = peft_calloc(1, sizeof *pr, err);
    if (!pr) return NULL;
    pr->m = m;
    pr->p = *p;
    pr->p.ranks = NULL;
    pr->p.targets = NULL;
    pr->p.seq = m->cfg.n_ctx > 0 ? PEFT_MIN(p->seq, m->cfg.n_ctx) : p->seq;
    data_set ds;
    memset(&ds, 0, sizeof ds);
    data_loader *ld = NULL;
    train_graph *g = NULL;
    int rc = check(m, p, pr->ranks, &pr->n_ranks, &pr->targets, &pr->budget, err);
    if (rc) goto fail;
    if (!m->tok) { rc = peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path); goto fail; }
    const int seq = m->cfg.n_ctx > 0 ? PEFT_MIN(p->seq, m->cfg.n_ctx) : p->seq;
    data_params dp = data_default_params();
    dp.seq_len = seq;
    dp.skip_bad = p->skip_bad != 0;
    if ((rc = data_load_jsonl(data_path, m->tok, &dp, &ds, err))) goto fail;
    if ((int64_t)ds.n < (int64_t)p->batches * p->batch) {
        rc = peft_fail(err, PEFT_ERR_INVALID,
                       "%s: %d usable examples, but --batches %d x --batch %d needs %lld (fewer batches, or a smaller batch)",
                       data_path, ds.n, p->batches, p->batch, (long long)p->batches * p->batch);
        goto fail;
    }
    if (!(pr->data_path = peft_strdup(data_path, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    pr->kind = ds.kind;
    pr->n_examples = ds.n;
    const int n_labels = ds.kind == DATA_CLASSIFICATION ? PEFT_MAX(2, ds.n_labels) : 0;
    const size_t limit = p->max_bytes ? p->max_bytes : (size_t)8 << 30;
    if ((rc = probe_adapter_new(m, pr->targets, p->layers, n_labels, p->seed, limit, &pr->a, err))) goto fail;
    const int C = data_cols(&ds);
    if ((rc = tg_new_opts(m, pr->a, p->batch * C, seq, NULL, &g, err))) goto fail;
    if (C > 1 && (rc = tg_set_pairs(g, 20.0f, TG_POOL_MEAN))) goto fail;
    if ((rc = data_loader_new(&ds, p->batch, seq, false, p->seed, pad_id(m), &ld, err))) goto fail;
    for (int b = 0; b < p->batches; b++) {
        data_batch bt;
        if ((rc = data_loader_next(ld, &bt))) { rc = peft_fail(err, rc, "%s: the data loader failed", data_path); goto fail; }
        for (int r = 0; r < bt.B; r++) pr->n_tokens += bt.lengths[r];
        if ((rc = probe_batch(g, pr->a, &bt, err))) goto fail;
        if (p->progress) p->progress(b + 1, p->batches, p->user);
    }
    if ((rc = probe_finish(pr->a, err))) goto fail;
    const probe_state *st = probe_of(pr->a);
    if (!(pr->pick = peft_calloc((size_t)st->n_modules, sizeof *pr->pick, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    for (int i = 0; i < st->n_modules; i++) pr->total_energy += st->mods[i].fro2;
    if (pr->budget > 0) propose(pr);
    tg_free(g);
    data_loader_free(ld);
    data_free(&ds);
    return pr;
fail:
    tg_free(g);
    data_loader_free(ld);
    data_free(&ds);
    peft_probe_free(pr);
    return NULL;
}

/* ---- output ------------------------------------------------------------------------------- */

static void module_name(const peft_probe *pr, const probe_module *md, char *buf, size_t cap) {
    if (model_linear_hf_path(pr->m, md->layer, md->role, buf, cap)) snprintf(buf, cap, "layer%d.role%d", md->layer, md->role);
}

/* The kind of a role as the heat map's column and the JSON's "kind":
 * the HF name within the layer ("self_attn.q_proj", "mlp.c_proj") */
static const char *kind_of(const peft_probe *pr, model_linear_role r) {
    const char *k = pr->m->cfg.desc->hf_lin[r];
    return k ? k : "?";
}

/* The ranking key: energy per parameter at the smallest candidate rank */
static double rank_key(const peft_probe *pr, const probe_module *md) {
    return energy(md, pr->ranks[0]) / (double)cost(md, pr->ranks[0]);
}

static cJSON *config_object(const peft_probe *pr) {
    const probe_state *st = probe_of(pr->a);
    const peft_model *m = pr->m;
    const float apr = pr->p.alpha_per_rank > 0 ? pr->p.alpha_per_rank : 2.0f;
    /* r: the rank most modules get; the others go to rank_pattern */
    int best_r = 0, best_n = 0;
    for (int k = 0; k < pr->n_ranks; k++) {
        int n = 0;
        for (int i = 0; i < st->n_modules; i++) n += pr->pick[i] == pr->ranks[k];
        if (n > best_n) { best_n = n; best_r = pr->ranks[k]; }
    }
    uint32_t roles = 0;
    uint64_t layers = 0;
    int n_pick = 0;
    for (int i = 0; i < st->n_modules; i++)
        if (pr->pick[i]) {
            roles |= 1u << st->mods[i].role;
            if (st->mods[i].layer < 64) layers |= (uint64_t)1 << st->mods[i].layer;
            n_pick++;
        }
    int n_product = 0;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            n_product += l < 64 && ((layers >> l) & 1u) && ((roles >> r) & 1u) && m->layers[l].lin[r].present;
    bool all_layers = true;
    for (int l = 0; l < m->cfg.n_layer; l++) all_layers &= l < 64 && ((layers >> l) & 1u);
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "method", "lora") && cJSON_AddNumberToObject(o, "r", best_r) &&
              cJSON_AddNumberToObject(o, "lora_alpha", apr * (float)best_r);
    cJSON *tm = ok ? cJSON_AddArrayToObject(o, "target_modules") : NULL;
    ok = ok && tm;
    char name[256];
    if (ok && n_product == n_pick) {
        const char *names[ROLE_N_LINEAR * 2];
        const int n = lora_target_names(m, roles, names, ROLE_N_LINEAR * 2);
        for (int i = 0; i < n && ok; i++) ok = cJSON_AddItemToArray(tm, cJSON_CreateString(names[i]));
    } else {
        /* not every kind in every chosen layer: the modules by name, which
         * HF peft matches exactly */
        for (int i = 0; i < st->n_modules && ok; i++)
            if (pr->pick[i]) {
                module_name(pr, &st->mods[i], name, sizeof name);
                ok = cJSON_AddItemToArray(tm, cJSON_CreateString(name));
            }
    }
    if (ok && !all_layers) {
        cJSON *lt = cJSON_AddArrayToObject(o, "layers_to_transform");
        ok = lt != NULL;
        for (int l = 0; l < m->cfg.n_layer && l < 64 && ok; l++)
            if ((layers >> l) & 1u) ok = cJSON_AddItemToArray(lt, cJSON_CreateNumber(l));
    }
    cJSON *rp = ok ? cJSON_AddObjectToObject(o, "rank_pattern") : NULL;
    cJSON *ap = rp ? cJSON_AddObjectToObject(o, "alpha_pattern") : NULL;
    ok = ok && rp && ap;
    for (int i = 0; i < st->n_modules && ok; i++)
        if (pr->pick[i] && pr->pick[i] != best_r) {
            module_name(pr, &st->mods[i], name, sizeof name);
            ok = cJSON_AddNumberToObject(rp, name, pr->pick[i]) && cJSON_AddNumberToObject(ap, name, apr * (float)pr->pick[i]);
        }
    if (!ok) { cJSON_Delete(o); return NULL; }
    return o;
}

char *peft_probe_config_json(const peft_probe *pr) {
    peft_err *err = &pr->m->ctx->err;
    if (pr->budget <= 0) {
        peft_fail(err, PEFT_ERR_INVALID, "probe: no budget given (--budget or --budget-params), so no proposal");
        return NULL;
    }
    cJSON *o = config_object(pr);
    char *s = o ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!s) peft_fail(err, PEFT_ERR_NOMEM, "probe: out of memory");
    return s;
}

char *peft_probe_json(const peft_probe *pr) {
    const probe_state *st = probe_of(pr->a);
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL;
    ok = ok && cJSON_AddNumberToObject(o, "version", 1);
    ok = ok && cJSON_AddStringToObject(o, "measure", "rank-r gradient norm: sqrt(sum_{i<=r} sigma_i(dL/dW)^2)");
    ok = ok && cJSON_AddStringToObject(o, "model", pr->m->path);
    ok = ok && cJSON_AddNumberToObject(o, "model_params", (double)pr->m->n_params);
    ok = ok && cJSON_AddStringToObject(o, "data", pr->data_path);
    ok = ok && cJSON_AddStringToObject(o, "data_kind", kind_names[pr->kind]);
    ok = ok && cJSON_AddNumberToObject(o, "examples", pr->n_examples);
    ok = ok && cJSON_AddNumberToObject(o, "batches", st->n_batches);
    ok = ok && cJSON_AddNumberToObject(o, "batch", pr->p.batch);
    ok = ok && cJSON_AddNumberToObject(o, "seq", pr->p.seq);
    ok = ok && cJSON_AddNumberToObject(o, "seed", (double)pr->p.seed);
    ok = ok && cJSON_AddNumberToObject(o, "tokens", (double)pr->n_tokens);
    ok = ok && cJSON_AddNumberToObject(o, "targets", (double)st->n_targets);
    ok = ok && cJSON_AddNumberToObject(o, "loss", st->n_targets ? st->loss_sum / (double)st->n_targets : NAN);
    ok = ok && cJSON_AddNumberToObject(o, "total_energy", pr->total_energy);
    cJSON *rk = ok ? cJSON_AddArrayToObject(o, "ranks") : NULL;
    ok = ok && rk;
    for (int k = 0; k < pr->n_ranks && ok; k++) ok = cJSON_AddItemToArray(rk, cJSON_CreateNumber(pr->ranks[k]));
    cJSON *mods = ok ? cJSON_AddArrayToObject(o, "modules") : NULL;
    ok = ok && mods;
    char name[256];
    for (int i = 0; i < st->n_modules && ok; i++) {
        const probe_module *md = &st->mods[i];
        cJSON *e = cJSON_CreateObject();
        ok = e && cJSON_AddItemToArray(mods, e);
        module_name(pr, md, name, sizeof name);
        ok = ok && cJSON_AddStringToObject(e, "name", name) && cJSON_AddNumberToObject(e, "layer", md->layer) &&
             cJSON_AddStringToObject(e, "kind", kind_of(pr, md->role)) && cJSON_AddNumberToObject(e, "in", md->in) &&
             cJSON_AddNumberToObject(e, "out", md->out) && cJSON_AddNumberToObject(e, "grad_norm", sqrt(md->fro2));
        cJSON *sv = ok ? cJSON_AddArrayToObject(e, "sv") : NULL;
        ok = ok && sv;
        for (int k = 0; k < PEFT_MIN(md->n_sv, pr->ranks[pr->n_ranks - 1]) && ok; k++)
            ok = cJSON_AddItemToArray(sv, cJSON_CreateNumber(md->sv[k]));
        cJSON *per = ok ? cJSON_AddArrayToObject(e, "ranks") : NULL;
        ok = ok && per;
        for (int k = 0; k < pr->n_ranks && ok; k++) {
            const int r = pr->ranks[k];
            if (r > PEFT_MIN(md->in, md->out)) continue;
            const double en = energy(md, r);
            cJSON *c = cJSON_CreateObject();
            ok = c && cJSON_AddItemToArray(per, c) && cJSON_AddNumberToObject(c, "r", r) &&
                 cJSON_AddNumberToObject(c, "params", (double)cost(md, r)) && cJSON_AddNumberToObject(c, "score", sqrt(en)) &&
                 cJSON_AddNumberToObject(c, "energy", en) &&
                 cJSON_AddNumberToObject(c, "energy_fraction", md->fro2 > 0 ? en / md->fro2 : 0) &&
                 cJSON_AddNumberToObject(c, "energy_per_param", en / (double)cost(md, r)) &&
                 cJSON_AddNumberToObject(c, "score_per_param", sqrt(en) / (double)cost(md, r));
        }
        ok = ok && cJSON_AddNumberToObject(e, "proposed_r", pr->pick ? pr->pick[i] : 0);
    }
    if (ok && pr->budget > 0) {
        cJSON *prop = cJSON_AddObjectToObject(o, "proposal");
        ok = prop && cJSON_AddNumberToObject(prop, "budget_params", (double)pr->budget) &&
             cJSON_AddNumberToObject(prop, "params", (double)pr->pick_params) &&
             cJSON_AddNumberToObject(prop, "energy", pr->pick_energy) &&
             cJSON_AddNumberToObject(prop, "score", sqrt(pr->pick_energy)) &&
             cJSON_AddNumberToObject(prop, "energy_fraction", pr->total_energy > 0 ? pr->pick_energy / pr->total_energy : 0);
        cJSON *cfg = ok ? config_object(pr) : NULL;
        ok = ok && cfg && cJSON_AddItemToObject(prop, "config", cfg);
    }
    char *s = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!s) peft_fail(&pr->m->ctx->err, PEFT_ERR_NOMEM, "probe: out of memory");
    return s;
}

static int by_key_desc(const void *x, const void *y, void *ctx) {
    const double *k = ctx;
    const int a = *(const int *)x, b = *(const int *)y;
    return k[a] < k[b] ? 1 : k[a] > k[b] ? -1 : a - b;
}

/* insertion sort with a context (qsort_r is not C11) */
static void sort_idx(int *idx, int n, double *key) {
    for (int i = 1; i < n; i++) {
        const int v = idx[i];
        int j = i;
        while (j > 0 && by_key_desc(&idx[j - 1], &v, key) > 0) { idx[j] = idx[j - 1]; j--; }
        idx[j] = v;
    }
}

char *peft_probe_table(const peft_probe *pr, int top) {
    const probe_state *st = probe_of(pr->a);
    peft_err *err = &pr->m->ctx->err;
    int *idx = peft_malloc((size_t)st->n_modules * sizeof *idx, err);
    double *key = peft_malloc((size_t)st->n_modules * sizeof *key, err);
    peft_buf b = {0};
    if (!idx || !key) { free(idx); free(key); return NULL; }
    for (int i = 0; i < st->n_modules; i++) {
        idx[i] = i;
        key[i] = rank_key(pr, &st->mods[i]);
    }
    sort_idx(idx, st->n_modules, key);
    const int n = top > 0 ? PEFT_MIN(top, st->n_modules) : st->n_modules;
    int rc = peft_buf_printf(&b, "probe: %d batches, %lld loss targets, mean loss %.4f; %d modules, ranked by energy per "
                                 "parameter at r=%d\n",
                             st->n_batches, (long long)st->n_targets, st->loss_sum / (double)st->n_targets,
                             st->n_modules, pr->ranks[0]);
    rc |= peft_buf_printf(&b, "%4s  %-40s %10s", "#", "module", "|grad|");
    for (int k = 0; k < pr->n_ranks; k++) {
        char h[32];
        snprintf(h, sizeof h, "score@%d", pr->ranks[k]);
        rc |= peft_buf_printf(&b, " %10s", h);
    }
    rc |= peft_buf_printf(&b, " %9s %9s %8s\n", "energy@max", "params@min", pr->budget > 0 ? "proposed" : "");
    char name[256];
    for (int q = 0; q < n && !rc; q++) {
        const probe_module *md = &st->mods[idx[q]];
        module_name(pr, md, name, sizeof name);
        rc |= peft_buf_printf(&b, "%4d  %-40s %10.4g", q + 1, name, sqrt(md->fro2));
        for (int k = 0; k < pr->n_ranks; k++) rc |= peft_buf_printf(&b, " %10.4g", sqrt(energy(md, pr->ranks[k])));
        const int rmax = pr->ranks[pr->n_ranks - 1];
        rc |= peft_buf_printf(&b, " %9.1f%% %10lld", md->fro2 > 0 ? 100.0 * energy(md, rmax) / md->fro2 : 0.0,
                              (long long)cost(md, pr->ranks[0]));
        if (pr->budget > 0 && pr->pick[idx[q]]) rc |= peft_buf_printf(&b, " %8s%d", "r=", pr->pick[idx[q]]);
        rc |= peft_buf_printf(&b, "\n");
    }
    if (!rc && n < st->n_modules) rc |= peft_buf_printf(&b, "  ... %d more (--top 0 shows all, --json has every module)\n",
                                                        st->n_modules - n);
    if (!rc && pr->budget > 0) {
        int n_pick = 0;
        for (int i = 0; i < st->n_modules; i++) n_pick += pr->pick[i] > 0;
        rc |= peft_buf_printf(&b,
                              "proposal: %d modules, %lld of %lld budget parameters (%.3f%% of the model), "
                              "capturing %.1f%% of the gradient energy of every probed module\n",
                              n_pick, (long long)pr->pick_params, (long long)pr->budget,
                              100.0 * (double)pr->pick_params / (double)pr->m->n_params,
                              pr->total_energy > 0 ? 100.0 * pr->pick_energy / pr->total_energy : 0.0);
    }
    free(idx);
    free(key);
    if (rc) { peft_buf_free(&b); peft_fail(err, PEFT_ERR_NOMEM, "probe: out of memory"); return NULL; }
    return b.data;
}

/* Layers as rows, module kinds as columns; the colour is log energy per
 * parameter at the smallest rank (the table's order), a proposed module
 * shows its rank. */
static char *svg_text(const peft_probe *pr) {
    const probe_state *st = probe_of(pr->a);
    int cols[ROLE_N_LINEAR], nc = 0, lo = pr->m->cfg.n_layer, hi = -1;
    for (int r = 0; r < ROLE_N_LINEAR; r++) {
        bool any = false;
        for (int i = 0; i < st->n_modules; i++) any |= st->mods[i].role == (model_linear_role)r;
        if (any) cols[nc++] = r;
    }
    double kmin = INFINITY, kmax = -INFINITY;
    for (int i = 0; i < st->n_modules; i++) {
        lo = PEFT_MIN(lo, st->mods[i].layer);
        hi = PEFT_MAX(hi, st->mods[i].layer);
        const double k = rank_key(pr, &st->mods[i]);
        if (k > 0) { kmin = fmin(kmin, log10(k)); kmax = fmax(kmax, log10(k)); }
    }
    const int cw = 110, ch = 18, x0 = 70, y0 = 60, nr = hi - lo + 1;
    const int W = x0 + nc * cw + 20, H = y0 + nr * ch + 50;
    peft_buf b = {0};
    int rc = peft_buf_printf(&b,
                             "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                             "font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                             "<text x=\"%d\" y=\"18\" font-size=\"13\">peft probe: log10 gradient energy per parameter at "
                             "r=%d (darker: a low-rank update there lowers the loss more per parameter)</text>\n",
                             W, H, 8, pr->ranks[0]);
    for (int c = 0; c < nc; c++)
        rc |= peft_buf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x0 + c * cw + cw / 2, y0 - 8,
                              kind_of(pr, (model_linear_role)cols[c]));
    for (int l = lo; l <= hi; l++)
        rc |= peft_buf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">layer %d</text>\n", x0 - 6,
                              y0 + (l - lo) * ch + ch - 5, l);
    for (int i = 0; i < st->n_modules && !rc; i++) {
        const probe_module *md = &st->mods[i];
        int c = 0;
        while (cols[c] != (int)md->role) c++;
        const double k = rank_key(pr, md);
        const double t = k > 0 && kmax > kmin ? (log10(k) - kmin) / (kmax - kmin) : k > 0 ? 1.0 : 0.0;
        /* white to dark blue */
        const int R = (int)(255 - t * (255 - 8)), G = (int)(255 - t * (255 - 48)), B = (int)(255 - t * (255 - 107));
        const int x = x0 + c * cw, y = y0 + (md->layer - lo) * ch;
        rc |= peft_buf_printf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"rgb(%d,%d,%d)\" stroke=\"#ddd\">"
                                  "<title>%s layer %d: %.4g</title></rect>\n",
                              x, y, cw, ch, R, G, B, kind_of(pr, md->role), md->layer, k);
        if (pr->pick && pr->pick[i])
            rc |= peft_buf_printf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"%s\">r=%d</text>\n", x + cw / 2,
                                  y + ch - 5, t > 0.5 ? "white" : "black", pr->pick[i]);
    }
    rc |= peft_buf_printf(&b, "<text x=\"8\" y=\"%d\">range 10^%.2f .. 10^%.2f%s</text>\n</svg>\n", H - 16,
                          isfinite(kmin) ? kmin : 0.0, isfinite(kmax) ? kmax : 0.0,
                          pr->budget > 0 ? "; r=N: the proposal's rank under the budget" : "");
    if (rc) { peft_buf_free(&b); return NULL; }
    return b.data;
}

int peft_probe_save(const peft_probe *pr, const char *json_path, const char *svg_path, const char *config_path) {
    peft_err *err = &pr->m->ctx->err;
    const char *paths[3] = {json_path, svg_path, config_path};
    for (int k = 0; k < 3; k++) {
        if (!paths[k]) continue;
        char *s = k == 0 ? peft_probe_json(pr) : k == 1 ? svg_text(pr) : peft_probe_config_json(pr);
        if (!s) return k == 1 ? peft_fail(err, PEFT_ERR_NOMEM, "probe: out of memory") : err->code;
        const size_t n = strlen(s);
        /* a newline at the end of the JSON files */
        char *t = k == 1 ? s : realloc(s, n + 2);
        if (!t) { free(s); return peft_fail(err, PEFT_ERR_NOMEM, "probe: out of memory"); }
        if (k != 1) { t[n] = '\n'; t[n + 1] = 0; }
        const int rc = peft_write_file_atomic(paths[k], t, strlen(t), err);
        free(t);
        if (rc) return rc;
    }
    return 0;
}

int peft_probe_set_budget(peft_probe *pr, int64_t budget_params) {
    const probe_state *st = probe_of(pr->a);
    int64_t smallest = INT64_MAX;
    for (int i = 0; i < st->n_modules; i++) smallest = PEFT_MIN(smallest, cost(&st->mods[i], pr->ranks[0]));
    if (budget_params < smallest)
        return peft_fail(&pr->m->ctx->err, PEFT_ERR_INVALID,
                         "probe: a budget of %lld parameters is smaller than the smallest candidate (%lld)",
                         (long long)budget_params, (long long)smallest);
    pr->budget = budget_params;
    memset(pr->pick, 0, (size_t)st->n_modules * sizeof *pr->pick);
    propose(pr);
    return 0;
}
