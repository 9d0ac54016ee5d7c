/* fuzz_hf.c — a model loaded from a Hugging Face folder. The input is a
 * multi-file input (fuzz.h) unpacked into the folder: config.json, the
 * weights (model.safetensors, or model.safetensors.index.json and its
 * shards), tokenizer.json (or vocab.json + merges.txt),
 * tokenizer_config.json; an input without headers is config.json alone.
 * Then the same walk as fuzz_model_gguf. */
#include "fuzz.h"

int fuzz_hf_one(const uint8_t *data, size_t size) {
    if (!fuzz_dir()) return 0;
    fuzz_write_parts(data, size, "config.json");
    peft_ctx *ctx = fuzz_ctx();
    peft_model *m = peft_model_load(ctx, fuzz_dir_path());
    if (!m) return fuzz_check_error(-1, ctx);
    int bad = fuzz_exercise_model(m);
    peft_model_free(m);
    return bad < 0 ? -1 : 1;
}

FUZZ_MAIN(fuzz_hf_one)
