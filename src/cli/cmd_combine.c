/* cmd_combine.c — `peft combine`: LoRA adapters of one base, each with a
 * weight, into a new adapter (HF peft's add_weighted_adapter). */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUTS 256

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft combine --adapter DIR:WEIGHT --adapter DIR:WEIGHT ... --out DIR [--model PATH]\n"
            "                    [--type T] [--density D] [--majority-sign-method total|frequency]\n"
            "                    [--svd-rank R] [--svd-clamp Q] [--seed S]\n\n"
            "Combines LoRA adapters of one base into a new LoRA adapter, as HF peft's\n"
            "add_weighted_adapter does (docs/cli.md). WEIGHT is any finite number; negative subtracts.\n"
            "  --type T      linear   A and B merged apart with sqrt(|w·scale|) each (equal ranks)\n"
            "                cat      ranks concatenated: exactly the weighted sum of the deltas\n"
            "                svd      (default) the weighted sum of the deltas re-factored to rank R\n"
            "                ties, dare_linear, dare_ties, magnitude_prune  as linear, with pruning to\n"
            "                         --density (TIES: sign election; DARE: random mask, rescaled)\n"
            "                ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd  the same on\n"
            "                         the deltas, then re-factored as svd\n"
            "                One adapter alone is always combined as linear (HF does the same).\n"
            "  --density D   fraction of values kept, in (0, 1]; needed by the pruning types\n"
            "  --majority-sign-method  TIES sign election: total (default) or frequency\n"
            "  --svd-rank R  rank of the svd types' result (default: the largest input rank)\n"
            "  --svd-clamp Q clamp the svd factors at the Q quantile of their values, Q in [0, 1]\n"
            "  --seed S      DARE's random masks (42)\n"
            "  --model PATH  the base (default: the first adapter's base_model_name_or_path)\n"
            "The result has r = lora_alpha = its rank and the first adapter's other settings.\n");
}

/* "DIR:WEIGHT" (split at the last ':', so DIR may hold colons) into dir
 * (malloc'ed) and *w; prints the error. */
static int parse_input(const char *arg, char **dir, double *w) {
    const char *c = strrchr(arg, ':');
    if (!c) {
        fprintf(stderr, "peft combine: --adapter \"%s\": expected DIR:WEIGHT (for example runs/a:0.5)\n", arg);
        return -1;
    }
    if (c == arg) { fprintf(stderr, "peft combine: --adapter \"%s\": the folder before ':' is missing\n", arg); return -1; }
    const char *v = c + 1;
    if (!*v) { fprintf(stderr, "peft combine: --adapter \"%s\": the weight after ':' is missing\n", arg); return -1; }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end) {
        fprintf(stderr, "peft combine: --adapter \"%s\": the weight \"%s\" is not a number\n", arg, v);
        return -1;
    }
    if (errno == ERANGE) {
        fprintf(stderr, "peft combine: --adapter \"%s\": the weight \"%s\" is out of range\n", arg, v);
        return -1;
    }
    if (!isfinite(x)) {
        fprintf(stderr, "peft combine: --adapter \"%s\": the weight \"%s\" is not a finite number\n", arg, v);
        return -1;
    }
    *dir = strndup(arg, (size_t)(c - arg));
    if (!*dir) { fprintf(stderr, "peft combine: out of memory\n"); return -1; }
    *w = x;
    return 0;
}

/* A library error: its message already names the command ("combine: ..."). */
static void print_err(const peft_ctx *ctx) {
    const char *msg = peft_last_error(ctx);
    if (strncmp(msg, "combine: ", 9) == 0) fprintf(stderr, "peft %s\n", msg);
    else fprintf(stderr, "peft combine: %s\n", msg);
}

