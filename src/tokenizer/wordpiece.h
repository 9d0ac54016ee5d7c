/* wordpiece.h — the WordPiece side of the tokenizer object (BERT family):
 * what bpe.c and bpe_json.c dispatch to when a tokenizer.json's model is
 * "WordPiece". Not part of any public contract. */
#ifndef PEFT_TOKENIZER_WORDPIECE_H
#define PEFT_TOKENIZER_WORDPIECE_H

#include "tokenizer/bpe_internal.h"

struct cJSON;

/* Builds a BPE_WORDPIECE tokenizer from a parsed tokenizer.json (root). */
int wp_load_json(const char *path, const struct cJSON *root, bpe_tokenizer **out, peft_err *err);
/* From GGUF metadata with tokenizer.ggml.model "bert". */
int wp_load_gguf(const gguf_file *g, bpe_tokenizer **out, peft_err *err);
void wp_free(wp_model *m);

/* Encodes a (b == NULL: single) sequence; types may be NULL. */
int wp_encode(const bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen, bool add_special,
              bool parse_special, int32_t **ids, int32_t **types, int *n_ids, peft_err *err);
int wp_decode(const bpe_tokenizer *t, const int32_t *ids, int n, char **out, peft_err *err);
int wp_token_bytes(const bpe_tokenizer *t, int id, char *buf, int cap);

/* The normalizer and pre-tokenizer alone: the words of text, each followed
 * by a NUL, malloc'ed (for tests that compare character classes with HF). */
int wp_pretokenize(const bpe_tokenizer *t, const char *text, size_t len, char **words, size_t *words_len,
                   peft_err *err);

#endif
