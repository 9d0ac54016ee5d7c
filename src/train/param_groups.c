/* param_groups.c — adapter registry + options → optimizer segments. */
#include "train/param_groups.h"

#include <stdlib.h>

int param_groups_build(const adapter *a, const optim_params *p, optim_segment **out, int *n_out, peft_err *err) {
    *out = NULL;
    *n_out = 0;
    const bool plus = p->loraplus_lr_ratio > 0;
    if (plus) {
        bool has_b = false;
        for (int i = 0; i < a->n_tensors && !has_b; i++)
            has_b = !a->tensors[i].frozen && (a->tensors[i].group & (PG_LORA_B | PG_EMBEDDING)) != 0;
        if (!has_b)
            return peft_fail(err, PEFT_ERR_INVALID,
                             "LoRA+ (loraplus_lr_ratio %g) applies to LoRA and DoRA adapters: it raises the learning rate "
                             "of their B matrices, and this %s adapter has none",
                             (double)p->loraplus_lr_ratio, adapter_method_name(a));
        if (!(p->loraplus_lr_embedding >= 0))
            return peft_fail(err, PEFT_ERR_INVALID, "loraplus_lr_embedding must be >= 0 (got %g)",
                             (double)p->loraplus_lr_embedding);
    }
    optim_segment *seg = peft_malloc(sizeof *seg * (size_t)(a->n_tensors ? a->n_tensors : 1), err);
    if (!seg) return PEFT_ERR_NOMEM;
    int n = 0;
    int64_t off = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const adapter_tensor *t = &a->tensors[i];
        /* frozen buffers lie outside params; the trained tensors lie in
         * registry order (adapter_finish_alloc) */
        if (t->frozen) continue;
        const unsigned g = t->group;
        double lr = p->lr;
        float wd = (g & PG_NO_DECAY) ? 0.0f : p->weight_decay;
        if (plus) {
            if (g & PG_EMBEDDING) {
                /* 0 (a zeroed parameter struct): HF's default */
                lr = p->loraplus_lr_embedding > 0 ? p->loraplus_lr_embedding : 1e-6f;
                wd = p->weight_decay;   /* HF: the embedding group always decays */
            } else if (g & PG_LORA_B) {
                lr = (double)p->lr * (double)p->loraplus_lr_ratio;
            } else {
                wd = p->weight_decay;   /* group A has no no-decay split in HF */
            }
        }
        if (t->n == 0) continue;
        if (n > 0 && seg[n - 1].off + seg[n - 1].n == off && seg[n - 1].lr == lr && seg[n - 1].weight_decay == wd)
            seg[n - 1].n += t->n;
        else
            seg[n++] = (optim_segment){off, t->n, lr, wd};
        off += t->n;
    }
    if (off != a->n_params) {
        free(seg);
        return peft_fail(err, PEFT_ERR_INVALID, "the %s adapter's registry (%lld values) does not cover its parameters (%lld)",
                         adapter_method_name(a), (long long)off, (long long)a->n_params);
    }
    *out = seg;
    *n_out = n;
    return 0;
}
