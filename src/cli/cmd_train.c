/* cmd_train.c — `peft train` and `peft eval`. Options come from the command
 * line and/or a JSON config file (--config FILE, keys named like the options
 * without the dashes); the command line wins. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every option of `peft train`, as text until parsed. */
typedef struct {
    const char *name;       /* without dashes */
    bool flag;              /* takes no value */
    const char *help;
    char *value;            /* NULL: not given */
} opt_def;

static opt_def train_opts[] = {
    {"model", false, "HF model folder or .gguf file (required)", NULL},
    {"data", false, "training JSONL: {text} | {prompt,completion} | {messages} | {text[,text_pair],label} | "
                    "{anchor,positive[,negative]} (required)", NULL},
    {"val", false, "validation JSONL", NULL},
    {"val-split", false, "fraction of --data held out for validation when no --val (default 0)", NULL},
    {"out", false, "output folder: adapter, metrics.jsonl, loss.svg, checkpoints (required)", NULL},
    {"config", false, "JSON file with any of these options", NULL},
    {"method", false, "lora (default) | one of the methods below", NULL},
    {"num-labels", false, "classification labels (default: from {text,label} data)", NULL},
    {"mnrl-scale", false, "contrastive {anchor,positive} data: the similarity scale of the in-batch loss (default 20)", NULL},
    {"lr", false, "peak learning rate (default 2e-4)", NULL},
    {"schedule", false, "constant | linear | cosine (default)", NULL},
    {"warmup", false, "warmup steps (default 0)", NULL},
    {"weight-decay", false, "AdamW weight decay (default 0); not on biases and norm weights, as HF's Trainer", NULL},
    {"beta1", false, "AdamW beta1 (default 0.9)", NULL},
    {"beta2", false, "AdamW beta2 (default 0.999)", NULL},
    {"eps", false, "AdamW epsilon (default 1e-8)", NULL},
    {"clip", false, "max gradient norm, 0 = off (default 1)", NULL},
    {"steps", false, "optimizer steps (default 100; 0 = use --epochs)", NULL},
    {"epochs", false, "epochs when --steps 0 (default 1)", NULL},
    {"batch", false, "sequences per micro-batch (default 4)", NULL},
    {"seq", false, "max sequence length; longer examples are truncated and counted (default 256, or the model's "
                   "context if shorter)", NULL},
    {"accum", false, "micro-batches per optimizer step (default 1)", NULL},
    {"pack", true, "pack examples into full rows instead of padding", NULL},
    {"eval-every", false, "evaluate every N steps (default: start and end only)", NULL},
    {"eval-batches", false, "evaluate on at most N batches (default all)", NULL},
    {"save-every", false, "checkpoint every N steps (default 0 = off)", NULL},
    {"resume", false, "resume from a run folder or checkpoint folder", NULL},
    {"checkpoint-layers", false, "[K] gradient checkpointing: keep every K-th layer's input (K = 1 when alone), "
                                 "recompute the others in the backward; 0 = off (default; a resume keeps the run's)", NULL},
    {"seed", false, "seed for init, shuffling, dropout (default 42)", NULL},
    {"threads", false, "threads (default all cores)", NULL},
    {"compute", false, CLI_COMPUTE_HELP, NULL},
    {"bf16", true, "the same as --compute bf16", NULL},
    {"skip-bad", true, "skip and count bad data lines instead of stopping", NULL},
    {"quiet", true, "no progress line", NULL},
    {"dry-run", true, "print the memory plan (weights, graph, optimizer, peak) and stop before training", NULL},
    {"max-memory", false, "SIZE (e.g. 8G, 512M): train with the cheapest setting that fits (gradient checkpointing if "
                          "needed), or refuse before training", NULL},
};
#define N_TRAIN_OPTS ((int)(sizeof train_opts / sizeof *train_opts))

/* The methods' options (peft_method_get_option), from the registry: an option several
 * methods list is one entry naming its owners, with each distinct help
 * text once ("[lora, dora] rank (default 8); [vera] rank (default 256)"). */
#define MAX_PLUG_OPTS 128
static opt_def plug_opts[MAX_PLUG_OPTS];
static char plug_help[MAX_PLUG_OPTS][640];
static char plug_owners[MAX_PLUG_OPTS][160];
static int n_plug_opts;

/* Method i's name and option k (NULL name past its last). */
static const char *meth_name_at(int i) {
    peft_method_info in;
    return peft_method_get(i, &in) ? NULL : in.name;
}

static peft_method_option meth_opt(int i, int k) {
    peft_method_option o;
    peft_method_get_option(i, k, &o);
    return o;
}

