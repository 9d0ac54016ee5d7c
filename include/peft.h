/* peft.h — public C API of libpeft, parameter-efficient fine-tuning of
 * transformer models.
 *
 * Conventions (after llama.cpp and SQLite):
 *   - every public symbol starts with peft_;
 *   - handles are opaque; parameter structs come with *_default_params();
 *   - functions that can fail return 0 or a negative peft_status, and the
 *     message is kept on the context (peft_last_error);
 *   - the library never exits the process and never prints, except through
 *     the log callback the caller installs.
 */
#ifndef PEFT_H
#define PEFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PEFT_VERSION "0.1.0"

typedef enum {
    PEFT_OK = 0,
    PEFT_ERR_IO = -1,          /* a file could not be opened, read or written */
    PEFT_ERR_FORMAT = -2,      /* a file is corrupt, truncated or malformed */
    PEFT_ERR_UNSUPPORTED = -3, /* valid input this build does not handle */
    PEFT_ERR_NOMEM = -4,       /* an allocation failed */
    PEFT_ERR_INVALID = -5,     /* a bad argument or option */
    PEFT_ERR_SHAPE = -6,       /* tensor shapes that do not fit together */
    PEFT_ERR_NUMERIC = -7,     /* NaN or inf where a number was expected */
} peft_status;

/* Element types of stored tensors. Quantized types use GGML's block layouts. */
typedef enum {
    PEFT_DT_F32 = 0,
    PEFT_DT_F16,
    PEFT_DT_BF16,
    PEFT_DT_Q8_0,
    PEFT_DT_Q4_0,
    PEFT_DT_Q4_1,
    PEFT_DT_Q5_0,
    PEFT_DT_Q5_1,
    PEFT_DT_Q2_K,
    PEFT_DT_Q3_K,
    PEFT_DT_Q4_K,
    PEFT_DT_Q5_K,
    PEFT_DT_Q6_K,
    PEFT_DT_Q8_K,
    PEFT_DT_I8,
    PEFT_DT_I16,
    PEFT_DT_I32,
    PEFT_DT_I64,
    PEFT_DT_F64,
    PEFT_DT_U8,
    PEFT_DT_BOOL,
    PEFT_DT_COUNT
} peft_dtype;

const char *peft_dtype_name(peft_dtype t);
const char *peft_status_name(int status);

/* ---- context ------------------------------------------------------------ */

typedef enum { PEFT_LOG_ERROR = 0, PEFT_LOG_WARN, PEFT_LOG_INFO, PEFT_LOG_DEBUG } peft_log_level;
typedef void (*peft_log_fn)(peft_log_level level, const char *msg, void *user);

typedef struct {
    int n_threads;          /* 0: all cores */
    peft_log_fn log;        /* NULL: silent */
    void *log_user;
    peft_log_level log_level;
} peft_ctx_params;

typedef struct peft_ctx peft_ctx;

peft_ctx_params peft_ctx_default_params(void);
peft_ctx *peft_init(const peft_ctx_params *p);   /* NULL only when out of memory */
void peft_free(peft_ctx *ctx);
const char *peft_last_error(const peft_ctx *ctx);
int peft_ctx_threads(const peft_ctx *ctx);

/* ---- models --------------------------------------------------------------- */

typedef struct peft_model peft_model;
typedef struct peft_adapter peft_adapter;   /* an adapter of any method (LoRA, DoRA, bottleneck, prompt, ...) */

typedef enum { PEFT_ARCH_LLAMA = 0, PEFT_ARCH_GPT2, PEFT_ARCH_BERT } peft_arch;

typedef struct {
    peft_arch arch;
    const char *arch_name;   /* "llama", "qwen2", "mistral", "gpt2" */
    int n_layer, d_model, n_head, n_kv_head, head_dim, d_ff, vocab, n_ctx;
    float norm_eps, rope_theta;   /* rope_theta 0: no rotary positions (GPT-2) */
    int tied_embeddings;
    int64_t n_params;
    const char *source;      /* "hf" or "gguf" */
    const char *dtype_summary; /* e.g. "Q4_1 x 168, F32 x 61" */
    const char *tokenizer;   /* e.g. "byte-level BPE (smollm), 49152 tokens", or "none" */
    int n_tensors;
} peft_model_info;

/* One stored tensor of the model file(s), shape outermost first. */
typedef struct {
    const char *name;
    peft_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t nbytes;
} peft_tensor_info;

/* Loads a Hugging Face folder (config.json, *.safetensors, tokenizer.json)
 * or a .gguf file. Frozen weights stay in their stored dtype, mmapped. */
peft_model *peft_model_load(peft_ctx *ctx, const char *path);
void peft_model_free(peft_model *m);
int peft_model_get_info(const peft_model *m, peft_model_info *out);
int peft_model_tensor_info(const peft_model *m, int i, peft_tensor_info *out);

/* Precision of the products with the frozen weights (training steps,
 * evaluation, prompt processing; decoding one token at a time keeps its
 * dot products on the stored weights).
 *   F32:  weights converted to f32 tile by tile (the default; exact
 *         reference behaviour).
 *   BF16: weights and activations rounded to bfloat16, products summed in
 *         f32 (as PyTorch's bf16 autocast) on the CPU's AMX unit, or with
 *         AVX512-BF16 (vdpbf16ps) where it has no AMX; each frozen linear
 *         keeps two bf16 copies (4 bytes per weight).
 *         PEFT_ERR_UNSUPPORTED where the CPU has neither.
 *   AUTO: BF16 where supported, F32 otherwise.
 * Adapter weights, norms, attention, losses and optimizer stay f32. */
typedef enum { PEFT_COMPUTE_F32 = 0, PEFT_COMPUTE_BF16 = 1, PEFT_COMPUTE_AUTO = 2 } peft_compute;
int peft_model_set_compute(peft_model *m, peft_compute c);
peft_compute peft_model_compute(const peft_model *m);   /* F32 or BF16 */
int peft_compute_bf16_supported(void);
/* The unit BF16 runs on here: "amx", "avx512bf16" or "none". */
const char *peft_compute_bf16_unit(void);

