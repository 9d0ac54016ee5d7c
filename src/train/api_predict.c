/* api_predict.c — the public classification call (peft.h,
 * "classification"): texts through the adapter's sequence-classification
 * head, as transformers' AutoModelForSequenceClassification + PeftModel in
 * eval mode. It runs the training graph's forward (the one training and
 * peft_eval_dataset use, so predictions agree with the accuracy a run
 * reported) without a backward. */
#include "core/ctx.h"
#include "train/graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AS_AD(a) ((adapter *)(a))

peft_classify_params peft_classify_default_params(void) {
    peft_classify_params p;
    memset(&p, 0, sizeof p);
    p.batch = 8;
    p.seq = 0;
    return p;
}

int peft_classifier_num_labels(const peft_model *m, const peft_adapter *a) {
    const int n = adapter_n_labels(AS_AD(a), m);
    return n > 0 ? n : 0;
}

/* One tokenized input. */
typedef struct {
    int32_t *ids, *types;
    int n;
} tok_input;

static void free_inputs(tok_input *in, int n) {
    for (int i = 0; in && i < n; i++) {
        free(in[i].ids);
        free(in[i].types);
    }
    free(in);
}

int peft_classify(peft_model *m, const peft_adapter *a, const char *const *texts, const char *const *text_pairs, int n,
                  const peft_classify_params *params, float *logits, float *probs) {
    peft_err *err = &m->ctx->err;
    const peft_classify_params p = params ? *params : peft_classify_default_params();
    const int K = peft_classifier_num_labels(m, a);
    if (K <= 0)
        return peft_fail(err, PEFT_ERR_INVALID,
                         "%s: neither the adapter nor the model has a sequence-classification head: nothing to classify "
                         "with (train one with {\"text\", \"label\"} rows)",
                         m->path);
    if (!m->tok) return peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    if (n < 0 || (n > 0 && !texts)) return peft_fail(err, PEFT_ERR_INVALID, "classify: %d inputs without texts", n);
    if (p.batch <= 0 || p.seq < 0)
        return peft_fail(err, PEFT_ERR_INVALID, "classify: batch (%d) must be positive and seq (%d) >= 0", p.batch, p.seq);
    if (n == 0) return 0;
    /* virtual tokens take context positions before the text */
    const int room = m->cfg.n_ctx - adapter_prompt_rows(AS_AD(a)) - adapter_prefix_rows(AS_AD(a));
    const int seq = p.seq > 0 ? PEFT_MIN(p.seq, room) : room;
    if (seq < 2) return peft_fail(err, PEFT_ERR_INVALID, "classify: the model's context leaves %d tokens", seq);

    /* everything tokenized first: the graph is sized once, by the longest */
    tok_input *in = peft_calloc((size_t)n, sizeof *in, err);
    if (!in) return PEFT_ERR_NOMEM;
    int longest = 2, rc = 0;
    bool typed = false;
    for (int i = 0; i < n && !rc; i++) {
        const char *t = texts[i], *tp = text_pairs ? text_pairs[i] : NULL;
        if (!t) {
            rc = peft_fail(err, PEFT_ERR_INVALID, "classify: input %d has no text", i);
            break;
        }
        peft_err e;
        peft_err_clear(&e);
        rc = bpe_encode_input(m->tok, t, strlen(t), tp, tp ? strlen(tp) : 0, seq, &in[i].ids, tp ? &in[i].types : NULL,
                              &in[i].n, NULL, &e);
        if (rc) rc = peft_fail(err, rc, "input %d: %s", i, e.msg);
        else if (in[i].n == 0) rc = peft_fail(err, PEFT_ERR_INVALID, "input %d gives no tokens", i);
        else {
            longest = PEFT_MAX(longest, in[i].n);
            typed |= in[i].types != NULL;
        }
    }
    if (rc) { free_inputs(in, n); return rc; }

    const int B = PEFT_MIN(p.batch, n), T = longest;
    int pad = bpe_pad_id(m->tok);
    if (pad < 0) pad = bpe_eos_id(m->tok);
    if (pad < 0) pad = 0;
    /* no backward: one layer's activations at a time are enough */
    const tg_options forward_only = {.checkpoint_every = 1};
    train_graph *g = NULL;
    const size_t N = (size_t)B * T;
    int32_t *buf = NULL;
    if ((rc = tg_new_opts(m, AS_AD(a), B, T, &forward_only, &g, err))) goto done;
    if (tg_class_width(g) != K) {
        rc = peft_fail(err, PEFT_ERR_SHAPE, "classify: the graph has %d labels, the head %d", tg_class_width(g), K);
        goto done;
    }
    buf = peft_malloc(sizeof(int32_t) * (5 * N + 2 * (size_t)B), err);
    if (!buf) { rc = PEFT_ERR_NOMEM; goto done; }
    data_batch b = {.B = B, .inputs = buf, .targets = buf + N, .positions = buf + 2 * N, .segments = buf + 3 * N,
                    .labels = buf + 4 * N, .lengths = buf + 4 * N + B, .pad_id = pad, .n_cols = 1,
                    .types = typed ? buf + 4 * N + 2 * (size_t)B : NULL};
    for (int first = 0; first < n && !rc; first += B) {
        /* rows past the end are padding the head reads and nobody keeps */
        int t_b = 2;
        for (int r = 0; r < B && first + r < n; r++) t_b = PEFT_MAX(t_b, in[first + r].n);
        b.T = t_b;
        for (int r = 0; r < B; r++) {
            const tok_input *x = first + r < n ? &in[first + r] : &in[first];
            for (int t = 0; t < t_b; t++) {
                const size_t i = (size_t)r * t_b + t;
                b.inputs[i] = t < x->n ? x->ids[t] : pad;
                b.targets[i] = -100;
                b.positions[i] = t;
                b.segments[i] = 0;
                if (b.types) b.types[i] = t < x->n && x->types ? x->types[t] : 0;
            }
            b.labels[r] = -1;
            b.lengths[r] = x->n;
        }
        double loss;
        int cnt;
        tg_set_types(g, b.types);
        if ((rc = tg_run(g, &b, false, 0.0f, 0, &loss, &cnt, err))) break;
        const float *cl = tg_class_logits(g);
        for (int r = 0; r < B && first + r < n; r++) {
            const float *lg = cl + (size_t)r * K;
            const size_t at = (size_t)(first + r) * K;
            if (logits) memcpy(logits + at, lg, (size_t)K * sizeof(float));
            if (!probs) continue;
            /* softmax in double: probabilities that sum to 1 to f32 rounding */
            double mx = lg[0], z = 0;
            for (int k = 1; k < K; k++) mx = fmax(mx, lg[k]);
            for (int k = 0; k < K; k++) z += exp((double)lg[k] - mx);
            for (int k = 0; k < K; k++) probs[at + k] = (float)(exp((double)lg[k] - mx) / z);
        }
    }
done:
    tg_free(g);
    free(buf);
    free_inputs(in, n);
    return rc;
}