static int parse_density(const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !(x > 0 && x <= 1)) {
        fprintf(stderr, "peft combine: --density must be a number in (0, 1], got \"%s\"\n", v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_clamp(const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !(x >= 0 && x <= 1)) {
        fprintf(stderr, "peft combine: --svd-clamp must be a quantile in [0, 1], got \"%s\"\n", v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_seed(const char *v, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[0] == '-') {
        fprintf(stderr, "peft combine: --seed must be a non-negative integer, got \"%s\"\n", v);
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

/* Whether a and b name the same existing file or folder. */
static bool same_path(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb)) return false;
    return strcmp(ra, rb) == 0;
}

int cmd_combine(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "combine"};
    const char *model = NULL, *out = NULL, *v;
    char *dirs[MAX_INPUTS];
    double w[MAX_INPUTS];
    int n = 0, rc = 0, threads = 0;
    bool bad = false;
    peft_combine_params o = peft_combine_default_params();
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) {
            if (n == MAX_INPUTS) {
                fprintf(stderr, "peft combine: at most %d adapters\n", MAX_INPUTS);
                bad = true;
            } else if (parse_input(v, &dirs[n], &w[n])) bad = true;
            else n++;
        } else if ((v = cli_opt(&a, "--out", &bad))) out = v;
        else if ((v = cli_opt(&a, "--type", &bad))) {
            peft_error e = {0};
            if (peft_combine_type_check(v, &e)) { fprintf(stderr, "peft combine: --type: %s\n", e.msg); bad = true; }
            else o.type = v;
        } else if ((v = cli_opt(&a, "--density", &bad))) bad = parse_density(v, &o.density) != 0;
        else if ((v = cli_opt(&a, "--majority-sign-method", &bad))) {
            if (!strcmp(v, "total") || !strcmp(v, "frequency")) o.majority_sign = v;
            else {
                fprintf(stderr, "peft combine: --majority-sign-method must be total or frequency, got \"%s\"\n", v);
                bad = true;
            }
        } else if ((v = cli_opt(&a, "--svd-rank", &bad))) bad = cli_int("combine", "--svd-rank", v, 1, 65536, &o.svd_rank) != 0;
        else if ((v = cli_opt(&a, "--svd-clamp", &bad))) bad = parse_clamp(v, &o.svd_clamp) != 0;
        else if ((v = cli_opt(&a, "--seed", &bad))) bad = parse_seed(v, &o.seed) != 0;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int("combine", "--threads", v, 1, 1024, &threads) != 0;
        else if (cli_flag(&a, "--help")) {
            usage(stdout);
            for (int i = 0; i < n; i++) free(dirs[i]);
            return 0;
        } else if (!bad) {
            cli_unknown_option(&a);
            bad = true;
        }
    }
    char *base = NULL;
    peft_ctx *ctx = NULL;
    peft_model *m = NULL;
    peft_adapter *ins[MAX_INPUTS] = {0};
    peft_adapter *res = NULL;
    if (bad) { rc = 2; goto done; }
    if (n == 0 || !out) { fprintf(stderr, "peft combine: --adapter DIR:WEIGHT (one or more) and --out are required\n"); rc = 2; goto done; }
    for (int i = 0; i < n; i++)
        if (same_path(out, dirs[i])) {
            fprintf(stderr, "peft combine: --out %s is the input adapter %s: write the result to a new folder\n", out,
                    dirs[i]);
            rc = 2;
            goto done;
        }
    base = model ? strdup(model) : cli_adapter_base(dirs[0]);
    if (!base) {
        fprintf(stderr, "peft combine: %s/adapter_config.json names no base model: pass --model\n", dirs[0]);
        rc = 1;
        goto done;
    }
    ctx = cli_ctx(threads, false);
    if (!ctx) { rc = 1; goto done; }
    m = peft_model_load(ctx, base);
    if (!m) { fprintf(stderr, "peft combine: %s\n", peft_last_error(ctx)); rc = 1; goto done; }
    for (int i = 0; i < n; i++)
        if (!(ins[i] = peft_adapter_load(m, dirs[i]))) {
            fprintf(stderr, "peft combine: %s\n", peft_last_error(ctx));
            rc = 1;
            goto done;
        }
    if (!(res = peft_adapter_combine_named(m, (const peft_adapter *const *)ins, w, (const char *const *)dirs, n, &o))) {
        print_err(ctx);
        rc = 1;
        goto done;
    }
    if (peft_adapter_save(m, res, out)) {
        fprintf(stderr, "peft combine: %s\n", peft_last_error(ctx));
        rc = 1;
        goto done;
    }
    peft_lora_info li;
    peft_adapter_lora_info(res, &li);
    fprintf(stderr, "combined %d adapter%s (%s) into %s: %d modules, r = %d, scale %g\n", n, n == 1 ? "" : "s",
            n == 1 ? "linear" : o.type ? o.type : "svd", out, li.n_modules, li.r, (double)li.scale);
done:
    if (res) peft_adapter_free(res);
    for (int i = 0; i < n; i++)
        if (ins[i]) peft_adapter_free(ins[i]);
    for (int i = 0; i < n; i++) free(dirs[i]);
    peft_model_free(m);
    peft_free(ctx);
    free(base);
    return rc;
}
