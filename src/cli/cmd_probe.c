/* cmd_probe.c — `peft probe`: which linears a low-rank update would help
 * most on the user's data, and a budgeted proposal as a `peft train
 * --config` file (docs/search.md, "choosing parameters: peft probe"). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft probe --model PATH --data FILE [options]\n\n"
            "On a few batches of the data (any kind `peft train` takes, its training loss), the gradient G of\n"
            "the loss with respect to every linear's frozen weight; per module and rank r, sqrt(sum of the top r\n"
            "squared singular values of G): the first-order loss decrease of the best rank-r update of unit norm\n"
            "(the LoRA-GA direction). With a budget, the modules and ranks that capture the most of it per\n"
            "parameter, written as a config `peft train --config` reads (HF target_modules, rank_pattern,\n"
            "alpha_pattern, layers_to_transform).\n\n"
            "  --model PATH         HF model folder or .gguf file (required)\n"
            "  --data FILE          training JSONL (required)\n"
            "  --batches N          batches to measure on (default 8)\n"
            "  --batch B            sequences per batch (default 4)\n"
            "  --seq S              max tokens per sequence (default 256)\n"
            "  --ranks LIST         candidate ranks, increasing (default 4,8,16)\n"
            "  --budget P%%          propose modules and ranks within P%% of the model's parameters (e.g. 0.5%%)\n"
            "  --budget-params N    the same in parameters (e.g. 500000, 2M)\n"
            "  --target LIST        module kinds to probe (default all-linear)\n"
            "  --layers LIST        layers to probe, e.g. 0,1,2 (default all)\n"
            "  --alpha-per-rank A   the proposal's lora_alpha is A x r per module (default 2: alpha 16 at r 8)\n"
            "  --json FILE          every module's scores as JSON (schema: docs/search.md)\n"
            "  --svg FILE           heat map, layers x module kinds\n"
            "  --config-out FILE    the proposal as a peft train --config file (needs a budget)\n"
            "  --top N              table rows (default 20; 0: all)\n"
            "  --max-memory SIZE    limit on the gradients' memory, e.g. 8G (default 8G)\n"
            "  --seed N             batch order (default 42)\n"
            "  --threads N          threads (default all cores)\n"
            "  --compute MODE       " CLI_COMPUTE_HELP "\n"
            "  --skip-bad           skip bad data lines\n"
            "  --quiet              no progress line\n");
}

/* "500000", "2M", "1.5k" */
static int parse_count(const char *v, int64_t *out) {
    char *e = NULL;
    errno = 0;
    double x = strtod(v, &e);
    if (e == v || errno) return -1;
    if (*e == 'k' || *e == 'K') { x *= 1e3; e++; }
    else if (*e == 'm' || *e == 'M') { x *= 1e6; e++; }
    else if (*e == 'g' || *e == 'G') { x *= 1e9; e++; }
    if (*e || !(x >= 1) || x > 9e15) return -1;
    *out = (int64_t)llround(x);
    return 0;
}

static int parse_size(const char *v, size_t *out) {
    char *e = NULL;
    double x = strtod(v, &e);
    if (e == v) return -1;
    double mul = 1;
    if (*e == 'k' || *e == 'K') mul = 1024.0;
    else if (*e == 'm' || *e == 'M') mul = 1024.0 * 1024;
    else if (*e == 'g' || *e == 'G') mul = 1024.0 * 1024 * 1024;
    else if (*e == 't' || *e == 'T') mul = 1024.0 * 1024 * 1024 * 1024;
    if (mul > 1) e++;
    if ((*e == 'b' || *e == 'B') && mul > 1) e++;
    if (*e || !(x > 0) || x * mul > 1e18) return -1;
    *out = (size_t)(x * mul);
    return 0;
}

typedef struct { bool tty, quiet; } progress_ctx;

static void on_batch(int b, int n, void *user) {
    const progress_ctx *pc = user;
    if (pc->quiet) return;
    if (pc->tty) fprintf(stderr, "\r\033[Kprobe: batch %d/%d", b, n);
    else if (b == n) fprintf(stderr, "probe: %d batches measured\n", n);
    if (pc->tty && b == n) fputc('\n', stderr);
}

