/* optim.c — AdamW, schedules, clipping. */
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

optim_params optim_default_params(void) {
    optim_params p = {2e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, SCHED_COSINE, 0, 0};
    return p;
}

int sched_parse(const char *name, sched_kind *out) {
    if (!strcmp(name, "constant")) *out = SCHED_CONSTANT;
    else if (!strcmp(name, "linear")) *out = SCHED_LINEAR;
    else if (!strcmp(name, "cosine")) *out = SCHED_COSINE;
    else return PEFT_ERR_INVALID;
    return 0;
}

const char *sched_name(sched_kind k) {
    return k == SCHED_CONSTANT ? "constant" : k == SCHED_LINEAR ? "linear" : "cosine";
}

float sched_lr(const optim_params *p, int step) {
    double f;
    if (step < p->warmup_steps) f = (double)step / (double)PEFT_MAX(1, p->warmup_steps);
    else if (p->sched == SCHED_CONSTANT) f = 1.0;
    else {
        double span = (double)PEFT_MAX(1, p->total_steps - p->warmup_steps);
        double progress = (double)(step - p->warmup_steps) / span;
        if (p->sched == SCHED_LINEAR) f = PEFT_MAX(0.0, 1.0 - progress);
        else f = PEFT_MAX(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
    }
    return (float)(p->lr * f);
}

double grad_norm(const float *g, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

void grad_clip(float *g, int64_t n, double norm, float max_norm) {
    if (max_norm <= 0) return;
    double coef = max_norm / (norm + 1e-6);
    if (coef >= 1.0) return;
    const float c = (float)coef;
    for (int64_t i = 0; i < n; i++) g[i] *= c;
}

int adamw_init(adamw_state *s, int64_t n, peft_err *err) {
    s->n = n;
    s->t = 0;
    s->m = peft_calloc((size_t)n, sizeof(float), err);
    s->v = peft_calloc((size_t)n, sizeof(float), err);
    if (!s->m || !s->v) { adamw_free(s); return PEFT_ERR_NOMEM; }
    return 0;
}

void adamw_free(adamw_state *s) {
    free(s->m);
    free(s->v);
    s->m = s->v = NULL;
}

void adamw_step(adamw_state *s, float *params, const float *grads, float lr, const optim_params *p) {
    s->t++;
    const double bc1 = 1.0 - pow(p->beta1, (double)s->t), bc2 = 1.0 - pow(p->beta2, (double)s->t);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float decay = 1.0f - lr * p->weight_decay, b1 = p->beta1, b2 = p->beta2;
    float *m = s->m, *v = s->v;
    for (int64_t i = 0; i < s->n; i++) {
        const float g = grads[i];
        params[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        const float denom = sqrtf(v[i]) / bc2_sqrt + p->eps;
        params[i] -= step_size * m[i] / denom;
    }
}