/* Decoding (forwards of at most 4 tokens: generation after the prompt, and
 * the prompt's last-token LM head) on weights stored as Q8_0, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q4_K, Q5_K or Q6_K:
 *   EXACT: f32 inputs dotted with the stored weights: the same logits as
 *          processing the whole sequence at once (within f32 summation
 *          order). The default from load.
 *   FAST:  each product quantizes its input to 8-bit blocks of 32 and
 *          takes integer dot products with the weight's blocks (AVX2,
 *          AVX-VNNI or AVX512-VNNI, chosen at run time), as llama.cpp
 *          does: faster, and the logits move by the inputs' rounding
 *          (docs/api.md, "Decoding"). `peft generate` decodes FAST.
 * Without AVX2, FAST decodes as EXACT. Set it before the first session. */
typedef enum { PEFT_DECODE_EXACT = 0, PEFT_DECODE_FAST = 1 } peft_decode;
int peft_model_set_decode(peft_model *m, peft_decode d);
peft_decode peft_model_decode(const peft_model *m);
/* The unit FAST runs on here: "avx512vnni", "avxvnni", "avx2" or "none". */
const char *peft_decode_unit(void);

/* ---- tokenizer -------------------------------------------------------------- */

/* Encodes UTF-8 text; add_bos: prepend BOS where the tokenizer wants one;
 * special: parse special tokens written in the text. *ids is malloc'ed. */
int peft_tokenize(peft_model *m, const char *text, int add_bos, int special,
                  int32_t **ids, int *n_ids);
/* Bytes of one token (may be a partial UTF-8 sequence); returns length or <0. */
int peft_token_to_piece(const peft_model *m, int32_t id, char *buf, int cap);
int peft_token_eos(const peft_model *m);
int peft_token_bos(const peft_model *m);

/* ---- inference ------------------------------------------------------------ */

/* Logits for a sequence of tokens processed from position 0, no cache kept:
 * out must hold n_ids * vocab floats (row t = logits after token t). */
int peft_model_logits(peft_model *m, const int32_t *ids, int n_ids, float *out);

typedef struct {
    int max_tokens;      /* new tokens at most */
    float temperature;   /* 0: greedy */
    int top_k;           /* 0: off */
    float top_p;         /* 1: off */
    uint64_t seed;
    int chat;            /* wrap the prompt in the model's chat template */
    const char *system;  /* chat system prompt, NULL: the template's default */
} peft_sample_params;

typedef struct {
    int n_prompt, n_gen;
    double prompt_s, gen_s;   /* wall seconds of prompt processing, generation */
    int stopped_at_eos;
} peft_gen_stats;

/* Called with each new piece of text; return non-zero to stop. */
typedef int (*peft_token_fn)(const char *piece, int len, void *user);

peft_sample_params peft_sample_default_params(void);
int peft_generate(peft_model *m, const char *prompt, const peft_sample_params *p,
                  peft_token_fn on_token, void *user, peft_gen_stats *stats);

/* ---- errors without a shared context -----------------------------------------
 * peft_last_error is the context's, for one thread at a time. Calls that
 * threads make at once (loading adapters, tokenizing, opening sessions) take
 * a peft_error of the caller's instead (NULL: not reported). */
typedef struct {
    int status;          /* 0 or a peft_status */
    char msg[1024];
} peft_error;

/* The same as peft_tokenize, reporting into err. */
int peft_tokenize_err(const peft_model *m, const char *text, int add_bos, int special, int32_t **ids, int *n_ids,
                      peft_error *err);
/* Whether the model stops generating at token id (its EOS or end of turn). */
int peft_token_is_stop(const peft_model *m, int32_t id);

/* A conversation in the model's chat template (tokenizer_config.json's
 * chat_template, GGUF tokenizer.chat_template), as apply_chat_template:
 * roles "system", "user", "assistant"; add_generation_prompt appends the
 * assistant header. *out is malloc'ed. */
typedef struct { const char *role; const char *content; } peft_chat_message;
int peft_chat_format(const peft_model *m, const peft_chat_message *msgs, int n, int add_generation_prompt,
                     char **out, peft_error *err);

/* ---- sessions -----------------------------------------------------------------
 * A loaded model is read-only (call peft_model_set_compute before the first
 * session): any number of threads use it at once, each through its own
 * sessions. A session is one sequence's state — KV cache, workspace, the
 * adapters active for it, the error of its last call — and is used by one
 * thread at a time. A session holds a reference on each of its adapters:
 * peft_adapter_free of an adapter still in use only drops the caller's
 * reference, and the adapter goes when its last session lets go of it. */
typedef struct peft_session peft_session;

peft_session *peft_session_new(peft_model *m, peft_error *err);
void peft_session_free(peft_session *s);
/* The message of the last failed call on s ("" when none). */
const char *peft_session_error(const peft_session *s);
/* Threads of this session's products (0: the context's). */
int peft_session_set_threads(peft_session *s, int n_threads);
/* The adapter applied in s's forward: one of any method made or loaded for
 * s's model, or NULL for the base. Resets the cache. */
int peft_session_set_adapter(peft_session *s, peft_adapter *a);
/* Several adapters at once, each times a scale (llama.cpp's --lora-scaled):
 * output = base + sum_i scales[i] * delta_i. More than one adapter, or a
 * scale other than 1, needs adapters whose whole effect is a delta added
 * to linear outputs (LoRA, LoHa, LoKr, VeRA, ...); others are
 * PEFT_ERR_UNSUPPORTED. scales NULL: all 1. n = 0: the base. Resets the
 * cache. */
int peft_session_set_adapters(peft_session *s, peft_adapter *const *a, const float *scales, int n);
/* Forgets the cache: the next decode starts at position 0. */
void peft_session_reset(peft_session *s);
/* Positions in the cache (virtual tokens included). */
int peft_session_n_past(const peft_session *s);
/* Keeps the first n tokens of the sequence (and the adapter's virtual
 * tokens before them) and forgets the rest, so that a conversation that
 * shares a prefix with what was decoded goes on from there; n = 0 resets.
 * PEFT_ERR_INVALID when fewer than n tokens are there. */
