/* cmd_search.c — `peft search`: which method, modules, rank and learning
 * rate suit the user's data under a parameter and a time budget.
 *
 * Successive halving (Jamieson & Talwalkar 2016; Li et al., Hyperband,
 * 2018): n0 candidate configurations train s0 steps each; the best 1/eta by
 * validation metric train again from scratch with eta times the steps; and so
 * on until one is left. Every trial is seeded alike (same initial data
 * order), so a difference between trials is the configuration's. The plan
 * (n0, steps per rung) comes from a timed calibration step against
 * --budget-time, or from --trials and --min-steps; it is stored in the search
 * folder, so a resumed search runs the same trials and, for a seed and thread
 * count, gets the same numbers.
 *
 * The folder: search.json (what the search is of, the plan, every finished
 * trial), trials/cNNN-sS/ (each trial's run), leaderboard.md and
 * leaderboard.json, best/ (the winner's adapter). Uses peft.h only. */
#define _XOPEN_SOURCE 700   /* nftw */
#include "cli.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_CANDS 1024
#define MAX_RUNGS 16
#define MAX_TARGET_SETS 8
#define MAX_GRID 8

typedef enum { KNOB_NONE = 0, KNOB_RANK, KNOB_REDUCTION, KNOB_VTOKENS } knob_kind;

/* Each method's space: what its size knob is, whether it takes target
 * modules, and learning rates around its known good range (HF peft's and
 * the methods' papers' defaults: LoRA 2e-4; IA3 3e-3 (T-Few); prompt tuning
 * 3e-2 and prefix tuning 1e-2 (HF's guides); bottleneck adapters 1e-4 ..
 * 1e-3 (AdapterHub)), each a factor of about 3 apart. */
typedef struct {
    const char *name;
    knob_kind knob;
    int targets;
    float lr[3];
} method_space;

static const method_space spaces[] = {
    {"lora", KNOB_RANK, 1, {2e-4f, 6e-4f, 2e-3f}},
    {"dora", KNOB_RANK, 1, {2e-4f, 6e-4f, 2e-3f}},
    {"ia3", KNOB_NONE, 0, {1e-3f, 3e-3f, 1e-2f}},
    {"adapter-pfeiffer", KNOB_REDUCTION, 0, {2e-4f, 6e-4f, 2e-3f}},
    {"adapter-houlsby", KNOB_REDUCTION, 0, {2e-4f, 6e-4f, 2e-3f}},
    {"prompt", KNOB_VTOKENS, 0, {3e-3f, 1e-2f, 3e-2f}},
    {"prefix", KNOB_VTOKENS, 0, {1e-3f, 3e-3f, 1e-2f}},
    {"vera", KNOB_NONE, 1, {2e-3f, 6e-3f, 2e-2f}},
};

typedef struct {
    int method;               /* registry index */
    char method_name[32];
    knob_kind knob_kind;
    int knob;                 /* rank, reduction factor or virtual tokens; 0: none */
    char targets[256];        /* "": the method's default */
    char targets_label[64];
    float lr;
    int64_t params;
    int is_default;           /* the usual guess: LoRA r=8 on the default modules at 2e-4 */
    int probe;                /* LoRA on peft probe's proposal (targets, ranks, alphas from probe_config.json) */
    char label[200];
} cand;

typedef struct {
    int cand, rung, steps;
    int ok;
    double val_loss, val_acc, train_loss, seconds, tokens_per_s, plan_mib;
    char error[240];
} trial;

typedef struct {
    /* options */
    const char *model, *data, *val, *out, *methods, *ranks, *targets, *lrs;
    const char *budget_params_s, *budget_time_s;
    int probe, probe_batches, probe_r;
    float probe_alpha;
    char probe_config[4096];   /* DIR/probe_config.json */
    double val_split;
    int batch, seq, eta, trials, min_steps, max_new, threads, resume, quiet, val_max;
    uint64_t seed;
    /* resolved */
    int64_t budget_params;
    double budget_time;
    peft_ctx *ctx;
    peft_model *m;
    peft_model_info mi;
    peft_dataset *train, *valset;
    peft_dataset_info ti, vi;
    int num_labels;
    peft_train_hooks hooks;
    cand *c;
    int n_c;
    /* plan */
    int n0, n_rungs, order[MAX_CANDS], rung_n[MAX_RUNGS], rung_steps[MAX_RUNGS];
    double calib_step_s, calib_eval_s, base_val_loss, base_val_acc;
    /* results */
    trial *t;
    int n_t, cap_t;
    cJSON *ident;
    double spent_before;     /* seconds of trials of earlier runs of this search */
} search;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft search --model PATH --data FILE [--val FILE | --val-split F] --out DIR\n"
            "                   --budget-params N|P%% --budget-time T [options]\n\n"
            "Successive halving over adapter configurations (method, target modules, rank, learning\n"
            "rate): short seeded trials, the best 1/eta trained again with eta times the steps, until\n"
            "one is left; its adapter is saved in DIR/best. Resumable (--resume).\n\n"
            "  --model PATH         HF model folder or .gguf file\n"
            "  --data FILE          training JSONL (the kinds of `peft train`)\n"
            "  --val FILE           validation JSONL (default: --val-split of --data)\n"
            "  --val-split F        fraction of --data held out when no --val (default 0.1)\n"
            "  --val-max N          validate on at most N examples (default 256)\n"
            "  --out DIR            the search folder (new, or --resume)\n"
            "  --budget-params N    most trainable parameters of a candidate: a count (120000, 1.5M, 300k)\n"
            "                       or a share of the model's parameters (0.5%%)\n"
            "  --budget-time T      wall time for all trials: 900, 900s, 15m, 1h\n"
            "  --methods LIST       default lora,dora,ia3,adapter-pfeiffer,prompt,prefix\n"
            "  --ranks LIST         ranks of rank methods (default 4,8,16)\n"
            "  --targets SETS       target module sets, ';'-separated (default: the method's default,\n"
            "                       all-linear, and attention / MLP sets where the architecture has them)\n"
            "  --lrs LIST           learning rates for every method (default: a grid per method)\n"
            "  --probe              add LoRA on peft probe's proposal for this budget (its modules and\n"
            "                       per-module ranks, DIR/probe_config.json) as candidates\n"
            "  --probe-batches N    batches the probe measures (default 4; implies --probe)\n"
            "  --eta N              keep 1/N of the trials at each rung (default 3)\n"
            "  --trials N           candidates in the first rung (default: as many as the time allows)\n"
            "  --min-steps N        steps of a first-rung trial (default: the most the time allows, >= 8)\n"
            "  --max-trials N       stop after N new trials (resume later with --resume)\n"
            "  --batch N, --seq N   as `peft train` (default 4, 256)\n"
            "  --seed N             seed of every trial and of the candidate order (default 42)\n"
            "  --threads N          threads (default all cores; part of what --resume checks)\n"
            "  --resume             continue the search in --out\n"
            "  --quiet              no live table\n");
}

/* ---- parsing ---------------------------------------------------------------- */

static int parse_count(const char *s, double total, int64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0)) return -1;
    if (*end == '%') { v = v / 100.0 * total; end++; }
    else if (*end == 'k' || *end == 'K') { v *= 1e3; end++; }
    else if (*end == 'm' || *end == 'M') { v *= 1e6; end++; }
    else if (*end == 'g' || *end == 'G' || *end == 'b' || *end == 'B') { v *= 1e9; end++; }
    if (*end || !(v >= 1) || v > 1e15) return -1;
    *out = (int64_t)v;
    return 0;
}

static int parse_time(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0)) return -1;
    if (*end == 's') end++;
    else if (*end == 'm') { v *= 60; end++; }
    else if (*end == 'h') { v *= 3600; end++; }
    if (*end || v > 1e7) return -1;
    *out = v;
    return 0;
}

/* A comma list of numbers into out (at most cap), each in [lo, hi]. */
static int parse_list(const char *s, double lo, double hi, double *out, int cap) {
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || !(v >= lo && v <= hi) || n == cap) return -1;
        out[n++] = v;
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
    }
    return n;
}

