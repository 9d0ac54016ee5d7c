/* fuzz_model_gguf.c — a model loaded from a GGUF file (config, tensors,
 * tokenizer from metadata), then info, tokenize, logits and two short
 * generations (greedy; chat with sampling). */
#include "fuzz.h"

int fuzz_model_gguf_one(const uint8_t *data, size_t size) {
    if (!fuzz_dir() || fuzz_write("model.gguf", data, size) != 0) return 0;
    peft_ctx *ctx = fuzz_ctx();
    peft_model *m = peft_model_load(ctx, fuzz_path("model.gguf"));
    if (!m) return fuzz_check_error(-1, ctx);
    int bad = fuzz_exercise_model(m);
    peft_model_free(m);
    return bad < 0 ? -1 : 1;
}

FUZZ_MAIN(fuzz_model_gguf_one)
