/* sample.h — next-token sampling: greedy, temperature, top-k, top-p. */
#ifndef PEFT_INFER_SAMPLE_H
#define PEFT_INFER_SAMPLE_H

#include "core/core.h"

typedef struct {
    float temperature;  /* <= 0: greedy */
    int top_k;          /* <= 0: off */
    float top_p;        /* >= 1: off */
} sample_params;

/* Picks a token from logits (n). work must hold 2·n floats. Deterministic
 * for a given rng state. */
int sample_token(const float *logits, int n, const sample_params *p, peft_rng *rng, float *work);

#endif