/* FNV-1a of a whole file, with its size: what --resume compares. */
static int file_fingerprint(const char *path, char *buf, size_t cap) {
    char *data;
    size_t len;
    peft_error err = {0};
    if (peft_file_read(path, &data, &len, &err)) return -1;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)data[i]) * 1099511628211ULL;
    free(data);
    snprintf(buf, cap, "%zu bytes, fnv1a %016llx", len, (unsigned long long)h);
    return 0;
}

/* ---- candidates --------------------------------------------------------------- */

static const method_space *space_of(const char *name) {
    for (size_t i = 0; i < sizeof spaces / sizeof *spaces; i++)
        if (!strcmp(spaces[i].name, name)) return &spaces[i];
    return NULL;
}

/* The adapter configuration of candidate c. */
static int cand_config(const search *s, const cand *c, peft_adapter_config *cfg, peft_error *err) {
    peft_adapter_config_init(cfg, c->method);
    cfg->seed = s->seed;
    cfg->num_labels = s->num_labels;
    if (c->targets[0]) cfg->targets = c->targets;
    if (c->probe) {
        cfg->r = s->probe_r;
        cfg->alpha = s->probe_alpha;
        char at[4200];
        snprintf(at, sizeof at, "@%s", s->probe_config);
        int rc;
        if ((rc = peft_adapter_config_add(cfg, "target_modules", at, err)) ||
            (rc = peft_adapter_config_add(cfg, "rank_pattern", at, err)) ||
            (rc = peft_adapter_config_add(cfg, "alpha_pattern", at, err)))
            return rc;
        return 0;
    }
    char v[32];
    snprintf(v, sizeof v, "%d", c->knob);
    switch (c->knob_kind) {
    case KNOB_RANK: cfg->r = c->knob; break;
    case KNOB_REDUCTION: return peft_adapter_config_add(cfg, "reduction_factor", v, err);
    case KNOB_VTOKENS: return peft_adapter_config_add(cfg, "num_virtual_tokens", v, err);
    case KNOB_NONE: break;
    }
    return 0;
}

static void cand_label(cand *c) {
    char knob[48] = "";
    if (c->knob_kind == KNOB_RANK) snprintf(knob, sizeof knob, " r=%d", c->knob);
    else if (c->knob_kind == KNOB_REDUCTION) snprintf(knob, sizeof knob, " rf=%d", c->knob);
    else if (c->knob_kind == KNOB_VTOKENS) snprintf(knob, sizeof knob, " tokens=%d", c->knob);
    if (c->probe) snprintf(knob, sizeof knob, " r=%d", c->knob);
    snprintf(c->label, sizeof c->label, "%s%s%s%s lr=%.0e", c->method_name, knob, c->targets_label[0] ? " " : "",
             c->targets_label, c->lr);
}

/* The target sets: the user's, or the method's default, all-linear, and the
 * attention and MLP projections where the model has them. */
static int target_sets(search *s, char sets[][256], char labels[][64]) {
    int n = 0;
    if (s->targets) {
        const char *p = s->targets;
        while (*p && n < MAX_TARGET_SETS) {
            const char *e = strchr(p, ';');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            if (len >= 256) len = 255;
            memcpy(sets[n], p, len);
            sets[n][len] = 0;
            snprintf(labels[n], 64, "%.60s", sets[n]);
            if (len) {
                if (peft_model_check_targets(s->m, sets[n])) {
                    fprintf(stderr, "peft search: --targets \"%s\": %s\n", sets[n], peft_last_error(s->ctx));
                    return -1;
                }
                n++;
            }
            p = e ? e + 1 : p + len;
        }
        return n;
    }
    static const char *const extra[][2] = {
        {"all-linear", "all-linear"},
        {"q_proj,k_proj,v_proj,o_proj", "attn"},
        {"gate_proj,up_proj,down_proj", "mlp"},
        {"c_fc", "mlp-in"},
    };
    sets[n][0] = 0;
    snprintf(labels[n++], 64, "default");
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++)
        if (!peft_model_check_targets(s->m, extra[i][0])) {
            snprintf(sets[n], 256, "%s", extra[i][0]);
            snprintf(labels[n++], 64, "%s", extra[i][1]);
        }
    return n;
}

/* peft probe's proposal under the budget (docs/search.md): LoRA on the
 * modules and with the ranks it picks, at LoRA's learning rates. Written
 * to DIR/probe_config.json, which `peft train --config` also takes. */
static int add_probe_candidates(search *s, const double *lrs_user, int n_lrs_user) {
    peft_probe_params pp = peft_probe_default_params();
    int ranks[MAX_GRID];
    double rk[MAX_GRID];
    const int n_ranks = parse_list(s->ranks ? s->ranks : "4,8,16", 1, 4096, rk, MAX_GRID);
    for (int i = 0; i < n_ranks; i++) ranks[i] = (int)rk[i];
    pp.ranks = ranks;
    pp.n_ranks = n_ranks;
    pp.batches = s->probe_batches;
    pp.batch = s->batch;
    pp.seq = s->seq;
    pp.seed = s->seed;
    pp.budget_params = s->budget_params;
    fprintf(stderr, "probe: %d batches of %s\n", pp.batches, s->data);
    peft_probe *pr = peft_probe_run(s->m, s->data, &pp);
    if (!pr) { fprintf(stderr, "peft search: --probe: %s\n", peft_last_error(s->ctx)); return -1; }
    char *cfg = peft_probe_config_json(pr);
    int rc = -1;
    cJSON *j = cfg ? cJSON_Parse(cfg) : NULL;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r"), *al = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "target_modules");
    if (!cJSON_IsNumber(r) || !cJSON_IsNumber(al) || !cJSON_IsArray(tm)) {
        fprintf(stderr, "peft search: --probe: %s\n", cfg ? "the proposal lacks r, lora_alpha or target_modules" : peft_last_error(s->ctx));
        goto done;
    }
    snprintf(s->probe_config, sizeof s->probe_config, "%s/probe_config.json", s->out);
    peft_error err = {0};
    if (peft_file_write_atomic(s->probe_config, cfg, strlen(cfg), &err)) { fprintf(stderr, "peft search: %s\n", err.msg); goto done; }
    s->probe_r = r->valueint;
    s->probe_alpha = (float)al->valuedouble;
    const double def_lrs[3] = {2e-4, 6e-4, 2e-3};
    const double *lrs = n_lrs_user ? lrs_user : def_lrs;
    const int n_lrs = n_lrs_user ? n_lrs_user : 3;
    cand c = {0};
    c.method = peft_method_find("lora");
    snprintf(c.method_name, sizeof c.method_name, "lora");
    c.knob_kind = KNOB_NONE;
    c.knob = s->probe_r;
    c.probe = 1;
    snprintf(c.targets_label, sizeof c.targets_label, "probe(%d modules)", cJSON_GetArraySize(tm));
    peft_adapter_config ac;
    peft_adapter *a = cand_config(s, &c, &ac, &err) ? NULL : peft_adapter_new_config(s->m, &ac, NULL);
    if (!a) {
        fprintf(stderr, "peft search: --probe: the proposal: %s\n", err.msg[0] ? err.msg : peft_last_error(s->ctx));
        goto done;
    }
    c.params = peft_adapter_n_params(a);
    peft_adapter_free(a);
    for (int l = 0; l < n_lrs && s->n_c < MAX_CANDS; l++) {
        c.lr = (float)lrs[l];
        cand_label(&c);
        if (c.params <= s->budget_params) s->c[s->n_c++] = c;
    }
    rc = 0;
done:
    cJSON_Delete(j);
    free(cfg);
    peft_probe_free(pr);
    return rc;
}

