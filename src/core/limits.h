/* limits.h — the caps on counts, lengths and shapes read from files
 * (docs/formats.md, "Resource limits"). Every loader checks a value against
 * the size of the file it came from or against one of these caps before it
 * allocates anything for it, so a small hostile file cannot ask for a large
 * allocation or a long loop. The caps sit far above any real model. */
#ifndef PEFT_CORE_LIMITS_H
#define PEFT_CORE_LIMITS_H

#include "core/core.h"

#include <cjson/cJSON.h>

/* Model shape (config.json, GGUF metadata). */
#define PEFT_MAX_LAYERS 1024            /* num_hidden_layers / block_count */
#define PEFT_MAX_HIDDEN (1 << 17)       /* hidden_size, n_embd */
#define PEFT_MAX_FF (1 << 20)           /* intermediate_size, n_inner */
#define PEFT_MAX_HEADS 4096             /* attention (and key/value) heads */
#define PEFT_MAX_HEAD_DIM 1024          /* head_dim, rotary dimension */
#define PEFT_MAX_CTX (1 << 20)          /* max_position_embeddings, context_length */
#define PEFT_MAX_VOCAB (1 << 22)        /* vocab_size and every token id */

/* Tokenizers: the id space is at most this many times the tokens the file
 * defines, plus PEFT_VOCAB_SLACK (ids need not be dense, but a few tokens
 * with id 2^22 must not size a 4M-entry table). */
#define PEFT_VOCAB_SPARSENESS 2
#define PEFT_VOCAB_SLACK 1024
#define PEFT_MAX_TOKEN_BYTES (1 << 20)  /* one token's text */

/* Adapters. */
#define PEFT_MAX_RANK 65536             /* LoRA r */
#define PEFT_MAX_VIRTUAL_TOKENS 65536   /* prompt / prefix tuning */
#define PEFT_MAX_LABELS 65536           /* classification labels (data, score heads) */

/* Containers. */
#define PEFT_MAX_TENSORS (1 << 20)      /* tensors in one GGUF / safetensors file */
#define PEFT_MAX_KV 65536               /* GGUF key/value pairs (real files: < 100) */
#define PEFT_MAX_NESTED_ITEMS (1 << 16) /* GGUF: items of all arrays of arrays in a file */
#define PEFT_MAX_JSON_DEPTH CJSON_NESTING_LIMIT  /* cJSON refuses deeper nesting */

/* Text files read whole: a parsed JSON tree costs ~10x its text, so the
 * text is bounded before it is read. */
#define PEFT_MAX_CONFIG_BYTES ((size_t)16 << 20)    /* config.json, adapter_config.json */
#define PEFT_MAX_JSON_BYTES ((size_t)256 << 20)     /* tokenizer.json (real: < 40 MB), vocab.json, merges.txt, indexes */
#define PEFT_MAX_LINE_BYTES ((size_t)64 << 20)      /* one JSONL line */

/* A JSON number that becomes an integer: it must be a number, integral and
 * in [lo, hi], else one error naming the file, the key and the range. The
 * range is checked on the double, so the conversion is always defined. */
int peft_json_to_int(const cJSON *v, const char *path, const char *key, int64_t lo, int64_t hi, int64_t *out,
                     peft_err *err);

/* obj[key] through peft_json_to_int into an int; when absent (or null),
 * *out = dflt, or an error naming the key when required. */
int peft_json_get_int(const cJSON *obj, const char *key, int dflt, bool required, int64_t lo, int64_t hi,
                      int *out, const char *path, peft_err *err);

/* peft_read_file of a file of at most max bytes (else an error naming the
 * file, its size and the limit, before anything is read). */
int peft_read_file_max(const char *path, size_t max, char **data, size_t *len, peft_err *err);

#endif