static void plug_opts_init(void) {
    n_plug_opts = 0;
    const int nm = peft_method_count();
    for (int p = 0; p < nm; p++)
        for (int ok = 0; meth_opt(p, ok).name; ok++) {
            const peft_method_option o = meth_opt(p, ok);
            int k = 0;
            while (k < n_plug_opts && strcmp(plug_opts[k].name, o.name)) k++;
            if (k == MAX_PLUG_OPTS) break;
            const size_t ol = k < n_plug_opts ? strlen(plug_owners[k]) : 0;
            snprintf(plug_owners[k] + ol, sizeof plug_owners[k] - ol, "%s%s", ol ? ", " : "", meth_name_at(p));
            if (k == n_plug_opts) plug_opts[n_plug_opts++] = (opt_def){o.name, o.metavar == NULL, plug_help[k], NULL};
        }
    /* the help: per distinct text, the owners that give it */
    for (int k = 0; k < n_plug_opts; k++) {
        char *h = plug_help[k];
        size_t hl = 0;
        h[0] = '\0';
        for (int p = 0; p < nm; p++)
            for (int ok = 0; meth_opt(p, ok).name; ok++) {
                const peft_method_option o = meth_opt(p, ok);
                if (strcmp(o.name, plug_opts[k].name)) continue;
                bool seen = false;   /* this text under an earlier method */
                for (int q = 0; q != p && !seen; q++)
                    for (int ek = 0; meth_opt(q, ek).name; ek++)
                        seen |= !strcmp(meth_opt(q, ek).name, o.name) && !strcmp(meth_opt(q, ek).help, o.help);
                if (seen) continue;
                char who[160];
                size_t wl = 0;
                who[0] = '\0';
                for (int q = 0; q < nm; q++)
                    for (int ek = 0; meth_opt(q, ek).name; ek++)
                        if (!strcmp(meth_opt(q, ek).name, o.name) && !strcmp(meth_opt(q, ek).help, o.help) && wl < sizeof who)
                            wl += (size_t)snprintf(who + wl, sizeof who - wl, "%s%s", wl ? ", " : "", meth_name_at(q));
                if (hl < sizeof plug_help[k])
                    hl += (size_t)snprintf(h + hl, sizeof plug_help[k] - hl, "%s[%s] %s", hl ? "; " : "", who, o.help);
            }
    }
}

/* Method options the trainer reads (LoRA+'s parameter groups), not the
 * adapter. */
static bool trainer_option(const char *name) {
    return !strcmp(name, "loraplus-lr-ratio") || !strcmp(name, "loraplus-lr-embedding");
}

static opt_def *find_opt(opt_def *defs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(defs[i].name, name)) return &defs[i];
    if (defs == train_opts) return find_opt(plug_opts, n_plug_opts, name);
    return NULL;
}

static void set_opt(opt_def *o, const char *v, bool override) {
    if (o->value && !override) return;
    free(o->value);
    o->value = strdup(v);
}

/* Fills options not given on the command line from a JSON object. */
static int load_config(opt_def *defs, int n, const char *path) {
    char *text = NULL;
    peft_error err = {0};
    if (peft_file_read(path, &text, NULL, &err)) { fprintf(stderr, "peft train: %s\n", err.msg); return -1; }
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "peft train: %s: not a JSON object\n", path);
        cJSON_Delete(root);
        return -1;
    }
    int rc = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        char key[64];
        snprintf(key, sizeof key, "%s", it->string);
        for (char *c = key; *c; c++) if (*c == '_') *c = '-';
        opt_def *o = find_opt(defs, n, key);
        if (!o || !strcmp(key, "config")) {
            fprintf(stderr, "peft train: %s: unknown option \"%s\"\n", path, it->string);
            rc = -1;
            continue;
        }
        char buf[4096];
        if (cJSON_IsString(it)) snprintf(buf, sizeof buf, "%s", it->valuestring);
        else if (cJSON_IsBool(it)) snprintf(buf, sizeof buf, "%s", cJSON_IsTrue(it) ? "true" : "false");
        else if (cJSON_IsNumber(it)) snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
        else if (cJSON_IsArray(it)) {
            size_t o2 = 0;
            buf[0] = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, it) {
                if (cJSON_IsString(e)) o2 += (size_t)snprintf(buf + o2, sizeof buf - o2, "%s%s", o2 ? "," : "", e->valuestring);
                else if (cJSON_IsNumber(e)) o2 += (size_t)snprintf(buf + o2, sizeof buf - o2, "%s%d", o2 ? "," : "", e->valueint);
                if (o2 >= sizeof buf) break;
            }
        } else {
            fprintf(stderr, "peft train: %s: option \"%s\" has an unusable value\n", path, it->string);
            rc = -1;
            continue;
        }
        if (o->flag && !strcmp(buf, "false")) continue;
        set_opt(o, buf, false);
    }
    cJSON_Delete(root);
    return rc;
}

static void train_usage(FILE *f) {
    fprintf(f, "usage: peft train --model PATH --data train.jsonl --out DIR [options]\n\n");
    for (int i = 0; i < N_TRAIN_OPTS; i++)
        fprintf(f, "  --%-14s %s%s\n", train_opts[i].name, train_opts[i].flag ? "" : "V  ", train_opts[i].help);
    for (int i = 0; i < n_plug_opts; i++)
        fprintf(f, "  --%-14s %s%s\n", plug_opts[i].name, plug_opts[i].flag ? "" : "V  ", plug_opts[i].help);
    fprintf(f, "\nmethods:");
    for (int p = 0; p < peft_method_count(); p++) fprintf(f, "%s %s", p == 0 ? "" : ",", meth_name_at(p));
    fputc('\n', f);
    for (int p = 0; p < peft_method_count(); p++) {
        peft_method_info in;
        peft_method_get(p, &in);
        fprintf(f, "  %-16s %s\n", in.name, in.summary);
    }
}