/* Every candidate that fits the parameter budget, in a fixed order. */
static int build_candidates(search *s) {
    char tsets[MAX_TARGET_SETS][256], tlabels[MAX_TARGET_SETS][64];
    int n_ts = target_sets(s, tsets, tlabels);
    if (n_ts < 0) return -1;
    double ranks[MAX_GRID], lrs_user[MAX_GRID];
    int n_ranks = parse_list(s->ranks ? s->ranks : "4,8,16", 1, 4096, ranks, MAX_GRID);
    if (n_ranks <= 0) { fprintf(stderr, "peft search: --ranks must list up to %d ranks in [1, 4096]\n", MAX_GRID); return -1; }
    int n_lrs_user = 0;
    if (s->lrs && (n_lrs_user = parse_list(s->lrs, 1e-7, 1, lrs_user, MAX_GRID)) <= 0) {
        fprintf(stderr, "peft search: --lrs must list up to %d learning rates in (0, 1]\n", MAX_GRID);
        return -1;
    }
    s->c = calloc(MAX_CANDS, sizeof *s->c);
    if (!s->c) { fprintf(stderr, "peft search: out of memory\n"); return -1; }
    const char *mlist = s->methods ? s->methods : "lora,dora,ia3,adapter-pfeiffer,prompt,prefix";
    int64_t smallest = INT64_MAX;
    char smallest_label[200] = "";
    int n_tried = 0;
    for (const char *p = mlist; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(len < 63 ? len : 63), p);
        p = e ? e + 1 : p + len;
        if (!name[0]) continue;
        const int mi = peft_method_find(name);
        if (mi < 0) {
            const char *names[64];
            int n_names = 0;
            for (int i = 0; i < peft_method_count() && n_names < 64; i++) {
                peft_method_info in;
                names[n_names++] = peft_method_get(i, &in) ? NULL : in.name;
            }
            const char *near = cli_suggest(name, names, n_names);
            fprintf(stderr, "peft search: --methods: unknown method \"%s\"%s%s%s\n", name, near ? ": did you mean " : "",
                    near ? near : "", near ? "?" : "");
            return -1;
        }
        peft_method_info info;
        peft_method_get(mi, &info);
        if (info.saves_model) {
            fprintf(stderr, "peft search: --methods: %s trains every weight; it is not a parameter-efficient candidate\n", name);
            return -1;
        }
        const method_space *sp = space_of(info.name);
        method_space generic = {info.name, peft_method_has_option(mi, "r") ? KNOB_RANK : KNOB_NONE,
                                peft_method_has_option(mi, "target"), {2e-4f, 6e-4f, 2e-3f}};
        if (!sp) sp = &generic;
        double knobs[MAX_GRID];
        int n_knobs = 1;
        knobs[0] = 0;
        if (sp->knob == KNOB_RANK) { memcpy(knobs, ranks, sizeof ranks); n_knobs = n_ranks; }
        else if (sp->knob == KNOB_REDUCTION) { knobs[0] = 16; knobs[1] = 64; n_knobs = 2; }
        else if (sp->knob == KNOB_VTOKENS) { knobs[0] = 10; knobs[1] = 30; n_knobs = 2; }
        const int n_t = sp->targets ? n_ts : 1;
        double lrs[MAX_GRID];
        int n_lrs = n_lrs_user;
        if (n_lrs) memcpy(lrs, lrs_user, sizeof lrs);
        else { for (int i = 0; i < 3; i++) lrs[i] = sp->lr[i]; n_lrs = 3; }
        for (int k = 0; k < n_knobs; k++)
            for (int t = 0; t < n_t; t++) {
                cand c = {0};
                c.method = mi;
                snprintf(c.method_name, sizeof c.method_name, "%s", info.name);
                c.knob_kind = sp->knob;
                c.knob = (int)knobs[k];
                if (sp->targets) {
                    snprintf(c.targets, sizeof c.targets, "%.255s", tsets[t]);
                    snprintf(c.targets_label, sizeof c.targets_label, "%.63s", tlabels[t]);
                }
                /* the size does not depend on the learning rate: count once */
                peft_adapter_config cfg;
                peft_error err = {0};
                if (cand_config(s, &c, &cfg, &err)) { fprintf(stderr, "peft search: %s: %s\n", info.name, err.msg); return -1; }
                peft_adapter *a = peft_adapter_new_config(s->m, &cfg, NULL);
                n_tried++;
                if (!a) {
                    cand_label(&c);
                    fprintf(stderr, "peft search: skipping %s: %s\n", c.label, peft_last_error(s->ctx));
                    continue;
                }
                c.params = peft_adapter_n_params(a);
                peft_adapter_free(a);
                for (int l = 0; l < n_lrs; l++) {
                    c.lr = (float)lrs[l];
                    cand_label(&c);
                    if (c.params < smallest) { smallest = c.params; snprintf(smallest_label, sizeof smallest_label, "%s", c.label); }
                    if (c.params > s->budget_params) continue;
                    if (s->n_c == MAX_CANDS) { fprintf(stderr, "peft search: more than %d candidates\n", MAX_CANDS); return -1; }
                    c.is_default = !strcmp(info.name, "lora") && c.knob == 8 && !c.targets[0] && fabsf(c.lr - 2e-4f) < 1e-9f;
                    s->c[s->n_c++] = c;
                }
            }
    }
    if (s->probe && add_probe_candidates(s, lrs_user, n_lrs_user)) return -1;
    /* the usual guess (LoRA r=8 on the architecture's default modules at
     * 2e-4) is always a candidate when LoRA is and it fits: the leaderboard
     * then says whether searching beat it */
    int have_default = 0, have_lora = 0;
    for (int i = 0; i < s->n_c; i++) {
        have_default |= s->c[i].is_default;
        have_lora |= !strcmp(s->c[i].method_name, "lora");
    }
    if (have_lora && !have_default && s->n_c < MAX_CANDS) {
        cand c = {0};
        c.method = peft_method_find("lora");
        snprintf(c.method_name, sizeof c.method_name, "lora");
        c.knob_kind = KNOB_RANK;
        c.knob = 8;
        snprintf(c.targets_label, sizeof c.targets_label, "default");
        c.lr = 2e-4f;
        c.is_default = 1;
        cand_label(&c);
        peft_adapter_config cfg;
        peft_error err = {0};
        peft_adapter *a = cand_config(s, &c, &cfg, &err) ? NULL : peft_adapter_new_config(s->m, &cfg, NULL);
        if (a) {
            c.params = peft_adapter_n_params(a);
            peft_adapter_free(a);
            if (c.params <= s->budget_params) s->c[s->n_c++] = c;
        }
    }
    if (!n_tried || smallest == INT64_MAX) {
        fprintf(stderr, "peft search: no candidate could be made for this model (see the lines above)\n");
        return -1;
    }
    if (!s->n_c) {
        fprintf(stderr,
                "peft search: --budget-params %lld is smaller than the smallest candidate (%s: %lld parameters); "
                "raise the budget or add a smaller method (e.g. --methods ia3,prompt)\n",
                (long long)s->budget_params, smallest_label, (long long)smallest);
        return -1;
    }
    return 0;
}

/* ---- the plan -------------------------------------------------------------------- */

static int rungs_for(int n0, int eta) {
    int r = 1;
    for (long n = n0; n >= eta && r < MAX_RUNGS; n /= eta) r++;
    return r;
}

static void fill_rungs(search *s, int n0, int s0) {
    s->n0 = n0;
    s->n_rungs = rungs_for(n0, s->eta);
    long n = n0, st = s0;
    for (int k = 0; k < s->n_rungs; k++) {
        s->rung_n[k] = n > 0 ? (int)n : 1;
        s->rung_steps[k] = st > INT_MAX / 2 ? INT_MAX / 2 : (int)st;
        n /= s->eta;
        st *= s->eta;
    }
}

/* Predicted seconds of the plan from the calibration. */
static double plan_cost(const search *s) {
    double c = 0;
    for (int k = 0; k < s->n_rungs; k++) c += s->rung_n[k] * (s->rung_steps[k] * s->calib_step_s + s->calib_eval_s);
    return c;
}

/* n0 and s0 from the budget: as many candidates as fit at min-steps, then
 * the most steps that fit. */
static int choose_plan(search *s) {
    const int min_s = s->min_steps ? s->min_steps : 8;
    const double avail = 0.9 * s->budget_time;
    if (s->trials && s->min_steps) { fill_rungs(s, s->trials, s->min_steps); return 0; }
    int n0 = s->trials;
    if (!n0) {
        n0 = 1;
        for (int n = s->n_c; n >= 1; n--) {
            fill_rungs(s, n, min_s);
            if (plan_cost(s) <= avail) { n0 = n; break; }
        }
    }
    fill_rungs(s, n0, min_s);
    if (plan_cost(s) > s->budget_time) {
        fprintf(stderr,
                "peft search: --budget-time %s is too short for this plan: %d trial%s of %d steps take about %.0f s "
                "(%.2f s a step, %.1f s a validation); give more time or fewer --trials / --min-steps\n",
                s->budget_time_s, n0, n0 > 1 ? "s" : "", min_s, plan_cost(s), s->calib_step_s, s->calib_eval_s);
        return -1;
    }
    if (!s->min_steps) {
        int s0 = min_s;
        for (int st = min_s + 1; st < 100000; st++) {
            fill_rungs(s, n0, st);
            if (plan_cost(s) > avail) break;
            s0 = st;
        }
        fill_rungs(s, n0, s0);
    }
    return 0;
}

