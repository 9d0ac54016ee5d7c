/* data.h — training data: JSONL datasets tokenized into examples with loss
 * masks, train/validation splits, and a seeded batch loader (padding or
 * packing). Knows the tokenizer, not the model.
 *
 * Accepted JSONL rows (one object per line; the kind is fixed by the first
 * valid row and every row must match it):
 *   {"text": "..."}                          causal LM on every token
 *   {"prompt": "...", "completion": "..."}   loss on the completion only
 *   {"messages": [{"role","content"}, ...]}  the tokenizer's chat template;
 *                                            loss on assistant turns only
 *   {"text": "...", "label": <int>}          sequence classification
 *   {"text", "text_pair", "label"}           pair classification (token types)
 *   {"anchor", "positive"[, "negative"]}     contrastive (in-batch negatives)
 *
 * Tokenization follows Hugging Face TRL's SFTTrainer (special tokens written
 * in the text are recognised, as HF tokenizers do by default):
 *   text:        [BOS if the tokenizer adds it] + encode(text) + [EOS if
 *                add_eos]; loss on every token but the first.
 *   prompt/completion: [BOS?] + encode(prompt) + encode(completion) + [EOS
 *                if add_eos], the two encoded apart; loss on the completion
 *                and the EOS.
 *   messages:    the chat template over the whole conversation, encoded
 *                without added specials; loss on each assistant message's
 *                content and its end-of-turn token (<|im_end|>, <|eot_id|>,
 *                EOS), not on headers or the newline after the turn.
 *                Roles: system, user, assistant.
 *   text/label:  [BOS?] + encode(text), no EOS; no loss tokens; label >= 0.
 * Two common styles are read as those kinds (as TRL and axolotl take them):
 *   {"instruction", "input"?, "output"}   Alpaca: prompt/completion, the
 *       prompt the Stanford Alpaca template (with or without the input
 *       section, data_alpaca_prompt), the completion the output
 *   {"conversations": [{"from", "value"}, ...]}   ShareGPT: messages, from
 *       human|user -> user, gpt|assistant -> assistant, system -> system
 * Too long examples are cut to seq_len, keeping the start. A row left with
 * no loss token is dropped (counted in n_skipped and n_no_loss). */
#ifndef PEFT_TRAIN_DATA_H
#define PEFT_TRAIN_DATA_H

#include "core/core.h"
#include "tokenizer/tokenizer.h"

typedef enum { DATA_TEXT = 0, DATA_PROMPT_COMPLETION, DATA_MESSAGES, DATA_CLASSIFICATION, DATA_PAIRS } data_kind;
enum { DATA_STYLE_NATIVE = 0, DATA_STYLE_ALPACA, DATA_STYLE_SHAREGPT };

/* The Alpaca prompt of an instruction and its input (NULL or "": the
 * template without the input section), malloc'ed; NULL when out of memory. */
char *data_alpaca_prompt(const char *instruction, const char *input);

/* Texts per contrastive example at most: anchor, positive, negative. */
#define DATA_MAX_COLS 3

typedef struct {
    int32_t *ids;     /* (n) token ids, BOS/EOS included as the format wants */
    uint8_t *loss;    /* (n) 1 where token i is a prediction target (its
                         prediction from tokens < i counts in the loss) */
    int n;
    int label;        /* classification label, -1 otherwise */
    uint8_t *types;   /* (n) token types (a pair's second text: 1) or NULL (all 0) */
    /* DATA_PAIRS: ids holds the example's texts one after another, text c
     * (anchor, positive, negative) col_len[c] tokens long; n_cols 1 otherwise. */
    int n_cols;
    int col_len[DATA_MAX_COLS];
} data_example;

typedef struct {
    data_kind kind;
    data_example *ex;
    int n;
    int n_labels;         /* classification: max label + 1 */
    int n_cols;           /* texts per example: 2 or 3 for DATA_PAIRS, else 1 */
    /* what loading saw, for the user. n_lines: non-blank lines read.
     * n_skipped: lines that gave no example, which is n_bad (malformed,
     * skipped under skip_bad) + n_no_loss (rows with no loss token, e.g. a
     * prompt truncated before its completion: such a row counts in
     * n_truncated too). n_truncated: examples cut to seq_len. */
    int n_lines, n_skipped, n_truncated;
    int n_bad, n_no_loss;
    /* why rows had no loss token (they add up to n_no_loss): n_empty gave
     * at most one token (nothing to predict), n_no_target had none even
     * whole (an empty completion without EOS, no assistant turn),
     * n_cut_no_target lost all of them to seq_len. */
    int n_empty, n_no_target, n_cut_no_target;
    /* loss tokens the truncation to seq_len removed (of rows kept or not) */
    int64_t n_loss_cut;
    /* whole (untruncated) token lengths of the rows that tokenized (kept
     * or dropped for want of loss tokens; a pair's longest text): the
     * smallest, nearest-rank median and 95th percentile, the largest. A
     * seq_len of len_p95 keeps 95 % of them whole, len_max all. 0 when
     * no row tokenized. */
    int len_min, len_median, len_p95, len_max;
    /* the rows' style: written as the kind (0), Alpaca rows
     * {instruction[, input], output} read as prompt/completion (1),
     * ShareGPT rows {conversations: [{from, value}]} read as messages (2) */
    int style;
    /* n_loss_tokens: loss[i] set for i >= 1 (token 0 is never predicted).
     * data_split recounts both for each part; the other counters stay
     * with the set that was loaded. */
    int64_t n_tokens, n_loss_tokens;
} data_set;

