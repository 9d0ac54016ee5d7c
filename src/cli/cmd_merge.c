/* cmd_merge.c — `peft merge` (adapter folded into the base, written as a new
 * model) and `peft export` (adapter as a llama.cpp GGUF LoRA). */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int load_pair(const char *cmd, const char *model, const char *adapter_dir, int threads, peft_ctx **ctx,
                     peft_model **m, peft_adapter **a) {
    *ctx = cli_ctx(threads, false);
    if (!*ctx) return 1;
    *m = peft_model_load(*ctx, model);
    if (!*m) { fprintf(stderr, "peft %s: %s\n", cmd, peft_last_error(*ctx)); return 1; }
    if (!(*a = peft_adapter_load(*m, adapter_dir))) { fprintf(stderr, "peft %s: %s\n", cmd, peft_last_error(*ctx)); return 1; }
    return 0;
}

/* Above this fraction of the adapter's effect on the logits lost, the merged
 * model no longer behaves like the fine-tune: say so. */
#define MERGE_LOST_WARN 0.25

/* "60 x F16, 4 x Q8_0" into buf. */
static void summary_text(const peft_merge_summary *s, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    for (int t = 0; t < PEFT_DT_COUNT && n < cap; t++)
        if (s->n_by_dtype[t])
            n += (size_t)snprintf(buf + n, cap - n, "%s%d x %s", n ? ", " : "", s->n_by_dtype[t],
                                  peft_dtype_name((peft_dtype)t));
}

/* The quantized type most of the changed tensors were written in, or NULL. */
static const char *lowbit_type(const peft_merge_summary *s) {
    int best = -1;
    for (int t = 0; t < PEFT_DT_COUNT; t++)
        if (t != PEFT_DT_F32 && t != PEFT_DT_F16 && t != PEFT_DT_BF16 && s->n_by_dtype[t] &&
            (best < 0 || s->n_by_dtype[t] > s->n_by_dtype[best]))
            best = t;
    return best < 0 ? NULL : peft_dtype_name((peft_dtype)best);
}

static void report_check(const peft_merge_check *c, const peft_merge_summary *s) {
    if (isnan(c->lost)) {
        fprintf(stderr, "verify: the adapter does not change the logits (%d sequences, %d tokens): nothing to lose\n",
                c->n_seq, c->n_tokens);
        return;
    }
    fprintf(stderr,
            "verify: merged vs adapter-applied logits on %d sequences (%d tokens): %.1f%% of the adapter's effect "
            "lost (||merged - adapted|| / ||adapted - base|| = %.3g), max |diff| %.3g (the adapter moves them by up "
            "to %.3g)\n",
            c->n_seq, c->n_tokens, 100.0 * c->lost, c->lost, c->max_abs_diff, c->max_effect);
    if (c->lost > MERGE_LOST_WARN) {
        const char *q = lowbit_type(s);
        if (!q && s->n_by_dtype[PEFT_DT_BF16]) q = "BF16";
        char why[64] = "";
        if (q) snprintf(why, sizeof why, " (rounded to %s)", q);
        char how[160];
        if (c->lost < 1) snprintf(how, sizeof how, "lost %.0f%% of the adapter's effect on the logits", 100.0 * c->lost);
        else
            snprintf(how, sizeof how, "lost all of the adapter's effect on the logits (it is %.2fx farther from "
                     "the adapter-applied model than the base is)", c->lost);
        fprintf(stderr,
                "peft merge: warning: the merged model %s%s: it may not answer like the fine-tuned model. %s\n", how,
                why,
                q ? "Merge again with --outtype f16 (or f32), or use the adapter unmerged (--adapter)."
                  : "Use the adapter unmerged (--adapter).");
    }
}