/* ---- the folder ------------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int make_dir(const char *path) {
    if (mkdir(path, 0777) && errno != EEXIST) {
        fprintf(stderr, "peft search: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void trial_dir(const search *s, int cand_i, int steps, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/trials/c%03d-s%d", s->out, cand_i, steps);
}

static cJSON *trial_json(const search *s, const trial *t) {
    cJSON *o = cJSON_CreateObject();
    const cand *c = &s->c[t->cand];
    cJSON_AddNumberToObject(o, "candidate", t->cand);
    cJSON_AddStringToObject(o, "label", c->label);
    cJSON_AddNumberToObject(o, "rung", t->rung);
    cJSON_AddNumberToObject(o, "steps", t->steps);
    cJSON_AddBoolToObject(o, "ok", t->ok);
    if (t->ok) {
        cJSON_AddNumberToObject(o, "val_loss", t->val_loss);
        if (!isnan(t->val_acc)) cJSON_AddNumberToObject(o, "val_accuracy", t->val_acc);
        else cJSON_AddNullToObject(o, "val_accuracy");
        cJSON_AddNumberToObject(o, "train_loss", t->train_loss);
    } else {
        cJSON_AddStringToObject(o, "error", t->error);
    }
    cJSON_AddNumberToObject(o, "seconds", t->seconds);
    cJSON_AddNumberToObject(o, "tokens_per_s", t->tokens_per_s);
    cJSON_AddNumberToObject(o, "plan_peak_mib", t->plan_mib);
    return o;
}

static int save_state(const search *s) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "search", cJSON_Duplicate(s->ident, 1));
    cJSON *plan = cJSON_AddObjectToObject(root, "plan");
    cJSON_AddNumberToObject(plan, "candidates", s->n0);
    cJSON *order = cJSON_AddArrayToObject(plan, "order");
    for (int i = 0; i < s->n0; i++) cJSON_AddItemToArray(order, cJSON_CreateNumber(s->order[i]));
    cJSON *rn = cJSON_AddArrayToObject(plan, "rung_trials"), *rs = cJSON_AddArrayToObject(plan, "rung_steps");
    for (int k = 0; k < s->n_rungs; k++) {
        cJSON_AddItemToArray(rn, cJSON_CreateNumber(s->rung_n[k]));
        cJSON_AddItemToArray(rs, cJSON_CreateNumber(s->rung_steps[k]));
    }
    cJSON_AddNumberToObject(plan, "calibration_step_s", s->calib_step_s);
    cJSON_AddNumberToObject(plan, "calibration_eval_s", s->calib_eval_s);
    if (!isnan(s->base_val_loss)) cJSON_AddNumberToObject(plan, "base_val_loss", s->base_val_loss);
    cJSON *tr = cJSON_AddArrayToObject(root, "trials");
    for (int i = 0; i < s->n_t; i++) cJSON_AddItemToArray(tr, trial_json(s, &s->t[i]));
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    if (!txt) { fprintf(stderr, "peft search: out of memory\n"); return -1; }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/search.json", s->out);
    peft_error err = {0};
    int rc = peft_file_write_atomic(path, txt, strlen(txt), &err);
    free(txt);
    if (rc) fprintf(stderr, "peft search: %s\n", err.msg);
    return rc ? -1 : 0;
}

/* What the search is of: --resume must find the same. */
static cJSON *identity(const search *s) {
    cJSON *o = cJSON_CreateObject();
    char fp[96], buf[512];
    snprintf(buf, sizeof buf, "%s, %d layers, d_model %d, vocab %d, %lld parameters, %s", s->mi.arch_name, s->mi.n_layer,
             s->mi.d_model, s->mi.vocab, (long long)s->mi.n_params, s->mi.dtype_summary ? s->mi.dtype_summary : "");
    cJSON_AddStringToObject(o, "model", buf);
    if (file_fingerprint(s->data, fp, sizeof fp)) snprintf(fp, sizeof fp, "unreadable");
    cJSON_AddStringToObject(o, "data", fp);
    if (s->val) {
        if (file_fingerprint(s->val, fp, sizeof fp)) snprintf(fp, sizeof fp, "unreadable");
        cJSON_AddStringToObject(o, "val", fp);
    } else {
        cJSON_AddNumberToObject(o, "val_split", s->val_split);
    }
    cJSON_AddNumberToObject(o, "val_max", s->val_max);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)s->seed);
    cJSON_AddStringToObject(o, "seed", buf);
    cJSON_AddNumberToObject(o, "threads", peft_ctx_threads(s->ctx));
    cJSON_AddNumberToObject(o, "batch", s->batch);
    cJSON_AddNumberToObject(o, "seq", s->seq);
    cJSON_AddNumberToObject(o, "eta", s->eta);
    cJSON_AddNumberToObject(o, "budget_params", (double)s->budget_params);
    cJSON_AddNumberToObject(o, "candidates", s->n_c);
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < s->n_c; i++)
        for (const char *p = s->c[i].label; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
    cJSON_AddStringToObject(o, "candidates_fnv1a", buf);
    return o;
}

static const char *const ident_names[][2] = {
    {"model", "--model"}, {"data", "--data"}, {"val", "--val"}, {"val_split", "--val-split"},
    {"val_max", "--val-max"}, {"seed", "--seed"}, {"threads", "--threads"}, {"batch", "--batch"},
    {"seq", "--seq"}, {"eta", "--eta"}, {"budget_params", "--budget-params"},
    {"candidates", "--methods/--ranks/--targets/--lrs"}, {"candidates_fnv1a", "--methods/--ranks/--targets/--lrs"},
};

