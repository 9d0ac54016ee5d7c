/* decode.c — how a model decodes on its quantized weights (peft.h,
 * peft_model_set_decode): a flag on each frozen linear that the kernels
 * read (kern_weight.q8_act), set on every linear and the LM head at once so
 * that one forward never mixes the two kinds of product. Off from load:
 * the library's forwards keep their contract (decoding equals the whole
 * sequence at once; the training graph is never quantized), and callers
 * that want llama.cpp's speed (peft generate) ask for it. */
#include "kernels/qdot.h"
#include "model/model.h"

int peft_model_set_decode(peft_model *m, peft_decode d) {
    if (!m) return PEFT_ERR_INVALID;
    if (d != PEFT_DECODE_FAST && d != PEFT_DECODE_EXACT)
        return peft_fail(&m->ctx->err, PEFT_ERR_INVALID, "%s: unknown decode mode %d", m->path, (int)d);
    const bool q8 = d == PEFT_DECODE_FAST;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) m->layers[l].lin[r].w.q8_act = q8;
    m->lm_head.q8_act = q8;
    return 0;
}

peft_decode peft_model_decode(const peft_model *m) {
    return m && m->lm_head.q8_act ? PEFT_DECODE_FAST : PEFT_DECODE_EXACT;
}

const char *peft_decode_unit(void) { return kern_qdot_unit_name(kern_qdot_unit_best()); }
