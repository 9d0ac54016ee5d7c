/* cmd_info.c — `peft info PATH [--json] [--tensors]`. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void shape_str(const peft_tensor_info *t, char *buf, size_t cap) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int k = 0; k < t->ndim && o < cap; k++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* An adapter file or folder: what it adapts and how, from its config and
 * tensor headers (no base model needed). */
static int adapter_info(const char *path, const peft_adapter_file_info *ai, bool json) {
    if (json) {
        printf("{\"path\": "); json_str(path);
        printf(", \"format\": "); json_str(ai->format);
        printf(", \"method\": "); json_str(ai->method);
        printf(", \"base\": "); json_str(ai->base);
        printf(", \"task_type\": "); json_str(ai->task);
        printf(", \"r\": %d", ai->r);
        if (!isnan(ai->alpha)) printf(", \"alpha\": %g, \"scale\": %g", ai->alpha, ai->scale);
        printf(", \"rslora\": %s, \"dora\": %s", ai->rslora ? "true" : "false", ai->dora ? "true" : "false");
        if (ai->n_virtual_tokens) printf(", \"num_virtual_tokens\": %d", ai->n_virtual_tokens);
        printf(", \"targets\": "); json_str(ai->targets);
        printf(", \"modules_to_save\": "); json_str(ai->modules_to_save);
        printf(", \"layers\": "); json_str(ai->layers);
        printf(", \"n_tensors\": %d, \"n_modules\": %d, \"n_layers\": %d, \"n_params\": %lld, \"dtypes\": ",
               ai->n_tensors, ai->n_modules, ai->n_layers, (long long)ai->n_params);
        json_str(ai->dtypes);
        printf("}\n");
        return 0;
    }
    printf("path:            %s (%s)\n", path, ai->format);
    printf("method:          %s", ai->method[0] ? ai->method : "?");
    if (ai->r > 0) printf(", r %d", ai->r);
    else if (ai->r < 0) printf(", ranks differ between tensors");
    if (!isnan(ai->alpha)) printf(", alpha %g (scale %g%s)", ai->alpha, ai->scale, ai->rslora ? ", rsLoRA: alpha/sqrt(r)" : "");
    if (ai->dora) printf(", DoRA");
    if (ai->n_virtual_tokens) printf(", %d virtual tokens", ai->n_virtual_tokens);
    putchar('\n');
    if (ai->base[0]) printf("%s%s\n", strstr(ai->format, "GGUF") ? "architecture:    " : "base model:      ", ai->base);
    if (ai->task[0]) printf("task:            %s\n", ai->task);
    if (ai->targets[0]) printf("targets:         %s\n", ai->targets);
    if (ai->layers[0]) printf("layers:          %s\n", ai->layers);
    if (ai->modules_to_save[0]) printf("modules to save: %s\n", ai->modules_to_save);
    printf("tensors:         %d (%s)", ai->n_tensors, ai->dtypes[0] ? ai->dtypes : "none");
    if (ai->n_modules) printf(", %d adapted modules", ai->n_modules);
    if (ai->n_layers) printf(" in %d layer%s", ai->n_layers, ai->n_layers == 1 ? "" : "s");
    putchar('\n');
    printf("parameters:      %lld (%.2f M)\n", (long long)ai->n_params, ai->n_params / 1e6);
    return 0;
}

