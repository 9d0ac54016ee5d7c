/* cmd_merge.c — `peft merge` (adapter folded into the base, written as a new
 * model) and `peft export` (adapter as a llama.cpp GGUF LoRA). */
#include "cli/cli.h"
#include "core/ctx.h"
#include "peft/lora.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* base_model_name_or_path from DIR/adapter_config.json (malloc'ed) or NULL. */
static char *adapter_base(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    char *text = NULL;
    peft_err err = {0};
    if (peft_read_file(p, &text, NULL, &err)) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *b = cJSON_GetObjectItem(j, "base_model_name_or_path");
    char *out = cJSON_IsString(b) && b->valuestring[0] ? strdup(b->valuestring) : NULL;
    cJSON_Delete(j);
    return out;
}

static int load_pair(const char *cmd, const char *model, const char *adapter_dir, int threads, peft_ctx **ctx,
                     peft_model **m, adapter **a) {
    *ctx = cli_ctx(threads, false);
    if (!*ctx) return 1;
    *m = peft_model_load(*ctx, model);
    if (!*m) { fprintf(stderr, "peft %s: %s\n", cmd, peft_last_error(*ctx)); return 1; }
    if (adapter_load(*m, adapter_dir, a, &(*ctx)->err)) { fprintf(stderr, "peft %s: %s\n", cmd, (*ctx)->err.msg); return 1; }
    return 0;
}

int cmd_merge(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "merge"};
    const char *model = NULL, *adapter_dir = NULL, *out = NULL, *v;
    int threads = 0;
    bool bad = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--out", &bad))) out = v;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int("merge", "--threads", v, 1, 1024, &threads) != 0;
        else if (cli_flag(&a, "--help")) {
            printf("usage: peft merge --model PATH --adapter DIR --out OUT\n\n"
                   "Writes the base with the adapter folded in (W + s·B·A): an HF folder (safetensors) from an HF\n"
                   "base, a .gguf from a GGUF base (tensor types kept where they can be re-quantized, else F16).\n");
            return 0;
        } else if (!bad) { fprintf(stderr, "peft merge: unknown option \"%s\"\n", argv[a.i]); return 2; }
    }
    if (bad) return 2;
    if (!model || !adapter_dir || !out) { fprintf(stderr, "peft merge: --model, --adapter and --out are required\n"); return 2; }
    peft_ctx *ctx = NULL;
    peft_model *m = NULL;
    adapter *ad = NULL;
    int rc = load_pair("merge", model, adapter_dir, threads, &ctx, &m, &ad);
    if (!rc) {
        if (lora_merge_save(ad, m, out, &ctx->err)) { fprintf(stderr, "peft merge: %s\n", ctx->err.msg); rc = 1; }
        else {
            int n = 0;
            for (int s = 0; s < m->cfg.n_layer * ROLE_N_LINEAR; s++) n += (ad->slot && ad->slot[s]) || (ad->ia3 && ad->ia3[s]);
            fprintf(stderr, "merged %d %s modules into %s\n", n, method_name(ad->method), out);
        }
    }
    adapter_free(ad);
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
        } else if (!bad) { fprintf(stderr, "peft export: unknown option \"%s\"\n", argv[a.i]); return 2; }
    }
    if (bad) return 2;
    if (!adapter_dir) { fprintf(stderr, "peft export: --adapter is required\n"); return 2; }
    if (strcmp(format, "gguf") != 0) { fprintf(stderr, "peft export: format \"%s\" is not supported (gguf is)\n", format); return 2; }
    char *base = model ? strdup(model) : adapter_base(adapter_dir);
    if (!base) {
        fprintf(stderr, "peft export: %s/adapter_config.json names no base model: pass --model\n", adapter_dir);
        return 1;
    }
    char def_out[4096];
    if (!out) { snprintf(def_out, sizeof def_out, "%s/adapter.gguf", adapter_dir); out = def_out; }
    peft_ctx *ctx = NULL;
    peft_model *m = NULL;
    adapter *ad = NULL;
    int rc = load_pair("export", base, adapter_dir, 1, &ctx, &m, &ad);
    if (!rc) {
        if (lora_export_gguf(ad, m, out, &ctx->err)) { fprintf(stderr, "peft export: %s\n", ctx->err.msg); rc = 1; }
        else fprintf(stderr, "wrote %s (GGUF LoRA, %d modules)\n", out, ad->n_modules);
    }
    adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    free(base);
    return rc;
}