static int load_state(search *s) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/search.json", s->out);
    char *txt;
    peft_error err = {0};
    if (peft_file_read(path, &txt, NULL, &err)) {
        fprintf(stderr, "peft search: --resume: %s holds no search (%s)\n", s->out, err.msg);
        return -1;
    }
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    int rc = -1;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "search");
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(root, "plan");
    const cJSON *trials = cJSON_GetObjectItemCaseSensitive(root, "trials");
    if (!cJSON_IsObject(id) || !cJSON_IsObject(plan) || !cJSON_IsArray(trials)) {
        fprintf(stderr, "peft search: --resume: %s is not a search state file (search, plan, trials)\n", path);
        goto done;
    }
    for (size_t i = 0; i < sizeof ident_names / sizeof *ident_names; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(id, ident_names[i][0]);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(s->ident, ident_names[i][0]);
        char *sa = a ? cJSON_PrintUnformatted(a) : NULL, *sb = b ? cJSON_PrintUnformatted(b) : NULL;
        const int same = (!sa && !sb) || (sa && sb && !strcmp(sa, sb));
        if (!same)
            fprintf(stderr, "peft search: --resume: %s was a search with %s %s = %s; this run has %s\n", s->out,
                    ident_names[i][1], ident_names[i][0], sa ? sa : "(none)", sb ? sb : "(none)");
        free(sa);
        free(sb);
        if (!same) goto done;
    }
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(plan, "order");
    const cJSON *rn = cJSON_GetObjectItemCaseSensitive(plan, "rung_trials");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(plan, "rung_steps");
    const int n0 = cJSON_GetArraySize(order), nr = cJSON_GetArraySize(rn);
    if (!cJSON_IsArray(order) || n0 < 1 || n0 > s->n_c || nr < 1 || nr > MAX_RUNGS || cJSON_GetArraySize(rs) != nr) {
        fprintf(stderr, "peft search: --resume: %s: the plan is malformed\n", path);
        goto done;
    }
    s->n0 = n0;
    s->n_rungs = nr;
    for (int i = 0; i < n0; i++) {
        const cJSON *v = cJSON_GetArrayItem(order, i);
        if (!cJSON_IsNumber(v) || v->valueint < 0 || v->valueint >= s->n_c) {
            fprintf(stderr, "peft search: --resume: %s: plan.order[%d] is not a candidate\n", path, i);
            goto done;
        }
        s->order[i] = v->valueint;
    }
    for (int k = 0; k < nr; k++) {
        const cJSON *a = cJSON_GetArrayItem(rn, k), *b = cJSON_GetArrayItem(rs, k);
        if (!cJSON_IsNumber(a) || !cJSON_IsNumber(b) || a->valueint < 1 || a->valueint > n0 || b->valueint < 1) {
            fprintf(stderr, "peft search: --resume: %s: plan rung %d is malformed\n", path, k);
            goto done;
        }
        s->rung_n[k] = a->valueint;
        s->rung_steps[k] = b->valueint;
    }
    const cJSON *v;
    s->calib_step_s = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(plan, "calibration_step_s")) ? v->valuedouble : 0;
    s->calib_eval_s = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(plan, "calibration_eval_s")) ? v->valuedouble : 0;
    s->base_val_loss = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(plan, "base_val_loss")) ? v->valuedouble : NAN;
    s->base_val_acc = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(plan, "base_val_accuracy")) ? v->valuedouble : NAN;
    const cJSON *t;
    cJSON_ArrayForEach(t, trials) {
        trial tr = {0};
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(t, "candidate"), *st = cJSON_GetObjectItemCaseSensitive(t, "steps");
        const cJSON *ok = cJSON_GetObjectItemCaseSensitive(t, "ok"), *rg = cJSON_GetObjectItemCaseSensitive(t, "rung");
        if (!cJSON_IsNumber(c) || c->valueint < 0 || c->valueint >= s->n_c || !cJSON_IsNumber(st) || !cJSON_IsBool(ok) ||
            !cJSON_IsNumber(rg)) {
            fprintf(stderr, "peft search: --resume: %s: a trial is malformed\n", path);
            goto done;
        }
        tr.cand = c->valueint;
        tr.steps = st->valueint;
        tr.rung = rg->valueint;
        tr.ok = cJSON_IsTrue(ok);
        tr.val_loss = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(t, "val_loss")) ? v->valuedouble : NAN;
        tr.val_acc = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(t, "val_accuracy")) ? v->valuedouble : NAN;
        tr.train_loss = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(t, "train_loss")) ? v->valuedouble : NAN;
        tr.seconds = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(t, "seconds")) ? v->valuedouble : 0;
        tr.tokens_per_s = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(t, "tokens_per_s")) ? v->valuedouble : 0;
        tr.plan_mib = cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(t, "plan_peak_mib")) ? v->valuedouble : 0;
        if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(t, "error")))
            snprintf(tr.error, sizeof tr.error, "%s", v->valuestring);
        if (s->n_t == s->cap_t) {
            int cap = s->cap_t ? 2 * s->cap_t : 64;
            trial *nt = realloc(s->t, (size_t)cap * sizeof *nt);
            if (!nt) { fprintf(stderr, "peft search: out of memory\n"); goto done; }
            s->t = nt;
            s->cap_t = cap;
        }
        s->t[s->n_t++] = tr;
        s->spent_before += tr.seconds;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* SIGINT / SIGTERM: the first stops the trial in progress after its step
 * (peft_train_hooks.should_stop) and the search with it, resumable; the
 * second ends the process at once. The CLI's state, not the library's. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) {
    if (stop_signal) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    stop_signal = sig;
}

static int stop_requested(void *user) {
    (void)user;
    return stop_signal != 0;
}

/* ---- trials ------------------------------------------------------------------------- */

static const trial *find_trial(const search *s, int cand_i, int steps) {
    for (int i = 0; i < s->n_t; i++)
        if (s->t[i].cand == cand_i && s->t[i].steps == steps) return &s->t[i];
    return NULL;
}

static peft_train_params trial_params(const search *s, const cand *c, int steps, const char *dir) {
    peft_train_params tp = peft_train_default_params();
    tp.batch = s->batch;
    tp.seq = s->seq;
    tp.steps = steps;
    tp.lr = c->lr;
    tp.schedule = "cosine";
    tp.warmup_steps = steps / 10;
    tp.seed = s->seed;
    tp.out_dir = dir;
    tp.checkpoint_every = 0;
    return tp;
}

/* Trains candidate cand_i for steps from scratch and validates it; a run
 * that fails (a diverging learning rate) is a failed trial, not an error of
 * the search. Returns -1 only for what stops the search. */
static int run_trial(search *s, int cand_i, int rung, int steps, trial *out) {
    const cand *c = &s->c[cand_i];
    memset(out, 0, sizeof *out);
    out->cand = cand_i;
    out->rung = rung;
    out->steps = steps;
    out->val_acc = NAN;
    char dir[PATH_MAX];
    trial_dir(s, cand_i, steps, dir, sizeof dir);
    struct stat st;
    /* a trial an interrupted run left half done starts again */
    if (!stat(dir, &st) && nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS)) {
        fprintf(stderr, "peft search: cannot clear %s: %s\n", dir, strerror(errno));
        return -1;
    }
    peft_adapter_config cfg;
    peft_error err = {0};
    if (cand_config(s, c, &cfg, &err)) { fprintf(stderr, "peft search: %s: %s\n", c->label, err.msg); return -1; }
    peft_adapter *a = peft_adapter_new_config(s->m, &cfg, s->model);
    if (!a) { fprintf(stderr, "peft search: %s: %s\n", c->label, peft_last_error(s->ctx)); return -1; }
    peft_train_params tp = trial_params(s, c, steps, dir);
    peft_memory_plan plan;
    if (!peft_train_plan(s->m, a, s->train, NULL, &tp, 0, &plan)) out->plan_mib = plan.peak / 1048576.0;
    const double t0 = now_s();
    peft_train_report rep;
    int rc = peft_train_dataset(s->m, a, s->train, NULL, &tp, &s->hooks, &rep);
    if (!rc) {
        int64_t n;
        rc = peft_eval_dataset(s->m, a, s->valset, s->batch, s->seq, &s->hooks, &out->val_loss, &n, &out->val_acc);
    }
    out->seconds = now_s() - t0;
    if (rc) {
        snprintf(out->error, sizeof out->error, "%s", peft_last_error(s->ctx));
        out->ok = 0;
    } else {
        out->ok = isfinite(out->val_loss);
        if (!out->ok) snprintf(out->error, sizeof out->error, "the validation loss is not finite");
        out->train_loss = rep.last_loss;
        out->tokens_per_s = rep.tokens_per_s;
    }
    peft_adapter_free(a);
    return 0;
}

/* a better than b: higher accuracy where there is one, then lower loss;
 * failed trials last; ties by candidate index, so the order is fixed. */
static int better(const trial *a, const trial *b) {
    if (a->ok != b->ok) return a->ok;
    if (a->ok) {
        if (!isnan(a->val_acc) && !isnan(b->val_acc) && a->val_acc != b->val_acc) return a->val_acc > b->val_acc;
        if (a->val_loss != b->val_loss) return a->val_loss < b->val_loss;
    }
    return a->cand < b->cand;
}

static void print_header(void) {
    fprintf(stderr, "%-5s %-4s %6s  %-44s %10s %9s %8s %8s %8s %7s\n", "trial", "rung", "steps", "candidate", "params",
            "val_loss", "val_acc", "tok/s", "plan_MiB", "time_s");
}

static void print_row(const search *s, int no, const trial *t) {
    const cand *c = &s->c[t->cand];
    if (!t->ok) {
        fprintf(stderr, "%-5d %-4d %6d  %-44.44s %10lld  failed: %s\n", no, t->rung, t->steps, c->label,
                (long long)c->params, t->error);
        return;
    }
    char acc[16] = "-";
    if (!isnan(t->val_acc)) snprintf(acc, sizeof acc, "%.4f", t->val_acc);
    fprintf(stderr, "%-5d %-4d %6d  %-44.44s %10lld %9.4f %8s %8.0f %8.0f %7.1f\n", no, t->rung, t->steps, c->label,
            (long long)c->params, t->val_loss, acc, t->tokens_per_s, t->plan_mib, t->seconds);
}

