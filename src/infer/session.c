/* session.c — the public sessions, mixed-adapter batches and step-by-step
 * sampler: one model shared read-only by any number of them.
 *
 * A session is a model_state (its sequence, workspace and thread count)
 * with references on its adapters and its own error slot, so a thread
 * using it never touches the context's. */
#include "infer/infer.h"
#include "infer/embed.h"
#include "infer/sample.h"
#include "peft/adapter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct peft_session {
    const peft_model *m;
    model_state st;
    peft_err err;
};

struct peft_batch {
    const peft_model *m;
    model_ws ws;
    int nt;
    model_seq **seqs;
    int cap;
    peft_err err;
};

struct peft_sampler {
    sample_params sp;
    peft_rng rng;
    float *work;
    int cap;
};

/* ---- errors, tokens, chat ----------------------------------------------------- */

int peft_tokenize_err(const peft_model *m, const char *text, int add_bos, int special, int32_t **ids, int *n_ids,
                      peft_error *e) {
    peft_err err = {0};
    int rc;
    if (!m || !text || !ids || !n_ids) rc = peft_fail(&err, PEFT_ERR_INVALID, "peft_tokenize: bad arguments");
    else if (!m->tok) rc = peft_fail(&err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    else rc = bpe_encode(m->tok, text, strlen(text), add_bos != 0, special != 0, ids, n_ids, &err);
    peft_error_set(e, &err);
    return rc;
}

int peft_token_is_stop(const peft_model *m, int32_t id) {
    if (!m->tok) return 0;
    if (id == bpe_eos_id(m->tok)) return 1;
    int32_t stop[8];
    const int n = bpe_stop_tokens(m->tok, stop, 8);
    for (int i = 0; i < n; i++)
        if (stop[i] == id) return 1;
    return 0;
}

int peft_chat_format(const peft_model *m, const peft_chat_message *msgs, int n, int add_generation_prompt,
                     char **out, peft_error *e) {
    peft_err err = {0};
    int rc;
    bpe_chat_msg *bm = NULL;
    if (!m || !out || n < 0 || (n > 0 && !msgs)) rc = peft_fail(&err, PEFT_ERR_INVALID, "peft_chat_format: bad arguments");
    else if (!m->tok) rc = peft_fail(&err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    else if (!(bm = peft_malloc(sizeof *bm * (size_t)(n ? n : 1), &err))) rc = PEFT_ERR_NOMEM;
    else {
        rc = 0;
        for (int i = 0; i < n && !rc; i++) {
            if (!msgs[i].role || !msgs[i].content)
                rc = peft_fail(&err, PEFT_ERR_INVALID, "peft_chat_format: message %d has no role or content", i);
            bm[i] = (bpe_chat_msg){msgs[i].role, msgs[i].content};
        }
        if (!rc) rc = bpe_chat_format(m->tok, bm, n, add_generation_prompt != 0, out, &err);
    }
    free(bm);
    peft_error_set(e, &err);
    return rc;
}

/* ---- sessions ------------------------------------------------------------------ */

peft_session *peft_session_new(peft_model *m, peft_error *e) {
    peft_err err = {0};
    peft_session *s = m ? peft_calloc(1, sizeof *s, &err) : NULL;
    if (!m) peft_fail(&err, PEFT_ERR_INVALID, "peft_session_new: no model");
    peft_error_set(e, &err);
    if (!s) return NULL;
    s->m = m;
    model_state_init(&s->st, NULL);
    return s;
}

static void drop_adapters(model_seq *q) {
    for (int i = 0; i < q->n_ad; i++) adapter_release(q->ad[i]);
    q->n_ad = 0;
}

void peft_session_free(peft_session *s) {
    if (!s) return;
    drop_adapters(&s->st.seq);
    model_state_free(&s->st);
    free(s);
}

const char *peft_session_error(const peft_session *s) { return s ? s->err.msg : "no session"; }

int peft_session_set_threads(peft_session *s, int n_threads) {
    if (n_threads < 0 || n_threads > 4096)
        return peft_fail(&s->err, PEFT_ERR_INVALID, "peft_session_set_threads: %d threads", n_threads);
    s->st.nt = n_threads;
    return 0;
}

int peft_session_set_adapters(peft_session *s, peft_adapter *const *a, const float *scales, int n) {
    peft_err_clear(&s->err);
    if (n < 0 || n > MODEL_MAX_MIX || (n > 0 && !a))
        return peft_fail(&s->err, PEFT_ERR_INVALID, "a session takes 0 to %d adapters, not %d", MODEL_MAX_MIX, n);
    for (int i = 0; i < n; i++) {
        const adapter *ad = (const adapter *)a[i];
        if (!ad) return peft_fail(&s->err, PEFT_ERR_INVALID, "adapter %d is NULL", i);
        if (scales && !isfinite(scales[i]))
            return peft_fail(&s->err, PEFT_ERR_INVALID, "adapter %d: the scale is not a finite number", i);
        int rc = adapter_fits(ad, s->m, &s->err);
        if (rc) return rc;
        if ((n > 1 || (scales && scales[i] != 1.0f)) && !model_adapter_additive(ad, s->m))
            return peft_fail(&s->err, PEFT_ERR_UNSUPPORTED,
                             "a %s adapter is not a delta added to linear outputs: it cannot be scaled or combined "
                             "with other adapters (LoRA, LoHa, LoKr and VeRA can)", adapter_method_name(ad));
    }
    for (int i = 0; i < n; i++) adapter_retain((const adapter *)a[i]);
    model_seq *q = &s->st.seq;
    drop_adapters(q);
    for (int i = 0; i < n; i++) {
        q->ad[i] = (const adapter *)a[i];
        q->scale[i] = scales ? scales[i] : 1.0f;
    }
    q->n_ad = n;
    q->n_past = 0;
    return 0;
}

int peft_session_set_adapter(peft_session *s, peft_adapter *a) {
    return peft_session_set_adapters(s, a ? &a : NULL, NULL, a ? 1 : 0);
}

void peft_session_reset(peft_session *s) { model_state_reset(&s->st); }

int peft_session_n_past(const peft_session *s) { return s->st.seq.n_past; }

int peft_session_keep(peft_session *s, int n) {
    peft_err_clear(&s->err);
    model_seq *q = &s->st.seq;
    const adapter *one = q->n_ad == 1 && q->scale[0] == 1.0f ? q->ad[0] : NULL;
    const int virt = q->n_past ? adapter_prompt_rows(one) + adapter_prefix_rows(one) : 0;
    if (n < 0 || virt + n > q->n_past)
        return peft_fail(&s->err, PEFT_ERR_INVALID, "peft_session_keep: %d tokens asked, %d there", n,
                         q->n_past - virt);
    q->n_past = n ? virt + n : 0;
    return 0;
}

int peft_session_decode(peft_session *s, const int32_t *ids, int n, float *out) {
    peft_err_clear(&s->err);
    if (!ids || n <= 0) return peft_fail(&s->err, PEFT_ERR_INVALID, "peft_session_decode: no tokens");
    return model_forward(s->m, &s->st, ids, n, out, false, &s->err);
}

int peft_session_logits(peft_session *s, const int32_t *ids, int n, float *out) {
    peft_err_clear(&s->err);
    if (!ids || n <= 0) return peft_fail(&s->err, PEFT_ERR_INVALID, "peft_session_logits: no tokens");
    model_state_reset(&s->st);
    int rc = model_forward(s->m, &s->st, ids, n, out, true, &s->err);
    model_state_reset(&s->st);
    return rc;
}

int peft_session_generate(peft_session *s, const char *prompt, const peft_sample_params *p, peft_token_fn on_token,
                          void *user, peft_gen_stats *stats) {
    peft_err_clear(&s->err);
    return infer_generate(s->m, &s->st, prompt, p, on_token, user, stats, &s->err);
}

int peft_session_embed(peft_session *s, const char *const *texts, int n, float *out) {
    peft_err_clear(&s->err);
    if (s->st.seq.n_ad > 1 || (s->st.seq.n_ad == 1 && s->st.seq.scale[0] != 1.0f))
        return peft_fail(&s->err, PEFT_ERR_UNSUPPORTED, "peft_session_embed: one adapter at scale 1 at most");
    return embed_texts_on(s->m, &s->st, texts, n, out, &s->err);
}

/* ---- batches --------------------------------------------------------------------- */

peft_batch *peft_batch_new(peft_model *m, peft_error *e) {
    peft_err err = {0};
    peft_batch *b = m ? peft_calloc(1, sizeof *b, &err) : NULL;
    if (!m) peft_fail(&err, PEFT_ERR_INVALID, "peft_batch_new: no model");
    peft_error_set(e, &err);
    if (b) b->m = m;
    return b;
}

void peft_batch_free(peft_batch *b) {
    if (!b) return;
    model_ws_free(&b->ws);
    free(b->seqs);
    free(b);
}

const char *peft_batch_error(const peft_batch *b) { return b ? b->err.msg : "no batch"; }

int peft_batch_set_threads(peft_batch *b, int n_threads) {
    if (n_threads < 0 || n_threads > 4096)
        return peft_fail(&b->err, PEFT_ERR_INVALID, "peft_batch_set_threads: %d threads", n_threads);
    b->nt = n_threads;
    return 0;
}

int peft_batch_decode(peft_batch *b, peft_session *const *s, int n, const int32_t *ids, const int *n_ids, float *out) {
    peft_err_clear(&b->err);
    if (n <= 0 || !s || !ids || !n_ids) return peft_fail(&b->err, PEFT_ERR_INVALID, "peft_batch_decode: no sessions");
    if (n > b->cap) {
        model_seq **q = realloc(b->seqs, sizeof *q * (size_t)n);
        if (!q) return peft_fail(&b->err, PEFT_ERR_NOMEM, "peft_batch_decode: out of memory for %d sessions", n);
        b->seqs = q;
        b->cap = n;
    }
    for (int i = 0; i < n; i++) {
        if (!s[i] || s[i]->m != b->m)
            return peft_fail(&b->err, PEFT_ERR_INVALID, "peft_batch_decode: session %d is %s", i,
                             s[i] ? "of another model" : "NULL");
        for (int j = 0; j < i; j++)
            if (s[j] == s[i])
                return peft_fail(&b->err, PEFT_ERR_INVALID, "peft_batch_decode: session %d is also session %d", i, j);
        b->seqs[i] = &s[i]->st.seq;
    }
    return model_forward_seqs(b->m, b->seqs, n, ids, n_ids, out, &b->ws, b->nt, &b->err);
}

/* ---- sampling ----------------------------------------------------------------------- */

peft_sampler *peft_sampler_new(const peft_sample_params *p) {
    peft_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    const peft_sample_params d = peft_sample_default_params();
    if (!p) p = &d;
    s->sp = (sample_params){p->temperature, p->top_k, p->top_p};
    peft_rng_seed(&s->rng, p->seed);
    return s;
}

void peft_sampler_free(peft_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s);
}

int32_t peft_sampler_sample(peft_sampler *s, const float *logits, int vocab) {
    if (!s || !logits || vocab <= 0) return -1;
    if (vocab > s->cap) {
        float *w = realloc(s->work, sizeof *w * 2 * (size_t)vocab);
        if (!w) return -1;
        s->work = w;
        s->cap = vocab;
    }
    return sample_token(logits, vocab, &s->sp, &s->rng, s->work);
}
