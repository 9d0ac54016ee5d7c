/* model.h — architectures as a config plus frozen weights plus a block
 * recipe. Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2) and GPT-2, loaded
 * from Hugging Face folders or GGUF files into one in-memory layout: HF's
 * (out, in) matrices, HF's Q/K row order (GGUF's llama permutation is undone
 * at load), weights in their stored dtype. */
#ifndef PEFT_MODEL_H
#define PEFT_MODEL_H

#include "core/ctx.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "core/limits.h"
#include "kernels/kernels.h"
#include "model/arch.h"
#include "tokenizer/tokenizer.h"

struct model_config {
    const arch_desc *desc;    /* the architecture (model/arch.h) */
    peft_arch arch;           /* desc->kind */
    char arch_name[32];       /* desc->name: llama, mistral, qwen2, gpt2, ... */
    int n_layer, d_model, n_head, n_kv_head, head_dim, d_ff, vocab, n_ctx;
    float norm_eps;
    float rope_theta;
    int rope_dim;             /* rotated dims per head (head_dim unless partial) */
    /* llama3 rope scaling (factor 0: none) */
    float rope_factor, rope_low_freq, rope_high_freq;
    int rope_orig_ctx;
    bool tied;
    int pad_token_id;         /* HF llama-family embedding padding_idx, -1: none */
    /* attention scores (block_attn_opts) */
    float attn_scale;         /* on q·kᵀ; 0: 1/sqrt(head_dim) (Gemma 2: 1/sqrt(query_pre_attn_scalar)) */
    float attn_softcap, final_softcap;   /* > 0: c·tanh(x/c) on the scores / the logits (Gemma 2) */
    int sliding_window;       /* > 0: the layers set in `sliding` see only this many positions back */
    uint64_t sliding[PEFT_MAX_LAYERS / 64];
    float embed_scale;        /* token embeddings times this (Gemma: sqrt(d)); 0: 1 */
    int pos_offset;           /* position row of token 0 (RoBERTa: padding_idx + 1); the table has n_ctx + offset rows */
    int n_types;              /* token-type embeddings (BERT's type_vocab_size); 0: none */
};

typedef struct {
    kern_weight w;
    float *b;         /* f32 bias (rows), or NULL */
    bool present;
} model_linear;

/* A layer's norms (model/arch.h names the ones a family has): before
 * attention and before the MLP; Qwen3's per-head q and k norms; Gemma 2's
 * norms of the attention and MLP outputs. NULL where absent. */
typedef struct {
    float *norm_w[MODEL_N_NORMS], *norm_b[MODEL_N_NORMS];
    model_linear lin[ROLE_N_LINEAR];
} model_layer;

/* The error of a method whose targets select no linear of m: names the
 * targets to pass when the family has no default (HF peft has none for
 * Phi-3). */
int model_no_targets(const peft_model *m, const char *what, peft_err *err);

/* Floats of norm `which`: head_dim for the per-head q/k norms, else d_model. */
int model_norm_len(const peft_model *m, int which);

typedef struct {
    int cap;              /* positions per layer */
    float *k, *v;         /* per layer (n_kv, cap, hd) */
} model_kv;

struct adapter;

/* Adapters one sequence runs at once (peft_session_set_adapters). */
#define MODEL_MAX_MIX 16

/* One sequence's inference state (a peft_session's core): the adapters
 * applied to it — none, one of any method at scale 1, or several additive
 * ones each times a scale — and its KV cache. The model itself is read
 * only in the forward, so any number of sequences run on it at once. */
typedef struct model_seq {
    const struct adapter *ad[MODEL_MAX_MIX];
    float scale[MODEL_MAX_MIX];
    int n_ad;
    model_kv kv;
    int n_past;           /* positions in the cache (virtual ones included) */
} model_seq;

/* A forward's workspace, grown on demand. */
typedef struct {
    float *p;
    size_t n;
} model_ws;

/* A sequence with its own workspace and thread count: what single-sequence
 * callers (generation, embeddings, merge checks, tests) run on. */
typedef struct {
    model_seq seq;
    model_ws ws;
    int nt;               /* 0: the context's */
} model_state;

struct peft_model {
    peft_ctx *ctx;
    /* peft_adapter_attach's adapter: what the model-level calls
     * (peft_model_logits, peft_generate, peft_model_embed) run with; a
     * setting made before the model is shared, like the compute precision */
    const struct adapter *attached;
    char *path;
    char source[8];       /* "hf" or "gguf" */
    model_config cfg;
    model_layer *layers;
    kern_weight tok_emb, pos_emb, lm_head, type_emb;
    float *out_norm_w, *out_norm_b;
    float *score;         /* classification head (n_labels, d) of a *ForSequenceClassification folder, or NULL */
    float *score_b;       /* its bias (encoders' classifier), or NULL */
    float *pooler_w, *pooler_b;   /* BERT's pooler (d, d), (d), f32, or NULL */
    float *cls_dw, *cls_db;       /* a RoBERTa classifier's classifier.dense (d, d), (d), or NULL */
    int n_labels;
    float *rope_cos, *rope_sin;   /* (n_ctx, rope_dim / 2) */
    bpe_tokenizer *tok;
    st_archive *st;
    gguf_file *gguf;
    void **owned;         /* buffers freed with the model */
    int n_owned, cap_owned;
    int64_t n_params;
    char dtype_summary[256];
    uint16_t *bf16_packs;  /* all bf16 packs (peft_model_set_compute BF16), or NULL */
    size_t bf16_bytes;
};