static void fmt_duration(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, cap, "?"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%dh%02dm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, cap, "%dm%02ds", t / 60, t % 60);
    else snprintf(buf, cap, "%ds", t);
}

typedef struct { bool tty, quiet; } progress_ctx;

static void on_progress(const peft_train_progress *p, void *user) {
    progress_ctx *pc = user;
    if (p->is_eval) {
        if (p->val_acc >= 0)
            fprintf(stderr, "%sstep %d/%d | validation loss %.4f | accuracy %.4f\n", pc->tty && !pc->quiet ? "\r\033[K" : "",
                    p->step, p->total_steps, p->val_loss, p->val_acc);
        else
            fprintf(stderr, "%sstep %d/%d | validation loss %.4f | perplexity %.3f\n", pc->tty && !pc->quiet ? "\r\033[K" : "",
                    p->step, p->total_steps, p->val_loss, p->val_ppl);
        return;
    }
    if (pc->quiet) return;
    char eta[32];
    fmt_duration(p->eta_s, eta, sizeof eta);
    if (pc->tty)
        fprintf(stderr, "\r\033[Kstep %d/%d | loss %.4f | lr %.2e | %.0f tok/s | ETA %s", p->step, p->total_steps, p->loss,
                p->lr, p->tokens_per_s, eta);
    else if (p->step == 1 || p->step % 10 == 0 || p->step == p->total_steps)
        fprintf(stderr, "step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | ETA %s\n", p->step, p->total_steps, p->loss, p->lr,
                p->tokens_per_s, eta);
    if (pc->tty && p->step == p->total_steps) fputc('\n', stderr);
}

/* "8G", "512M", "300K", "1.5G" or bytes; 0 on a bad size. */
static size_t parse_size(const char *v) {
    char *end;
    const double x = strtod(v, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mul = 1048576.0, end++;
    else if (*end == 'G' || *end == 'g') mul = 1073741824.0, end++;
    else if (*end == 'T' || *end == 't') mul = 1099511627776.0, end++;
    if (*end == 'i' && mul > 1) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (end == v || *end || !(x > 0) || x * mul > 1e18) return 0;
    return (size_t)(x * mul);
}

static void print_plan(const peft_memory_plan *p, int ck, int n_layer) {
    const double mib = 1048576.0;
    fprintf(stderr, "memory plan: weights %.0f MiB + training graph %.0f MiB (", p->weights / mib, p->graph_total / mib);
    if (ck > 0 && ck < n_layer)
        fprintf(stderr, "checkpointing every %d layer%s: %.0f MiB of layers", ck, ck > 1 ? "s" : "", p->graph_layers / mib);
    else
        fprintf(stderr, "every layer kept: %.0f MiB, %.1f per layer", p->graph_layers / mib, p->graph_layer / mib);
    fprintf(stderr, "; methods %.0f, the rest %.0f)", p->graph_hooks / mib, p->graph_shared / mib);
    if (p->eval_graph) fprintf(stderr, " + evaluation graph %.0f MiB", p->eval_graph / mib);
    fprintf(stderr, " + gradients and optimizer %.0f MiB + the process so far %.0f MiB = peak %.0f MiB\n",
            (p->grads + p->optimizer) / mib, p->base / mib, p->peak / mib);
}

/* Contrastive data pools as the model's sentence-transformers files say
 * (mean or CLS; defaults: mean). */
static int pair_pool_of(const char *cmd, peft_ctx *ctx, peft_model *m, const char *path, int *pool) {
    peft_embed_info pl;
    if (peft_model_embed_info(m, &pl)) {
        fprintf(stderr, "peft %s: %s\n", cmd, peft_last_error(ctx));
        return 1;
    }
    if (pl.pooling != PEFT_POOL_MEAN && pl.pooling != PEFT_POOL_CLS) {
        fprintf(stderr, "peft %s: %s: contrastive training pools by the mean or the CLS token; this model's pooling (%s) "
                "is another\n", cmd, path, pl.source);
        return 1;
    }
    *pool = (int)pl.pooling;
    return 0;
}

static void print_data_summary(const char *what, const char *path, const peft_dataset *ds, int seq) {
    static const char *const kinds[] = {"text", "prompt/completion", "messages", "classification", "contrastive pairs"};
    peft_dataset_info info;
    peft_dataset_get_info(ds, &info);
    const peft_dataset_info *d = &info;
    if (d->kind == PEFT_DATA_PAIRS)   /* no loss tokens: one loss term per anchor */
        fprintf(stderr, "%s: %s: %d examples (%s: %s), %lld tokens", what, path, d->n, kinds[d->kind],
                d->n_cols > 2 ? "anchor, positive, negative" : "anchor, positive", (long long)d->n_tokens);
    else
        fprintf(stderr, "%s: %s: %d examples (%s), %lld tokens, %lld in the loss", what, path, d->n, kinds[d->kind],
                (long long)d->n_tokens, (long long)d->n_loss_tokens);
    if (d->n_truncated) fprintf(stderr, ", %d truncated to %d tokens", d->n_truncated, seq);
    if (d->n_skipped) fprintf(stderr, ", %d lines skipped", d->n_skipped);
    fputc('\n', stderr);
}

/* HF peft's print_trainable_parameters line (all params include the adapter). */
static void print_trainable(int64_t trainable, int64_t base) {
    char a[32], b[32];
    int64_t all = base + trainable;
    /* thousands separators as Python's {:,d} */
    int64_t vals[2] = {trainable, all};
    char *outs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        char raw[32];
        int n = snprintf(raw, sizeof raw, "%lld", (long long)vals[k]), o = 0;
        for (int i = 0; i < n; i++) {
            outs[k][o++] = raw[i];
            if ((n - i - 1) % 3 == 0 && i < n - 1) outs[k][o++] = ',';
        }
        outs[k][o] = 0;
    }
    printf("trainable params: %s || all params: %s || trainable%%: %.4f\n", a, b, 100.0 * (double)trainable / (double)all);
    fflush(stdout);
}