int peft_session_keep(peft_session *s, int n);
/* Appends n tokens to the sequence (virtual tokens of prompt and prefix
 * tuning enter before the first); logits of the last token (vocab floats)
 * into out, which may be NULL. */
int peft_session_decode(peft_session *s, const int32_t *ids, int n, float *out);
/* peft_model_logits on s: resets s, then n * vocab floats. */
int peft_session_logits(peft_session *s, const int32_t *ids, int n, float *out);
/* peft_generate on s (resets s first). */
int peft_session_generate(peft_session *s, const char *prompt, const peft_sample_params *p, peft_token_fn on_token,
                          void *user, peft_gen_stats *stats);
/* peft_model_embed on s's adapter. */
int peft_session_embed(peft_session *s, const char *const *texts, int n, float *out);

/* ---- mixed-adapter batches ------------------------------------------------------
 * One forward over several sessions of the same model, each with its own
 * tokens, cache and adapters: the base model's products run once over all
 * rows, each adapter's own products over its sessions' rows (as Punica's
 * SGMV / S-LoRA). The result equals running each session alone (1e-5).
 * Sessions whose adapters change more than the linear layers (norms,
 * embeddings, biases: BitFit, full fine-tuning, LN tuning) can share a
 * batch only with sessions of the same adapters: PEFT_ERR_UNSUPPORTED
 * otherwise. A batch object holds the batch's workspace and error; one
 * thread uses it at a time. */
typedef struct peft_batch peft_batch;

peft_batch *peft_batch_new(peft_model *m, peft_error *err);
void peft_batch_free(peft_batch *b);
const char *peft_batch_error(const peft_batch *b);
int peft_batch_set_threads(peft_batch *b, int n_threads);
/* Session i appends n_ids[i] tokens (ids: all of them, session after
 * session); out receives each session's last logits, n * vocab floats
 * (may be NULL). On failure no session's cache has changed. */
int peft_batch_decode(peft_batch *b, peft_session *const *s, int n, const int32_t *ids, const int *n_ids, float *out);

/* ---- sampling, one step at a time ---------------------------------------------- */
typedef struct peft_sampler peft_sampler;
/* temperature, top_k, top_p and seed of p (the rest is ignored). */
peft_sampler *peft_sampler_new(const peft_sample_params *p);
void peft_sampler_free(peft_sampler *s);
/* The next token from logits (vocab floats; left unchanged); -1 when out of memory. */
int32_t peft_sampler_sample(peft_sampler *s, const float *logits, int vocab);

/* ---- sentence embeddings ------------------------------------------------------
 * As sentence-transformers' SentenceTransformer.encode (docs/api.md,
 * "Sentence embeddings"): an encoder (BERT, RoBERTa) only; a decoder is
 * PEFT_ERR_UNSUPPORTED. The pipeline comes from the folder's modules.json
 * (Pooling: cls / max / mean / mean_sqrt_len_tokens / lasttoken; Normalize)
 * and max_seq_length from sentence_bert_config.json (the content is
 * truncated, [CLS]/[SEP] kept); a folder without modules.json mean-pools
 * without normalizing; a GGUF file pools by <arch>.pooling_type and
 * L2-normalizes as llama.cpp's embedding example. An attached adapter
 * applies. */
/* The embedding's size (> 0), or a negative status. */
int peft_model_embed_dim(peft_model *m);
/* n texts (UTF-8, NUL-terminated) into out: n * peft_model_embed_dim(m)
 * floats, row i = text i. */
int peft_model_embed(peft_model *m, const char *const *texts, int n, float *out);

/* ---- adapters and training -------------------------------------------------- */


typedef struct {
    int r;                   /* rank (8) */
    float alpha;             /* scale alpha/r (16) */
    float dropout;           /* on the adapter's input (0) */
    int rslora;              /* scale alpha/sqrt(r) instead */
    int gaussian_init;       /* A ~ N(0, 1/r²) instead of kaiming-uniform; B = 0 either way */
    const char *targets;     /* "q_proj,v_proj", "c_attn", "all-linear"; NULL: the architecture's default */
    uint64_t layers;         /* bit per layer to adapt; 0 = all */
    uint64_t seed;
} peft_lora_params;

peft_lora_params peft_lora_default_params(void);
/* A fresh LoRA adapter for m (B = 0, so the model's output is unchanged). */
peft_adapter *peft_adapter_new(peft_model *m, const peft_lora_params *p);

/* Any method (docs/methods.md). Fields that do not apply to the method are
 * ignored; peft_method_default_params fills the method's defaults. */
typedef struct {
    const char *method;          /* lora, dora, adapter-pfeiffer, adapter-houlsby, prompt, prefix, ia3, bitfit, full,
                                    vera, loha, lokr (docs/methods.md) */
    peft_lora_params lora;       /* lora, dora (dora: dropout must be 0); lora.layers also selects the
                                    layers of ia3 and adapter-*; lora.seed is unused (seed below) */
    int reduction_factor;        /* adapter-*: bottleneck = hidden / reduction_factor (16) */
    const char *non_linearity;   /* adapter-*: relu (pfeiffer), swish (houlsby), gelu_new, tanh */
    int bert_init;               /* adapter-*: N(0, 0.02) weights instead of a zero up-projection */
    int num_virtual_tokens;      /* prompt, prefix (20) */
    const char *prompt_init;     /* prompt: NULL/"random", "sample-vocab", or a text */
    int prefix_projection;       /* prefix: train through tanh MLP */
    int encoder_hidden_size;     /* prefix: the MLP's hidden size (0: the key/value width) */
    const char *ia3_targets;     /* ia3: modules (NULL: the architecture's default) */
    const char *ia3_feedforward; /* ia3: modules whose input is scaled (NULL: default) */
    int num_labels;              /* >= 2: add a sequence-classification head; 0: none */
    uint64_t seed;
    const char *options;         /* the method's own options, "key=value;key=value" (docs/methods.md):
                                    vera: d_initial, projection_prng_key; loha: rank_dropout,
                                    module_dropout, rank_pattern and alpha_pattern (JSON objects); lokr: ...
                                    (every method but lora and dora takes lora.r and lora.alpha 0 as its
                                    own defaults) */
} peft_method_params;

