/* cmd_train.c — `peft train` and `peft eval`. Options come from the command
 * line and/or a JSON config file (--config FILE, keys named like the options
 * without the dashes); the command line wins. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
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
    {"data", false, "training JSONL, one object per line, of a kind listed below (required)", NULL},
    {"val", false, "validation JSONL", NULL},
    {"val-split", false, "fraction of --data held out for validation when no --val (default 0)", NULL},
    {"out", false, "output folder: adapter, metrics.jsonl, loss.svg (and loss.png), run.json, checkpoints (required)", NULL},
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
    {"resume", false, "continue a run from its folder or a checkpoint folder, with the options it saved", NULL},
    {"overwrite", true, "replace the run already in --out (only files peft writes there are removed)", NULL},
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

/* The known option nearest to a mistyped name (without dashes), or NULL.
 * HF's names for the same settings (TrainingArguments, LoraConfig, TRL's
 * SFTConfig) are answered with ours first: they are what users type. */
static const char *near_opt(const char *given) {
    char name[64];
    snprintf(name, sizeof name, "%s", given);
    for (char *c = name; *c; c++) if (*c == '_') *c = '-';   /* --learning_rate as HF spells it */
    static const char *const hf[][2] = {
        {"learning-rate", "lr"}, {"rank", "r"}, {"lora-r", "r"}, {"lora-rank", "r"}, {"lora-alpha", "alpha"},
        {"lora-dropout", "dropout"}, {"max-steps", "steps"}, {"num-train-epochs", "epochs"},
        {"num-epochs", "epochs"}, {"batch-size", "batch"}, {"per-device-train-batch-size", "batch"},
        {"max-seq-length", "seq"}, {"max-length", "seq"}, {"seq-len", "seq"}, {"seq-length", "seq"},
        {"gradient-accumulation-steps", "accum"}, {"output-dir", "out"}, {"output", "out"},
        {"target-modules", "target"}, {"warmup-steps", "warmup"}, {"lr-scheduler-type", "schedule"},
        {"max-grad-norm", "clip"}, {"dataset", "data"}, {"train-file", "data"}, {"validation-file", "val"},
        {"model-name-or-path", "model"}, {"resume-from-checkpoint", "resume"}, {"save-steps", "save-every"},
        {"eval-steps", "eval-every"}, {"gradient-checkpointing", "checkpoint-layers"}, {"packing", "pack"},
        {"peft-type", "method"}, {"use-bf16", "bf16"}};
    for (size_t i = 0; i < sizeof hf / sizeof *hf; i++)
        if (!strcmp(name, hf[i][0])) return hf[i][1];
    const char *names[N_TRAIN_OPTS + MAX_PLUG_OPTS];
    int n = 0;
    for (int i = 0; i < N_TRAIN_OPTS; i++) names[n++] = train_opts[i].name;
    for (int i = 0; i < n_plug_opts; i++) names[n++] = plug_opts[i].name;
    return cli_suggest(name, names, n);
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
        /* HF LoraConfig's names (peft probe writes them): lora_alpha,
         * lora_dropout, layers_to_transform; target_modules that name
         * modules rather than kinds ("model.layers.3.self_attn.q_proj") go to
         * LoRA's --target-modules */
        static const char *const hf_keys[][2] = {
            {"lora_alpha", "alpha"}, {"lora_dropout", "dropout"}, {"layers_to_transform", "layers"}, {"target_modules", "target"}};
        for (size_t h = 0; h < sizeof hf_keys / sizeof *hf_keys; h++)
            if (!strcmp(key, hf_keys[h][0])) snprintf(key, sizeof key, "%s", hf_keys[h][1]);
        if (!strcmp(key, "target") && cJSON_IsArray(it)) {
            const cJSON *e;
            cJSON_ArrayForEach(e, it) if (cJSON_IsString(e) && strchr(e->valuestring, '.')) snprintf(key, sizeof key, "target-modules");
        }
        for (char *c = key; *c; c++) if (*c == '_') *c = '-';
        opt_def *o = find_opt(defs, n, key);
        if (!o || !strcmp(key, "config")) {
            const char *near = o ? NULL : near_opt(key);
            if (near) fprintf(stderr, "peft train: %s: unknown option \"%s\": did you mean \"%s\"?\n", path, it->string, near);
            else fprintf(stderr, "peft train: %s: unknown option \"%s\"\n", path, it->string);
            rc = -1;
            continue;
        }
        char buf[4096];
        /* objects (rank_pattern, alpha_pattern) and module-name lists: as
         * JSON text when short, else the file itself ("@FILE", which LoRA's
         * pattern options read by key) */
        const bool as_json = cJSON_IsObject(it) || (cJSON_IsArray(it) && !strcmp(key, "target-modules"));
        char *js = as_json ? cJSON_PrintUnformatted(it) : NULL;
        if (as_json && js && strlen(js) < 600) snprintf(buf, sizeof buf, "%s", js);
        else if (as_json) snprintf(buf, sizeof buf, "@%s", path);
        free(js);
        if (as_json) {
        } else if (cJSON_IsString(it)) snprintf(buf, sizeof buf, "%s", it->valuestring);
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
    fprintf(f, "\ndata kinds (JSONL: one object per line; the first row fixes the kind; docs/formats.md):\n"
               "  {\"text\"}                                     causal LM, loss on every token\n"
               "  {\"prompt\", \"completion\"}                     loss on the completion only\n"
               "  {\"messages\": [{\"role\", \"content\"}, ...]}     the model's chat template, loss on assistant turns\n"
               "  {\"text\", \"label\"}                            sequence classification (label 0, 1, ...)\n"
               "  {\"text\", \"text_pair\", \"label\"}               pair classification\n"
               "  {\"anchor\", \"positive\"[, \"negative\"]}         contrastive sentence embeddings\n"
               "  {\"instruction\"[, \"input\"], \"output\"}         Alpaca rows: prompt/completion, the Alpaca template\n"
               "  {\"conversations\": [{\"from\", \"value\"}, ...]}  ShareGPT rows: messages (human, gpt, system)\n");
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

/* The data summary: what was kept, what was dropped or cut and why, the
 * length distribution and the --seq that keeps rows whole, and a WARNING
 * when much is lost (a too-small --seq must not train on 7 of 200 rows
 * silently). */
static void print_data_summary(const char *what, const char *path, const peft_dataset *ds, int seq, int n_ctx) {
    static const char *const kinds[] = {"text", "prompt/completion", "messages", "classification", "contrastive pairs"};
    static const char *const styles[] = {"", ", read from Alpaca rows", ", read from ShareGPT rows"};
    peft_dataset_info info;
    peft_dataset_get_info(ds, &info);
    const peft_dataset_info *d = &info;
    const char *style = d->style >= 0 && d->style <= 2 ? styles[d->style] : "";
    if (d->kind == PEFT_DATA_PAIRS)   /* no loss tokens: one loss term per anchor */
        fprintf(stderr, "%s: %s: %d examples (%s: %s), %lld tokens", what, path, d->n, kinds[d->kind],
                d->n_cols > 2 ? "anchor, positive, negative" : "anchor, positive", (long long)d->n_tokens);
    else
        fprintf(stderr, "%s: %s: %d examples (%s%s), %lld tokens, %lld in the loss", what, path, d->n, kinds[d->kind],
                style, (long long)d->n_tokens, (long long)d->n_loss_tokens);
    /* rows that lost every target to the cut were truncated too, but are not among the examples */
    if (d->n_truncated > d->n_cut_no_target)
        fprintf(stderr, ", %d truncated to %d tokens", d->n_truncated - d->n_cut_no_target, seq);
    fputc('\n', stderr);
    if (d->n_skipped) {
        fprintf(stderr, "%s: %d of %d rows dropped:", what, d->n_skipped, d->n_lines);
        const char *sep = " ";
        if (d->n_cut_no_target)
            fprintf(stderr, "%s%d lost every target token to --seq %d", sep, d->n_cut_no_target, seq), sep = ", ";
        if (d->n_no_target)
            fprintf(stderr, "%s%d have no target token (an empty completion or no assistant turn)", sep, d->n_no_target),
                sep = ", ";
        if (d->n_empty) fprintf(stderr, "%s%d empty", sep, d->n_empty), sep = ", ";
        if (d->n_bad) fprintf(stderr, "%s%d malformed (skipped: --skip-bad)", sep, d->n_bad);
        fputc('\n', stderr);
    }
    if (d->n_loss_cut) {
        const int64_t all = d->n_loss_tokens + d->n_loss_cut;
        fprintf(stderr, "%s: --seq %d cut %lld of %lld loss tokens (%.1f %%)\n", what, seq, (long long)d->n_loss_cut,
                (long long)all, 100.0 * (double)d->n_loss_cut / (double)all);
    }
    if (d->len_max > 0) {
        fprintf(stderr, "%s: rows are %d to %d tokens long (median %d, 95th percentile %d): ", what, d->len_min,
                d->len_max, d->len_median, d->len_p95);
        if (d->len_max <= seq) fprintf(stderr, "--seq %d keeps every row whole\n", seq);
        else {
            if (d->len_p95 < d->len_max) fprintf(stderr, "--seq %d would keep 95 %% whole, ", d->len_p95);
            fprintf(stderr, "--seq %d %s", d->len_max, d->len_p95 < d->len_max ? "all" : "would keep every row whole");
            if (d->len_max > n_ctx) fprintf(stderr, " (the model's context is %d)", n_ctx);
            fputc('\n', stderr);
        }
    }
    /* loud: one in ten rows or loss tokens lost changes what is learned */
    if (d->n_lines > 0 && d->n_skipped * 10 > d->n_lines)
        fprintf(stderr, "WARNING: %s: %d of %d rows (%.0f %%) were dropped%s\n", what, d->n_skipped, d->n_lines,
                100.0 * d->n_skipped / d->n_lines,
                d->n_cut_no_target * 2 >= d->n_skipped ? ": raise --seq (see the lengths above)"
                : d->n_bad * 2 >= d->n_skipped ? ": most are malformed; without --skip-bad the first stops the run with its line"
                                               : ": they hold nothing to learn (see the reasons above)");
    if (d->n_loss_cut * 10 > d->n_loss_tokens + d->n_loss_cut)
        fprintf(stderr, "WARNING: %s: --seq %d cuts %.0f %% of the loss tokens: raise --seq (see the lengths above)\n",
                what, seq, 100.0 * (double)d->n_loss_cut / (double)(d->n_loss_tokens + d->n_loss_cut));
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

/* ---- the run folder: its saved options, --overwrite, --resume, stops ----- */

/* SESSION options are this invocation's (not saved); KEEP options are
 * saved and come back on a resume, but may change there (no loss depends
 * on them, or the trainer warns); RUN options are saved and a resume must
 * agree with them. */
typedef enum { OPT_SESSION, OPT_RUN, OPT_KEEP } opt_class;

static opt_class class_of(const char *name) {
    static const char *const session[] = {"out",     "config",     "resume",            "overwrite", "quiet",
                                          "dry-run", "max-memory", "checkpoint-layers", "bf16",      NULL};
    static const char *const keep[] = {"eval-every", "eval-batches", "save-every", "compute", "threads", NULL};
    for (int i = 0; session[i]; i++)
        if (!strcmp(name, session[i])) return OPT_SESSION;
    for (int i = 0; keep[i]; i++)
        if (!strcmp(name, keep[i])) return OPT_KEEP;
    return OPT_RUN;
}

static bool is_path_opt(const char *name) { return !strcmp(name, "model") || !strcmp(name, "data") || !strcmp(name, "val"); }

/* The defaults of the options every run has, saved with the given ones so
 * that run.json holds the whole configuration (and an explicit --lr 2e-4
 * agrees with a run that took the default). */
static bool default_of(const char *name, char *buf, size_t cap) {
    const peft_train_params d = peft_train_default_params();
    if (!strcmp(name, "lr")) snprintf(buf, cap, "%g", (double)d.lr);
    else if (!strcmp(name, "schedule")) snprintf(buf, cap, "%s", d.schedule ? d.schedule : "cosine");
    else if (!strcmp(name, "warmup")) snprintf(buf, cap, "%d", d.warmup_steps);
    else if (!strcmp(name, "weight-decay")) snprintf(buf, cap, "%g", (double)d.weight_decay);
    else if (!strcmp(name, "beta1")) snprintf(buf, cap, "%g", (double)d.beta1);
    else if (!strcmp(name, "beta2")) snprintf(buf, cap, "%g", (double)d.beta2);
    else if (!strcmp(name, "eps")) snprintf(buf, cap, "%g", (double)d.eps);
    else if (!strcmp(name, "clip")) snprintf(buf, cap, "%g", (double)d.max_grad_norm);
    else if (!strcmp(name, "steps")) snprintf(buf, cap, "%d", d.steps);
    else if (!strcmp(name, "batch")) snprintf(buf, cap, "%d", d.batch);
    else if (!strcmp(name, "accum")) snprintf(buf, cap, "%d", d.accum);
    else if (!strcmp(name, "seed")) snprintf(buf, cap, "%llu", (unsigned long long)d.seed);
    else if (!strcmp(name, "method")) snprintf(buf, cap, "lora");
    else return false;
    return true;
}

/* Paths by the file they name, numbers by value (2e-4 is 0.0002). */
static bool values_agree(const char *name, const char *a, const char *b) {
    if (!strcmp(a, b)) return true;
    if (is_path_opt(name)) {
        char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
        const bool same = ra && rb && !strcmp(ra, rb);
        free(ra);
        free(rb);
        return same;
    }
    char *ea, *eb;
    const double x = strtod(a, &ea), y = strtod(b, &eb);
    return ea != a && !*ea && eb != b && !*eb && (x == y || (float)x == (float)y);
}

/* Appends "--name value" (flags: "--name") and a note to a list. */
static void diff_add(char *list, size_t cap, const opt_def *o, const char *v, const char *fmt, const char *what) {
    size_t n = strlen(list);
    if (n + 1 >= cap) return;
    n += (size_t)snprintf(list + n, cap - n, "%s--%s", n ? ", " : "", o->name);
    if (v && !o->flag && n < cap) n += (size_t)snprintf(list + n, cap - n, " %s", v);
    if (n < cap) snprintf(list + n, cap - n, fmt, what);
}

/* The options that differ between this command and a run's saved ones
 * (run.json's "options"), as "--lr 1e-3 (the run's: 0.0002), ..." into
 * list; their count. both_ways: also options the run gave that this
 * command does not (with the defaults above): whether it is the same run,
 * not only a compatible resume. */
static int diff_saved(const cJSON *saved, bool both_ways, char *list, size_t cap) {
    int n = 0;
    list[0] = '\0';
    const cJSON *it;
    cJSON_ArrayForEach(it, saved) {
        opt_def *o = find_opt(train_opts, N_TRAIN_OPTS, it->string);
        const char *sv = cJSON_IsString(it) ? it->valuestring : NULL;
        if (!o || !sv) {
            diff_add(list, cap, &(opt_def){it->string, true, NULL, NULL}, NULL, "%s", " (saved, but not an option of this peft)");
            n++;
            continue;
        }
        if (class_of(o->name) != OPT_RUN) continue;
        char dflt[64];
        const char *now = o->value;
        if (!now && both_ways && default_of(o->name, dflt, sizeof dflt)) now = dflt;
        if (!now) {
            if (both_ways) {
                diff_add(list, cap, o, NULL, " not given (the run's: %s)", o->flag ? "on" : sv);
                n++;
            }
            continue;
        }
        if (!values_agree(o->name, now, sv)) {
            diff_add(list, cap, o, now, " (the run's: %s)", o->flag ? (strcmp(sv, "false") ? "on" : "off") : sv);
            n++;
        }
    }
    for (int k = 0; k < 2; k++) {
        opt_def *defs = k ? plug_opts : train_opts;
        const int nd = k ? n_plug_opts : N_TRAIN_OPTS;
        for (int i = 0; i < nd; i++)
            if (defs[i].value && class_of(defs[i].name) == OPT_RUN && !cJSON_GetObjectItemCaseSensitive(saved, defs[i].name)) {
                diff_add(list, cap, &defs[i], defs[i].value, "%s", " (the run had none: its default)");
                n++;
            }
    }
    return n;
}

/* The options the run saved, for those this command does not give. */
static void restore_saved(const cJSON *saved) {
    const cJSON *it;
    cJSON_ArrayForEach(it, saved) {
        opt_def *o = find_opt(train_opts, N_TRAIN_OPTS, it->string);
        if (!o || !cJSON_IsString(it) || class_of(o->name) == OPT_SESSION) continue;
        if (!strcmp(o->name, "compute") && GETV("bf16")) continue;
        set_opt(o, it->valuestring, false);
    }
}

/* This command's options as run.json keeps them: every RUN and KEEP
 * option given (paths absolute, --bf16 as compute), the defaults above for
 * the others (malloc'ed JSON, NULL when out of memory). */
static char *run_config_json(void) {
    cJSON *root = cJSON_CreateObject(), *opts = cJSON_AddObjectToObject(root, "options");
    bool ok = root && opts && cJSON_AddStringToObject(root, "command", "train");
    for (int k = 0; k < 2 && ok; k++) {
        opt_def *defs = k ? plug_opts : train_opts;
        const int nd = k ? n_plug_opts : N_TRAIN_OPTS;
        for (int i = 0; i < nd && ok; i++) {
            const char *v = defs[i].value;
            char dflt[64], *abs = NULL;
            if (class_of(defs[i].name) == OPT_SESSION) continue;
            if (!v && default_of(defs[i].name, dflt, sizeof dflt)) v = dflt;
            if (!v) continue;
            if (is_path_opt(defs[i].name) && (abs = realpath(v, NULL))) v = abs;
            ok = cJSON_AddStringToObject(opts, defs[i].name, v) != NULL;
            free(abs);
        }
    }
    if (ok && GETV("bf16") && !GETV("compute")) ok = cJSON_AddStringToObject(opts, "compute", "bf16") != NULL;
    char *js = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return js;
}

/* run.json's options (a run_config of peft train's), or NULL. */
static cJSON *saved_options(const char *run_config, cJSON **root) {
    *root = run_config ? cJSON_Parse(run_config) : NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(*root, "command");
    cJSON *o = cJSON_GetObjectItemCaseSensitive(*root, "options");
    return cJSON_IsString(c) && !strcmp(c->valuestring, "train") && cJSON_IsObject(o) ? o : NULL;
}

static bool same_dir(const char *a, const char *b) {
    char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
    const bool same = ra && rb ? !strcmp(ra, rb) : !strcmp(a, b);
    free(ra);
    free(rb);
    return same;
}

/* s as one shell word. */
static void shell_word(const char *s, char *out, size_t cap) {
    bool plain = *s != '\0';
    for (const char *c = s; *c; c++)
        plain &= (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || strchr("_./-+=:,@%", *c);
    if (plain) { snprintf(out, cap, "%s", s); return; }
    size_t o = 0;
    if (o + 1 < cap) out[o++] = '\'';
    for (const char *c = s; *c && o + 5 < cap; c++) {
        if (*c == '\'') { memcpy(out + o, "'\\''", 4); o += 4; }
        else out[o++] = *c;
    }
    if (o + 1 < cap) out[o++] = '\'';
    out[o] = '\0';
}

/* SIGINT / SIGTERM while training: the first asks the trainer to stop after
 * the step it is in (peft_train_hooks.should_stop), the second ends the
 * process at once with the signal's default action. */
static volatile sig_atomic_t stop_signal;
static bool stop_notice;   /* stderr is a terminal: say at once what happens */

static void on_stop_signal(int sig) {
    if (stop_signal) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    stop_signal = sig;
    if (stop_notice) {
        static const char msg[] = "\npeft train: stopping after this step to save a checkpoint (Ctrl-C again quits "
                                  "without saving)\n";
        const ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
    }
}

static int stop_requested(void *user) {
    (void)user;
    return stop_signal != 0;
}


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
        if (!o) {
            const char *near = near_opt(name);
            if (near) fprintf(stderr, "peft train: unknown option \"%s\": did you mean --%s? (see peft train --help)\n", arg, near);
            else fprintf(stderr, "peft train: unknown option \"%s\" (see peft train --help)\n", arg);
            return 2;
        }
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
    /* --resume: the run's options from its run.json, checked against the
     * ones given again */
    peft_run_folder src;
    memset(&src, 0, sizeof src);
    bool saved_opts = false;
    if (GETV("resume")) {
        peft_error e = {0};
        if (peft_run_folder_inspect(GETV("resume"), &src, &e)) { fprintf(stderr, "peft train: --resume: %s\n", e.msg); return 1; }
        if (!src.has_checkpoint) {
            fprintf(stderr, "peft train: --resume %s: %s\n", GETV("resume"),
                    !src.exists ? "no such folder"
                    : src.finished ? "the run finished and kept no checkpoint to continue from (--save-every N keeps them)"
                                   : "no checkpoint there (no LATEST, no optimizer.safetensors)");
            peft_run_folder_release(&src);
            return 1;
        }
        cJSON *root;
        const cJSON *so = saved_options(src.run_config, &root);
        char diffs[2048];
        if (so && diff_saved(so, false, diffs, sizeof diffs)) {
            fprintf(stderr, "peft train: --resume %s: options differ from the run's (%s/run.json): %s; leave them out "
                    "to continue the run as it was, or train a new one into another --out\n", GETV("resume"),
                    src.checkpoint, diffs);
            cJSON_Delete(root);
            peft_run_folder_release(&src);
            return 2;
        }
        if (so) restore_saved(so);
        saved_opts = so != NULL;
        cJSON_Delete(root);
        peft_run_folder_release(&src);
        if (!GETV("out")) set_opt(find_opt(train_opts, N_TRAIN_OPTS, "out"), src.run_dir, true);
    }
    if (!GETV("model") || !GETV("data") || (!GETV("out") && !GETV("dry-run"))) {
        fprintf(stderr, "peft train: --model, --data and --out are required%s\n\n",
                GETV("resume") && !saved_opts ? " (this checkpoint keeps no options: an older peft wrote it)" : "");
        train_usage(stderr);
        return 2;
    }
    /* --out: new, empty, this run's own folder, or replaced with
     * --overwrite; never a folder with files peft does not write */
    bool clear_out = false, auto_resume = false;
    char out_note[600] = "";
    if (!GETV("dry-run")) {
        const char *out = GETV("out");
        const bool in_place = GETV("resume") && same_dir(out, src.run_dir);
        char word[4200];
        shell_word(out, word, sizeof word);
        if (in_place && GETV("overwrite")) {
            fprintf(stderr, "peft train: --overwrite would remove the run that --resume continues: give one of them\n");
            return 2;
        }
        peft_run_folder dst;
        memset(&dst, 0, sizeof dst);
        peft_error e = {0};
        if (!in_place && peft_run_folder_inspect(out, &dst, &e)) { fprintf(stderr, "peft train: --out: %s\n", e.msg); return 1; }
        if (!in_place && dst.exists && dst.n_entries > 0) {
            cJSON *root = NULL;
            const cJSON *so = GETV("resume") ? NULL : saved_options(dst.run_config, &root);
            char diffs[2048] = "";
            const bool same = so && diff_saved(so, true, diffs, sizeof diffs) == 0;
            int bad_out = 0;
            if (dst.foreign[0]) {
                fprintf(stderr, "peft train: --out %s holds files peft did not write (%s): choose another --out (nothing "
                        "there was changed)\n", out, dst.foreign);
                bad_out = 2;
            } else if (dst.n_temporaries == dst.n_entries) {
                clear_out = true;   /* a run killed while writing its first file: nothing else there */
                snprintf(out_note, sizeof out_note, "%s held only the temporaries of a killed run: removed them", out);
            } else if (!dst.is_run) {
                fprintf(stderr, "peft train: --out %s is not empty (%s) and is not a training run's folder: choose another "
                        "--out\n", out, dst.peft_files);
                bad_out = 2;
            } else if (GETV("overwrite")) {
                clear_out = true;
                snprintf(out_note, sizeof out_note, "--overwrite: removed the previous run from %s (%s)", out, dst.peft_files);
            } else if (same && dst.has_checkpoint && !dst.finished) {
                auto_resume = true;
                restore_saved(so);
                set_opt(find_opt(train_opts, N_TRAIN_OPTS, "resume"), out, true);
                src = dst;
                src.run_config = NULL;
                snprintf(out_note, sizeof out_note, "; %s held this run, stopped: it continues (--overwrite starts over)", out);
            } else if (same && !dst.finished) {
                clear_out = true;   /* killed before its first checkpoint: nothing to continue from */
                snprintf(out_note, sizeof out_note, "%s held this run, stopped before its first checkpoint: starting it "
                         "over", out);
            } else if (same) {
                fprintf(stderr, "peft train: --out %s holds this run, finished (%d steps): --overwrite trains it again, "
                        "or choose another --out\n", out, dst.step);
                bad_out = 2;
            } else {
                char what[2300];
                if (diffs[0]) snprintf(what, sizeof what, "its options differ: %s", diffs);
                else snprintf(what, sizeof what, "%s", dst.peft_files);
                if (dst.has_checkpoint && !dst.finished)
                    fprintf(stderr, "peft train: --out %s holds another run (%s), stopped at step %d: `peft train --resume "
                            "%s` continues it, --overwrite replaces it, or choose another --out\n", out, what, dst.step, word);
                else
                    fprintf(stderr, "peft train: --out %s holds another run (%s): --overwrite replaces it, or choose "
                            "another --out\n", out, what);
                bad_out = 2;
            }
            cJSON_Delete(root);
            if (bad_out) {
                peft_run_folder_release(&dst);
                return bad_out;
            }
        }
        if (!in_place) peft_run_folder_release(&dst);
    }
    const int plug0 = peft_method_find(GETV("method") ? GETV("method") : "lora");
    if (plug0 < 0) {
        const char *names[64];
        int nn = 0;
        for (int p = 0; p < peft_method_count() && nn < 64; p++) names[nn++] = meth_name_at(p);
        const char *near = cli_suggest(GETV("method"), names, nn);
        fprintf(stderr, "peft train: unknown method \"%s\"", GETV("method"));
        if (near) fprintf(stderr, ": did you mean %s?", near);
        fprintf(stderr, " (");
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
    hooks.should_stop = stop_requested;
    char *run_config = run_config_json();
    if (!run_config) { fprintf(stderr, "peft train: out of memory\n"); return 1; }
    tp.run_config = run_config;

    /* load */
    int rc = 1;
    peft_ctx *ctx = cli_ctx(threads, false);
    if (!ctx) { free(run_config); return 1; }
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
    print_data_summary("data", GETV("data"), train, tp.seq, minfo.n_ctx);
    if (GETV("val")) {
        if (!(val = peft_dataset_load(m, GETV("val"), tp.seq, GETV("skip-bad") != NULL))) {
            fprintf(stderr, "peft train: %s\n", peft_last_error(ctx));
            goto out;
        }
        print_data_summary("validation", GETV("val"), val, tp.seq, minfo.n_ctx);
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
    if (clear_out) {
        peft_error e = {0};
        if (peft_run_folder_clear(tp.out_dir, &e)) { fprintf(stderr, "peft train: %s\n", e.msg); goto out; }
        fprintf(stderr, "%s\n", out_note);
    }
    if (tp.resume) {
        const char *how = auto_resume ? out_note : "";
        if (src.total_steps > 0)
            fprintf(stderr, "resumed from step %d of %d (%s)%s\n", src.step, src.total_steps, src.checkpoint, how);
        else
            fprintf(stderr, "resumed from step %d (%s)%s\n", src.step, src.checkpoint, how);
    }
    /* the handlers only while training: before, a Ctrl-C has nothing to save */
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    stop_signal = 0;
    stop_notice = pc.tty;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    peft_train_report res;
    const int trc = peft_train_dataset(m, ad, train, val, &tp, &hooks, &res);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (trc) {
        fprintf(stderr, "\npeft train: %s\n", peft_last_error(ctx));
        goto out;
    }
    if (res.interrupted) {
        char word[4200];
        shell_word(tp.out_dir, word, sizeof word);
        fprintf(stderr, "%speft train: stopped by %s after step %d of %d: saved %s/checkpoint-%d and the %s so far in %s; "
                "to continue: peft train --resume %s\n", pc.tty && !pc.quiet ? "\r\033[K" : "",
                stop_signal == SIGTERM ? "SIGTERM" : "SIGINT", res.step, res.total_steps, tp.out_dir, res.step,
                plug_info.saves_model ? "model" : "adapter", tp.out_dir, word);
        rc = 128 + (stop_signal ? stop_signal : SIGINT);
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
    /* loss.png exists where the library was built with cairo */
    char png[4200];
    snprintf(png, sizeof png, "%s/loss.png", tp.out_dir);
    const char *also_png = access(png, F_OK) == 0 ? " (and loss.png)" : "";
    if (plug_info.saves_model)
        fprintf(stderr, "\nmodel: %s/%s, metrics: %s/metrics.jsonl, curve: %s/loss.svg%s\n", tp.out_dir,
                !strcmp(minfo.source, "gguf") ? "model.gguf (F32)" : "model.safetensors (HF folder)", tp.out_dir, tp.out_dir,
                also_png);
    else
        fprintf(stderr, "\nadapter: %s/adapter_model.safetensors (HF PEFT format), metrics: %s/metrics.jsonl, curve: "
                "%s/loss.svg%s\n", tp.out_dir, tp.out_dir, tp.out_dir, also_png);
    rc = 0;
out:
    for (int i = 0; i < N_TRAIN_OPTS; i++) { free(train_opts[i].value); train_opts[i].value = NULL; }
    for (int i = 0; i < n_plug_opts; i++) { free(plug_opts[i].value); plug_opts[i].value = NULL; }
    peft_dataset_free(train);
    peft_dataset_free(val);
    if (ad) peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    free(run_config);
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
        } else if (!bad) { cli_unknown_option(&a); return 2; }
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
        const int crc = cli_compute(json ? "eval --json" : "eval", ctx, m, compute, bf16);
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
    /* the rows the numbers leave out, and why (stderr: --json's stdout stays one object) */
    if (!json && d.n_skipped)
        fprintf(stderr, "eval: %d of %d rows left out: %d with every target token past --seq %d, %d without a target "
                "token, %d empty, %d malformed (--skip-bad)\n", d.n_skipped, d.n_lines, d.n_cut_no_target, seq,
                d.n_no_target, d.n_empty, d.n_bad);
    rc = 0;
out:
    peft_dataset_free(ds);
    if (ad) peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}
