/* main.c — `peft`: dispatch to subcommands. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

char *openblas_get_corename(void);

static void usage(FILE *f) {
    fprintf(f,
            "peft %s — parameter-efficient fine-tuning of transformer models\n\n"
            "usage: peft <command> [options]\n\n"
            "commands:\n"
            "  train      fine-tune an adapter: peft train --model PATH --data FILE --out DIR [--r 8 ...]\n"
            "  probe      which modules and ranks to tune on your data: peft probe --model PATH --data FILE [--budget 0.5%%]\n"
            "  search     which method, modules, rank and lr: peft search --model PATH --data FILE --out DIR --budget-params 0.5%% --budget-time 30m\n"
            "  eval       loss and perplexity: peft eval --model PATH [--adapter DIR] --data FILE\n"
            "  generate   generate text: peft generate --model PATH --prompt \"...\" [--chat] [--adapter DIR]\n"
            "  chat       talk with a model: peft chat --model PATH [--adapter DIR] (/reset, /exit)\n"
            "  predict    a classifier's labels: peft predict --adapter DIR --data FILE [--out FILE] [--metrics]\n"
            "  embed      sentence embeddings: peft embed --model PATH --data FILE [--out FILE.npy|.jsonl]\n"
            "  merge      fold an adapter into the base: peft merge --model PATH --adapter DIR --out OUT\n"
            "  export     adapter as llama.cpp GGUF LoRA: peft export --adapter DIR --format gguf\n"
            "  combine    LoRA adapters into one: peft combine --adapter A:0.5 --adapter B:0.5 --type svd --out DIR\n"
            "  serve      OpenAI-compatible HTTP server: peft serve --model PATH [--adapter NAME=DIR]... [--port 8080]\n"
            "  info       describe a model: peft info PATH [--json] [--tensors]\n"
            "  help       this text; `peft <command> --help` for a command's options\n",
            PEFT_VERSION);
}

/* cli_opt and cli_flag are tried one after another on the same argument:
 * once a missing value has consumed the last one (a->i == argc), the rest of
 * the chain must see no argument instead of argv[argc] (NULL). */
const char *cli_opt(cli_args *a, const char *name, bool *bad) {
    if (a->i >= a->argc) return NULL;
    cli_note_tried(a, name);
    const char *arg = a->argv[a->i];
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0) return NULL;
    if (arg[n] == '=') { a->i++; return arg + n + 1; }
    if (arg[n] != 0) return NULL;
    if (a->i + 1 >= a->argc) {
        fprintf(stderr, "peft %s: option %s needs a value\n", a->cmd, name);
        *bad = true;
        a->i++;
        return NULL;
    }
    a->i += 2;
    return a->argv[a->i - 1];
}

bool cli_flag(cli_args *a, const char *name) {
    if (a->i >= a->argc) return false;
    cli_note_tried(a, name);
    if (strcmp(a->argv[a->i], name) != 0) return false;
    a->i++;
    return true;
}

int cli_int(const char *cmd, const char *name, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "peft %s: %s must be an integer in [%ld, %ld], got \"%s\"\n", cmd, name, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int cli_float(const char *cmd, const char *name, const char *v, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "peft %s: %s must be a number in [%g, %g], got \"%s\"\n", cmd, name, lo, hi, v);
        return -1;
    }
    *out = (float)x;
    return 0;
}

bool cli_sample_opt(cli_args *a, peft_sample_params *sp, bool *bad) {
    const char *v;
    int seed;
    if ((v = cli_opt(a, "--max-tokens", bad))) *bad |= cli_int(a->cmd, "--max-tokens", v, 1, 1000000, &sp->max_tokens) != 0;
    else if ((v = cli_opt(a, "--temperature", bad))) *bad |= cli_float(a->cmd, "--temperature", v, 0, 100, &sp->temperature) != 0;
    else if ((v = cli_opt(a, "--top-k", bad))) *bad |= cli_int(a->cmd, "--top-k", v, 0, 10000000, &sp->top_k) != 0;
    else if ((v = cli_opt(a, "--top-p", bad))) *bad |= cli_float(a->cmd, "--top-p", v, 0, 1, &sp->top_p) != 0;
    else if ((v = cli_opt(a, "--seed", bad))) {
        *bad |= cli_int(a->cmd, "--seed", v, 0, 2147483647, &seed) != 0;
        if (!*bad) sp->seed = (uint64_t)seed;
    } else
        return *bad;
    return true;
}

static void log_stderr(peft_log_level level, const char *msg, void *user) {
    (void)user;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "peft: %s: %s\n", names[level], msg);
}

peft_ctx *cli_ctx(int n_threads, bool verbose) {
    peft_ctx_params p = peft_ctx_default_params();
    p.n_threads = n_threads;
    p.log = log_stderr;
    p.log_level = verbose ? PEFT_LOG_DEBUG : PEFT_LOG_WARN;
    peft_ctx *ctx = peft_init(&p);
    if (!ctx) fprintf(stderr, "peft: out of memory\n");
    return ctx;
}