int cmd_merge(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "merge"};
    const char *model = NULL, *adapter_dir = NULL, *out = NULL, *v;
    const char *outtype = NULL;
    int threads = 0;
    bool bad = false, verify = true;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--out", &bad))) out = v;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int("merge", "--threads", v, 1, 1024, &threads) != 0;
        else if ((v = cli_opt(&a, "--outtype", &bad))) {
            peft_error e = {0};
            if (peft_merge_outtype_check(v, &e)) { fprintf(stderr, "peft merge: --outtype: %s\n", e.msg); return 2; }
            outtype = v;
        } else if (cli_flag(&a, "--no-verify")) verify = false;
        else if (cli_flag(&a, "--help")) {
            printf("usage: peft merge --model PATH --adapter DIR --out OUT [--outtype T] [--no-verify] [--threads N]\n\n"
                   "Writes the base with the adapter folded in (W + s·B·A; LoRA, DoRA, IA3, VeRA, ...): an HF folder\n"
                   "(safetensors) from an HF base, a .gguf from a GGUF base. Tensors the adapter does not change\n"
                   "are copied as they are; the changed ones are written in --outtype:\n"
                   "  default  float bases keep their dtype; quantized GGUF tensors become F16 (re-quantizing to\n"
                   "           the base's 4 bits rounds a LoRA delta away)\n"
                   "  keep     the base tensor's type where it can be re-quantized (Q8_0, Q5_x, Q4_0, Q4_1),\n"
                   "           else F16\n"
                   "  f32, f16, bf16, and for GGUF q8_0, q5_1, q5_0, q4_1, q4_0\n"
                   "Then the merged model is loaded and its logits compared with the base + adapter ones on 3\n"
                   "short sequences; a warning says when more than 25%% of the adapter's effect was lost\n"
                   "(--no-verify skips this).\n");
            return 0;
        } else if (!bad) { cli_unknown_option(&a); return 2; }
    }
    if (bad) return 2;
    if (!model || !adapter_dir || !out) { fprintf(stderr, "peft merge: --model, --adapter and --out are required\n"); return 2; }
    peft_ctx *ctx = NULL;
    peft_model *m = NULL;
    peft_adapter *ad = NULL;
    int rc = load_pair("merge", model, adapter_dir, threads, &ctx, &m, &ad);
    if (!rc) {
        peft_merge_summary sum;
        if (peft_adapter_merge_report(m, ad, out, outtype, &sum)) {
            fprintf(stderr, "peft merge: %s\n", peft_last_error(ctx));
            rc = 1;
        } else {
            char types[256];
            summary_text(&sum, types, sizeof types);
            fprintf(stderr, "merged %d %s modules into %s (changed tensors: %s)\n", sum.n_modules,
                    peft_adapter_method(ad), out, sum.n_changed ? types : "none");
            peft_merge_check c;
            if (verify && peft_adapter_merge_check(m, ad, out, &c)) {
                fprintf(stderr, "peft merge: cannot verify %s: %s\n", out, peft_last_error(ctx));
                rc = 1;
            } else if (verify) {
                report_check(&c, &sum);
            }
        }
    }
    if (ad) peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    return rc;
}

int cmd_export(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "export"};
    const char *model = NULL, *adapter_dir = NULL, *out = NULL, *format = "gguf", *v;
    bool bad = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--out", &bad))) out = v;
        else if ((v = cli_opt(&a, "--format", &bad))) format = v;
        else if (cli_flag(&a, "--help")) {
            printf("usage: peft export --adapter DIR --format gguf [--model PATH] [--out FILE]\n\n"
                   "Writes the adapter as a llama.cpp GGUF LoRA (default DIR/adapter.gguf). The base model\n"
                   "defaults to the adapter's base_model_name_or_path.\n");
            return 0;
        } else if (!bad) { cli_unknown_option(&a); return 2; }
    }
    if (bad) return 2;
    if (!adapter_dir) { fprintf(stderr, "peft export: --adapter is required\n"); return 2; }
    if (strcmp(format, "gguf") != 0) { fprintf(stderr, "peft export: format \"%s\" is not supported (gguf is)\n", format); return 2; }
    char *base = model ? strdup(model) : cli_adapter_base(adapter_dir);
    if (!base) {
        fprintf(stderr, "peft export: %s/adapter_config.json names no base model: pass --model\n", adapter_dir);
        return 1;
    }
    char def_out[4096];
    if (!out) { snprintf(def_out, sizeof def_out, "%s/adapter.gguf", adapter_dir); out = def_out; }
    peft_ctx *ctx = NULL;
    peft_model *m = NULL;
    peft_adapter *ad = NULL;
    int rc = load_pair("export", base, adapter_dir, 1, &ctx, &m, &ad);
    if (!rc) {
        peft_lora_info li;
        if (peft_adapter_export_gguf(m, ad, out)) { fprintf(stderr, "peft export: %s\n", peft_last_error(ctx)); rc = 1; }
        else {
            peft_adapter_lora_info(ad, &li);   /* n_modules 0 for other methods */
            fprintf(stderr, "wrote %s (GGUF LoRA, %d modules)\n", out, li.n_modules);
        }
    }
    if (ad) peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    free(base);
    return rc;
}
