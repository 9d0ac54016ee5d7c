/* cli.h — the peft command line: argument parsing shared by subcommands. */
#ifndef PEFT_CLI_H
#define PEFT_CLI_H

#include "peft.h"
#include <stdbool.h>

int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_combine(int argc, char **argv);
int cmd_embed(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_probe(int argc, char **argv);

/* Option parsing: --name value or --name=value. */
typedef struct {
    int argc, i;
    char **argv;
    const char *cmd;
} cli_args;

/* "Did you mean": the name in names (NULLs skipped) nearest to word, by
 * optimal-string-alignment distance, if at most 2 edits and at most half
 * of word's length; else NULL. */
int cli_edit_distance(const char *a, const char *b);
const char *cli_suggest(const char *word, const char *const *names, int n);
/* cli_opt and cli_flag note each name they try on an argument: when none
 * matched, those are the command's options. */
void cli_note_tried(const cli_args *a, const char *name);
/* Prints "peft CMD: unknown option "--lern": did you mean --lr? ..." for
 * the current argument, after the option chain tried every name on it. */
void cli_unknown_option(const cli_args *a);

/* Returns the value for option `name` at the current position, advancing;
 * NULL if the current argument is not that option. Sets *bad on a missing
 * value. */
const char *cli_opt(cli_args *a, const char *name, bool *bad);
bool cli_flag(cli_args *a, const char *name);
int cli_int(const char *cmd, const char *name, const char *v, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *name, const char *v, double lo, double hi, float *out);
/* The sampling options shared by generate and chat (--max-tokens,
 * --temperature, --top-k, --top-p, --seed) into sp: whether the current
 * argument was one of them (*bad set on a bad value). */
bool cli_sample_opt(cli_args *a, peft_sample_params *sp, bool *bad);
/* A context whose log prints warnings and errors to stderr. */
peft_ctx *cli_ctx(int n_threads, bool verbose);
/* base_model_name_or_path from DIR/adapter_config.json (malloc'ed) or NULL:
 * merge's and combine's default --model. */
char *cli_adapter_base(const char *dir);
/* --compute f32|bf16|auto (value, may be NULL) and --bf16 on a loaded
 * model; prints the error. 0, or the exit code (2 usage, 1 unsupported).
 * Prints the precision chosen and why: always for "train", for other
 * commands when auto chose, never for cmd "eval --json". */
#define CLI_COMPUTE_HELP "f32 (default) | bf16 (frozen-weight products in bfloat16, on AMX or AVX512-BF16) | auto (bf16 where the CPU has either)"
int cli_compute(const char *cmd, peft_ctx *ctx, peft_model *m, const char *value, bool bf16_flag);

#endif
