/* arch.h — an architecture is a descriptor: one table per model type, in
 * src/model/arch/<family>.c, listed once in src/model/arch/registry.c.
 *
 * The descriptor says what the HF config.json and GGUF metadata call each
 * size, what the tensors are named in either source (and whether a
 * converter reordered rows), and how a block is built: norm kind,
 * activation, positional scheme, biases, attention. The loaders
 * (config.c, load.c), the block recipe (block.c, shared by the inference
 * forward and the training graph) and the adapters' naming read only this
 * table, so no family name appears outside its own file. */
#ifndef PEFT_MODEL_ARCH_H
#define PEFT_MODEL_ARCH_H

#include "core/core.h"
#include "formats/gguf.h"

#include <stdbool.h>
#include <stdint.h>

/* Hook points: one role per weight of a block, the unit LoRA & co attach to. */
typedef enum {
    ROLE_Q = 0, ROLE_K, ROLE_V, ROLE_QKV, ROLE_O, ROLE_GATE, ROLE_UP, ROLE_DOWN, ROLE_N_LINEAR
} model_linear_role;

/* The norms of a layer (model_layer.norm_w), by where they sit. */
enum { NORM_ATTN = 0, NORM_MLP, NORM_Q, NORM_K, NORM_ATTN_OUT, NORM_MLP_OUT, MODEL_N_NORMS };

typedef enum { ARCH_NORM_RMS = 0, ARCH_NORM_LAYER } arch_norm;
/* The MLP: gated SiLU (silu(gate) ⊙ up, then down), a plain tanh GELU
 * (gelu(up), then down), or gated tanh GELU (Gemma's GeGLU). */
typedef enum { ARCH_ACT_SWIGLU = 0, ARCH_ACT_GELU_TANH, ARCH_ACT_GEGLU_TANH, ARCH_ACT_GELU_ERF } arch_act;
/* Positions: rotary on q and k, or a learned table added to the input. */
typedef enum { ARCH_POS_ROPE = 0, ARCH_POS_LEARNED } arch_pos;

/* The sequence-classification head transformers puts on the family:
 *   LAST    score (n_labels, d) on the last non-padding token (decoders)
 *   POOLER  classifier (n_labels, d) + bias on the base's pooler,
 *           tanh(Wp·h₀ + bp), of the first token (BERT)
 *   DENSE   classifier.out_proj(tanh(classifier.dense(h₀))), both with
 *           biases and both trained, on the first token (RoBERTa) */
typedef enum { ARCH_CLS_LAST = 0, ARCH_CLS_POOLER, ARCH_CLS_DENSE } arch_cls;

typedef struct model_config model_config;
struct cJSON;

/* A short target name of a linear and the roles it selects (HF peft's
 * suffix matching: GPT-2's "c_proj" is both attn.c_proj and mlp.c_proj). */
typedef struct {
    const char *name;
    uint32_t roles;   /* bit (1u << model_linear_role) */
} arch_target;

