/* lora_export.c — llama.cpp's GGUF LoRA adapter format.
 *
 * KV: general.architecture (the base's llama.cpp architecture),
 *     general.type = "adapter", adapter.type = "lora", adapter.lora.alpha.
 * Tensors, per adapted base tensor <t> (e.g. blk.0.attn_q.weight):
 *     <t>.lora_a  F32 ne = [in, r]   (row-major A, r rows of `in`)
 *     <t>.lora_b  F32 ne = [r, out]  (row-major B, out rows of r)
 * llama.cpp checks base.ne[0] == a.ne[0], base.ne[1] == b.ne[1] and
 * a.ne[1] == b.ne[0], and computes the delta as s·B·(A·x) with
 * s = alpha / b.ne[0] (alpha / r). So alpha is written as s·r: the same
 * number as lora_alpha without rsLoRA, and alpha·sqrt(r) with it.
 *
 * llama.cpp's converter permutes the rows of llama Q/K weights for its
 * interleaved RoPE; the delta B·A must follow, i.e. the rows of B get the
 * same permutation (A is untouched), as its LoraTorchTensor does. */
#include "peft/lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's architecture name for m. */
static const char *gguf_arch(const peft_model *m) {
    if (m->gguf) {
        const char *a = gguf_get_str(m->gguf, "general.architecture");
        if (a) return a;
    }
    return m->cfg.desc->gguf_lora_arch;
}

int lora_export_gguf(const adapter *a, const peft_model *m, const char *path, peft_err *err) {
    const lora_state *ls = adapter_is_plain_lora(a) ? lora_of(a) : NULL;
    if (!ls || mts_has_head(a))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: llama.cpp's GGUF adapters hold plain LoRA only, not a %s adapter%s",
                         path, adapter_method_name(a), mts_has_head(a) ? " with a classification head" : "");
    if (ls->n_modules == 0) return peft_fail(err, PEFT_ERR_INVALID, "%s: the adapter has no modules", path);
    /* Uniform rank keeps one alpha valid for every tensor. */
    const int r0 = ls->mods[0].r;
    const float s0 = ls->mods[0].scale;
    for (int i = 1; i < ls->n_modules; i++)
        if (ls->mods[i].r != r0 || ls->mods[i].scale != s0)
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "%s: llama.cpp LoRA files have one alpha; modules with different ranks or scales "
                             "cannot be exported", path);
    gguf_writer *w = gguf_writer_new(err);
    if (!w) return PEFT_ERR_NOMEM;
    float **perm = peft_calloc((size_t)ls->n_modules, sizeof *perm, err);
    bool oom = perm == NULL;
    int rc = oom ? PEFT_ERR_NOMEM : 0;
    if (!rc) rc = gguf_w_str(w, "general.architecture", gguf_arch(m));
    if (!rc) rc = gguf_w_str(w, "general.type", "adapter");
    if (!rc) rc = gguf_w_str(w, "adapter.type", "lora");
    if (!rc) rc = gguf_w_f32(w, "adapter.lora.alpha", s0 * (float)r0);
    if (!rc) rc = gguf_w_u32(w, "general.quantization_version", 2);
    for (int i = 0; i < ls->n_modules && !rc; i++) {
        const lora_module *md = &ls->mods[i];
        char base[96], name[128];
        lora_gguf_weight_name(m, md->layer, md->role, base, sizeof base);
        const float *B = md->B;
        int n_heads;
        if (model_gguf_permutes(m, md->role, &n_heads)) {
            perm[i] = peft_malloc((size_t)md->out * md->r * sizeof(float), err);
            if (!perm[i]) { oom = true; break; }
            model_permute_rows(perm[i], md->B, md->out, (size_t)md->r * sizeof(float), n_heads, true);
            B = perm[i];
        }
        const int64_t ne_a[2] = {md->in, md->r}, ne_b[2] = {md->r, md->out};
        snprintf(name, sizeof name, "%s.lora_a", base);
        rc = gguf_w_tensor(w, name, PEFT_DT_F32, 2, ne_a, md->A, (size_t)md->r * md->in * sizeof(float));
        snprintf(name, sizeof name, "%s.lora_b", base);
        if (!rc) rc = gguf_w_tensor(w, name, PEFT_DT_F32, 2, ne_b, B, (size_t)md->out * md->r * sizeof(float));
    }
    /* gguf_writer_save reports a failed gguf_w_* call with its message. */
    if (oom) rc = PEFT_ERR_NOMEM;
    else rc = gguf_writer_save(w, path, err);
    gguf_writer_free(w);
    if (perm)
        for (int i = 0; i < ls->n_modules; i++) free(perm[i]);
    free(perm);
    return rc;
}
