/* embed.h — sentence embeddings of an encoder, as sentence-transformers'
 * SentenceTransformer.encode computes them: tokenize with the special
 * tokens, truncate the content to max_seq_length, run the encoder, pool the
 * last hidden states over the real tokens, optionally L2-normalize.
 *
 * The pipeline comes from the model's folder (modules.json: Transformer,
 * Pooling, Normalize; 1_Pooling/config.json; sentence_bert_config.json) or,
 * for a GGUF file, from llama.cpp's "<arch>.pooling_type" key with the L2
 * normalization llama.cpp's embedding example applies by default
 * (docs/api.md, "Sentence embeddings"). */
#ifndef PEFT_INFER_EMBED_H
#define PEFT_INFER_EMBED_H

#include "model/model.h"

/* Pooling modes, concatenated in this order when several are on (the
 * order of sentence-transformers' Pooling.forward). */
enum {
    EMBED_POOL_CLS = 1 << 0,
    EMBED_POOL_MAX = 1 << 1,
    EMBED_POOL_MEAN = 1 << 2,
    EMBED_POOL_MEAN_SQRT = 1 << 3,   /* sum / sqrt(n): pooling_mode_mean_sqrt_len_tokens */
    EMBED_POOL_LAST = 1 << 4,        /* pooling_mode_lasttoken */
    EMBED_POOL_N = 5
};

typedef struct {
    int max_len;      /* tokens per sentence, specials included */
    unsigned modes;   /* EMBED_POOL_* bits, at least one */
    bool normalize;   /* L2 after pooling */
    int d_model;      /* the encoder's hidden size */
    int dim;          /* the embedding's size: d_model per pooling mode */
    char source[128]; /* where the pipeline came from, for messages: "modules.json", "gguf", "default" */
} embed_pipeline;

/* Reads m's pipeline. Fails with PEFT_ERR_UNSUPPORTED for a decoder, a
 * module other than Transformer/Pooling/Normalize, or a pooling mode this
 * build lacks (weightedmean), and PEFT_ERR_FORMAT for unreadable or
 * malformed JSON, each naming the file and key. */
int embed_pipeline_load(const peft_model *m, embed_pipeline *p, peft_err *err);

/* Token ids of one text with the special tokens, the content truncated so
 * the whole fits p->max_len (the special tokens are kept, as HF tokenizers'
 * truncation does). *ids is malloc'ed; n_full (may be NULL) receives the
 * untruncated count. */
int embed_tokenize(const peft_model *m, const embed_pipeline *p, const char *text, size_t len, int32_t **ids,
                   int *n_ids, int *n_full, peft_err *err);

/* Pools hidden (T, d_model) of T real tokens into out (p->dim floats) and
 * normalizes it when p says so. */
void embed_pool(const embed_pipeline *p, const float *hidden, int T, float *out);

/* The embedding of one tokenized sequence (types NULL: all 0), run on st
 * (its adapter applies). */
int embed_ids_on(const peft_model *m, model_state *st, const embed_pipeline *p, const int32_t *ids,
                 const int32_t *types, int T, float *out, peft_err *err);
/* The embedding of one text: embed_tokenize, then embed_ids_on. */
int embed_text_on(const peft_model *m, model_state *st, const embed_pipeline *p, const char *text, size_t len,
                  float *out, peft_err *err);
/* The same with the model's attached adapter, on a state of their own. */
int embed_ids(peft_model *m, const embed_pipeline *p, const int32_t *ids, const int32_t *types, int T, float *out,
              peft_err *err);
int embed_text(peft_model *m, const embed_pipeline *p, const char *text, size_t len, float *out, peft_err *err);
/* n texts on st (peft_model_embed, peft_session_embed). */
int embed_texts_on(const peft_model *m, model_state *st, const char *const *texts, int n, float *out, peft_err *err);

#endif