#define GETV(name) (find_opt(train_opts, N_TRAIN_OPTS, name)->value)

int cmd_train(int argc, char **argv) {
    plug_opts_init();
    cli_args a = {argc, 1, argv, "train"};
    bool bad = false;
    while (a.i < argc && !bad) {
        const char *arg = argv[a.i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) { train_usage(stdout); return 0; }
        if (strncmp(arg, "--", 2) != 0) { fprintf(stderr, "peft train: unexpected argument \"%s\"\n", arg); return 2; }
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(arg + 2, "="), arg + 2);
        opt_def *o = find_opt(train_opts, N_TRAIN_OPTS, name);
        if (!o) { fprintf(stderr, "peft train: unknown option \"%s\" (see peft train --help)\n", arg); return 2; }
        if (o->flag) { set_opt(o, "true", true); a.i++; continue; }
        /* --checkpoint-layers takes an optional K */
        if (!strcmp(name, "checkpoint-layers") && !strchr(arg, '=') &&
            (a.i + 1 >= argc || !strncmp(argv[a.i + 1], "--", 2))) {
            set_opt(o, "1", true);
            a.i++;
            continue;
        }
        char full[80];
        snprintf(full, sizeof full, "--%s", name);
        const char *v = cli_opt(&a, full, &bad);
        if (v) set_opt(o, v, true);
    }
    if (bad) return 2;
    if (GETV("config") && load_config(train_opts, N_TRAIN_OPTS, GETV("config"))) return 2;
    if (!GETV("model") || !GETV("data") || (!GETV("out") && !GETV("dry-run"))) {
        fprintf(stderr, "peft train: --model, --data and --out are required\n\n");
        train_usage(stderr);
        return 2;
    }
    const int plug0 = peft_method_find(GETV("method") ? GETV("method") : "lora");
    if (plug0 < 0) {
        fprintf(stderr, "peft train: unknown method \"%s\" (", GETV("method"));
        for (int p = 0; p < peft_method_count(); p++) fprintf(stderr, "%s%s", p == 0 ? "" : ", ", meth_name_at(p));
        fprintf(stderr, ")\n");
        return 2;
    }
    peft_adapter_config mc;
    peft_adapter_config_init(&mc, plug0);
    for (int i = 0; i < n_plug_opts; i++) {
        if (!plug_opts[i].value || peft_method_option_is_field(plug_opts[i].name) || trainer_option(plug_opts[i].name))
            continue;
        /* --d-initial 0.2 becomes d_initial=0.2 */
        char key[64];
        snprintf(key, sizeof key, "%s", plug_opts[i].name);
        for (char *c = key; *c; c++) if (*c == '-') *c = '_';
        peft_error oerr = {0};
        if (peft_adapter_config_add(&mc, key, plug_opts[i].value, &oerr)) {
            fprintf(stderr, "peft train: --%s: %s\n", plug_opts[i].name, oerr.msg);
            return 2;
        }
    }
    /* an option may select another method (--use-dora) */
    const int plug = peft_adapter_config_resolve(&mc);
    peft_method_info plug_info;
    peft_method_get(plug, &plug_info);
    const char *meth_name = plug_info.name;
    for (int i = 0; i < n_plug_opts; i++)
        if (plug_opts[i].value && !peft_method_has_option(plug, plug_opts[i].name)) {
            fprintf(stderr, "peft train: --%s does not apply to --method %s (it is an option of %s)\n", plug_opts[i].name,
                    meth_name, plug_owners[i]);
            return 2;
        }
    mc.method = plug;
    {
        peft_error cerr = {0};
        if (peft_adapter_config_check(&mc, &cerr)) { fprintf(stderr, "peft train: %s\n", cerr.msg); return 2; }
    }
    /* numbers */
    peft_train_params tp = peft_train_default_params();
    peft_train_hooks hooks = {0};
    int threads = 0, eval_every = 0, ival;
    float fval;
    struct { const char *name; int *dst; long lo, hi; } ints[] = {
        {"r", &mc.r, 1, 4096}, {"warmup", &tp.warmup_steps, 0, 100000000}, {"steps", &tp.steps, 0, 100000000},
        {"epochs", &tp.epochs, 0, 100000}, {"batch", &tp.batch, 1, 65536}, {"seq", &tp.seq, 2, 1000000},
        {"accum", &tp.accum, 1, 65536}, {"eval-every", &eval_every, 0, 100000000},
        {"eval-batches", &tp.eval_max_batches, 0, 100000000}, {"save-every", &tp.save_every, 0, 100000000},
        {"threads", &threads, 1, 1024},
       
        {"num-labels", &mc.num_labels, 2, peft_max_labels()}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
        if (GETV(ints[i].name)) {
            char full[64];
            snprintf(full, sizeof full, "--%s", ints[i].name);
            if (cli_int("train", full, GETV(ints[i].name), ints[i].lo, ints[i].hi, &ival)) return 2;
            *ints[i].dst = ival;
        }
    tp.eval_every = eval_every;
    hooks.pair_scale = 20.0f;
    struct { const char *name; float *dst; double lo, hi; } floats[] = {
        {"alpha", &mc.alpha, 0, 1e6}, {"dropout", &mc.dropout, 0, 0.99}, {"lr", &tp.lr, 0, 10},
        {"weight-decay", &tp.weight_decay, 0, 10}, {"beta1", &tp.beta1, 0, 0.999999},
        {"beta2", &tp.beta2, 0, 0.99999999}, {"eps", &tp.eps, 0, 1}, {"clip", &tp.max_grad_norm, 0, 1e9},
        {"loraplus-lr-ratio", &tp.loraplus_lr_ratio, 0, 1e6}, {"loraplus-lr-embedding", &tp.loraplus_lr_embedding, 0, 10},
        {"mnrl-scale", &hooks.pair_scale, 1e-3, 1e4}};
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++)
        if (GETV(floats[i].name)) {
            char full[64];
            snprintf(full, sizeof full, "--%s", floats[i].name);
            if (cli_float("train", full, GETV(floats[i].name), floats[i].lo, floats[i].hi, &fval)) return 2;
            *floats[i].dst = fval;
        }
    float val_split = 0;
    if (GETV("val-split") && cli_float("train", "--val-split", GETV("val-split"), 0, 0.9, &val_split)) return 2;
    if (GETV("seed")) {
        char *end;
        tp.seed = strtoull(GETV("seed"), &end, 10);
        if (*end) { fprintf(stderr, "peft train: --seed must be a non-negative integer\n"); return 2; }
    }
    mc.seed = tp.seed;
    if (GETV("schedule")) {
        const char *v = GETV("schedule");
        if (strcmp(v, "constant") && strcmp(v, "linear") && strcmp(v, "cosine")) {
            fprintf(stderr, "peft train: --schedule must be constant, linear or cosine\n");
            return 2;
        }
        tp.schedule = v;
    }
    tp.pack = GETV("pack") && strcmp(GETV("pack"), "false");
    if (tp.pack && plug_info.prompt_learning) {
        fprintf(stderr, "peft train: --pack does not apply to --method %s (virtual tokens belong to one sequence)\n", meth_name);
        return 2;
    }
    if (tp.steps == 0 && tp.epochs == 0) tp.epochs = 1;
    if (GETV("layers")) {
        mc.layers = 0;
        for (char *s = GETV("layers"); *s;) {
            char *end;
            long l = strtol(s, &end, 10);
            if (end == s || l < 0 || l > 63) { fprintf(stderr, "peft train: --layers must list layer numbers 0..63\n"); return 2; }
            mc.layers |= 1ULL << l;
            s = *end == ',' ? end + 1 : end;
            if (*end && *end != ',') { fprintf(stderr, "peft train: --layers must list layer numbers 0..63\n"); return 2; }
        }
    }
    if (GETV("checkpoint-layers")) {
        /* a config file's true / false, or K */
        const char *v = GETV("checkpoint-layers");
        if (!strcmp(v, "true")) tp.checkpoint_every = 1;
        else if (!strcmp(v, "false")) tp.checkpoint_every = 0;
        else if (cli_int("train", "--checkpoint-layers", v, 0, 1000000, &tp.checkpoint_every)) return 2;
    }
    tp.out_dir = GETV("out");
    tp.resume = GETV("resume");
    progress_ctx pc = {isatty(2) != 0, GETV("quiet") != NULL};
    hooks.progress = on_progress;
    hooks.user = &pc;

    /* load */
    int rc = 1;
    peft_ctx *ctx = cli_ctx(threads, false);
    if (!ctx) return 1;
    peft_model *m = peft_model_load(ctx, GETV("model"));
    peft_adapter *ad = NULL;
    peft_dataset *train = NULL, *val = NULL;
    peft_model_info minfo;
    if (!m) { fprintf(stderr, "peft train: %s\n", peft_last_error(ctx)); goto out; }
    peft_model_get_info(m, &minfo);
    if (!peft_model_has_tokenizer(m)) { fprintf(stderr, "peft train: %s has no tokenizer\n", GETV("model")); goto out; }
    {
        const int crc = cli_compute("train", ctx, m, GETV("compute"), GETV("bf16") != NULL);
        if (crc) { rc = crc; goto out; }
    }
    if (GETV("layers")) {
        for (int l = 0; l < 64; l++)
            if ((mc.layers >> l & 1) && l >= minfo.n_layer) {
                fprintf(stderr, "peft train: --layers: the model has %d layers (0..%d)\n", minfo.n_layer, minfo.n_layer - 1);
                goto out;
            }
    }
    if (GETV("target")) {
        mc.targets = GETV("target");
        if (peft_model_check_targets(m, mc.targets)) {
            fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
            goto out;
        }
    }

    /* the default length fits the model (a small encoder's 128 positions) */
    if (!GETV("seq") && tp.seq > minfo.n_ctx) tp.seq = minfo.n_ctx;
    if (!(train = peft_dataset_load(m, GETV("data"), tp.seq, GETV("skip-bad") != NULL))) {
        fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
        goto out;
    }
    print_data_summary("data", GETV("data"), train, tp.seq);
    if (GETV("val")) {
        if (!(val = peft_dataset_load(m, GETV("val"), tp.seq, GETV("skip-bad") != NULL))) {
            fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
            goto out;
        }
        print_data_summary("validation", GETV("val"), val, tp.seq);
    } else if (val_split > 0) {
        if (!(val = peft_dataset_split(m, train, val_split, tp.seed))) {
            fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
            goto out;
        }
        peft_dataset_info vi;
        peft_dataset_get_info(val, &vi);
        fprintf(stderr, "validation: %d examples split off --data (seed %llu)\n", vi.n, (unsigned long long)tp.seed);
    }
    peft_dataset_info ti, vi = {0};
    peft_dataset_get_info(train, &ti);
    if (val) peft_dataset_get_info(val, &vi);
    if (ti.kind == PEFT_DATA_CLASSIFICATION) {
        int nl = ti.n_labels > (val ? vi.n_labels : 0) ? ti.n_labels : vi.n_labels;
        if (!mc.num_labels) mc.num_labels = nl > 2 ? nl : 2;
        if (nl > mc.num_labels) {
            fprintf(stderr, "peft train: the data has label %d but --num-labels is %d\n", nl - 1, mc.num_labels);
            goto out;
        }
    } else if (mc.num_labels) {
        fprintf(stderr, "peft train: --num-labels needs {\"text\", \"label\"} data\n");
        goto out;
    }
    if (val && vi.kind != ti.kind) {
        fprintf(stderr, "peft train: --val is %s data but --data is not\n",
                vi.kind == PEFT_DATA_PAIRS ? "contrastive" : vi.kind == PEFT_DATA_CLASSIFICATION ? "classification" : "language-model");
        goto out;
    }
    if (ti.kind == PEFT_DATA_PAIRS) {
        if (pair_pool_of("train", ctx, m, GETV("model"), &hooks.pair_pool)) goto out;
        if (val && vi.n_cols != ti.n_cols) {
            fprintf(stderr, "peft train: --val has %d texts per row, --data %d\n", vi.n_cols, ti.n_cols);
            goto out;
        }
    } else if (GETV("mnrl-scale")) {
        fprintf(stderr, "peft train: --mnrl-scale needs contrastive {\"anchor\", \"positive\"} data\n");
        goto out;
    }
    {
        char *abs = realpath(GETV("model"), NULL);
        ad = peft_adapter_new_config(m, &mc, abs ? abs : GETV("model"));
        free(abs);
        if (!ad) { fprintf(stderr, "peft train: %s\n", peft_last_error(ctx)); goto out; }
    }
    /* full fine-tuning trains copies of the base: all params are the trained ones */
    print_trainable(peft_adapter_n_params(ad), plug_info.saves_model ? 0 : minfo.n_params);
    {
        char desc[256];
        peft_adapter_describe(ad, desc, sizeof desc);
        fprintf(stderr, "%s: %s", meth_name, desc);
    }
    if (mc.num_labels) fprintf(stderr, " + a %d-label classification head", mc.num_labels);
    fprintf(stderr, " | %d steps, batch %d x %d, accum %d, lr %g %s, warmup %d", tp.steps ? tp.steps : -1, tp.batch,
            tp.seq, tp.accum, tp.lr, tp.schedule, tp.warmup_steps);
    if (tp.loraplus_lr_ratio > 0)
        fprintf(stderr, ", LoRA+ (B at lr x %g = %g)", tp.loraplus_lr_ratio, tp.lr * tp.loraplus_lr_ratio);
    if (tp.checkpoint_every > 0) fprintf(stderr, ", checkpointing every %d layer%s", tp.checkpoint_every,
                                         tp.checkpoint_every > 1 ? "s" : "");
    fputc('\n', stderr);
    {
        peft_memory_plan plan;
        int ck = tp.checkpoint_every;
        if (GETV("max-memory")) {
            const size_t budget = parse_size(GETV("max-memory"));
            if (!budget) {
                fprintf(stderr, "peft train: --max-memory: \"%s\" is not a size (e.g. 8G, 512M)\n", GETV("max-memory"));
                rc = 2;
                goto out;
            }
            if (ck >= 0 && GETV("checkpoint-layers")) {   /* the setting is the user's: only checked */
                if (peft_train_plan(m, ad, train, val, &tp, ck, &plan)) {
                    fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
                    goto out;
                }
                if (plan.peak > budget) {
                    print_plan(&plan, ck, minfo.n_layer);
                    fprintf(stderr, "peft train: does not fit in --max-memory %s (%.0f MiB planned)\n", GETV("max-memory"),
                            plan.peak / 1048576.0);
                    goto out;
                }
            } else if (peft_train_fit(m, ad, train, val, &tp, budget, &ck, &plan)) {
                fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
                goto out;
            } else if (ck > 0) {
                fprintf(stderr, "--max-memory %s: gradient checkpointing of every layer (everything kept would not fit)\n",
                        GETV("max-memory"));
                tp.checkpoint_every = ck;
            } else if (tp.checkpoint_every < 0)
                tp.checkpoint_every = 0;
        } else if (peft_train_plan(m, ad, train, val, &tp, ck < 0 ? 0 : ck, &plan)) {
            fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
            goto out;
        }
        print_plan(&plan, ck < 0 ? 0 : ck, minfo.n_layer);
        {   /* the other choice, for comparison */
            const int other = ck > 0 ? 0 : 1;
            peft_memory_plan alt;
            if (minfo.n_layer > 1 && !peft_train_plan(m, ad, train, val, &tp, other, &alt))
                fprintf(stderr, "             %s: training graph %.0f MiB, peak %.0f MiB\n",
                        other ? "with --checkpoint-layers" : "with every layer kept", alt.graph_total / 1048576.0,
                        alt.peak / 1048576.0);
        }
        if (GETV("dry-run")) { rc = 0; goto out; }
    }
    peft_train_report res;
    if (peft_train_dataset(m, ad, train, val, &tp, &hooks, &res)) {
        fprintf(stderr, "\npeft train: %s\n", peft_last_error(ctx));
        goto out;
    }
    if (res.checkpoint_every > 0 && res.checkpoint_every < minfo.n_layer)
        fprintf(stderr, "graph: %.1f MiB of activations, gradients and scratch (checkpointing every %d of %d layers)\n",
                res.graph_bytes / 1048576.0, res.checkpoint_every, minfo.n_layer);
    else
        fprintf(stderr, "graph: %.1f MiB of activations, gradients and scratch (every layer kept)\n",
                res.graph_bytes / 1048576.0);
    fprintf(stderr, "peak RSS: %.0f MiB\n", peft_rss_peak_bytes() / 1048576.0);
    fprintf(stderr, "done: %d steps in %.1f s (%.0f tokens/s); loss %.4f -> %.4f", res.steps, res.seconds,
            res.tokens_per_s, res.first_loss, res.last_loss);
    if (!isnan(res.val_loss_after)) {
        if (!isnan(res.val_loss_before)) fprintf(stderr, "; validation %.4f -> %.4f", res.val_loss_before, res.val_loss_after);
        else fprintf(stderr, "; validation %.4f", res.val_loss_after);
        if (!isnan(res.val_accuracy)) fprintf(stderr, ", accuracy %.4f", res.val_accuracy);
    }
    if (plug_info.saves_model)
        fprintf(stderr, "\nmodel: %s/%s, metrics: %s/metrics.jsonl, curve: %s/loss.svg\n", tp.out_dir,
                !strcmp(minfo.source, "gguf") ? "model.gguf (F32)" : "model.safetensors (HF folder)", tp.out_dir, tp.out_dir);
    else
        fprintf(stderr, "\nadapter: %s/adapter_model.safetensors (HF PEFT format), metrics: %s/metrics.jsonl, curve: "
                "%s/loss.svg\n", tp.out_dir, tp.out_dir, tp.out_dir);
    rc = 0;
