/* cmd_generate.c — `peft generate`. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: peft generate --model PATH --prompt TEXT [options]\n\n"
            "  --model PATH       HF model folder or .gguf file\n"
            "  --adapter DIR      apply an adapter of any method (HF PEFT format or peft.c's)\n"
            "  --prompt TEXT      the prompt (or --prompt-file FILE)\n"
            "  --chat             wrap the prompt in the model's chat template\n"
            "  --system TEXT      chat system prompt (default: the template's)\n"
            "  --max-tokens N     new tokens at most (default 128)\n"
            "  --temperature T    0 = greedy (default 0)\n"
            "  --top-k K          sample from the K most likely tokens (0 = off)\n"
            "  --top-p P          nucleus sampling mass (1 = off)\n"
            "  --seed S           sampling seed (default 42)\n"
            "  --threads N        threads (default: all cores)\n"
            "  --compute P        prompt processing: " CLI_COMPUTE_HELP "; --bf16 = --compute bf16\n"
            "  --exact-decode     decode on f32 activations (default: 8-bit, as llama.cpp)\n"
            "  --stats            print prompt and generation speed (tokens/s) to stderr\n"
            "  --no-echo          do not print the prompt before the generation\n");
}

static int print_piece(const char *piece, int len, void *user) {
    (void)user;
    fwrite(piece, 1, (size_t)len, stdout);
    fflush(stdout);
    return 0;
}

int cmd_generate(int argc, char **argv) {
    cli_args a = {argc, 1, argv, "generate"};
    const char *model = NULL, *adapter_dir = NULL, *prompt = NULL, *prompt_file = NULL, *compute = NULL, *v;
    bool bf16 = false;
    peft_sample_params sp = peft_sample_default_params();
    int threads = 0;
    bool stats = false, echo = true, bad = false, verbose = false, exact = false;
    while (a.i < argc && !bad) {
        if ((v = cli_opt(&a, "--model", &bad))) model = v;
        else if ((v = cli_opt(&a, "--adapter", &bad))) adapter_dir = v;
        else if ((v = cli_opt(&a, "--prompt", &bad))) prompt = v;
        else if ((v = cli_opt(&a, "--prompt-file", &bad))) prompt_file = v;
        else if ((v = cli_opt(&a, "--system", &bad))) sp.system = v;
        else if (cli_sample_opt(&a, &sp, &bad)) continue;
        else if ((v = cli_opt(&a, "--threads", &bad))) bad = cli_int(a.cmd, "--threads", v, 1, 1024, &threads) != 0;
        else if ((v = cli_opt(&a, "--compute", &bad))) compute = v;
        else if (cli_flag(&a, "--bf16")) bf16 = true;
        else if (cli_flag(&a, "--chat")) sp.chat = 1;
        else if (cli_flag(&a, "--stats")) stats = true;
        else if (cli_flag(&a, "--exact-decode")) exact = true;
        else if (cli_flag(&a, "--no-echo")) echo = false;
        else if (cli_flag(&a, "--verbose")) verbose = true;
        else if (cli_flag(&a, "--help")) { usage(stdout); return 0; }
        else if (!bad) {
            cli_unknown_option(&a);
            usage(stderr);
            return 2;
        }
    }
    if (bad) return 2;
    if (!model || (!prompt && !prompt_file)) {
        fprintf(stderr, "peft generate: --model and --prompt are required\n");
        usage(stderr);
        return 2;
    }
    char *file_text = NULL;
    if (prompt_file) {
        FILE *f = fopen(prompt_file, "rb");
        if (!f) { fprintf(stderr, "peft generate: %s: cannot open\n", prompt_file); return 1; }
        size_t cap = 1 << 16, n = 0, r;
        file_text = malloc(cap + 1);
        while (file_text && (r = fread(file_text + n, 1, cap - n, f)) > 0) {
            n += r;
            if (n == cap) { cap *= 2; char *p = realloc(file_text, cap + 1); if (!p) { free(file_text); file_text = NULL; } else file_text = p; }
        }
        fclose(f);
        if (!file_text) { fprintf(stderr, "peft generate: out of memory\n"); return 1; }
        file_text[n] = 0;
        prompt = file_text;
    }
    peft_ctx *ctx = cli_ctx(threads, verbose);
    if (!ctx) { free(file_text); return 1; }
    peft_model *m = peft_model_load(ctx, model);
    if (!m) {
        fprintf(stderr, "peft generate: %s\n", peft_last_error(ctx));
        peft_free(ctx);
        free(file_text);
        return 1;
    }
    peft_model_set_decode(m, exact ? PEFT_DECODE_EXACT : PEFT_DECODE_FAST);
    int crc = cli_compute("generate", ctx, m, compute, bf16);
    if (crc) {
        peft_model_free(m);
        peft_free(ctx);
        free(file_text);
        return crc;
    }
    peft_adapter *ad = NULL;
    if (adapter_dir && !(ad = peft_adapter_load(m, adapter_dir))) {
        fprintf(stderr, "peft generate: %s\n", peft_last_error(ctx));
        peft_model_free(m);
        peft_free(ctx);
        free(file_text);
        return 1;
    }
    if (peft_classifier_num_labels(m, ad) > 0) {
        fprintf(stderr, "peft generate: %s is a %d-label classifier (a sequence-classification head), which predicts "
                "labels, not text: use `peft predict --model %s%s%s --data FILE` (JSONL rows with \"text\")\n",
                adapter_dir ? adapter_dir : model, peft_classifier_num_labels(m, ad), model, adapter_dir ? " --adapter " : "",
                adapter_dir ? adapter_dir : "");
        peft_adapter_free(ad);
        peft_model_free(m);
        peft_free(ctx);
        free(file_text);
        return 1;
    }
    peft_error pe;
    peft_session *s = peft_session_new(m, &pe);
    int rc = s ? peft_session_set_adapter(s, ad) : pe.status;
    const bool started = rc == 0;
    if (echo && !sp.chat && started) { fputs(prompt, stdout); fflush(stdout); }
    peft_gen_stats st;
    if (started) rc = peft_session_generate(s, prompt, &sp, print_piece, NULL, &st);
    if (started) printf("\n");
    if (rc) fprintf(stderr, "peft generate: %s\n", s ? peft_session_error(s) : pe.msg);
    else if (stats)
        fprintf(stderr, "prompt: %d tokens in %.3f s (%.1f tokens/s)\ngeneration: %d tokens in %.3f s (%.1f tokens/s)%s\n",
                st.n_prompt, st.prompt_s, st.prompt_s > 0 ? st.n_prompt / st.prompt_s : 0.0, st.n_gen, st.gen_s,
                st.gen_s > 0 ? st.n_gen / st.gen_s : 0.0, st.stopped_at_eos ? ", stopped at end of turn" : "");
    peft_session_free(s);
    peft_adapter_free(ad);
    peft_model_free(m);
    peft_free(ctx);
    free(file_text);
    return rc ? 1 : 0;
}
