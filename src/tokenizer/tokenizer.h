/* tokenizer.h — BPE tokenizers: byte-level (GPT-2, SmolLM2, Llama 3, Qwen2)
 * and SentencePiece-style with ▁ and byte fallback (Llama 2, Mistral,
 * TinyLlama), loaded from tokenizer.json, from GPT-2's vocab.json +
 * merges.txt, or from GGUF metadata (tokenizer.ggml.*); and WordPiece (BERT,
 * MiniLM) from tokenizer.json, behind the same object. Added/special tokens,
 * decode, and chat templates. Knows nothing of models. */
#ifndef PEFT_TOKENIZER_H
#define PEFT_TOKENIZER_H

#include "core/core.h"
#include "formats/gguf.h"

typedef struct bpe_tokenizer bpe_tokenizer;

/* BPE_WORDPIECE: a tokenizer.json whose model is "WordPiece" (BERT's
 * normalizer and pre-tokenizer, "##" continuations, [CLS]/[SEP] templates). */
typedef enum { BPE_BYTE_LEVEL = 0, BPE_SENTENCEPIECE = 1, BPE_WORDPIECE = 2 } bpe_kind;

int bpe_load_json(const char *path, bpe_tokenizer **out, peft_err *err);
int bpe_load_gpt2_files(const char *vocab_json, const char *merges_txt, bpe_tokenizer **out,
                        peft_err *err);
int bpe_load_gguf(const gguf_file *g, bpe_tokenizer **out, peft_err *err);
void bpe_free(bpe_tokenizer *t);

bpe_kind bpe_get_kind(const bpe_tokenizer *t);
int bpe_vocab_size(const bpe_tokenizer *t);
int bpe_bos_id(const bpe_tokenizer *t);   /* -1 when none */
int bpe_eos_id(const bpe_tokenizer *t);   /* -1 when none */
int bpe_pad_id(const bpe_tokenizer *t);   /* -1 when none */
/* The first special token the post-processor puts before a single sequence
 * ([CLS], <s>) and the first it puts after it ([SEP], </s>); -1 when none. */
int bpe_cls_id(const bpe_tokenizer *t);
int bpe_sep_id(const bpe_tokenizer *t);
/* Whether encode with add_special prepends BOS (tokenizer.json's
 * post-processor, or GGUF's tokenizer.ggml.add_bos_token). */
bool bpe_adds_bos(const bpe_tokenizer *t);
const char *bpe_token_text(const bpe_tokenizer *t, int id);   /* raw vocab string */
int bpe_token_id(const bpe_tokenizer *t, const char *text);   /* -1 when absent */
bool bpe_is_special(const bpe_tokenizer *t, int id);
/* A short description, e.g. "byte-level BPE (smollm), 49152 tokens". */
const char *bpe_describe(const bpe_tokenizer *t);

/* Encode UTF-8 text. add_special: prepend BOS if the tokenizer does so.
 * parse_special: recognise added special tokens written in the text.
 * Matches HF `tokenizers` exactly. *ids is malloc'ed. */
int bpe_encode(const bpe_tokenizer *t, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t **ids, int *n_ids, peft_err *err);

/* Encode a pair of sequences as the post-processor's pair template says
 * (BERT: [CLS] A [SEP] B [SEP]); *type_ids (malloc'ed, n_ids entries, may be
 * NULL) receives each token's segment (0 for A's part, 1 for B's). b ==
 * NULL: the single-sequence template, with its type ids. Without
 * add_special the ids are A's then B's. BPE tokenizers have no pair
 * template here: with add_special and b they fail (PEFT_ERR_UNSUPPORTED). */
int bpe_encode_pair(const bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                    bool add_special, bool parse_special, int32_t **ids, int32_t **type_ids, int *n_ids,
                    peft_err *err);

/* A model's input as HF's tokenizer(a, b, truncation=True, max_length=
 * max_len) makes it: a and b (NULL: a single sequence) encoded apart, the
 * post-processor's template around them ([CLS] A [SEP] B [SEP] with type
 * ids; RoBERTa's <s> A </s></s> B </s>; a BPE tokenizer's BOS), special
 * tokens written in the text recognised. max_len > 0 truncates the
 * sequences, never the template's tokens, from their ends as HF's
 * longest_first does (the shorter is kept whole when the longer can still
 * be as long, else each gets half, the longer the odd one); *truncated
 * (may be NULL) says whether it did. A template longer than max_len fails
 * (PEFT_ERR_INVALID), as does a pair on a tokenizer without a pair
 * template (PEFT_ERR_UNSUPPORTED). *ids, *types (may be NULL) malloc'ed. */
int bpe_encode_input(const bpe_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen, int max_len,
                     int32_t **ids, int32_t **types, int *n_ids, bool *truncated, peft_err *err);

/* Bytes of one token as it contributes to decoded text (byte-level: the
 * mapped-back bytes; SentencePiece: ▁ -> space, <0xNN> -> the byte;
 * WordPiece: the text without its "##"; the space before a word is
 * bpe_decode's to add). Special tokens give their text. Returns the byte count (may exceed cap: then
 * nothing is written past cap) or a negative status. */
int bpe_token_bytes(const bpe_tokenizer *t, int id, char *buf, int cap);
/* Decode a whole sequence (as HF decode with skip_special_tokens=false,
 * including SentencePiece's removal of the leading space). malloc'ed. */
int bpe_decode(const bpe_tokenizer *t, const int32_t *ids, int n, char **out, peft_err *err);

/* Chat. The template is chosen from the tokenizer: ChatML (<|im_start|>,
 * SmolLM2, Qwen2), Llama 2 [INST], or Llama 3 header tokens. */
typedef struct { const char *role; const char *content; } bpe_chat_msg;
/* Formats msgs into a prompt string (malloc'ed). add_generation_prompt
 * appends the assistant header. When msgs has no system message and the
 * model's chat template (tokenizer.json's sibling tokenizer_config.json or
 * GGUF's tokenizer.chat_template) states a default one, as SmolLM2's does,
 * that default is inserted, as transformers' apply_chat_template would. */
int bpe_chat_format(const bpe_tokenizer *t, const bpe_chat_msg *msgs, int n,
                    bool add_generation_prompt, char **out, peft_err *err);
/* As bpe_chat_format without the generation prompt, and ends[0..n] (n + 1
 * entries) receive the length of the text before the first message and
 * after each message: the formatting of msgs[0..i) is the first ends[i]
 * bytes, so a conversation's turns are found in one pass (linear in its
 * length, where formatting every prefix would be quadratic). */
int bpe_chat_format_ends(const bpe_tokenizer *t, const bpe_chat_msg *msgs, int n, char **out, size_t *ends,
                         peft_err *err);
/* What add_generation_prompt appends ("" for Llama 2, whose prompt ends with [/INST]). */
const char *bpe_chat_gen_prompt(const bpe_tokenizer *t);
/* Token ids that end an assistant turn besides EOS (e.g. <|im_end|>); up to
 * cap written, count returned. */
int bpe_stop_tokens(const bpe_tokenizer *t, int32_t *ids, int cap);

#endif
