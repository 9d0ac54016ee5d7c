/* bpe_internal.h — the tokenizer object shared by the tokenizer sources.
 * Not part of any public contract. */
#ifndef PEFT_TOKENIZER_BPE_INTERNAL_H
#define PEFT_TOKENIZER_BPE_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/tokenizer.h"

/* Per-token attribute bits. */
enum {
    BPE_ATTR_SPECIAL = 1, /* added token with special=true (skipped by parse_special=false) */
    BPE_ATTR_ADDED = 2,   /* matched whole in the text before pre-tokenization */
    BPE_ATTR_BYTE = 4,    /* SentencePiece byte token <0xNN> */
};

/* One added token, matched in raw text (leftmost, longest). */
typedef struct {
    int id;
    const char *text; /* points into t->tok[id] */
    int len;
    bool special, lstrip, rstrip, single_word;
} bpe_added;

/* How a split regex treats its matches (HF SplitDelimiterBehavior). */
typedef enum {
    BPE_SPLIT_ISOLATED = 0,   /* matches and the gaps between them are pieces */
    BPE_SPLIT_REMOVED,        /* gaps are pieces, matches are dropped */
    BPE_SPLIT_MERGED_PREV,    /* each match joins the piece before it */
    BPE_SPLIT_MERGED_NEXT,    /* each match joins the piece after it */
    BPE_SPLIT_CONTIGUOUS,     /* runs of matches form one piece */
} bpe_split_behavior;

typedef struct {
    pcre2_code *re;
    bpe_split_behavior behavior;
    bool invert;              /* the pattern describes the pieces, not the delimiters */
    bool prefix_space;        /* ByteLevel add_prefix_space: prepend ' ' to pieces first */
} bpe_pretok_step;

/* Open-addressing hash from (left id, right id) to merge rank and result. */
typedef struct {
    uint64_t key;  /* (left << 32) | right, UINT64_MAX = empty */
    int32_t rank;
    int32_t result;
} bpe_merge_slot;

typedef enum {
    BPE_MERGE_RANKS = 0,  /* merges list: lowest rank first (HF BPE) */
    BPE_MERGE_SCORES = 1, /* SentencePiece from scores: merge whose result has the highest score */
} bpe_merge_mode;

/* Metaspace prepend scheme. */
typedef enum { BPE_PREPEND_NEVER = 0, BPE_PREPEND_FIRST, BPE_PREPEND_ALWAYS } bpe_prepend;

/* WordPiece's normalizer, pre-tokenizer, templates and decoder (wordpiece.c). */
typedef struct wp_model wp_model;

struct bpe_tokenizer {
    bpe_kind kind;
    wp_model *wp;          /* BPE_WORDPIECE only */
    bpe_merge_mode merge_mode;
    char *source;          /* file it came from, for messages */
    char *pre_name;        /* pre-tokenizer name (GGUF tokenizer.ggml.pre or "json") */

    int n_vocab;
    char **tok;            /* [n_vocab] token strings as stored (NULL for holes) */
    int *tok_len;          /* [n_vocab] */
    float *scores;         /* [n_vocab] or NULL (score merges) */
    uint8_t *attr;         /* [n_vocab] BPE_ATTR_* */

    int32_t *str_tab;      /* string -> id hash table of ids, -1 empty; size str_cap (power of 2) */
    size_t str_cap;
    bpe_merge_slot *merge_tab;
    size_t merge_cap;
    int n_merges;

    bpe_added *added;      /* sorted by first byte, then longer first */
    int n_added, added_cap;
    int *added_at;         /* while loading: id -> index in added, -1 (linear-time re-adds); freed by bpe_finish */
    int added_at_n;        /* entries of added_at (n_vocab when it was made) */
    int added_first[257];  /* added[added_first[b] .. added_first[b+1]) start with byte b */

    /* Normalizer (SentencePiece tokenizer.json): prepend "▁" to non-empty
     * segments, replace ' ' with "▁". */
    bool norm_prepend, norm_replace_space;
    /* Metaspace pre-tokenizer. */
    bool metaspace;
    bpe_prepend metaspace_prepend;
    bool metaspace_split;