peft_method_params peft_method_default_params(const char *method);
peft_adapter *peft_adapter_new_method(peft_model *m, const peft_method_params *p);
/* "lora", "dora", ... */
const char *peft_adapter_method(const peft_adapter *a);
/* Loads an adapter of any method; the method comes from adapter_config.json
 * (HF PEFT's LORA, IA3, PROMPT_TUNING, PREFIX_TUNING, or peft.c's
 * BOTTLENECK, BITFIT). */
peft_adapter *peft_adapter_load(peft_model *m, const char *dir);
/* Saves atomically: HF PEFT format where HF PEFT has the method; full
 * fine-tuning writes a model (HF folder, or DIR/model.gguf from a GGUF base). */
int peft_adapter_save(peft_model *m, const peft_adapter *a, const char *dir);
/* Drops the caller's reference: a is freed now, or when the last session
 * using it lets go (peft_session_set_adapter, peft_session_free). */
void peft_adapter_free(peft_adapter *a);
/* Sessions using a now (a server refuses to unload an adapter in use). */
int peft_adapter_users(const peft_adapter *a);
/* peft_adapter_load reporting into err instead of the context (threads). */
peft_adapter *peft_adapter_load_err(peft_model *m, const char *dir, peft_error *err);
int64_t peft_adapter_n_params(const peft_adapter *a);
/* The adapter the model-level calls (peft_model_logits, peft_generate,
 * peft_model_embed) run with; NULL detaches. a must have been made or
 * loaded for m and outlive the attachment. A setting of the model, like the
 * compute precision: make it before threads share m. Sessions ignore it
 * (peft_session_set_adapter). */
int peft_adapter_attach(peft_model *m, const peft_adapter *a);
/* LoRA, DoRA or IA3 folded into the base, written as a new model (HF folder
 * from HF, GGUF from GGUF); other methods, and adapters with a
 * classification head, are an error. */
int peft_adapter_merge(peft_model *m, const peft_adapter *a, const char *out_path);
/* The same with the type of the tensors the adapter changes (the others are
 * copied as they are): NULL or "default" (float bases keep their dtype;
 * quantized GGUF tensors become F16, because re-quantizing to the base's
 * few bits rounds a low-rank delta away), "keep" (the base tensor's type
 * where it can be re-quantized, else F16), "f32", "f16", "bf16", and for
 * GGUF "q8_0", "q5_1", "q5_0", "q4_1", "q4_0". */
int peft_adapter_merge_as(peft_model *m, const peft_adapter *a, const char *out_path, const char *outtype);

/* How much of a's effect a merged model kept, from the logits of m, of m
 * with a, and of the model at merged_path on 3 fixed token sequences. */
typedef struct {
    double lost;          /* ||merged - adapted|| / ||adapted - base||: 0 all kept, ~1 the base's
                             behaviour again; NAN when a does not change the logits */
    double effect;        /* ||adapted - base|| / ||base|| */
    double max_abs_diff;  /* max |merged - adapted| */
    double max_effect;    /* max |adapted - base| */
    int n_seq, n_tokens;
} peft_merge_check;
int peft_adapter_merge_check(peft_model *m, const peft_adapter *a, const char *merged_path, peft_merge_check *out);
/* A LoRA adapter as a llama.cpp GGUF LoRA file. */
int peft_adapter_export_gguf(peft_model *m, const peft_adapter *a, const char *path);

/* ---- adapter arithmetic -------------------------------------------------------
 * HF peft's add_weighted_adapter: n LoRA adapters of m's base, each with a
 * weight (negative subtracts), into a new LoRA adapter (docs/api.md). */
typedef struct {
    const char *type;           /* HF combination_type: linear, cat, svd, ties, ties_svd, dare_linear,
                                   dare_ties, dare_linear_svd, dare_ties_svd, magnitude_prune,
                                   magnitude_prune_svd; NULL: svd (HF's default) */
    double density;             /* ties, dare_*, magnitude_prune*: fraction of values kept, (0, 1] */
    const char *majority_sign;  /* ties and dare_ties*: "total" (NULL) or "frequency" */
    int svd_rank;               /* *svd: the result's rank; 0: the largest input rank */
    double svd_clamp;           /* *svd: clamp the factors at this quantile in [0, 1]; negative: none (-1) */
    uint64_t seed;              /* dare_*: the random masks (42) */
} peft_combine_params;

peft_combine_params peft_combine_default_params(void);
/* A new LoRA adapter for m, or NULL with the reason in peft_last_error:
 * inputs that are not plain LoRA (DoRA, IA3, ...), of another base, ranks
 * or modules the type does not allow, weights that are not finite. */
peft_adapter *peft_adapter_combine(peft_model *m, const peft_adapter *const *adapters, const double *weights, int n,
                                   const peft_combine_params *p);

typedef struct {
    const char *data;        /* training JSONL */
    const char *val;         /* validation JSONL or NULL */
    double val_split;        /* held out of data when val is NULL (0) */
    int batch, seq, accum;   /* 4, 256, 1 */
    int steps, epochs;       /* steps > 0 wins (100) */
    int pack;
    float lr, weight_decay, beta1, beta2, eps, max_grad_norm;
    const char *schedule;    /* "constant", "linear", "cosine" */
    int warmup_steps;
    int eval_every, eval_max_batches, save_every;
    uint64_t seed;
    int skip_bad;            /* skip bad data lines instead of failing */
    const char *out_dir;     /* required */
    const char *resume;      /* run or checkpoint folder, or NULL */
    /* LoRA+ (HF peft's create_loraplus_optimizer), LoRA and DoRA adapters
     * only: > 0 trains lora_B and the 1-D LoRA tensors (DoRA's magnitude)
     * at lr × loraplus_lr_ratio; 0 (default): off. weight_decay is then
     * HF's loraplus_weight_decay. loraplus_lr_embedding: the lr of LoRA on
     * embedding layers (default 1e-6 as HF's; 0 means that default too). */
    float loraplus_lr_ratio, loraplus_lr_embedding;
    /* Gradient checkpointing: the forward keeps only the input of every
     * checkpoint_every-th layer and the backward recomputes the others
     * (activation memory of about n_layer/K layer inputs plus K layers,
     * for about one more forward of time; losses and gradients are
     * bitwise the same). 0: off; -1 (the default): off, or on a resume the
     * checkpoint's setting. */
    int checkpoint_every;
    /* The caller's description of the run, a JSON object (`peft train`
     * stores every option), or NULL: the trainer keeps it as "config" in
     * out_dir/run.json and in every checkpoint's run.json, so that a
     * resume can be checked against it (peft_run_folder_inspect). */
    const char *run_config;
} peft_train_params;