char *cli_adapter_base(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    char *text = NULL;
    if (peft_file_read(p, &text, NULL, NULL)) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *b = cJSON_GetObjectItem(j, "base_model_name_or_path");
    char *out = cJSON_IsString(b) && b->valuestring[0] ? strdup(b->valuestring) : NULL;
    cJSON_Delete(j);
    return out;
}

int cli_compute(const char *cmd, peft_ctx *ctx, peft_model *m, const char *value, bool bf16_flag) {
    /* "eval --json" is eval, told to keep stderr quiet */
    const char *name = strcmp(cmd, "eval --json") ? cmd : "eval";
    if (bf16_flag && value && strcmp(value, "bf16")) {
        fprintf(stderr, "peft %s: --bf16 and --compute %s disagree\n", name, value);
        return 2;
    }
    if (bf16_flag) value = "bf16";
    if (!value) return 0;
    peft_compute c;
    if (!strcmp(value, "f32")) c = PEFT_COMPUTE_F32;
    else if (!strcmp(value, "bf16")) c = PEFT_COMPUTE_BF16;
    else if (!strcmp(value, "auto")) c = PEFT_COMPUTE_AUTO;
    else {
        fprintf(stderr, "peft %s: --compute must be f32, bf16 or auto (got \"%s\")\n", name, value);
        return 2;
    }
    if (peft_model_set_compute(m, c)) {
        fprintf(stderr, "peft %s: %s\n", name, peft_last_error(ctx));
        return 1;
    }
    /* Say what was chosen, why, and on which unit: always for train (it
     * reports its set-up on stderr anyway), for the others when auto chose
     * (the user cannot know what it did); never for eval --json, whose
     * callers read stdout and stderr together (cmd "eval --json"). */
    if (!strcmp(cmd, "train") || (c == PEFT_COMPUTE_AUTO && strcmp(cmd, "eval --json"))) {
        const char *unit = peft_compute_bf16_unit();
        const char *unit_name = !strcmp(unit, "amx") ? "AMX-BF16" : !strcmp(unit, "avx512bf16") ? "AVX512-BF16" : unit;
        if (peft_model_compute(m) == PEFT_COMPUTE_BF16) {
            fprintf(stderr, "compute: bf16 (frozen-weight products in bfloat16, f32 sums) on %s", unit_name);
            if (c == PEFT_COMPUTE_AUTO) fprintf(stderr, " (auto: this CPU has %s)", unit_name);
            fputc('\n', stderr);
        } else
            fprintf(stderr, "compute: f32%s\n",
                    c == PEFT_COMPUTE_AUTO ? " (auto: this CPU has neither AMX-BF16 nor AVX512-BF16)" : "");
    }
    return 0;
}

/* Two process-wide settings are read by libraries at load time, so they are
 * fixed by re-running ourselves once with the environment set:
 * - OpenBLAS picks its kernels from the CPU model; a CPU newer than the
 *   installed OpenBLAS (e.g. Sapphire Rapids with Debian's 0.3.21) falls
 *   back to its SSE3 "Prescott" kernels, 5-7x slower. Unless the user chose
 *   a core, use the best family the CPU supports.
 * - OpenMP threads spin between parallel regions by default; when the cores
 *   are shared with other work, decoding (hundreds of small regions per
 *   token) slows down by 10x or more. Passive waiting costs ~3% on an idle
 *   machine, so it is the default unless OMP_WAIT_POLICY is set. */
static void fix_runtime_env(char **argv) {
    if (getenv("PEFT_NO_REEXEC")) return;
    bool changed = false;
    if (!getenv("OPENBLAS_CORETYPE")) {
        const char *core = openblas_get_corename();
        __builtin_cpu_init();
        const char *want = __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : NULL;
        if (core && strcasecmp(core, "Prescott") == 0 && want) {
            setenv("OPENBLAS_CORETYPE", want, 1);
            changed = true;
        }
    }
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        changed = true;
    }
    if (!changed) return;
    setenv("PEFT_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on as we are */
}

int main(int argc, char **argv) {
    fix_runtime_env(argv);
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat")) return cmd_chat(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "merge")) return cmd_merge(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return cmd_export(argc - 1, argv + 1);
    if (!strcmp(cmd, "combine")) return cmd_combine(argc - 1, argv + 1);
    if (!strcmp(cmd, "embed")) return cmd_embed(argc - 1, argv + 1);
    if (!strcmp(cmd, "predict")) return cmd_predict(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "search")) return cmd_search(argc - 1, argv + 1);
    if (!strcmp(cmd, "probe")) return cmd_probe(argc - 1, argv + 1);
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "--version")) { printf("peft %s\n", PEFT_VERSION); return 0; }
    static const char *const cmds[] = {"generate", "chat", "info", "train", "eval", "merge", "export", "combine",
                                       "embed", "predict", "serve", "search", "help"};
    const char *near = cli_suggest(cmd, cmds, (int)(sizeof cmds / sizeof *cmds));
    if (near) fprintf(stderr, "peft: unknown command \"%s\": did you mean peft %s?\n\n", cmd, near);
    else fprintf(stderr, "peft: unknown command \"%s\"\n\n", cmd);
    usage(stderr);
    return 2;
}
