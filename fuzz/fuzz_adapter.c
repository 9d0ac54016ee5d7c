/* fuzz_adapter.c — adapters of every method (LoRA, DoRA, IA3, VeRA, LoHa, LoKr, prompt,
 * prefix, bottleneck, BitFit, full, with or without a classification head):
 * peft_adapter_load, attach, one forward, detach.
 * Byte 0 picks the base model (mod 3: the tiny-llama, tiny-gpt2 and
 * tiny-qwen2 HF fixtures, each loaded once); the rest is a multi-file input
 * (fuzz.h) unpacked into the adapter folder (adapter_config.json,
 * adapter_model.safetensors; an input without headers is
 * adapter_config.json alone). */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>

static const char *bases[3] = {"models/tiny-llama", "models/tiny-gpt2", "models/tiny-qwen2"};

int fuzz_adapter_one(const uint8_t *data, size_t size) {
    static peft_model *models[3];
    if (size < 1 || !fuzz_dir()) return 0;
    peft_ctx *ctx = fuzz_ctx();
    int which = data[0] % 3;
    if (!models[which]) {
        models[which] = peft_model_load(ctx, fuzz_fixture(bases[which]));
        if (!models[which]) {
            fprintf(stderr, "fuzz_adapter: %s\n", peft_last_error(ctx));
            return -1;
        }
    }
    peft_model *m = models[which];
    fuzz_write_parts(data + 1, size - 1, "adapter_config.json");
    peft_adapter *a = peft_adapter_load(m, fuzz_dir_path());
    if (!a) return fuzz_check_error(-1, ctx);
    volatile int64_t sum = peft_adapter_n_params(a);
    sum += peft_adapter_method(a) != NULL;
    int bad = 0;
    int rc = peft_adapter_attach(m, a);
    bad |= fuzz_check_error(rc, ctx);
    if (rc == 0) {
        peft_model_info info;
        peft_model_get_info(m, &info);
        int32_t ids[5] = {317, 40, 7, 250, 3};
        float *logits = malloc(sizeof ids / sizeof ids[0] * (size_t)info.vocab * sizeof(float));
        if (logits) {
            bad |= fuzz_check_error(peft_model_logits(m, ids, 5, logits), ctx);
            sum += logits[0] == logits[0];
            free(logits);
        }
        peft_adapter_attach(m, NULL);
    }
    (void)sum;
    peft_adapter_free(a);
    return bad < 0 ? -1 : 1;
}

FUZZ_MAIN(fuzz_adapter_one)