int cmd_info(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "info"};
    const char *path = NULL;
    bool json = false, tensors = false;
    while (a.i < argc) {
        if (cli_flag(&a, "--json")) json = true;
        else if (cli_flag(&a, "--tensors")) tensors = true;
        else if (cli_flag(&a, "--help")) {
            printf("usage: peft info PATH [--json] [--tensors]\n\n"
                   "Describes a HF model folder or a .gguf file: architecture, parameter count,\n"
                   "dtypes, context length, tokenizer and tensors (all of them with --tensors).\n"
                   "An adapter (an HF PEFT folder with adapter_config.json, or a llama.cpp GGUF LoRA\n"
                   "file): method, r, alpha and scale, base model, targets, tensors and parameters.\n");
            return 0;
        } else if (!strncmp(argv[a.i], "--", 2)) {
            cli_unknown_option(&a);
            return 2;
        } else if (argv[a.i][0] == '-' || path) {
            fprintf(stderr, "peft info: unexpected argument \"%s\"\n", argv[a.i]);
            return 2;
        } else path = argv[a.i++];
    }
    if (!path) { fprintf(stderr, "usage: peft info PATH [--json] [--tensors]\n"); return 2; }
    {
        peft_adapter_file_info ai;
        peft_error aerr = {0};
        if (peft_adapter_file_describe(path, &ai, &aerr)) {
            fprintf(stderr, "peft info: %s\n", aerr.msg);
            return 1;
        }
        if (ai.is_adapter) return adapter_info(path, &ai, json);
    }
    peft_ctx *ctx = cli_ctx(1, false);
    if (!ctx) return 1;
    peft_model *m = peft_model_load(ctx, path);
    if (!m) {
        fprintf(stderr, "peft info: %s\n", peft_last_error(ctx));
        peft_free(ctx);
        return 1;
    }
    peft_model_info in;
    peft_model_get_info(m, &in);
    size_t total_bytes = 0;
    for (int i = 0; i < in.n_tensors; i++) {
        peft_tensor_info t;
        if (peft_model_tensor_info(m, i, &t) == 0) total_bytes += t.nbytes;
    }
    if (json) {
        printf("{\"path\": "); json_str(path);
        printf(", \"format\": "); json_str(in.source);
        printf(", \"architecture\": "); json_str(in.arch_name);
        printf(", \"n_params\": %lld, \"n_layer\": %d, \"d_model\": %d, \"n_head\": %d, \"n_kv_head\": %d, "
               "\"head_dim\": %d, \"d_ff\": %d, \"vocab_size\": %d, \"context_length\": %d, "
               "\"norm_eps\": %g, \"rope_theta\": %g, \"tied_embeddings\": %s, \"weight_bytes\": %zu, \"dtypes\": ",
               (long long)in.n_params, in.n_layer, in.d_model, in.n_head, in.n_kv_head, in.head_dim, in.d_ff,
               in.vocab, in.n_ctx, in.norm_eps, in.rope_theta, in.tied_embeddings ? "true" : "false", total_bytes);
        json_str(in.dtype_summary);
        printf(", \"tokenizer\": "); json_str(in.tokenizer);
        printf(", \"n_tensors\": %d", in.n_tensors);
        if (tensors) {
            printf(", \"tensors\": [");
            for (int i = 0; i < in.n_tensors; i++) {
                peft_tensor_info t;
                peft_model_tensor_info(m, i, &t);
                char sh[128];
                shape_str(&t, sh, sizeof sh);
                printf("%s{\"name\": ", i ? ", " : "");
                json_str(t.name);
                printf(", \"dtype\": \"%s\", \"shape\": %s, \"bytes\": %zu}", peft_dtype_name(t.dtype), sh, t.nbytes);
            }
            printf("]");
        }
        printf("}\n");
    } else {
        printf("path:            %s (%s)\n", path, in.source);
        printf("architecture:    %s\n", in.arch_name);
        printf("parameters:      %lld (%.1f M)\n", (long long)in.n_params, in.n_params / 1e6);
        printf("weights:         %.1f MiB in %d tensors: %s\n", total_bytes / 1048576.0, in.n_tensors, in.dtype_summary);
        printf("layers:          %d, d_model %d, heads %d (kv %d, head size %d), MLP %d\n", in.n_layer, in.d_model,
               in.n_head, in.n_kv_head, in.head_dim, in.d_ff);
        printf("vocabulary:      %d%s\n", in.vocab, in.tied_embeddings ? " (tied input/output embeddings)" : "");
        printf("context length:  %d\n", in.n_ctx);
        printf("norm epsilon:    %g\n", in.norm_eps);
        if (in.rope_theta > 0) printf("rope theta:      %g\n", in.rope_theta);
        printf("tokenizer:       %s\n", in.tokenizer);
        int shown = tensors ? in.n_tensors : (in.n_tensors < 12 ? in.n_tensors : 12);
        printf("tensors%s:\n", tensors ? "" : " (first 12; --tensors lists all)");
        for (int i = 0; i < shown; i++) {
            peft_tensor_info t;
            peft_model_tensor_info(m, i, &t);
            char sh[128];
            shape_str(&t, sh, sizeof sh);
            printf("  %-48s %-5s %s\n", t.name, peft_dtype_name(t.dtype), sh);
        }
    }
    peft_model_free(m);
    peft_free(ctx);
    return 0;
}
