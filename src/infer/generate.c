/* generate.c — prompt processing and token-by-token generation with the KV
 * cache, streaming each new piece of text to a callback. */
#include "infer/infer.h"
#include "infer/sample.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

peft_sample_params peft_sample_default_params(void) {
    peft_sample_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = 128;
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.seed = 42;
    return p;
}

/* Prompt tokens are fed in chunks so attention scratch stays bounded. */
#define PROMPT_CHUNK 512

/* Generation on st (reset first) from prompt; errors into err. */
int infer_generate(const peft_model *m, model_state *st, const char *prompt, const peft_sample_params *p,
                   peft_token_fn on_token, void *user, peft_gen_stats *stats, peft_err *err) {
    peft_gen_stats gs;
    memset(&gs, 0, sizeof gs);
    if (m->cfg.desc->encoder)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s is an encoder (%s): it has no language-model head to generate "
                         "with (use peft embed, or train a classifier)", m->path, m->cfg.arch_name);
    if (!m->tok) return peft_fail(err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
    if (!prompt || !p) return peft_fail(err, PEFT_ERR_INVALID, "generate: no prompt or parameters");

    char *text = NULL;
    int rc;
    if (p->chat) {
        bpe_chat_msg msgs[2];
        int n = 0;
        if (p->system) msgs[n++] = (bpe_chat_msg){"system", p->system};
        msgs[n++] = (bpe_chat_msg){"user", prompt};
        if ((rc = bpe_chat_format(m->tok, msgs, n, true, &text, err))) return rc;
    }
    int32_t *ids = NULL;
    int n_ids = 0;
    const char *src = text ? text : prompt;
    /* a chat template writes any BOS itself (as apply_chat_template does) */
    rc = bpe_encode(m->tok, src, strlen(src), !p->chat, true, &ids, &n_ids, err);
    free(text);
    if (rc) return rc;
    if (n_ids == 0) { free(ids); return peft_fail(err, PEFT_ERR_INVALID, "empty prompt"); }
    if (p->max_tokens < 0 || n_ids + (int64_t)p->max_tokens > m->cfg.n_ctx) {
        free(ids);
        return peft_fail(err, PEFT_ERR_INVALID, "prompt (%d tokens) plus %d new tokens exceed the context length %d",
                         n_ids, p->max_tokens, m->cfg.n_ctx);
    }

    const int V = m->cfg.vocab;
    float *logits = peft_malloc((size_t)V * 3 * sizeof(float), err);
    if (!logits) { free(ids); return PEFT_ERR_NOMEM; }
    float *work = logits + V;
    int32_t stop[8];
    int n_stop = bpe_stop_tokens(m->tok, stop, 8);
    const int eos = bpe_eos_id(m->tok);

    model_state_reset(st);
    double t0 = peft_time_s();
    for (int i = 0; i < n_ids && rc == 0; i += PROMPT_CHUNK) {
        int n = PEFT_MIN(PROMPT_CHUNK, n_ids - i);
        rc = model_forward(m, st, ids + i, n, i + n == n_ids ? logits : NULL, false, err);
    }
    gs.n_prompt = n_ids;
    gs.prompt_s = peft_time_s() - t0;
    free(ids);

    peft_rng rng;
    peft_rng_seed(&rng, p->seed);
    sample_params sp = {p->temperature, p->top_k, p->top_p};
    char piece[256];
    t0 = peft_time_s();
    for (int i = 0; i < p->max_tokens && rc == 0; i++) {
        int32_t tok = sample_token(logits, V, &sp, &rng, work);
        bool is_stop = tok == eos;
        for (int s = 0; s < n_stop; s++) is_stop |= tok == stop[s];
        if (is_stop) { gs.stopped_at_eos = 1; break; }
        gs.n_gen++;
        int len = bpe_token_bytes(m->tok, tok, piece, (int)sizeof piece);
        if (len > (int)sizeof piece) len = (int)sizeof piece;
        if (len > 0 && on_token && on_token(piece, len, user)) break;
        if (i + 1 < p->max_tokens) rc = model_forward(m, st, &tok, 1, logits, false, err);
    }
    gs.gen_s = peft_time_s() - t0;
    free(logits);
    if (stats) *stats = gs;
    return rc;
}

int peft_generate(peft_model *m, const char *prompt, const peft_sample_params *p,
                  peft_token_fn on_token, void *user, peft_gen_stats *stats) {
    peft_err *err = &m->ctx->err;
    peft_err_clear(err);
    model_state st;
    model_state_init(&st, m->attached);
    int rc = infer_generate(m, &st, prompt, p, on_token, user, stats, err);
    model_state_free(&st);
    return rc;
}
