/* cmd_train.c — `peft train` and `peft eval`. Options come from the command
 * line and/or a JSON config file (--config FILE, keys named like the options
 * without the dashes); the command line wins. */
#include "cli/cli.h"
#include "core/limits.h"
#include "core/ctx.h"
#include "infer/embed.h"
#include "peft/method.h"
#include "train/trainer.h"

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

/* The methods' options (method.h), from the registry: an option several
 * methods list is one entry naming its owners, with each distinct help
 * text once ("[lora, dora] rank (default 8); [vera] rank (default 256)"). */
#define MAX_PLUG_OPTS 128
static opt_def plug_opts[MAX_PLUG_OPTS];
static char plug_help[MAX_PLUG_OPTS][640];
static char plug_owners[MAX_PLUG_OPTS][160];
static int n_plug_opts;

static void plug_opts_init(void) {
    n_plug_opts = 0;
    for (const method_ops *const *p = method_registry(); *p; p++)
        for (const method_option *o = (*p)->options; o && o->name; o++) {
            int k = 0;
            while (k < n_plug_opts && strcmp(plug_opts[k].name, o->name)) k++;
            if (k == MAX_PLUG_OPTS) break;
            const size_t ol = k < n_plug_opts ? strlen(plug_owners[k]) : 0;
            snprintf(plug_owners[k] + ol, sizeof plug_owners[k] - ol, "%s%s", ol ? ", " : "", (*p)->name);
            if (k == n_plug_opts) plug_opts[n_plug_opts++] = (opt_def){o->name, o->metavar == NULL, plug_help[k], NULL};
        }
    /* the help: per distinct text, the owners that give it */
    for (int k = 0; k < n_plug_opts; k++) {
        char *h = plug_help[k];
        size_t hl = 0;
        h[0] = '\0';
        for (const method_ops *const *p = method_registry(); *p; p++)
            for (const method_option *o = (*p)->options; o && o->name; o++) {
                if (strcmp(o->name, plug_opts[k].name)) continue;
                bool seen = false;   /* this text under an earlier method */
                for (const method_ops *const *q = method_registry(); q != p && !seen; q++)
                    for (const method_option *e = (*q)->options; e && e->name; e++)
                        seen |= !strcmp(e->name, o->name) && !strcmp(e->help, o->help);
                if (seen) continue;
                char who[160];
                size_t wl = 0;
                who[0] = '\0';
                for (const method_ops *const *q = method_registry(); *q; q++)
                    for (const method_option *e = (*q)->options; e && e->name; e++)
                        if (!strcmp(e->name, o->name) && !strcmp(e->help, o->help) && wl < sizeof who)
                            wl += (size_t)snprintf(who + wl, sizeof who - wl, "%s%s", wl ? ", " : "", (*q)->name);
                if (hl < sizeof plug_help[k])
                    hl += (size_t)snprintf(h + hl, sizeof plug_help[k] - hl, "%s[%s] %s", hl ? "; " : "", who, o->help);
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
    peft_err err = {0};
    if (peft_read_file(path, &text, NULL, &err)) { fprintf(stderr, "peft train: %s\n", err.msg); return -1; }
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
    for (const method_ops *const *p = method_registry(); *p; p++) fprintf(f, "%s %s", p == method_registry() ? "" : ",", (*p)->name);
    fputc('\n', f);
    for (const method_ops *const *p = method_registry(); *p; p++) fprintf(f, "  %-16s %s\n", (*p)->name, (*p)->summary);
}

static void fmt_duration(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, cap, "?"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%dh%02dm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, cap, "%dm%02ds", t / 60, t % 60);
    else snprintf(buf, cap, "%ds", t);
}

typedef struct { bool tty, quiet; } progress_ctx;

static void on_progress(const train_progress *p, void *user) {
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

static void print_plan(const train_memplan *p, int ck, int n_layer) {
    const double mib = 1048576.0;
    fprintf(stderr, "memory plan: weights %.0f MiB + training graph %.0f MiB (", p->weights / mib, p->graph.total / mib);
    if (ck > 0 && ck < n_layer)
        fprintf(stderr, "checkpointing every %d layer%s: %.0f MiB of layers", ck, ck > 1 ? "s" : "", p->graph.layers / mib);
    else
        fprintf(stderr, "every layer kept: %.0f MiB, %.1f per layer", p->graph.layers / mib, p->graph.layer / mib);
    fprintf(stderr, "; methods %.0f, the rest %.0f)", p->graph.hooks / mib, p->graph.shared / mib);
    if (p->eval_graph) fprintf(stderr, " + evaluation graph %.0f MiB", p->eval_graph / mib);
    fprintf(stderr, " + gradients and optimizer %.0f MiB + the process so far %.0f MiB = peak %.0f MiB\n",
            (p->grads + p->optimizer) / mib, p->base / mib, p->peak / mib);
}

/* Contrastive data pools as the model's sentence-transformers files say
 * (mean or CLS; defaults: mean). */
static int pair_pool_of(const char *cmd, const peft_model *m, int *pool, peft_err *err) {
    embed_pipeline pl;
    if (embed_pipeline_load(m, &pl, err)) {
        fprintf(stderr, "peft %s: %s\n", cmd, err->msg);
        return 1;
    }
    if (pl.modes != EMBED_POOL_MEAN && pl.modes != EMBED_POOL_CLS) {
        fprintf(stderr, "peft %s: %s: contrastive training pools by the mean or the CLS token; this model's pooling (%s) "
                "is another\n", cmd, m->path, pl.source);
        return 1;
    }
    *pool = pl.modes == EMBED_POOL_CLS ? TG_POOL_CLS : TG_POOL_MEAN;
    return 0;
}

static void print_data_summary(const char *what, const char *path, const data_set *d, int seq) {
    static const char *const kinds[] = {"text", "prompt/completion", "messages", "classification", "contrastive pairs"};
    if (d->kind == DATA_PAIRS)   /* no loss tokens: one loss term per anchor */
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
    const method_ops *plug = method_find(GETV("method") ? GETV("method") : "lora");
    if (!plug) {
        fprintf(stderr, "peft train: unknown method \"%s\" (", GETV("method"));
        for (const method_ops *const *p = method_registry(); *p; p++)
            fprintf(stderr, "%s%s", p == method_registry() ? "" : ", ", (*p)->name);
        fprintf(stderr, ")\n");
        return 2;
    }
    method_config mc;
    memset(&mc, 0, sizeof mc);
    mc.alpha = NAN;   /* the method's default */
    for (int i = 0; i < n_plug_opts; i++) {
        if (!plug_opts[i].value || method_option_is_field(plug_opts[i].name) || trainer_option(plug_opts[i].name))
            continue;
        /* --d-initial 0.2 becomes d_initial=0.2 */
        char key[64];
        snprintf(key, sizeof key, "%s", plug_opts[i].name);
        for (char *c = key; *c; c++) if (*c == '-') *c = '_';
        peft_err oerr = {0};
        if (method_option_add(&mc, key, plug_opts[i].value, &oerr)) {
            fprintf(stderr, "peft train: --%s: %s\n", plug_opts[i].name, oerr.msg);
            return 2;
        }
    }
    /* an option may select another method (--use-dora) */
    if (plug->resolve && plug->resolve(&mc)) plug = plug->resolve(&mc);
    const char *meth_name = plug->name;
    for (int i = 0; i < n_plug_opts; i++)
        if (plug_opts[i].value && !method_has_option(plug, plug_opts[i].name)) {
            fprintf(stderr, "peft train: --%s does not apply to --method %s (it is an option of %s)\n", plug_opts[i].name,
                    meth_name, plug_owners[i]);
            return 2;
        }
    mc.ops = plug;
    if (plug->check) {
        peft_err cerr = {0};
        if (plug->check(&mc, &cerr)) { fprintf(stderr, "peft train: %s\n", cerr.msg); return 2; }
    }
    /* numbers */
    train_params tp = train_default_params();
    int threads = 0, eval_every = 0, ival;
    float fval;
    struct { const char *name; int *dst; long lo, hi; } ints[] = {
        {"r", &mc.r, 1, 4096}, {"warmup", &tp.opt.warmup_steps, 0, 100000000}, {"steps", &tp.steps, 0, 100000000},
        {"epochs", &tp.epochs, 0, 100000}, {"batch", &tp.batch, 1, 65536}, {"seq", &tp.seq, 2, 1000000},
        {"accum", &tp.accum, 1, 65536}, {"eval-every", &eval_every, 0, 100000000},
        {"eval-batches", &tp.eval_max_batches, 0, 100000000}, {"save-every", &tp.save_every, 0, 100000000},
        {"threads", &threads, 1, 1024},
       
        {"num-labels", &mc.n_labels, 2, PEFT_MAX_LABELS}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
        if (GETV(ints[i].name)) {
            char full[64];
            snprintf(full, sizeof full, "--%s", ints[i].name);
            if (cli_int("train", full, GETV(ints[i].name), ints[i].lo, ints[i].hi, &ival)) return 2;
            *ints[i].dst = ival;
        }
    tp.eval_every = eval_every;
    struct { const char *name; float *dst; double lo, hi; } floats[] = {
        {"alpha", &mc.alpha, 0, 1e6}, {"dropout", &mc.dropout, 0, 0.99}, {"lr", &tp.opt.lr, 0, 10},
        {"weight-decay", &tp.opt.weight_decay, 0, 10}, {"beta1", &tp.opt.beta1, 0, 0.999999},
        {"beta2", &tp.opt.beta2, 0, 0.99999999}, {"eps", &tp.opt.eps, 0, 1}, {"clip", &tp.opt.max_grad_norm, 0, 1e9},
        {"loraplus-lr-ratio", &tp.opt.loraplus_lr_ratio, 0, 1e6}, {"loraplus-lr-embedding", &tp.opt.loraplus_lr_embedding, 0, 10},
        {"mnrl-scale", &tp.pair_scale, 1e-3, 1e4}};
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
    if (GETV("schedule") && sched_parse(GETV("schedule"), &tp.opt.sched)) {
        fprintf(stderr, "peft train: --schedule must be constant, linear or cosine\n");
        return 2;
    }
    tp.pack = GETV("pack") && strcmp(GETV("pack"), "false");
    if (tp.pack && (plug->flags & METHOD_PROMPT_LEARNING)) {
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
    tp.progress = on_progress;
    tp.user = &pc;

    /* load */
    int rc = 1;
    peft_ctx *ctx = cli_ctx(threads, false);
    if (!ctx) return 1;
    peft_model *m = peft_model_load(ctx, GETV("model"));
    adapter *ad = NULL;
    data_set train = {0}, val = {0};
    bool have_val = false;
    peft_err *err = &ctx->err;
    if (!m) { fprintf(stderr, "peft train: %s\n", peft_last_error(ctx)); goto out; }
    if (!m->tok) { fprintf(stderr, "peft train: %s has no tokenizer\n", GETV("model")); goto out; }
    {
        const int crc = cli_compute("train", ctx, m, GETV("compute"), GETV("bf16") != NULL);
        if (crc) { rc = crc; goto out; }
    }
    if (GETV("layers")) {
        for (int l = 0; l < 64; l++)
            if ((mc.layers >> l & 1) && l >= m->cfg.n_layer) {
                fprintf(stderr, "peft train: --layers: the model has %d layers (0..%d)\n", m->cfg.n_layer, m->cfg.n_layer - 1);
                goto out;
            }
    }
    if (GETV("target") && method_parse_targets(m, GETV("target"), &mc.targets, err)) {
        fprintf(stderr, "peft train: %s\n", err->msg);
        goto out;
    }

    /* the default length fits the model (a small encoder's 128 positions) */
    if (!GETV("seq") && tp.seq > m->cfg.n_ctx) tp.seq = m->cfg.n_ctx;
    data_params dp = data_default_params();
    dp.seq_len = tp.seq;
    dp.skip_bad = GETV("skip-bad") != NULL;
    if (data_load_jsonl(GETV("data"), m->tok, &dp, &train, err)) { fprintf(stderr, "peft train: %s\n", err->msg); goto out; }
    print_data_summary("data", GETV("data"), &train, tp.seq);
    if (GETV("val")) {
        if (data_load_jsonl(GETV("val"), m->tok, &dp, &val, err)) { fprintf(stderr, "peft train: %s\n", err->msg); goto out; }
        have_val = true;
        print_data_summary("validation", GETV("val"), &val, tp.seq);
    } else if (val_split > 0) {
        if (data_split(&train, val_split, tp.seed, &val, err)) { fprintf(stderr, "peft train: %s\n", err->msg); goto out; }
        have_val = true;
        fprintf(stderr, "validation: %d examples split off --data (seed %llu)\n", val.n, (unsigned long long)tp.seed);
    }
    if (train.kind == DATA_CLASSIFICATION) {
        int nl = PEFT_MAX(train.n_labels, have_val ? val.n_labels : 0);
        if (!mc.n_labels) mc.n_labels = PEFT_MAX(2, nl);
        if (nl > mc.n_labels) {
            fprintf(stderr, "peft train: the data has label %d but --num-labels is %d\n", nl - 1, mc.n_labels);
            goto out;
        }
    } else if (mc.n_labels) {
        fprintf(stderr, "peft train: --num-labels needs {\"text\", \"label\"} data\n");
        goto out;
    }
    if (have_val && val.kind != train.kind) {
        fprintf(stderr, "peft train: --val is %s data but --data is not\n",
                val.kind == DATA_PAIRS ? "contrastive" : val.kind == DATA_CLASSIFICATION ? "classification" : "language-model");
        goto out;
    }
    if (train.kind == DATA_PAIRS) {
        if (pair_pool_of("train", m, &tp.pair_pool, err)) goto out;
        if (have_val && val.n_cols != train.n_cols) {
            fprintf(stderr, "peft train: --val has %d texts per row, --data %d\n", val.n_cols, train.n_cols);
            goto out;
        }
    } else if (GETV("mnrl-scale")) {
        fprintf(stderr, "peft train: --mnrl-scale needs contrastive {\"anchor\", \"positive\"} data\n");
        goto out;
    }
    if (adapter_new(m, &mc, &ad, err)) { fprintf(stderr, "peft train: %s\n", err->msg); goto out; }
    {
        char *abs = realpath(GETV("model"), NULL);
        free(ad->base_model);
        ad->base_model = abs ? abs : strdup(GETV("model"));
    }
    /* full fine-tuning trains copies of the base: all params are the trained ones */
    print_trainable(ad->n_params, (plug->flags & METHOD_SAVES_MODEL) ? 0 : m->n_params);
    if (plug->describe) {
        char desc[256];
        plug->describe(ad, desc, sizeof desc);
        fprintf(stderr, "%s: %s", plug->name, desc);
    } else fprintf(stderr, "%s: %d tensors", meth_name, ad->n_tensors);
    if (mc.n_labels) fprintf(stderr, " + a %d-label classification head", mc.n_labels);
    fprintf(stderr, " | %d steps, batch %d x %d, accum %d, lr %g %s, warmup %d", tp.steps ? tp.steps : -1, tp.batch,
            tp.seq, tp.accum, tp.opt.lr, sched_name(tp.opt.sched), tp.opt.warmup_steps);
    if (tp.opt.loraplus_lr_ratio > 0)
        fprintf(stderr, ", LoRA+ (B at lr x %g = %g)", tp.opt.loraplus_lr_ratio, tp.opt.lr * tp.opt.loraplus_lr_ratio);
    if (tp.checkpoint_every > 0) fprintf(stderr, ", checkpointing every %d layer%s", tp.checkpoint_every,
                                         tp.checkpoint_every > 1 ? "s" : "");
    fputc('\n', stderr);
    {
        train_memplan plan;
        const data_set *vp = have_val ? &val : NULL;
        int ck = tp.checkpoint_every;
        if (GETV("max-memory")) {
            const size_t budget = parse_size(GETV("max-memory"));
            if (!budget) {
                fprintf(stderr, "peft train: --max-memory: \"%s\" is not a size (e.g. 8G, 512M)\n", GETV("max-memory"));
                rc = 2;
                goto out;
            }
            if (ck >= 0 && GETV("checkpoint-layers")) {   /* the setting is the user's: only checked */
                if (train_memory_plan(m, ad, &train, vp, &tp, ck, &plan, err)) { fprintf(stderr, "peft train: %s\n", err->msg); goto out; }
                if (plan.peak > budget) {
                    print_plan(&plan, ck, m->cfg.n_layer);
                    fprintf(stderr, "peft train: does not fit in --max-memory %s (%.0f MiB planned)\n", GETV("max-memory"),
                            plan.peak / 1048576.0);
                    goto out;
                }
            } else if (train_fit_memory(m, ad, &train, vp, &tp, budget, &ck, &plan, err)) {
                fprintf(stderr, "peft train: %s\n", err->msg);
                goto out;
            } else if (ck > 0) {
                fprintf(stderr, "--max-memory %s: gradient checkpointing of every layer (everything kept would not fit)\n",
                        GETV("max-memory"));
                tp.checkpoint_every = ck;
            } else if (tp.checkpoint_every < 0)
                tp.checkpoint_every = 0;
        } else if (train_memory_plan(m, ad, &train, vp, &tp, ck < 0 ? 0 : ck, &plan, err)) {
            fprintf(stderr, "peft train: %s\n", err->msg);
            goto out;
        }
        print_plan(&plan, ck < 0 ? 0 : ck, m->cfg.n_layer);
        {   /* the other choice, for comparison */
            const int other = ck > 0 ? 0 : 1;
            train_memplan alt;
            if (m->cfg.n_layer > 1 && !train_memory_plan(m, ad, &train, vp, &tp, other, &alt, err))
                fprintf(stderr, "             %s: training graph %.0f MiB, peak %.0f MiB\n",
                        other ? "with --checkpoint-layers" : "with every layer kept", alt.graph.total / 1048576.0,
                        alt.peak / 1048576.0);
        }
        if (GETV("dry-run")) { rc = 0; goto out; }
    }
    train_result res;
    if (train_run(m, ad, &train, have_val ? &val : NULL, &tp, &res, err)) {
        fprintf(stderr, "\npeft train: %s\n", err->msg);
        goto out;
    }
    if (res.checkpoint_every > 0 && res.checkpoint_every < m->cfg.n_layer)
        fprintf(stderr, "graph: %.1f MiB of activations, gradients and scratch (checkpointing every %d of %d layers)\n",
                res.graph_bytes / 1048576.0, res.checkpoint_every, m->cfg.n_layer);
    else
        fprintf(stderr, "graph: %.1f MiB of activations, gradients and scratch (every layer kept)\n",
                res.graph_bytes / 1048576.0);
    fprintf(stderr, "peak RSS: %.0f MiB\n", peft_rss_peak() / 1048576.0);
    fprintf(stderr, "done: %d steps in %.1f s (%.0f tokens/s); loss %.4f -> %.4f", res.steps_done, res.seconds,
            res.tokens_per_s, res.first_loss, res.last_loss);
    if (!isnan(res.val_loss_after)) {
        if (!isnan(res.val_loss_before)) fprintf(stderr, "; validation %.4f -> %.4f", res.val_loss_before, res.val_loss_after);
        else fprintf(stderr, "; validation %.4f", res.val_loss_after);
        if (!isnan(res.val_accuracy)) fprintf(stderr, ", accuracy %.4f", res.val_accuracy);
    }
    if (plug->flags & METHOD_SAVES_MODEL)
        fprintf(stderr, "\nmodel: %s/%s, metrics: %s/metrics.jsonl, curve: %s/loss.svg\n", tp.out_dir,
                m->gguf ? "model.gguf (F32)" : "model.safetensors (HF folder)", tp.out_dir, tp.out_dir);
    else
        fprintf(stderr, "\nadapter: %s/adapter_model.safetensors (HF PEFT format), metrics: %s/metrics.jsonl, curve: "
                "%s/loss.svg\n", tp.out_dir, tp.out_dir, tp.out_dir);
    rc = 0;
out:
    for (int i = 0; i < N_TRAIN_OPTS; i++) { free(train_opts[i].value); train_opts[i].value = NULL; }
    for (int i = 0; i < n_plug_opts; i++) { free(plug_opts[i].value); plug_opts[i].value = NULL; }
    data_free(&train);
    if (have_val) data_free(&val);
    adapter_free(ad);
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
    adapter *ad = NULL;
    data_set d = {0};
    bool have_d = false;
    if (!m) { fprintf(stderr, "peft eval: %s\n", peft_last_error(ctx)); goto out; }
    if (!m->tok) { fprintf(stderr, "peft eval: %s has no tokenizer\n", model); goto out; }
    {
        const int crc = cli_compute("eval", ctx, m, compute, bf16);
        if (crc) { rc = crc; goto out; }
    }
    if (adapter_dir) {
        if (adapter_load(m, adapter_dir, &ad, &ctx->err)) { fprintf(stderr, "peft eval: %s\n", ctx->err.msg); goto out; }
    }
    /* the context holds the virtual tokens too */
    if (seq == 0) seq = PEFT_MIN(512, m->cfg.n_ctx - adapter_prompt_rows(ad) - adapter_prefix_rows(ad));
    data_params dp = data_default_params();
    dp.seq_len = seq;
    dp.skip_bad = skip_bad;
    if (data_load_jsonl(data, m->tok, &dp, &d, &ctx->err)) { fprintf(stderr, "peft eval: %s\n", ctx->err.msg); goto out; }
    have_d = true;
    double loss, acc = NAN;
    int64_t n;
    if (d.kind == DATA_CLASSIFICATION && adapter_n_labels(ad, m) <= 0) {
        fprintf(stderr, "peft eval: %s is classification data: pass --adapter with a classification head\n", data);
        goto out;
    }
    int pool = TG_POOL_MEAN;
    if (d.kind == DATA_PAIRS && pair_pool_of("eval", m, &pool, &ctx->err)) goto out;
    if (train_eval_pairs(m, ad, &d, batch, seq, 0, 20.0f, pool, &loss, &n, &acc, &ctx->err)) {
        fprintf(stderr, "peft eval: %s\n", ctx->err.msg);
        goto out;
    }
    if (d.kind == DATA_PAIRS) {
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
    if (have_d) data_free(&d);
    adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}