typedef struct arch_desc {
    const char *name;          /* config.json model_type and GGUF general.architecture */
    int kind;                  /* peft_arch of include/peft.h (reported by peft_model_info) */

    /* ---- configuration ---- */
    /* config.json keys of the sizes (NULL: the family has none) */
    const char *hf_d_model, *hf_n_layer, *hf_n_head, *hf_n_kv_head, *hf_head_dim, *hf_d_ff, *hf_n_ctx,
        *hf_norm_eps;
    int default_n_ctx;         /* when config.json does not say */
    float default_norm_eps;
    bool default_tied;         /* tie_word_embeddings when absent */
    int d_ff_mult;             /* d_ff = mult · d_model when the config gives none (0: required) */
    /* The family's own config.json options (rope scaling, activation
     * checks, padding index), after the sizes; NULL: none. */
    int (*hf_extra)(const struct cJSON *root, model_config *c, const char *path, peft_err *err);
    /* The same for GGUF metadata (keys "<name>.…"); NULL: none. */
    int (*gguf_extra)(const gguf_file *g, model_config *c, peft_err *err);

    /* ---- tensor names (printf formats, %d = layer; ".weight"/".bias" appended) ---- */
    const char *hf_prefix;     /* what a saved model puts before the names below ("transformer."); a
                                  checkpoint may omit it (probed on hf_tok_emb); lm_head never has it */
    const char *hf_layer;      /* "model.layers.%d" */
    const char *hf_lin[ROLE_N_LINEAR];   /* within a layer; NULL: the family has no such linear */
    const char *hf_norm[MODEL_N_NORMS];   /* within a layer, by NORM_*; NULL: the family has none there */
    const char *hf_tok_emb, *hf_pos_emb, *hf_out_norm, *hf_lm_head;
    const char *hf_type_emb;   /* token-type embeddings (BERT), NULL: none */
    const char *gguf_out_norm; /* NULL: "output_norm" (BERT: "token_embd_norm", at the input) */
    const char *const *gguf_lin;          /* within "blk.%d" (arch_gguf_lin for llama.cpp's usual names) */
    const char *gguf_norm[MODEL_N_NORMS];
    bool hf_conv1d;            /* HF stores linears as (in, out): GPT-2's Conv1D (fan_in_fan_out) */
    bool gguf_permute_qk;      /* llama.cpp's converter reorders each head's Q/K rows for interleaved RoPE */

    /* ---- the block ---- */
    arch_norm norm;
    bool norm_bias;            /* norms carry a bias */
    arch_act act;
    arch_pos pos;
    bool lin_bias;             /* every linear has a bias (else a bias is loaded where the file has one) */
    bool fused_gate_up;        /* one linear (ROLE_UP, 2·d_ff rows: gate then up) feeds the gated MLP (Phi-3) */
    bool norm_plus_one;        /* RMSNorm scales by 1 + w, HF storing w (Gemma; llama.cpp's GGUF stores 1 + w) */
    bool embed_scale;          /* token embeddings times sqrt(d_model) (Gemma) */
    /* encoders (BERT): every token sees every other (padding kept out by
     * segments), each sub-layer is x = norm(x + f(x)) (post-norm, the
     * layer's NORM_ATTN after attention and NORM_MLP after the MLP), the
     * out norm is applied to the embeddings instead of the last layer's
     * output, and there is no LM head. */
    bool encoder;

    /* ---- adapters ---- */
    const arch_target *targets;   /* short names accepted by --target, NULL-terminated; the first match of a
                                     role set is the name written to adapter_config.json */
    const char *target_help;      /* "q_proj, k_proj, ... or all-linear" */
    uint32_t lora_targets;        /* HF peft's default target_modules for this model type */
    uint32_t ia3_targets, ia3_ff; /* HF peft's IA3 defaults (target and feed-forward modules) */
    const char *cls_class;        /* transformers' sequence-classification class */
    arch_cls cls;                 /* its head */
    const char *hf_pooler;        /* the base's pooler (ARCH_CLS_POOLER), under the prefix: "pooler.dense" */
    const char *gguf_lora_arch;   /* general.architecture of a llama.cpp LoRA for this model */
} arch_desc;

/* Every descriptor, NULL-terminated (registry.c). */
const arch_desc *const *arch_registry(void);
/* The descriptor of a config.json model_type or GGUF architecture; NULL
 * when unknown. */
const arch_desc *arch_find(const char *name);
/* "llama, mistral, qwen2, gpt2": the names arch_find knows, for messages. */
const char *arch_known_names(char *buf, size_t cap);

/* Shared by the Llama-like families (llama.c): the q_proj … down_proj
 * target names, and config.json's pad_token_id (the embedding's
 * padding_idx; -1: none). */
extern const arch_target arch_llama_targets[];
int arch_hf_pad_token(const struct cJSON *root, model_config *c, const char *path, peft_err *err);

/* Designated initializers the Llama-like descriptors share: transformers'
 * config.json size keys (head_dim apart: not every family has one) and the
 * Llama module names of HF and GGUF files (the linears apart: Phi-3 fuses
 * them). */
#define ARCH_LLAMA_HF_SIZES                                                                                    \
    .hf_d_model = "hidden_size", .hf_n_layer = "num_hidden_layers", .hf_n_head = "num_attention_heads",         \
    .hf_n_kv_head = "num_key_value_heads", .hf_d_ff = "intermediate_size", .hf_n_ctx = "max_position_embeddings", \
    .hf_norm_eps = "rms_norm_eps"
#define ARCH_LLAMA_NAMES                                                                                       \
    .hf_prefix = "", .hf_layer = "model.layers.%d", .hf_tok_emb = "model.embed_tokens", .hf_out_norm = "model.norm", \
    .hf_lm_head = "lm_head", .gguf_lin = arch_gguf_lin
#define ARCH_LLAMA_LINEARS                                                                                     \
    .hf_lin = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", NULL, "self_attn.o_proj",           \
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}

/* llama.cpp's usual names of a block's linears in GGUF files. */
extern const char *const arch_gguf_lin[ROLE_N_LINEAR];

#endif
