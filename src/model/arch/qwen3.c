/* qwen3.c — Qwen3: the Llama block with an RMSNorm over each head of q and
 * of k (q_norm, k_norm: head_dim weights) after the projections and before
 * RoPE; no q/k/v biases; an explicit head_dim (q width need not be d).
 * llama.cpp's converter (Qwen3Model, from Qwen2Model) keeps HF's Q/K row
 * order. */
#include "model/arch.h"
#include "model/model.h"
#include "core/limits.h"

#include <cjson/cJSON.h>

#define B(r) (1u << (r))
static int qwen3_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window")))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: qwen3 option use_sliding_window = true is not supported", path);
    return arch_hf_pad_token(root, c, path, err);
}

const arch_desc arch_qwen3 = {
    .name = "qwen3",
    .kind = PEFT_ARCH_LLAMA,
    ARCH_LLAMA_HF_SIZES,
    .hf_head_dim = "head_dim",
    .default_n_ctx = 40960,
    .default_norm_eps = 1e-6f,
    .default_tied = true,
    .hf_extra = qwen3_hf_extra,
    ARCH_LLAMA_NAMES,
    ARCH_LLAMA_LINEARS,
    .hf_norm = {[NORM_ATTN] = "input_layernorm", [NORM_MLP] = "post_attention_layernorm",
                [NORM_Q] = "self_attn.q_norm", [NORM_K] = "self_attn.k_norm"},
    .gguf_norm = {[NORM_ATTN] = "attn_norm", [NORM_MLP] = "ffn_norm", [NORM_Q] = "attn_q_norm", [NORM_K] = "attn_k_norm"},
    .norm = ARCH_NORM_RMS,
    .act = ARCH_ACT_SWIGLU,
    .pos = ARCH_POS_ROPE,
    .targets = arch_llama_targets,
    .target_help = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear",
    .lora_targets = B(ROLE_Q) | B(ROLE_V),
    .ia3_targets = B(ROLE_Q) | B(ROLE_V) | B(ROLE_DOWN),   /* HF peft's qwen3 entry */
    .ia3_ff = B(ROLE_DOWN),
    .cls_class = "Qwen3ForSequenceClassification",
    .gguf_lora_arch = "qwen3",
};
#undef B
