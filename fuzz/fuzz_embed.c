/* fuzz_embed.c — sentence embeddings (src/infer/embed.c): the
 * sentence-transformers files of an encoder's folder. The input is a
 * multi-file input (fuzz.h): modules.json, sentence_bert_config.json,
 * pooling.json (placed as 1_Pooling/config.json) and text; an input without
 * headers is modules.json alone. The encoder is tiny-bert's (config.json,
 * model.safetensors, tokenizer.json linked from the fixtures). Then the
 * pipeline, the embedding's size and the embedding of the text. */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fuzz_embed_one(const uint8_t *data, size_t size) {
    if (!fuzz_dir()) return 0;
    fuzz_write_parts(data, size, "modules.json");
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json"};
    for (int i = 0; i < 3; i++) {
        char src[1024];
        snprintf(src, sizeof src, "%s", fuzz_fixture("models/tiny-bert/"));
        strncat(src, files[i], sizeof src - strlen(src) - 1);
        unlink(fuzz_path(files[i]));   /* the input may carry its own: the encoder is fixed */
        if (symlink(src, fuzz_path(files[i]))) return 0;
    }
    if (fuzz_has("pooling.json")) {
        char from[1024];
        snprintf(from, sizeof from, "%s", fuzz_path("pooling.json"));
        if (mkdir(fuzz_path("1_Pooling"), 0755) || rename(from, fuzz_path("1_Pooling/config.json"))) return 0;
    }
    char *text = NULL;
    if (fuzz_has("text")) {
        peft_err e = {0};
        if (peft_read_file(fuzz_path("text"), &text, NULL, &e)) return 0;
    }
    peft_ctx *ctx = fuzz_ctx();
    peft_model *m = peft_model_load(ctx, fuzz_dir_path());
    if (!m) {
        free(text);
        fprintf(stderr, "fuzz_embed: tiny-bert: %s\n", peft_last_error(ctx));
        return -1;
    }
    int bad = 0, accepted = 0;
    int dim = peft_model_embed_dim(m);
    if (dim <= 0) bad |= fuzz_check_error(dim ? dim : -1, ctx);
    else {
        float *out = malloc(sizeof(float) * 2 * (size_t)dim);
        const char *texts[2] = {text ? text : "Good night.", ""};
        if (out) {
            int rc = peft_model_embed(m, texts, 2, out);
            bad |= fuzz_check_error(rc, ctx);
            accepted = rc == 0;
            volatile float sum = out[0];
            (void)sum;
        }
        free(out);
    }
    peft_model_free(m);
    free(text);
    return bad < 0 ? -1 : accepted;
}

FUZZ_MAIN(fuzz_embed_one)