typedef struct {
    int steps;
    double first_loss, last_loss, val_loss_before, val_loss_after; /* NAN without validation */
    double val_accuracy;     /* classification adapters; NAN otherwise */
    double seconds, tokens_per_s;
} peft_train_result;

peft_train_params peft_train_default_params(void);
/* Trains a on p->data and writes it to p->out_dir (as peft_adapter_save
 * does: HF PEFT format where HF PEFT has the method), metrics.jsonl,
 * loss.svg, checkpoints. Classification data needs an adapter with a head
 * (num_labels) and the other way round. */
int peft_train(peft_model *m, peft_adapter *a, const peft_train_params *p, peft_train_result *res);
/* Mean loss per target token of a JSONL file (a may be NULL). */
int peft_eval(peft_model *m, const peft_adapter *a, const char *data, int batch, int seq,
              double *loss, int64_t *n_tokens);

/* ---- training runs and tooling --------------------------------------------------
 * What the `peft` commands need beyond the calls above, so that they use this
 * header only: files, the method registry, adapters built option by option,
 * datasets loaded once and described, the memory plan, training with a
 * progress callback, merges and combinations that report what they wrote,
 * the embedding pipeline. Tooling used by one thread at a time: calls that
 * take a model report into its context (peft_last_error); the others take a
 * peft_error (NULL: not reported). */

/* A whole file into *data (malloc'ed, NUL-terminated; *len without the NUL,
 * len may be NULL). PEFT_ERR_IO naming the file when it cannot be read. */
int peft_file_read(const char *path, char **data, size_t *len, peft_error *err);
/* Writes len bytes to path atomically (a temporary file, fsync, rename):
 * readers see the old file or the new one, never a part. */
int peft_file_write_atomic(const char *path, const void *data, size_t len, peft_error *err);

/* Limits the library enforces on its inputs: bytes of one JSONL line, and
 * classification labels (data, score heads). */
size_t peft_max_line_bytes(void);
int peft_max_labels(void);
/* The process's peak resident memory so far, bytes (getrusage). */
size_t peft_rss_peak_bytes(void);
/* Whether m has a tokenizer (training and evaluation on text need one). */
int peft_model_has_tokenizer(const peft_model *m);

/* The method registry (docs/methods.md), by index 0 .. peft_method_count()-1. */
typedef struct {
    const char *name;      /* --method NAME, peft_adapter_method */
    const char *summary;   /* one line for --help */
    int n_options;         /* its options, peft_method_get_option */
    int prompt_learning;   /* virtual tokens (prompt, prefix): no packing */
    int saves_model;       /* the result is a model (full fine-tuning) */
} peft_method_info;
/* One command-line option of a method: --name VALUE, or a flag (metavar
 * NULL). Names r, alpha, dropout, target and layers are fields of
 * peft_adapter_config (peft_method_option_is_field); loraplus-lr-ratio and
 * loraplus-lr-embedding are peft_train_params'; the rest go through
 * peft_adapter_config_add. */
typedef struct {
    const char *name;
    const char *metavar;
    const char *help;
} peft_method_option;

int peft_method_count(void);
/* PEFT_ERR_INVALID for an index out of range. */
int peft_method_get(int i, peft_method_info *out);
int peft_method_get_option(int i, int k, peft_method_option *out);
/* The index of a method by name or alias, or -1. */
int peft_method_find(const char *name);
/* Whether method i lists option (its CLI name, '-' or '_' alike). */
int peft_method_has_option(int i, const char *option);
int peft_method_option_is_field(const char *option);

/* An adapter described field by field and option by option, as `peft
 * train` reads it; peft_adapter_config_init fills the defaults. */
typedef struct {
    int method;              /* peft_method_find */
    int r;                   /* rank; 0: the method's default */
    float alpha;             /* NAN: the method's default */
    float dropout;
    uint64_t layers;         /* bit per layer to transform; 0: all */
    const char *targets;     /* "q_proj,v_proj", "all-linear"; NULL: the method's default */
    int num_labels;          /* >= 2: a sequence-classification head; 0: none */
    uint64_t seed;
    char options[1024];      /* the method's own options, "key=value;..." (peft_adapter_config_add) */
} peft_adapter_config;

void peft_adapter_config_init(peft_adapter_config *c, int method);
/* Appends the method option key=value (key with '_' for '-');
 * PEFT_ERR_INVALID when it does not fit or is malformed. */
int peft_adapter_config_add(peft_adapter_config *c, const char *key, const char *value, peft_error *err);
/* The method c's options select (LoRA with use_dora: DoRA), or c->method. */
int peft_adapter_config_resolve(const peft_adapter_config *c);
/* c's options checked before any model is loaded (usage errors). */
int peft_adapter_config_check(const peft_adapter_config *c, peft_error *err);
/* Whether a target list names linears m has (before data is loaded). */
int peft_model_check_targets(peft_model *m, const char *targets);
/* A fresh adapter for m from c; base_model (NULL: m's path) is written to
 * adapter_config.json as base_model_name_or_path. */
peft_adapter *peft_adapter_new_config(peft_model *m, const peft_adapter_config *c, const char *base_model);
/* One line of what a is ("r=8 on 60 modules"; "N tensors" for methods that
 * say nothing more) into buf. */
void peft_adapter_describe(const peft_adapter *a, char *buf, size_t cap);
/* Virtual tokens a puts before every sequence (prompt and prefix tuning;
 * they take context positions); 0 for a NULL adapter. */
