/* lora_merge_check.c — after a merge, how much of the adapter's effect the
 * merged model kept: the logits of the base, of the base with the adapter
 * applied (what training produced) and of the merged model, on a few fixed
 * token sequences.
 *
 * The fraction lost, ||merged - adapted|| / ||adapted - base||, is the
 * number that matters: re-quantizing a merged weight to the base's 4 bits
 * can round a low-rank delta below the quantization step back to the base
 * (lost ≈ 1) while the logits still look close to the adapted ones in
 * absolute terms. */
#include "peft/lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { CHECK_SEQS = 3, CHECK_TOKENS = 16 };

/* Ordinary text of three kinds (prose, question/answer, code): tokenized,
 * it exercises the attention and MLP paths on plausible inputs. */
static const char *const check_texts[CHECK_SEQS] = {
    "The quick brown fox jumps over the lazy dog while the old farmer watches from the hill.",
    "Question: What is the capital of France? Answer: The capital of France is Paris, a city",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i * 2))\n",
};

/* Sequence s: the text's first CHECK_TOKENS tokens, or (no tokenizer, or a
 * text too short for it) ids spread over the vocabulary by a fixed rule. */
static int check_ids(peft_model *m, int s, int32_t *ids) {
    int n = 0;
    if (m->tok) {
        int32_t *t = NULL;
        int nt = 0;
        peft_err e = {0};
        if (!bpe_encode(m->tok, check_texts[s], strlen(check_texts[s]), true, false, &t, &nt, &e))
            for (int i = 0; i < nt && n < CHECK_TOKENS; i++)
                if (t[i] >= 0 && t[i] < m->cfg.vocab) ids[n++] = t[i];
        free(t);
    }
    if (n >= CHECK_TOKENS / 2) return n;
    for (n = 0; n < CHECK_TOKENS; n++)
        ids[n] = (int32_t)(((uint64_t)s * 7919u + (uint64_t)n * 104729u + 17u) % (uint64_t)m->cfg.vocab);
    return n;
}

/* Logits of m (with adapter a attached, or none) for ids, into out. */
static int logits_with(peft_model *m, const adapter *a, const int32_t *ids, int n, float *out, peft_err *err) {
    model_state st;
    model_state_init(&st, a);
    int rc = model_forward(m, &st, ids, n, out, true, err);
    model_state_free(&st);
    return rc;
}

int lora_merge_verify(const adapter *a, peft_model *m, const char *merged_path, merge_check *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    out->lost = NAN;
    int rc = adapter_fits(a, m, err);
    if (rc) return rc;
    /* peft_model_load reports on the context; keep err the one message */
    peft_model *mm = peft_model_load(m->ctx, merged_path);
    if (!mm) {
        if (err != &m->ctx->err) *err = m->ctx->err;
        return err->code ? err->code : PEFT_ERR_IO;
    }
    /* the same products as m's, so the comparison sees only the merge */
    if (peft_model_compute(m) == PEFT_COMPUTE_BF16 && peft_model_set_compute(mm, PEFT_COMPUTE_BF16)) {
        if (err != &m->ctx->err) *err = m->ctx->err;
        peft_model_free(mm);
        return err->code ? err->code : PEFT_ERR_UNSUPPORTED;
    }
    if (mm->cfg.vocab != m->cfg.vocab || mm->cfg.n_layer != m->cfg.n_layer || mm->cfg.d_model != m->cfg.d_model) {
        peft_model_free(mm);
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: the merged model's shape differs from its base %s", merged_path,
                         m->path);
    }
    const size_t V = (size_t)m->cfg.vocab, nl = (size_t)CHECK_TOKENS * V;
    float *lb = peft_malloc(nl * sizeof(float), err), *la = peft_malloc(nl * sizeof(float), err),
          *lm = peft_malloc(nl * sizeof(float), err);
    if (!lb || !la || !lm) rc = PEFT_ERR_NOMEM;
    double d_merged = 0, d_effect = 0, n_base = 0;
    for (int s = 0; s < CHECK_SEQS && !rc; s++) {
        int32_t ids[CHECK_TOKENS];
        const int n = check_ids(m, s, ids);
        rc = logits_with(m, NULL, ids, n, lb, err);
        if (!rc) rc = logits_with(m, a, ids, n, la, err);
        if (!rc) rc = logits_with(mm, NULL, ids, n, lm, err);
        if (rc) break;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            const double dm = (double)lm[i] - la[i], de = (double)la[i] - lb[i];
            d_merged += dm * dm;
            d_effect += de * de;
            n_base += (double)lb[i] * lb[i];
            out->max_abs_diff = fmax(out->max_abs_diff, fabs(dm));
            out->max_effect = fmax(out->max_effect, fabs(de));
        }
        out->n_seq++;
        out->n_tokens += n;
    }
    if (!rc) {
        if (!isfinite(d_merged) || !isfinite(d_effect))
            rc = peft_fail(err, PEFT_ERR_NUMERIC, "%s: non-finite logits while comparing with the adapter", merged_path);
        out->effect = n_base > 0 ? sqrt(d_effect / n_base) : 0;
        /* An adapter that changes nothing (B = 0) has no effect to lose. */
        out->lost = d_effect > 1e-12 * n_base && d_effect > 0 ? sqrt(d_merged / d_effect) : NAN;
    }
    free(lb);
    free(la);
    free(lm);
    peft_model_free(mm);
    return rc;
}