/* Loading (model/load.c): fills m from m->path. */
int model_load_hf(peft_model *m, peft_err *err);
int model_load_gguf(peft_model *m, peft_err *err);
int model_config_from_hf_json(const char *path, model_config *c, peft_err *err);
int model_config_from_gguf(const gguf_file *g, model_config *c, peft_err *err);
/* Derived setup shared by both sources: rope tables, checks. */
int model_finish_load(peft_model *m, peft_err *err);
/* Registers a malloc'ed buffer for release with the model. */
int model_own(peft_model *m, void *p, peft_err *err);
/* Bytes of the model's mapped files (its tensors are read from them in
 * place); *resident (may be NULL): how much of them this process holds now. */
size_t model_mapped_bytes(const peft_model *m, size_t *resident);

/* llama.cpp's converter reorders the rows of each head of Q and K (llama
 * family except Qwen2) for its interleaved RoPE: within a head of hd rows,
 * GGUF row 2i + j holds HF row j·hd/2 + i. model_gguf_permutes says whether
 * linear r of m is reordered and with how many heads; model_permute_rows
 * moves rows (each row_bytes long, any dtype) HF → GGUF (to_gguf) or back. */
bool model_gguf_permutes(const peft_model *m, model_linear_role r, int *n_heads);
void model_permute_rows(void *dst, const void *src, int64_t rows, size_t row_bytes, int n_heads, bool to_gguf);

/* HF module path of a linear ("model.layers.3.self_attn.q_proj"), and the
 * short target name ("q_proj", GPT-2 "c_attn"). */
int model_linear_hf_path(const peft_model *m, int layer, model_linear_role r, char *buf, size_t cap);
/* The prefix of the HF names adapters and saved models give m's tensors:
 * the family's ("transformer." for GPT-2, whose saved models always have
 * it; "bert." for BERT, as BertForSequenceClassification names them, also
 * when the base folder is a bare BertModel such as MiniLM, whose own files
 * put the modules at the top). */
const char *model_hf_prefix(const peft_model *m);
const char *model_linear_name(const peft_model *m, model_linear_role r);

/* q, k and v of a layer can share packs (one input, q and k rows multiples
 * of 32); model_qkv_fused: they do (bf16 compute): the forward pack of q
 * continues into k's and v's (one pack with N = q + k + v rows) and their
 * backward packs are views of one pack over the concatenated outputs. */
bool model_qkv_fusable(const model_layer *L);
bool model_qkv_fused(const peft_model *m, int l);

/* Inference forward (model/forward.c) of n sequences at once: sequence i
 * appends n_ids[i] tokens (ids: all of them, sequence after sequence) at
 * its positions n_past.., using and extending its KV cache. The base
 * model's products run once over every row; each sequence's adapters on its
 * own rows (model_seq_mixable says which adapters allow sequences with
 * other adapters in the same forward). logits: (n, vocab), each sequence's
 * last token, or NULL. On failure no sequence has changed. */
int model_forward_seqs(const peft_model *m, model_seq *const *seqs, int n, const int32_t *ids, const int *n_ids,
                       float *logits, model_ws *ws, int nt, peft_err *err);
/* One sequence: T tokens; logits (T, vocab) when all_logits, else (1,
 * vocab) for the last token; may be NULL. types: token types (NULL: all
 * 0); hidden (may be NULL): the last layer's hidden states of the real
 * tokens (T, d). An encoder has no LM head (logits must be NULL) and no
 * cache: every call is a whole sequence, attended in both directions. */
int model_forward_ex(const peft_model *m, model_state *st, const int32_t *ids, const int32_t *types, int T,
                     float *logits, bool all_logits, float *hidden, peft_err *err);
int model_forward(const peft_model *m, model_state *st, const int32_t *ids, int T, float *logits, bool all_logits,
                  peft_err *err);

/* A state with adapter a (NULL: the base) and an empty cache; nothing is
 * allocated until the first forward. */
void model_state_init(model_state *st, const struct adapter *a);
void model_state_free(model_state *st);
/* Forgets the cache (keeps its memory). */
void model_state_reset(model_state *st);
void model_seq_free(model_seq *s);
void model_ws_free(model_ws *w);
/* Whether a's whole effect is in hooks over rows (linears, sub-layers,
 * virtual tokens and prefix rows at a sequence's start), so sequences with
 * other adapters can share a forward; additive: also only deltas added to
 * linear outputs, so it can be scaled and summed with others. */
bool model_adapter_mixable(const struct adapter *a);
bool model_adapter_additive(const struct adapter *a, const peft_model *m);

#endif