int peft_adapter_virtual_tokens(const peft_adapter *a);
/* Labels of a's classification head on m, or 0 without one (a may be NULL). */
int peft_adapter_num_labels(const peft_adapter *a, const peft_model *m);
/* A LoRA-based adapter's modules, its configured rank, lora_alpha and
 * scale (alpha/r, or alpha/sqrt(r) with rsLoRA); PEFT_ERR_INVALID for other
 * methods (out zeroed). */
typedef struct {
    int n_modules, r;
    float alpha, scale;
} peft_lora_info;
int peft_adapter_lora_info(const peft_adapter *a, peft_lora_info *out);

/* What an adapter on disk holds, read without its base model (configs and
 * tensor headers only): an HF PEFT folder (adapter_config.json +
 * adapter_model.safetensors, peft.c's own methods too) or a llama.cpp GGUF
 * adapter (general.type "adapter"). is_adapter 0 (and 0 returned) when path
 * is neither, e.g. a model; an adapter that cannot be read is an error
 * naming the file. Lists are comma-separated; absent numbers are 0 (alpha
 * and scale NAN). */
typedef struct {
    int is_adapter;
    char format[48];           /* "HF PEFT adapter folder" | "llama.cpp GGUF adapter" */
    char method[32];           /* peft_type lower-cased ("lora", "ia3", ...) or GGUF adapter.type */
    char base[512];            /* base_model_name_or_path, or the GGUF's general.architecture */
    char task[32];             /* task_type */
    int r;                     /* rank (AdaLoRA: init_r); -1 when GGUF tensors disagree */
    float alpha, scale;        /* lora_alpha and the scale it gives (alpha/r, alpha/sqrt(r) with rsLoRA) */
    int rslora, dora, n_virtual_tokens;
    char targets[512];         /* target_modules; GGUF: the tensor roles adapted */
    char modules_to_save[256];
    char layers[256];          /* layers_to_transform */
    int n_tensors, n_modules, n_layers;
    int64_t n_params;
    char dtypes[64];
} peft_adapter_file_info;
int peft_adapter_file_describe(const char *path, peft_adapter_file_info *out, peft_error *err);

/* Training and evaluation data: a JSONL file tokenized once (the formats of
 * docs/formats.md; the kind is found from the first line). */
typedef struct peft_dataset peft_dataset;
typedef enum {
    PEFT_DATA_TEXT = 0,
    PEFT_DATA_PROMPT_COMPLETION,
    PEFT_DATA_MESSAGES,
    PEFT_DATA_CLASSIFICATION,
    PEFT_DATA_PAIRS              /* contrastive {anchor, positive[, negative]} */
} peft_data_kind;
typedef struct {
    peft_data_kind kind;
    int n;                       /* examples */
    int n_cols;                  /* texts per example (pairs: 2 or 3; else 1) */
    int n_labels;                /* classification: the largest label + 1 */
    int n_truncated;             /* examples cut to seq tokens */
    int n_skipped;               /* lines that gave no example */
    int64_t n_tokens, n_loss_tokens;
    /* what loading saw and dropped, for the user: non-blank lines; lines
     * skipped as malformed (skip_bad); rows dropped for giving at most one
     * token, for having no loss token even whole, for losing every loss
     * token to seq (n_skipped is the sum of these four); loss tokens the
     * truncation to seq cut (rows kept or not) */
    int n_lines, n_bad, n_empty, n_no_target, n_cut_no_target;
    int64_t n_loss_cut;
    /* whole (untruncated) lengths in tokens of the rows that tokenized:
     * smallest, median, 95th percentile (a seq of len_p95 keeps 95 % of
     * them whole), largest (len_max keeps all whole) */
    int len_min, len_median, len_p95, len_max;
    /* 0: rows as the kind, 1: Alpaca rows read as prompt/completion,
     * 2: ShareGPT rows read as messages (docs/formats.md) */
    int style;
} peft_dataset_info;

/* seq: truncate examples to this many tokens (<= 0: no limit); skip_bad:
 * skip and count malformed lines instead of failing. */
peft_dataset *peft_dataset_load(peft_model *m, const char *path, int seq, int skip_bad);
/* Moves a fraction (0, 1) of d's examples, chosen by seed, into a new set. */
peft_dataset *peft_dataset_split(peft_model *m, peft_dataset *d, double fraction, uint64_t seed);
void peft_dataset_free(peft_dataset *d);
void peft_dataset_get_info(const peft_dataset *d, peft_dataset_info *out);

/* Pooling of sentence embeddings (peft_embed_info.pooling bits, in the
 * order they are concatenated). */
enum {
    PEFT_POOL_CLS = 1 << 0,
    PEFT_POOL_MAX = 1 << 1,
    PEFT_POOL_MEAN = 1 << 2,
    PEFT_POOL_MEAN_SQRT = 1 << 3,
    PEFT_POOL_LAST = 1 << 4,
};
typedef struct {
    int dim;                     /* floats per embedding */
    int max_seq_length;          /* tokens per sentence, specials included */
    int d_model;
    unsigned pooling;            /* PEFT_POOL_* bits */
    int normalize;               /* L2 after pooling */
    char source[128];            /* where the pipeline came from: "modules.json", "gguf", "default" */
} peft_embed_info;
/* m's embedding pipeline (peft_model_embed); PEFT_ERR_UNSUPPORTED for a decoder. */
int peft_model_embed_info(peft_model *m, peft_embed_info *out);
/* The pipeline read once for many texts (peft_model_embed reads it on
 * every call): NULL with the reason in peft_last_error. */
typedef struct peft_embedder peft_embedder;
peft_embedder *peft_embedder_new(peft_model *m);
void peft_embedder_free(peft_embedder *e);
void peft_embedder_info(const peft_embedder *e, peft_embed_info *out);
/* The embedding of one text of len bytes (it may hold NUL bytes) into out
 * (info.dim floats), with the adapter attached to the model. */
int peft_embedder_text(peft_embedder *e, const char *text, size_t len, float *out);