    bpe_pretok_step *steps;
    int n_steps;

    bool byte_fallback, fuse_unk, ignore_merges;
    int unk_id, bos_id, eos_id, pad_id;
    int byte_tok[256];     /* byte-level: id of the char byte b maps to; SP: id of <0xNN>; -1 absent */
    uint16_t byte2cp[256]; /* GPT-2 bytes_to_unicode */
    int16_t cp2byte[324];  /* inverse, -1 where none */

    int32_t *prefix_ids, *suffix_ids; /* post-processor for single sequences */
    int n_prefix, n_suffix;
    /* RobertaProcessing / BertProcessing: their pair templates,
     * <s> A </s></s> B </s> (types 0) and [CLS] A [SEP] B [SEP] (B: type 1) */
    enum { BPE_PAIR_NONE, BPE_PAIR_ROBERTA, BPE_PAIR_BERT } pair_kind;
    bool strip_leading_space; /* decoder strips one leading ' ' (SP "Strip" decoder) */
    bool meta_drop_first;     /* Metaspace decoder: the first token's "▁" vanish */
    bool add_space_prefix;    /* GGUF SentencePiece: prepend ' ' (as ▁) to the text */

    char *chat_template;   /* may be NULL */
    char desc[160];
};

/* bpe.c */
bpe_tokenizer *bpe_alloc(const char *source, peft_err *err);
int bpe_set_vocab_size(bpe_tokenizer *t, int n, peft_err *err);
int bpe_set_token(bpe_tokenizer *t, int id, const char *s, size_t len, peft_err *err);
/* Builds the string hash after all tokens are set. Duplicates: the first id wins. */
int bpe_build_index(bpe_tokenizer *t, peft_err *err);
int bpe_lookup(const bpe_tokenizer *t, const char *s, size_t len); /* -1 when absent */
int bpe_merges_reserve(bpe_tokenizer *t, size_t n, peft_err *err);
/* Adds merge (a, b) with the given rank; the result is the token a+b, which
 * must exist (returns 1 and adds nothing when it does not; earlier rank wins). */
int bpe_add_merge(bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                  int rank, peft_err *err);
int bpe_add_added(bpe_tokenizer *t, int id, bool special, bool lstrip, bool rstrip,
                  bool single_word, peft_err *err);
/* Sorts added tokens and fills the byte tables; call last. */
int bpe_finish(bpe_tokenizer *t, peft_err *err);
void bpe_bytes_to_unicode(uint16_t byte2cp[256]);
int bpe_utf8_encode(uint32_t cp, char out[4]);
/* Length of the valid UTF-8 sequence at s (1..4), 0 when invalid. */
int bpe_utf8_len(const unsigned char *s, size_t n);

/* pretok.c */
int bpe_pretok_add(bpe_tokenizer *t, const char *pattern, bpe_split_behavior b, bool invert,
                   bool prefix_space, peft_err *err);
/* Adds the split steps llama.cpp uses for a GGUF tokenizer.ggml.pre name. */
int bpe_pretok_preset(bpe_tokenizer *t, const char *pre, peft_err *err);
extern const char *const bpe_re_gpt2;
void bpe_pretok_free(bpe_tokenizer *t);

/* A list of byte ranges [off, off+len) into a buffer. */
typedef struct { size_t off, len; } bpe_span;
typedef struct { bpe_span *v; size_t n, cap; } bpe_spans;
int bpe_spans_push(bpe_spans *s, size_t off, size_t len);
/* Splits text[0..len) into pieces with t's steps. May replace *text with a
 * new malloc'ed buffer (prefix spaces); *owned tells whether it did. */
int bpe_pretokenize(const bpe_tokenizer *t, const char **text, size_t *len, char **owned,
                    bpe_spans *out, peft_err *err);

/* chat.c: default-system-prompt extraction is there; nothing exported. */

#endif
