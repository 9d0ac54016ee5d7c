/* infer.h — inference on a model_state: generation (generate.c) and the
 * session objects of the public API (session.c). */
#ifndef PEFT_INFER_H
#define PEFT_INFER_H

#include "model/model.h"

/* Generation on st (reset first) from prompt, streaming pieces to on_token;
 * errors into err. */
int infer_generate(const peft_model *m, model_state *st, const char *prompt, const peft_sample_params *p,
                   peft_token_fn on_token, void *user, peft_gen_stats *stats, peft_err *err);

#endif