/* Training on loaded datasets, with what peft_train does not show. */
typedef struct {
    int step, total_steps, epoch;
    double loss, lr, grad_norm;
    double tokens_per_s, elapsed_s, eta_s;
    int is_eval;                 /* an evaluation: val_* are set */
    double val_loss, val_ppl;
    double val_acc;              /* classification: accuracy, else NAN */
    int64_t tokens;              /* input tokens processed so far */
} peft_train_progress;
typedef void (*peft_train_progress_fn)(const peft_train_progress *p, void *user);

typedef struct {
    peft_train_progress_fn progress;   /* after every step and evaluation (NULL: none) */
    void *user;
    float pair_scale;            /* contrastive data: the similarity scale (0: 20, as MultipleNegativesRankingLoss) */
    int pair_pool;               /* contrastive data: PEFT_POOL_MEAN (0 too) or PEFT_POOL_CLS */
    /* Polled after every step (NULL: never), with user: non-zero ends the
     * run there as a finished one ends, but resumable: a checkpoint of that
     * step (also without save_every), the adapter so far, metrics.jsonl and
     * loss.svg are written, and peft_train_report.interrupted is set. The
     * library installs no signal handler: a caller that stops on SIGINT
     * sets a flag in its own handler and returns it here. */
    int (*should_stop)(void *user);
} peft_train_hooks;

typedef struct {
    int steps;
    double first_loss, last_loss, val_loss_before, val_loss_after; /* NAN without validation */
    double val_accuracy;         /* classification adapters; NAN otherwise */
    double seconds, tokens_per_s;    /* training only: evaluations and checkpoints excluded */
    int64_t tokens;
    int checkpoint_every;        /* the checkpointing the run trained with (0: off) */
    size_t graph_bytes;          /* the training graph: activations, gradients, scratch */
    int interrupted;             /* should_stop ended the run before its last step */
    int step, total_steps;       /* where the run is now (the checkpoint's step when interrupted), of how many */
} peft_train_report;

/* A run folder (peft train's --out) or a checkpoint folder, as the trainer
 * left it: what a new run may do with it. Names are ", "-separated and cut
 * with "..." when long. */
typedef struct {
    int exists, n_entries;       /* the folder exists; entries in it (0: empty; empty files of names peft does
                                    not write, a shell redirect's log, are not counted) */
    int is_run;                  /* it holds a marker only training writes (run.json, metrics.jsonl, LATEST) */
    int n_temporaries;           /* entries that are temporaries (<name>.tmp.<pid>) of writes a kill cut short */
    char peft_files[512];        /* the entries training (or peft export) writes there */
    char foreign[512];           /* the others ("" when none): never removed */
    int has_checkpoint;          /* a complete checkpoint to resume (LATEST's, or the folder itself) */
    char checkpoint[4096];       /* its folder */
    char run_dir[4096];          /* the run folder it belongs to (dir, or a checkpoint folder's parent) */
    int step, total_steps;       /* the checkpoint's step and the run's steps (-1: unknown) */
    int finished;                /* run.json says the run ended with its final adapter */
    char *run_config;            /* the run's "config" (peft_train_params.run_config, re-serialised), or NULL */
} peft_run_folder;

/* Fills out for dir (a missing folder is not an error: exists = 0);
 * PEFT_ERR_FORMAT naming the file for a run.json or LATEST that cannot be
 * read. Release with peft_run_folder_release. */
int peft_run_folder_inspect(const char *dir, peft_run_folder *out, peft_error *err);
void peft_run_folder_release(peft_run_folder *f);
/* Removes what training wrote in dir (adapter or model files, metrics,
 * plots, run.json, LATEST, checkpoint-N folders, temporaries), keeping
 * empty files of other names; refuses (PEFT_ERR_INVALID, nothing removed) a folder that is not a
 * run folder or holds anything else, naming it. */
int peft_run_folder_clear(const char *dir, peft_error *err);

/* The memory a run will take, bytes, before it takes it: base (what the
 * process holds now, less the model files already resident), weights (the
 * model files a step reads), grads and optimizer (the adapter's gradients
 * and AdamW moments), the training graph (graph_total = graph_layers +
 * graph_hooks + graph_shared; graph_layer: one layer's activations), the
 * evaluation graph (0 without validation); peak is their sum. */
typedef struct {
    size_t base, weights, grads, optimizer, eval_graph, peak;
    size_t graph_total, graph_layers, graph_layer, graph_hooks, graph_shared;
} peft_memory_plan;

/* The plan of training a on train (val may be NULL) with p and gradient
 * checkpointing every checkpoint_every layers (0: off). p's data, val,
 * val_split and skip_bad are not used here and by peft_train_dataset. */
int peft_train_plan(peft_model *m, peft_adapter *a, const peft_dataset *train, const peft_dataset *val,
                    const peft_train_params *p, int checkpoint_every, peft_memory_plan *out);
/* The cheapest checkpointing whose plan fits budget bytes into
 * *checkpoint_every (0: everything kept) and *out; PEFT_ERR_NOMEM naming
 * the sizes when nothing fits. */
int peft_train_fit(peft_model *m, peft_adapter *a, const peft_dataset *train, const peft_dataset *val,
                   const peft_train_params *p, size_t budget, int *checkpoint_every, peft_memory_plan *out);
/* peft_train on loaded data: trains a, writes it to p->out_dir with the
 * metrics and checkpoints. h may be NULL. */
int peft_train_dataset(peft_model *m, peft_adapter *a, const peft_dataset *train, const peft_dataset *val,
                       const peft_train_params *p, const peft_train_hooks *h, peft_train_report *out);
/* Mean loss of d (per target token; classification: per example, with
 * *accuracy; contrastive pairs: the in-batch ranking loss per anchor, with
 * *accuracy the fraction ranked first), a may be NULL. *accuracy is NAN
 * where it does not apply. h: the pair settings (NULL: defaults). */
int peft_eval_dataset(peft_model *m, const peft_adapter *a, const peft_dataset *d, int batch, int seq,
                      const peft_train_hooks *h, double *loss, int64_t *n, double *accuracy);