/* ---- the leaderboard ------------------------------------------------------------------- */

typedef struct {
    int cand;
    const trial *best;       /* the trial of its highest rung */
    double seconds;          /* over all its trials */
} board_row;

static int row_cmp_better(const board_row *a, const board_row *b) {
    if (a->best->rung != b->best->rung) return a->best->rung > b->best->rung;
    return better(a->best, b->best);
}

static int write_leaderboard(const search *s, board_row *rows, int n, int done) {
    /* insertion sort: n is small, and the order must be the comparator's */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && row_cmp_better(&rows[j], &rows[j - 1]); j--) {
            board_row tmp = rows[j];
            rows[j] = rows[j - 1];
            rows[j - 1] = tmp;
        }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddBoolToObject(root, "complete", done);
    if (!isnan(s->base_val_loss)) cJSON_AddNumberToObject(root, "base_val_loss", s->base_val_loss);
    cJSON *arr = cJSON_AddArrayToObject(root, "leaderboard");
    char *md = NULL;
    size_t md_len = 0;
    FILE *f = open_memstream(&md, &md_len);
    if (!f) { cJSON_Delete(root); return -1; }
    fprintf(f, "# peft search leaderboard%s\n\n", done ? "" : " (search not finished)");
    fprintf(f, "Model `%s`, data `%s`, budget %lld trainable parameters.", s->model, s->data,
            (long long)s->budget_params);
    if (!isnan(s->base_val_loss)) fprintf(f, " The base model's validation loss: %.4f.", s->base_val_loss);
    fprintf(f, "\n\n| # | candidate | method | params | rung | steps | val loss | val acc | tokens/s | plan MiB | seconds |\n"
               "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < n; i++) {
        const trial *t = rows[i].best;
        const cand *c = &s->c[rows[i].cand];
        cJSON *o = trial_json(s, t);
        cJSON_AddStringToObject(o, "method", c->method_name);
        if (c->knob_kind != KNOB_NONE)
            cJSON_AddNumberToObject(o, c->knob_kind == KNOB_RANK ? "r" : c->knob_kind == KNOB_REDUCTION ? "reduction_factor"
                                                                                                     : "num_virtual_tokens",
                                    c->knob);
        if (c->targets_label[0]) cJSON_AddStringToObject(o, "targets", c->targets[0] ? c->targets : "default");
        cJSON_AddNumberToObject(o, "lr", c->lr);
        cJSON_AddNumberToObject(o, "params", (double)c->params);
        cJSON_AddBoolToObject(o, "default_guess", c->is_default);
        cJSON_AddNumberToObject(o, "seconds_all_rungs", rows[i].seconds);
        cJSON_AddItemToArray(arr, o);
        char acc[16] = "–", loss[16] = "failed";
        if (t->ok) snprintf(loss, sizeof loss, "%.4f", t->val_loss);
        if (t->ok && !isnan(t->val_acc)) snprintf(acc, sizeof acc, "%.4f", t->val_acc);
        fprintf(f, "| %d | %s%s | %s | %lld | %d | %d | %s | %s | %.0f | %.0f | %.1f |\n", i + 1, c->label,
                c->is_default ? " (the usual default)" : "", c->method_name, (long long)c->params, t->rung, t->steps, loss,
                acc, t->tokens_per_s, t->plan_mib, rows[i].seconds);
    }
    fclose(f);
    char *js = cJSON_Print(root);
    cJSON_Delete(root);
    char path[PATH_MAX];
    peft_error err = {0};
    int rc = 0;
    snprintf(path, sizeof path, "%s/leaderboard.json", s->out);
    if (!js || peft_file_write_atomic(path, js, strlen(js), &err)) rc = -1;
    snprintf(path, sizeof path, "%s/leaderboard.md", s->out);
    if (!rc && peft_file_write_atomic(path, md, md_len, &err)) rc = -1;
    if (rc) fprintf(stderr, "peft search: %s\n", err.msg[0] ? err.msg : "out of memory");
    free(js);
    free(md);
    return rc;
}

/* The leaderboard of the trials so far, one row per candidate. */
static int leaderboard(const search *s, int done) {
    board_row *rows = calloc((size_t)(s->n0 ? s->n0 : 1), sizeof *rows);
    if (!rows) return -1;
    int n = 0;
    for (int i = 0; i < s->n0; i++) {
        board_row r = {s->order[i], NULL, 0};
        for (int k = 0; k < s->n_t; k++) {
            const trial *t = &s->t[k];
            if (t->cand != r.cand) continue;
            r.seconds += t->seconds;
            if (!r.best || t->rung > r.best->rung) r.best = t;
        }
        if (r.best) rows[n++] = r;
    }
    int rc = write_leaderboard(s, rows, n, done);
    free(rows);
    return rc;
}

/* ---- the search -------------------------------------------------------------------------- */

/* The first rung's candidates: the usual default guess first when it fits,
 * then round-robin over the methods (the probe's proposal counting as one),
 * each method's candidates in a seeded shuffle, so that every method is
 * represented however few trials fit. */
