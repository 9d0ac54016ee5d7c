/* llama.c — the Llama family: Llama 2/3, SmolLM2, Mistral and Qwen2.
 *
 * Block (pre-norm):  h = rmsnorm(x); q,k,v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ (+ b where
 *                    the file has biases: Qwen2); rope(q, k);
 *                    x += attn(q, K, V)·Woᵀ;
 *                    h = rmsnorm(x); x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ
 * llama.cpp's converter reorders the rows of each head of Q and K for its
 * interleaved RoPE (LlamaModel.permute), except for Qwen2. */
#include "model/arch.h"
#include "model/model.h"
#include "core/limits.h"

#include <cjson/cJSON.h>

/* nn.Embedding(padding_idx = pad_token_id): that row gets no gradient from
 * lookups (matters for full fine-tuning only). */
int arch_hf_pad_token(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    int rc = peft_json_get_int(root, "pad_token_id", -1, false, INT32_MIN, PEFT_MAX_VOCAB, &c->pad_token_id, path, err);
    if (rc) return rc;
    if (c->pad_token_id < 0) c->pad_token_id = -1;   /* LLaMA's configs say -1 for "none" */
    if (c->pad_token_id >= c->vocab)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"pad_token_id\" %d is not below \"vocab_size\" %d", path,
                         c->pad_token_id, c->vocab);
    return 0;
}

static int llama_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    return arch_hf_pad_token(root, c, path, err);
}

#define B(r) (1u << (r))
const arch_target arch_llama_targets[] = {
    {"q_proj", B(ROLE_Q)},       {"k_proj", B(ROLE_K)},       {"v_proj", B(ROLE_V)},
    {"o_proj", B(ROLE_O)},       {"gate_proj", B(ROLE_GATE)}, {"up_proj", B(ROLE_UP)},
    {"down_proj", B(ROLE_DOWN)}, {"self_attn.q_proj", B(ROLE_Q)}, {"self_attn.k_proj", B(ROLE_K)},
    {"self_attn.v_proj", B(ROLE_V)}, {"self_attn.o_proj", B(ROLE_O)}, {"mlp.gate_proj", B(ROLE_GATE)},
    {"mlp.up_proj", B(ROLE_UP)}, {"mlp.down_proj", B(ROLE_DOWN)}, {NULL, 0}};

#define LLAMA_COMMON                                                                                          \
    .kind = PEFT_ARCH_LLAMA, ARCH_LLAMA_HF_SIZES, .hf_head_dim = "head_dim",                                   \
    .default_n_ctx = 2048, .default_norm_eps = 1e-6f, .default_tied = false, .hf_extra = llama_hf_extra,        \
    ARCH_LLAMA_NAMES, ARCH_LLAMA_LINEARS,                                                                      \
    .hf_norm = {[NORM_ATTN] = "input_layernorm", [NORM_MLP] = "post_attention_layernorm"},                     \
    .gguf_norm = {[NORM_ATTN] = "attn_norm", [NORM_MLP] = "ffn_norm"}, .norm = ARCH_NORM_RMS, .act = ARCH_ACT_SWIGLU,                     \
    .pos = ARCH_POS_ROPE, .targets = arch_llama_targets,                                                            \
    .target_help = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear",              \
    .lora_targets = B(ROLE_Q) | B(ROLE_V), .ia3_ff = B(ROLE_DOWN)

const arch_desc arch_llama = {
    .name = "llama", LLAMA_COMMON, .gguf_permute_qk = true,
    .ia3_targets = B(ROLE_K) | B(ROLE_V) | B(ROLE_DOWN),
    .cls_class = "LlamaForSequenceClassification", .gguf_lora_arch = "llama",
};

const arch_desc arch_mistral = {
    .name = "mistral", LLAMA_COMMON, .gguf_permute_qk = true,
    .ia3_targets = B(ROLE_K) | B(ROLE_V) | B(ROLE_DOWN),
    .cls_class = "MistralForSequenceClassification", .gguf_lora_arch = "llama",   /* convert_hf_to_gguf's LlamaModel */
};

const arch_desc arch_qwen2 = {
    .name = "qwen2", LLAMA_COMMON, .gguf_permute_qk = false,
    .ia3_targets = B(ROLE_Q) | B(ROLE_V) | B(ROLE_DOWN),   /* HF peft's qwen2 entry */
    .cls_class = "Qwen2ForSequenceClassification", .gguf_lora_arch = "qwen2",
};
#undef B