typedef struct {
    int seq_len;        /* truncate examples to this many tokens (counted);
                           <= 0: no limit. Default 1024 */
    bool skip_bad;      /* skip (and count) bad lines instead of failing */
    bool add_eos;       /* append EOS to text / completion (default true) */
} data_params;

data_params data_default_params(void);

/* Texts per example of d: 2 or 3 for DATA_PAIRS, else 1 (also for a
 * hand-made set that leaves n_cols 0). */
int data_cols(const data_set *d);
/* Whether some example of d has token types. */
bool data_has_types(const data_set *d);
/* Text col of e (col 0 of a one-text example is all of it): its first id,
 * and its length in *len. */
const int32_t *data_example_text(const data_example *e, int col, int *len);

/* Reads and tokenizes a JSONL file (\n or \r\n line ends, blank lines
 * ignored, lines of any length). Errors name the file and line:
 * "train.jsonl:17: not valid JSON", "train.jsonl:3: missing field
 * \"completion\"", "train.jsonl:5: \"label\" must be a non-negative
 * integer", a row of another kind than the first; PEFT_ERR_FORMAT, or
 * PEFT_ERR_IO when the file cannot be read. No usable example at all is an
 * error ("no usable examples") even with skip_bad. p NULL: defaults. */
int data_load_jsonl(const char *path, const bpe_tokenizer *tok, const data_params *p,
                    data_set *out, peft_err *err);
void data_free(data_set *d);

/* Moves a seeded random fraction of d into val (both keep their order
 * otherwise). d keeps the rest. round(n * fraction) examples, at least one
 * when fraction > 0 and n > 1, at most n - 1; fraction in [0, 1). */
int data_split(data_set *d, double val_fraction, uint64_t seed, data_set *val, peft_err *err);

/* A batch of B rows of T positions. Row b holds tokens inputs[b*T + t];
 * targets[b*T + t] is the token to predict after position t, or -100 where
 * nothing is predicted (padding, masked prompt, end of example).
 * positions restart at 0 at the start of each packed example; segments
 * number the examples within a row (attention must not cross them); both
 * are plain 0..T-1 / 0 without packing. labels (B) for classification, and
 * lengths (B) = non-padding tokens of each row. */
typedef struct {
    int B, T;
    int32_t *inputs, *targets, *positions, *segments, *labels, *lengths;
    int n_targets;      /* targets != -100; classification: labelled rows */
    int pad_id;
    /* (B) or NULL (= -100): the label of token 0 of each row. Only prompt
     * tuning predicts it (from the last virtual token, as HF PEFT does when
     * labels[0] is not -100); the data loader leaves it NULL. */
    const int32_t *first_targets;
    /* (B·T) token types or NULL (all 0). */
    int32_t *types;
    /* DATA_PAIRS: the batch holds B / n_cols examples, column by column:
     * row c·(B / n_cols) + i is text c of example i. 0 or 1: one text per row. */
    int n_cols;
} data_batch;

typedef struct data_loader data_loader;

/* Batches over d in a seeded random order, reshuffled every epoch; pack
 * concatenates examples into full rows of T (examples longer than T are
 * cut into pieces). d must outlive the loader. The last batch of an epoch
 * is never short: it continues with the next epoch's order. Without
 * packing an example longer than T is cut to T. A piece of an example cut
 * by a row's end starts the next row with positions from 0 again. Packing
 * classification data is refused. pad_id < 0: 0 is used. B counts examples:
 * a DATA_PAIRS batch has B · d->n_cols rows (data_batch.n_cols). */
int data_loader_new(const data_set *d, int B, int T, bool pack, uint64_t seed, int pad_id,
                    data_loader **out, peft_err *err);
void data_loader_free(data_loader *l);
/* Fills b (buffers owned by the loader, valid until the next call). */
int data_loader_next(data_loader *l, data_batch *b);
/* Epochs completed (the epoch the next example belongs to). */
int data_loader_epoch(const data_loader *l);
/* Batches per epoch: ceil(examples / B), or ceil(tokens / (B*T)) packed. */
int data_loader_batches_per_epoch(const data_loader *l);
/* Exact position, for checkpoints: opaque bytes. set_state refuses
 * (PEFT_ERR_INVALID, loader unchanged) a state of another data set size,
 * batch shape, mode or seed. */
size_t data_loader_state_size(const data_loader *l);
void data_loader_get_state(const data_loader *l, void *buf);
int data_loader_set_state(data_loader *l, const void *buf, size_t n);
/* Why a state does not fit l, for the error: the saved fields that differ
 * from l's ("examples 108 (now 120), seed 5 (now 7)"), or "" when they all
 * agree (a corrupt position). */
void data_loader_state_mismatch(const data_loader *l, const void *buf, size_t n, char *out, size_t cap);

#endif