static void order_candidates(search *s) {
    int *idx = malloc((size_t)s->n_c * sizeof *idx);
    int *taken = calloc((size_t)s->n_c, sizeof *taken);
    if (!idx || !taken) { free(idx); free(taken); s->n0 = s->n_c < s->n0 ? s->n_c : s->n0; return; }
    for (int i = 0; i < s->n_c; i++) idx[i] = i;
    uint64_t x = s->seed * 0x9E3779B97F4A7C15ULL + 1;
    for (int i = s->n_c - 1; i > 0; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int j = (int)(x % (uint64_t)(i + 1));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    int n = 0;
    for (int i = 0; i < s->n_c && n < s->n0; i++)
        if (s->c[i].is_default) { s->order[n++] = i; taken[i] = 1; }
    while (n < s->n0) {
        int added = 0;
        int methods_seen[64], n_seen = 0;
        for (int k = 0; k < s->n_c && n < s->n0; k++) {
            const int ci = idx[k];
            if (taken[ci]) continue;
            /* the probe's proposal takes its turn as a method of its own */
            const int key = s->c[ci].method + (s->c[ci].probe ? 1000 : 0);
            int seen = 0;
            for (int q = 0; q < n_seen; q++) seen |= methods_seen[q] == key;
            if (seen) continue;
            if (n_seen < 64) methods_seen[n_seen++] = key;
            s->order[n++] = ci;
            taken[ci] = 1;
            added = 1;
        }
        if (!added) break;
    }
    s->n0 = n;
    free(idx);
    free(taken);
}

static int calibrate(search *s) {
    /* one short run of the cheapest-to-plan candidate measures a step; one
     * validation of the base measures an evaluation and gives the base's
     * numbers for the leaderboard */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/trials/calibration", s->out);
    struct stat st;
    if (!stat(dir, &st)) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    const cand *c = &s->c[s->order[0]];
    peft_adapter_config cfg;
    peft_error err = {0};
    if (cand_config(s, c, &cfg, &err)) { fprintf(stderr, "peft search: %s\n", err.msg); return -1; }
    peft_adapter *a = peft_adapter_new_config(s->m, &cfg, s->model);
    if (!a) { fprintf(stderr, "peft search: %s\n", peft_last_error(s->ctx)); return -1; }
    peft_train_params tp = trial_params(s, c, 2, dir);
    peft_train_report rep;
    double t0 = now_s();
    int rc = peft_train_dataset(s->m, a, s->train, NULL, &tp, &s->hooks, &rep);
    double t1 = now_s();
    if (rc) {
        fprintf(stderr, "peft search: calibration: %s\n", peft_last_error(s->ctx));
        peft_adapter_free(a);
        return -1;
    }
    s->calib_step_s = (t1 - t0) / 2;
    /* a validation as a trial does one; a classifier's head is the
     * adapter's, so only a language model has the base's numbers */
    int64_t n;
    double loss, acc;
    t0 = now_s();
    rc = peft_eval_dataset(s->m, a, s->valset, s->batch, s->seq, &s->hooks, &loss, &n, &acc);
    s->calib_eval_s = now_s() - t0;
    peft_adapter_free(a);
    if (!rc && !s->num_labels)
        rc = peft_eval_dataset(s->m, NULL, s->valset, s->batch, s->seq, &s->hooks, &s->base_val_loss, &n, &s->base_val_acc);
    if (rc) {
        fprintf(stderr, "peft search: validation: %s\n", peft_last_error(s->ctx));
        return -1;
    }
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static int add_trial(search *s, const trial *t) {
    if (s->n_t == s->cap_t) {
        int cap = s->cap_t ? 2 * s->cap_t : 64;
        trial *nt = realloc(s->t, (size_t)cap * sizeof *nt);
        if (!nt) { fprintf(stderr, "peft search: out of memory\n"); return -1; }
        s->t = nt;
        s->cap_t = cap;
    }
    s->t[s->n_t++] = *t;
    return 0;
}

static void resume_hint(const search *s) {
    fprintf(stderr, "peft search: to continue: peft search --resume --model %s --data %s%s%s --out %s --budget-params %s "
                    "--budget-time T (and the other options of this run)\n",
            s->model, s->data, s->val ? " --val " : "", s->val ? s->val : "", s->out, s->budget_params_s);
}

static int run_search(search *s) {
    const double t_start = now_s();
    int rung_members[MAX_CANDS], n_members = s->n0, new_trials = 0, trial_no = 0;
    memcpy(rung_members, s->order, (size_t)s->n0 * sizeof *rung_members);
    if (!s->quiet) print_header();
    for (int k = 0; k < s->n_rungs; k++) {
        const int steps = s->rung_steps[k];
        if (!s->quiet)
            fprintf(stderr, "-- rung %d of %d: %d trial%s of %d steps\n", k + 1, s->n_rungs, n_members,
                    n_members > 1 ? "s" : "", steps);
        trial results[MAX_CANDS];
        for (int i = 0; i < n_members; i++) {
            const int ci = rung_members[i];
            const trial *done = find_trial(s, ci, steps);
            trial_no++;
            if (done) {
                results[i] = *done;
                if (!s->quiet) print_row(s, trial_no, done);
                continue;
            }
            const double spent = now_s() - t_start;
            if (spent > s->budget_time) {
                fprintf(stderr, "peft search: the time budget (%s) is spent after %d new trials\n", s->budget_time_s,
                        new_trials);
                leaderboard(s, 0);
                resume_hint(s);
                return 3;
            }
            if (s->max_new && new_trials == s->max_new) {
                fprintf(stderr, "peft search: stopped after %d new trial%s (--max-trials)\n", new_trials,
                        new_trials > 1 ? "s" : "");
                leaderboard(s, 0);
                resume_hint(s);
                return 3;
            }
            if (run_trial(s, ci, k, steps, &results[i])) return 1;
            if (stop_signal) {
                /* the interrupted trial is not recorded: a resume runs it again */
                fprintf(stderr, "peft search: stopped by %s during trial %d (%s); %d trial%s recorded in %s/search.json\n",
                        stop_signal == SIGINT ? "SIGINT" : "SIGTERM", trial_no, s->c[ci].label, s->n_t,
                        s->n_t == 1 ? "" : "s", s->out);
                leaderboard(s, 0);
                resume_hint(s);
                return 128 + stop_signal;
            }
            new_trials++;
            if (add_trial(s, &results[i]) || save_state(s)) return 1;
            if (!s->quiet) print_row(s, trial_no, &results[i]);
        }
        if (leaderboard(s, 0)) return 1;
        /* the best rung_n[k+1] go on */
        for (int i = 1; i < n_members; i++)
            for (int j = i; j > 0 && better(&results[j], &results[j - 1]); j--) {
                trial t = results[j];
                results[j] = results[j - 1];
                results[j - 1] = t;
            }
        if (k + 1 < s->n_rungs) {
            n_members = s->rung_n[k + 1] < n_members ? s->rung_n[k + 1] : n_members;
            for (int i = 0; i < n_members; i++) rung_members[i] = results[i].cand;
        } else {
            rung_members[0] = results[0].cand;
            if (!results[0].ok) {
                fprintf(stderr, "peft search: every trial of the last rung failed: %s\n", results[0].error);
                leaderboard(s, 1);
                return 1;
            }
        }
    }
    const int win = rung_members[0];
    const trial *wt = find_trial(s, win, s->rung_steps[s->n_rungs - 1]);
    char src[PATH_MAX], dst[PATH_MAX];
    trial_dir(s, win, wt->steps, src, sizeof src);
    snprintf(dst, sizeof dst, "%s/best", s->out);
    peft_adapter *a = peft_adapter_load(s->m, src);
    if (!a || peft_adapter_save(s->m, a, dst)) {
        fprintf(stderr, "peft search: saving the best adapter (%s) into %s: %s\n", src, dst, peft_last_error(s->ctx));
        peft_adapter_free(a);
        return 1;
    }
    peft_adapter_free(a);
    if (leaderboard(s, 1)) return 1;
    printf("best: %s (%lld parameters): validation loss %.4f", s->c[win].label, (long long)s->c[win].params, wt->val_loss);
    if (!isnan(wt->val_acc)) printf(", accuracy %.4f", wt->val_acc);
    printf(" after %d steps", wt->steps);
    if (!isnan(s->base_val_loss)) printf(" (the base model: %.4f)", s->base_val_loss);
    printf("\n");
    printf("adapter: %s; leaderboard: %s/leaderboard.md, %s/leaderboard.json\n", dst, s->out, s->out);
    return 0;
}

int cmd_search(int argc, char **argv) {
    search s = {0};
    s.batch = 4;
    s.seq = 256;
    s.eta = 3;
    s.seed = 42;
    s.val_split = -1;
    s.val_max = 256;
    s.base_val_loss = NAN;
    s.base_val_acc = NAN;
    s.probe_batches = 4;
    cli_args a = {argc, 1, argv, "search"};
    bool bad = false, seq_given = false;
    const char *v;
    float f;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) s.model = v;
        else if ((v = cli_opt(&a, "--data", &bad))) s.data = v;
        else if ((v = cli_opt(&a, "--val", &bad))) s.val = v;
        else if ((v = cli_opt(&a, "--val-split", &bad))) { bad = cli_float(a.cmd, "--val-split", v, 0.01, 0.9, &f) != 0; s.val_split = f; }
        else if ((v = cli_opt(&a, "--val-max", &bad))) bad = cli_int(a.cmd, "--val-max", v, 1, 1000000, &s.val_max) != 0;
        else if ((v = cli_opt(&a, "--out", &bad))) s.out = v;
        else if ((v = cli_opt(&a, "--budget-params", &bad))) s.budget_params_s = v;
        else if ((v = cli_opt(&a, "--budget-time", &bad))) s.budget_time_s = v;
        else if ((v = cli_opt(&a, "--methods", &bad))) s.methods = v;
        else if ((v = cli_opt(&a, "--ranks", &bad))) s.ranks = v;
        else if ((v = cli_opt(&a, "--targets", &bad))) s.targets = v;
        else if ((v = cli_opt(&a, "--lrs", &bad))) s.lrs = v;
        else if ((v = cli_opt(&a, "--eta", &bad))) bad = cli_int(a.cmd, "--eta", v, 2, 16, &s.eta) != 0;
        else if ((v = cli_opt(&a, "--trials", &bad))) bad = cli_int(a.cmd, "--trials", v, 1, MAX_CANDS, &s.trials) != 0;
        else if ((v = cli_opt(&a, "--min-steps", &bad))) bad = cli_int(a.cmd, "--min-steps", v, 1, 10000000, &s.min_steps) != 0;
        else if ((v = cli_opt(&a, "--max-trials", &bad))) bad = cli_int(a.cmd, "--max-trials", v, 1, 1000000, &s.max_new) != 0;
        else if ((v = cli_opt(&a, "--batch", &bad))) bad = cli_int(a.cmd, "--batch", v, 1, 65536, &s.batch) != 0;
        else if ((v = cli_opt(&a, "--seq", &bad))) { bad = cli_int(a.cmd, "--seq", v, 2, 1000000, &s.seq) != 0; seq_given = true; }
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &s.threads) != 0;
        else if ((v = cli_opt(&a, "--seed", &bad))) {
            char *end;
            s.seed = strtoull(v, &end, 10);
            if (*end || end == v || *v == '-') { fprintf(stderr, "peft search: --seed must be a non-negative integer\n"); bad = true; }
        } else if (cli_flag(&a, "--resume")) s.resume = 1;
        else if (cli_flag(&a, "--probe")) s.probe = 1;
        else if ((v = cli_opt(&a, "--probe-batches", &bad))) {
            bad = cli_int(a.cmd, "--probe-batches", v, 1, 100000, &s.probe_batches) != 0;
            s.probe = 1;
        }
        else if (cli_flag(&a, "--quiet")) s.quiet = 1;
        else if (cli_flag(&a, "--help") || cli_flag(&a, "-h")) { usage(stdout); return 0; }
        else {
            cli_unknown_option(&a);
            return 2;
        }
    }
    if (bad) return 2;
    if (!s.model || !s.data || !s.out || !s.budget_params_s || !s.budget_time_s) {
        fprintf(stderr, "peft search: --model, --data, --out, --budget-params and --budget-time are required\n\n");
        usage(stderr);
        return 2;
    }
    if (parse_time(s.budget_time_s, &s.budget_time)) {
        fprintf(stderr, "peft search: --budget-time must be a duration like 900, 900s, 15m or 2h, got \"%s\"\n", s.budget_time_s);
        return 2;
    }
    if (s.val && s.val_split >= 0) { fprintf(stderr, "peft search: give --val or --val-split, not both\n"); return 2; }
    if (!s.val && s.val_split < 0) s.val_split = 0.1;
    if (s.val_split < 0) s.val_split = 0;
    /* the folder: new, or a search to resume */
    struct stat st;
    const int exists = !stat(s.out, &st);
    char state_path[PATH_MAX];
    snprintf(state_path, sizeof state_path, "%s/search.json", s.out);
    if (exists && !S_ISDIR(st.st_mode)) { fprintf(stderr, "peft search: --out %s is not a folder\n", s.out); return 2; }
    if (s.resume && stat(state_path, &st)) {
        fprintf(stderr, "peft search: --resume: %s holds no search.json; start a search there without --resume\n", s.out);
        return 2;
    }
    if (!s.resume && exists) {
        if (!stat(state_path, &st)) {
            fprintf(stderr, "peft search: %s holds a search already: add --resume to continue it, or choose another --out\n", s.out);
            return 2;
        }
        int empty = 1;
        DIR *d = opendir(s.out);
        for (struct dirent *e; d && (e = readdir(d));)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
        if (d) closedir(d);
        if (!empty) {
            fprintf(stderr, "peft search: --out %s is not empty and holds no search; choose a new folder\n", s.out);
            return 2;
        }
    }

    int rc = 1, created_out = 0, started = 0;
    s.ctx = cli_ctx(s.threads, false);
    if (!s.ctx) return 1;
    s.m = peft_model_load(s.ctx, s.model);
    if (!s.m) { fprintf(stderr, "peft search: %s\n", peft_last_error(s.ctx)); goto out; }
    peft_model_get_info(s.m, &s.mi);
    if (!peft_model_has_tokenizer(s.m)) { fprintf(stderr, "peft search: %s has no tokenizer\n", s.model); goto out; }
    if (parse_count(s.budget_params_s, (double)s.mi.n_params, &s.budget_params)) {
        fprintf(stderr, "peft search: --budget-params must be a parameter count (120000, 300k, 1.5M) or a share of the "
                        "model's %lld parameters (0.5%%), got \"%s\"\n", (long long)s.mi.n_params, s.budget_params_s);
        rc = 2;
        goto out;
    }
    if (!seq_given && s.seq > s.mi.n_ctx) s.seq = s.mi.n_ctx;
    /* data, with a validation set big enough to rank trials */
    if (!(s.train = peft_dataset_load(s.m, s.data, s.seq, 0))) { fprintf(stderr, "peft search: %s\n", peft_last_error(s.ctx)); goto out; }
    peft_dataset_get_info(s.train, &s.ti);
    if (s.val) {
        if (!(s.valset = peft_dataset_load(s.m, s.val, s.seq, 0))) { fprintf(stderr, "peft search: %s\n", peft_last_error(s.ctx)); goto out; }
    } else {
        const int n_val = (int)(s.ti.n * s.val_split);
        if (n_val < 8 || s.ti.n - n_val < s.batch) {
            fprintf(stderr, "peft search: %s has %d examples: too few for a validation split of %g (%d held out; at least 8, "
                            "and %d left to train on, are needed); give more data or a --val file\n",
                    s.data, s.ti.n, s.val_split, n_val, s.batch);
            goto out;
        }
        if (!(s.valset = peft_dataset_split(s.m, s.train, s.val_split, s.seed))) {
            fprintf(stderr, "peft search: %s\n", peft_last_error(s.ctx));
            goto out;
        }
    }
    peft_dataset_get_info(s.train, &s.ti);
    peft_dataset_get_info(s.valset, &s.vi);
    if (s.vi.n > s.val_max) {
        /* validation time is part of every trial: a fixed subset, by seed */
        peft_dataset *keep = peft_dataset_split(s.m, s.valset, (double)s.val_max / s.vi.n, s.seed);
        if (!keep) { fprintf(stderr, "peft search: %s\n", peft_last_error(s.ctx)); goto out; }
        peft_dataset_free(s.valset);
        s.valset = keep;
        peft_dataset_get_info(s.valset, &s.vi);
    }
    if (s.vi.kind != s.ti.kind) { fprintf(stderr, "peft search: --val is not the same kind of data as --data\n"); goto out; }
    if (s.ti.kind == PEFT_DATA_PAIRS) {
        fprintf(stderr, "peft search: contrastive {anchor, positive} data is not searched yet; use peft train\n");
        rc = 2;
        goto out;
    }
    if (s.ti.kind == PEFT_DATA_CLASSIFICATION) {
        int nl = s.ti.n_labels > s.vi.n_labels ? s.ti.n_labels : s.vi.n_labels;
        s.num_labels = nl > 2 ? nl : 2;
    }
    fprintf(stderr, "data: %d training examples, %d validation examples\n", s.ti.n, s.vi.n);
    if (!exists) created_out = 1;
    if (make_dir(s.out)) goto out;
    if (build_candidates(&s)) goto out;
    if (!(s.ident = identity(&s))) goto out;
    {
        char tdir[PATH_MAX];
        snprintf(tdir, sizeof tdir, "%s/trials", s.out);
        if (make_dir(tdir)) goto out;
    }
    if (s.resume) {
        if (load_state(&s)) goto out;
        fprintf(stderr, "resumed: %d trial%s done, %.0f s spent before\n", s.n_t, s.n_t == 1 ? "" : "s", s.spent_before);
    } else {
        s.n0 = s.trials ? (s.trials < s.n_c ? s.trials : s.n_c) : s.n_c;
        order_candidates(&s);
        if (calibrate(&s)) goto out;
        const int n_all = s.n0;
        if (choose_plan(&s)) { rc = 2; goto out; }
        if (s.n0 > n_all) s.n0 = n_all;
        order_candidates(&s);
        fill_rungs(&s, s.n0, s.rung_steps[0]);
        fprintf(stderr, "search: %d of %d candidates within %lld parameters; %d rung%s (", s.n0, s.n_c,
                (long long)s.budget_params, s.n_rungs, s.n_rungs > 1 ? "s" : "");
        for (int k = 0; k < s.n_rungs; k++) fprintf(stderr, "%s%d x %d steps", k ? ", " : "", s.rung_n[k], s.rung_steps[k]);
        fprintf(stderr, "); about %.0f s at %.2f s a step\n", plan_cost(&s), s.calib_step_s);
        if (save_state(&s)) goto out;
    }
    {
        struct sigaction sa, old_int, old_term;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        stop_signal = 0;
        s.hooks.should_stop = stop_requested;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        started = 1;
        rc = run_search(&s);
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
out:
    /* a search that did not start leaves no folder behind */
    if (created_out && !started) nftw(s.out, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (s.ident) cJSON_Delete(s.ident);
    free(s.c);
    free(s.t);
    peft_dataset_free(s.valset);
    peft_dataset_free(s.train);
    peft_model_free(s.m);
    peft_free(s.ctx);
    return rc;
}