int cmd_probe(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "probe"};
    const char *model = NULL, *data = NULL, *json = NULL, *svg = NULL, *cfg = NULL, *v;
    const char *ranks_s = NULL, *budget_s = NULL, *budget_p = NULL, *layers_s = NULL, *maxmem = NULL, *compute = NULL;
    int threads = 0, top = 20, ival;
    bool bad = false, quiet = false;
    peft_probe_params p = peft_probe_default_params();
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--data", &bad))) data = v;
        else if ((v = cli_opt(&a, "--batches", &bad))) bad = cli_int(a.cmd, "--batches", v, 1, 100000, &p.batches) != 0;
        else if ((v = cli_opt(&a, "--batch", &bad))) bad = cli_int(a.cmd, "--batch", v, 1, 65536, &p.batch) != 0;
        else if ((v = cli_opt(&a, "--seq", &bad))) bad = cli_int(a.cmd, "--seq", v, 2, 1000000, &p.seq) != 0;
        else if ((v = cli_opt(&a, "--ranks", &bad))) ranks_s = v;
        else if ((v = cli_opt(&a, "--budget-params", &bad))) budget_p = v;
        else if ((v = cli_opt(&a, "--budget", &bad))) budget_s = v;
        else if ((v = cli_opt(&a, "--target", &bad))) p.targets = v;
        else if ((v = cli_opt(&a, "--layers", &bad))) layers_s = v;
        else if ((v = cli_opt(&a, "--alpha-per-rank", &bad))) bad = cli_float(a.cmd, "--alpha-per-rank", v, 1e-6, 1e6, &p.alpha_per_rank) != 0;
        else if ((v = cli_opt(&a, "--json", &bad))) json = v;
        else if ((v = cli_opt(&a, "--svg", &bad))) svg = v;
        else if ((v = cli_opt(&a, "--config-out", &bad))) cfg = v;
        else if ((v = cli_opt(&a, "--top", &bad))) bad = cli_int(a.cmd, "--top", v, 0, 1000000, &top) != 0;
        else if ((v = cli_opt(&a, "--max-memory", &bad))) maxmem = v;
        else if ((v = cli_opt(&a, "--seed", &bad))) { bad = cli_int(a.cmd, "--seed", v, 0, 2147483647, &ival) != 0; p.seed = (uint64_t)ival; }
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &threads) != 0;
        else if ((v = cli_opt(&a, "--compute", &bad))) compute = v;
        else if (cli_flag(&a, "--skip-bad")) p.skip_bad = 1;
        else if (cli_flag(&a, "--quiet")) quiet = true;
        else if (cli_flag(&a, "--help")) { usage(stdout); return 0; }
        else if (!bad) {
            fprintf(stderr, "peft probe: unknown option \"%s\"\n", argv[a.i]);
            usage(stderr);
            return 2;
        }
    }
    if (bad) return 2;
    if (!model || !data) {
        fprintf(stderr, "peft probe: --model and --data are required\n\n");
        usage(stderr);
        return 2;
    }
    int ranks[16], nr = 0;
    if (ranks_s) {
        for (const char *s = ranks_s; *s;) {
            char *e = NULL;
            errno = 0;
            long r = strtol(s, &e, 10);
            if (e == s || errno || (*e && *e != ',') || r < 1 || r > 65536 || nr == 16) {
                fprintf(stderr, "peft probe: --ranks \"%s\": expected up to 16 increasing integers in 1..65536, e.g. 4,8,16\n",
                        ranks_s);
                return 2;
            }
            if (nr > 0 && r <= ranks[nr - 1]) {
                fprintf(stderr, "peft probe: --ranks \"%s\": the ranks must increase (%ld after %d)\n", ranks_s, r,
                        ranks[nr - 1]);
                return 2;
            }
            ranks[nr++] = (int)r;
            s = *e ? e + 1 : e;
        }
        p.ranks = ranks;
        p.n_ranks = nr;
    }
    if (budget_s && budget_p) {
        fprintf(stderr, "peft probe: give --budget or --budget-params, not both\n");
        return 2;
    }
    if (budget_s) {
        char *e = NULL;
        double x = strtod(budget_s, &e);
        if (e == budget_s || strcmp(e, "%") || !(x > 0) || x >= 100) {
            fprintf(stderr, "peft probe: --budget \"%s\": expected a percentage of the model's parameters in (0, 100), "
                            "e.g. 0.5%%\n", budget_s);
            return 2;
        }
        p.budget_fraction = x / 100.0;
    }
    if (budget_p && parse_count(budget_p, &p.budget_params)) {
        fprintf(stderr, "peft probe: --budget-params \"%s\": expected a positive count, e.g. 500000 or 2M\n", budget_p);
        return 2;
    }
    if (cfg && !budget_s && !budget_p) {
        fprintf(stderr, "peft probe: --config-out needs a budget (--budget P%% or --budget-params N)\n");
        return 2;
    }
    if (maxmem && parse_size(maxmem, &p.max_bytes)) {
        fprintf(stderr, "peft probe: --max-memory \"%s\": expected a size such as 8G or 512M\n", maxmem);
        return 2;
    }
    if (layers_s) {
        for (const char *s = layers_s; *s;) {
            char *e = NULL;
            long l = strtol(s, &e, 10);
            if (e == s || (*e && *e != ',') || l < 0 || l > 63) {
                fprintf(stderr, "peft probe: --layers \"%s\": expected layer numbers 0..63, e.g. 0,1,2\n", layers_s);
                return 2;
            }
            p.layers |= (uint64_t)1 << l;
            s = *e ? e + 1 : e;
        }
    }
    peft_ctx *ctx = cli_ctx(threads, false);
    if (!ctx) return 1;
    int rc = 1;
    peft_probe *pr = NULL;
    char *table = NULL;
    peft_model *m = peft_model_load(ctx, model);
    if (!m) { fprintf(stderr, "peft probe: %s\n", peft_last_error(ctx)); goto done; }
    if ((rc = cli_compute("probe", ctx, m, compute, false))) goto done;
    rc = 1;
    /* the usage errors that need the model, before the data is read */
    if (peft_probe_check(m, &p)) { fprintf(stderr, "peft probe: %s\n", peft_last_error(ctx)); rc = 2; goto done; }
    progress_ctx pc = {isatty(2) != 0, quiet};
    p.progress = on_batch;
    p.user = &pc;
    if (!(pr = peft_probe_run(m, data, &p))) { fprintf(stderr, "peft probe: %s\n", peft_last_error(ctx)); goto done; }
    if (!(table = peft_probe_table(pr, top))) { fprintf(stderr, "peft probe: %s\n", peft_last_error(ctx)); goto done; }
    fputs(table, stdout);
    if (peft_probe_save(pr, json, svg, cfg)) { fprintf(stderr, "peft probe: %s\n", peft_last_error(ctx)); goto done; }
    if (json) fprintf(stderr, "wrote %s\n", json);
    if (svg) fprintf(stderr, "wrote %s\n", svg);
    if (cfg) fprintf(stderr, "wrote %s: peft train --config %s --model %s --data %s --out DIR\n", cfg, cfg, model, data);
    rc = 0;
done:
    free(table);
    peft_probe_free(pr);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}