/* ---- classification ------------------------------------------------------------
 * Sequence classification with a's head, or (a NULL, or an adapter
 * without one) the model's own (a *ForSequenceClassification folder), as
 * transformers' AutoModelForSequenceClassification with PeftModel in eval
 * mode (docs/api.md, "Classification"): each input tokenized as
 * tokenizer(text, text_pair, truncation=True, max_length=seq), the head on
 * the row its family pools (decoders: the last token; BERT: the pooled
 * [CLS]; RoBERTa: <s> through classifier.dense). Inputs run batch at a
 * time, padded; the result does not depend on batch. */
/* Labels of the head a (or else m) classifies with, or 0 when neither has one. */
int peft_classifier_num_labels(const peft_model *m, const peft_adapter *a);
typedef struct {
    int batch;   /* inputs per forward (8) */
    int seq;     /* tokens per input at most, the template's included (0: the model's context) */
} peft_classify_params;
peft_classify_params peft_classify_default_params(void);
/* n inputs: texts[i], paired with text_pairs[i] where text_pairs is not
 * NULL and its entry is not NULL (token types, as BERT's pairs). logits
 * and probs (softmax of the logits; either may be NULL) receive
 * n * peft_classifier_num_labels floats, row i = input i. p NULL: defaults.
 * PEFT_ERR_INVALID without a head, naming the input that gives no tokens
 * or fails to tokenize. */
int peft_classify(peft_model *m, const peft_adapter *a, const char *const *texts, const char *const *text_pairs, int n,
                  const peft_classify_params *p, float *logits, float *probs);

/* peft_adapter_combine naming each input (names[i], e.g. its folder, in
 * the error messages; names may be NULL). */
peft_adapter *peft_adapter_combine_named(peft_model *m, const peft_adapter *const *adapters, const double *weights,
                                         const char *const *names, int n, const peft_combine_params *p);
/* Whether type is a combination type (peft_combine_params.type). */
int peft_combine_type_check(const char *type, peft_error *err);

/* What a merge wrote: the base tensors it changed, by the dtype they were
 * written in, and the adapter's modules folded in. */
typedef struct {
    int n_changed;
    int n_modules;
    int n_by_dtype[PEFT_DT_COUNT];
} peft_merge_summary;
/* Whether outtype is one peft_adapter_merge_as takes (any case). */
int peft_merge_outtype_check(const char *outtype, peft_error *err);
/* peft_adapter_merge_as, with the summary (may be NULL). */
int peft_adapter_merge_report(peft_model *m, const peft_adapter *a, const char *out_path, const char *outtype,
                              peft_merge_summary *out);

/* ---- probe: which linears to adapt, on the user's data -------------------
 * `peft probe` (docs/search.md, "choosing parameters: peft probe"). On
 * `batches` batches of a training JSONL (any data kind `peft train` takes,
 * its training loss), the gradient G of the loss with respect to every
 * probed linear's frozen weight; per module and rank r of `ranks`, the
 * first-order loss decrease of the best rank-r update of unit Frobenius
 * norm, sqrt(Σ_{i<=r} σ_i(G)²), its cost r·(in + out) and the energy
 * fraction Σ_{i<=r} σ_i² / ‖G‖_F²; with a budget, a proposal of modules
 * and ranks (greedy by captured energy per parameter) as a `peft train
 * --config` file with HF LoraConfig fields. G is exact (f32): the probe
 * refuses, naming the size, when the gradients exceed max_bytes. */
typedef void (*peft_probe_progress_fn)(int batch, int n_batches, void *user);
typedef struct {
    int batches;             /* default 8 */
    int batch;               /* sequences per batch (default 4) */
    int seq;                 /* max tokens per sequence (default 256, or the model's context if shorter) */
    const int *ranks;        /* candidate ranks, increasing; NULL: 4, 8, 16 */
    int n_ranks;
    double budget_fraction;  /* of the model's parameters, e.g. 0.005; 0: no proposal unless budget_params */
    int64_t budget_params;   /* > 0: the budget in parameters (wins over budget_fraction) */
    const char *targets;     /* kinds to probe ("q_proj,v_proj"); NULL: every linear of the blocks */
    uint64_t layers;         /* bit per layer to probe; 0: all */
    size_t max_bytes;        /* limit on the gradients' memory; 0: 8 GiB */
    float alpha_per_rank;    /* the proposal's lora_alpha = this · r per module (0: 2, alpha 16 at r 8) */
    uint64_t seed;           /* batch order, a classification head's init (default 42) */
    int skip_bad;            /* skip bad data lines */
    peft_probe_progress_fn progress;   /* after each batch, or NULL */
    void *user;
} peft_probe_params;

peft_probe_params peft_probe_default_params(void);
typedef struct peft_probe peft_probe;
/* Checks p against m (ranks, budget, memory) without data: what the CLI
 * reports before loading anything. */
int peft_probe_check(peft_model *m, const peft_probe_params *p);
/* Measures (NULL on error, peft_last_error says why: a bad parameter, data
 * with fewer examples than batches x batch, memory). */
peft_probe *peft_probe_run(peft_model *m, const char *data_path, const peft_probe_params *p);
void peft_probe_free(peft_probe *pr);
/* The measurement as JSON (schema: docs/search.md), malloc'ed. */
char *peft_probe_json(const peft_probe *pr);
/* The proposal as a `peft train --config` JSON object, malloc'ed; NULL
 * (peft_last_error set) when there is no budget. */
char *peft_probe_config_json(const peft_probe *pr);
/* A ranked table of the top modules (0: all), malloc'ed text. */
char *peft_probe_table(const peft_probe *pr, int top);
/* Writes what is not NULL: the JSON, the SVG heat map (layers x module
 * kinds), the config (atomically). */
int peft_probe_save(const peft_probe *pr, const char *json_path, const char *svg_path, const char *config_path);
/* The proposal again for another budget (parameters), without measuring
 * again: for a search over budgets. A budget below the smallest candidate
 * is an error (the proposal unchanged). */
int peft_probe_set_budget(peft_probe *pr, int64_t budget_params);

#ifdef __cplusplus
}
#endif
#endif