out:
    for (int i = 0; i < N_TRAIN_OPTS; i++) { free(train_opts[i].value); train_opts[i].value = NULL; }
    for (int i = 0; i < n_plug_opts; i++) { free(plug_opts[i].value); plug_opts[i].value = NULL; }
    peft_dataset_free(train);
    peft_dataset_free(val);
    if (ad) peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "eval"};
    const char *model = NULL, *adapter_dir = NULL, *data = NULL, *compute = NULL, *v;
    int batch = 4, seq = 0, threads = 0;   /* seq 0: min(512, the model's context) */
    bool json = false, bad = false, skip_bad = false, bf16 = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--data", &bad))) data = v;
        else if ((v = cli_opt(&a, "--batch", &bad))) bad = cli_int("eval", "--batch", v, 1, 65536, &batch) != 0;
        else if ((v = cli_opt(&a, "--seq", &bad))) bad = cli_int("eval", "--seq", v, 2, 1000000, &seq) != 0;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int("eval", "--threads", v, 1, 1024, &threads) != 0;
        else if ((v = cli_opt(&a, "--compute", &bad))) compute = v;
        else if (cli_flag(&a, "--bf16")) bf16 = true;
        else if (cli_flag(&a, "--json")) json = true;
        else if (cli_flag(&a, "--skip-bad")) skip_bad = true;
        else if (cli_flag(&a, "--help")) {
            printf("usage: peft eval --model PATH [--adapter DIR] --data FILE [--json] [--batch N] [--seq N] [--threads N]\n"
                   "                 [--compute f32|bf16|auto] [--bf16]\n"
                   "  --seq N   truncate examples to N tokens (default: 512 or the model's context if shorter)\n"
                   "  --compute " CLI_COMPUTE_HELP "\n\n"
                   "Mean loss per target token and perplexity of the model (with the adapter) on a JSONL dataset.\n");
            return 0;
        } else if (!bad) { fprintf(stderr, "peft eval: unknown option \"%s\"\n", argv[a.i]); return 2; }
    }
    if (bad) return 2;
    if (!model || !data) { fprintf(stderr, "peft eval: --model and --data are required\n"); return 2; }
    peft_ctx *ctx = cli_ctx(threads, false);
    if (!ctx) return 1;
    int rc = 1;
    peft_model *m = peft_model_load(ctx, model);
    peft_adapter *ad = NULL;
    peft_dataset *ds = NULL;
    if (!m) { fprintf(stderr, "peft eval: %s\n", peft_last_error(ctx)); goto out; }
    if (!peft_model_has_tokenizer(m)) { fprintf(stderr, "peft eval: %s has no tokenizer\n", model); goto out; }
    {
        const int crc = cli_compute("eval", ctx, m, compute, bf16);
        if (crc) { rc = crc; goto out; }
    }
    if (adapter_dir) {
        if (!(ad = peft_adapter_load(m, adapter_dir))) { fprintf(stderr, "peft eval: %s\n", peft_last_error(ctx)); goto out; }
    }
    /* the context holds the virtual tokens too */
    if (seq == 0) {
        peft_model_info in;
        peft_model_get_info(m, &in);
        const int room = in.n_ctx - peft_adapter_virtual_tokens(ad);
        seq = room < 512 ? room : 512;
    }
    if (!(ds = peft_dataset_load(m, data, seq, skip_bad))) { fprintf(stderr, "peft eval: %s\n", peft_last_error(ctx)); goto out; }
    peft_dataset_info d;
    peft_dataset_get_info(ds, &d);
    double loss, acc = NAN;
    int64_t n;
    if (d.kind == PEFT_DATA_CLASSIFICATION && peft_adapter_num_labels(ad, m) <= 0) {
        fprintf(stderr, "peft eval: %s is classification data: pass --adapter with a classification head\n", data);
        goto out;
    }
    if (d.kind != PEFT_DATA_CLASSIFICATION && d.kind != PEFT_DATA_PAIRS && peft_classifier_num_labels(m, ad) > 0) {
        fprintf(stderr, "peft eval: %s is a %d-label classifier, which is evaluated on {\"text\", \"label\"} rows "
                "(loss and accuracy), but %s holds language-model rows; for its predictions use `peft predict --model %s%s%s "
                "--data FILE [--metrics]`\n", adapter_dir ? adapter_dir : model, peft_classifier_num_labels(m, ad), data, model,
                adapter_dir ? " --adapter " : "", adapter_dir ? adapter_dir : "");
        goto out;
    }
    peft_train_hooks eh = {.pair_scale = 20.0f, .pair_pool = PEFT_POOL_MEAN};
    if (d.kind == PEFT_DATA_PAIRS && pair_pool_of("eval", ctx, m, model, &eh.pair_pool)) goto out;
    if (peft_eval_dataset(m, ad, ds, batch, seq, &eh, &loss, &n, &acc)) {
        fprintf(stderr, "peft eval: %s\n", peft_last_error(ctx));
        goto out;
    }
    if (d.kind == PEFT_DATA_PAIRS) {
        /* the in-batch ranking: how often an anchor's positive scores best among the batch's candidates */
        if (json)
            printf("{\"loss\": %.9g, \"accuracy\": %.9g, \"examples\": %lld, \"batch\": %d, \"truncated\": %d}\n", loss,
                   acc, (long long)n, batch, d.n_truncated);
        else
            printf("loss %.6f (MultipleNegativesRankingLoss, scale 20) | in-batch accuracy %.6f | %lld pairs, batches of "
                   "%d%s\n", loss, acc, (long long)n, batch, d.n_truncated ? " (some truncated)" : "");
    } else if (!isnan(acc)) {
        if (json)
            printf("{\"loss\": %.9g, \"accuracy\": %.9g, \"examples\": %lld, \"truncated\": %d}\n", loss, acc, (long long)n,
                   d.n_truncated);
        else
            printf("loss %.6f | accuracy %.6f | %lld labelled examples%s\n", loss, acc, (long long)n,
                   d.n_truncated ? " (some truncated)" : "");
    } else if (json)
        printf("{\"loss\": %.9g, \"perplexity\": %.9g, \"tokens\": %lld, \"examples\": %d, \"truncated\": %d}\n", loss, exp(loss),
               (long long)n, d.n, d.n_truncated);
    else
        printf("loss %.6f | perplexity %.6f | %lld target tokens in %d examples%s\n", loss, exp(loss), (long long)n, d.n,
               d.n_truncated ? " (some truncated)" : "");
    rc = 0;
out:
    peft_dataset_free(ds);
    if (ad) peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}
