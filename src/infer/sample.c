/* sample.c — next-token sampling. */
#include "infer/sample.h"

#include <math.h>
#include <stdlib.h>

typedef struct { float logit; int id; } cand;

static int cand_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id; /* stable order for equal logits */
}

int sample_token(const float *logits, int n, const sample_params *p, peft_rng *rng, float *work) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    if (p->temperature <= 0.0f || p->top_k == 1) return best;

    cand *c = (cand *)work; /* 2·n floats hold n candidates */
    for (int i = 0; i < n; i++) { c[i].logit = logits[i] / p->temperature; c[i].id = i; }
    qsort(c, (size_t)n, sizeof *c, cand_desc);
    int k = (p->top_k > 0 && p->top_k < n) ? p->top_k : n;
    /* softmax over the k best, then keep the smallest prefix with mass >= top_p */
    double sum = 0;
    const float mx = c[0].logit;
    for (int i = 0; i < k; i++) { c[i].logit = expf(c[i].logit - mx); sum += c[i].logit; }
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        double acc = 0;
        int keep = k;
        for (int i = 0; i < k; i++) {
            acc += c[i].logit / sum;
            if (acc >= p->top_p) { keep = i + 1; break; }
        }
        k = keep;
        sum = 0;
        for (int i = 0; i < k; i++) sum += c[i].logit;
    }
    double r = (double)peft_rng_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < k; i++) {
        acc += c[i].logit;
        if (r < acc) return c[i].id;
    }
    return c[k - 1].id;
}
