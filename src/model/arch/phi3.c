/* phi3.c — Phi-3 (mini): the Llama block with fused projections: one
 * qkv_proj (rows q | k | v) and one gate_up_proj (rows gate | up, the MLP is
 * down(silu(gate) ⊙ up)); RoPE on the first partial_rotary_factor of each
 * head's dims; a sliding window on every layer when the config sets one.
 * HF peft addresses the fused modules as they are (target qkv_proj,
 * gate_up_proj) and has no default targets for phi3. llama.cpp's converter
 * (Phi3MiniModel) keeps the fused tensors (attn_qkv, ffn_up of 2·d_ff rows)
 * and HF's row order (NEOX RoPE). */
#include "model/arch.h"
#include "model/model.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <stdio.h>

static void set_all_sliding(model_config *c, int window) {
    c->sliding_window = window;
    for (int l = 0; l < c->n_layer && window > 0; l++) c->sliding[l / 64] |= 1ull << (l % 64);
}

static int phi3_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    /* partial_rotary_factor: top level (transformers v4) or in rope_parameters (v5) */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "partial_rotary_factor");
    if (cJSON_IsObject(rp) && cJSON_GetObjectItemCaseSensitive(rp, "partial_rotary_factor"))
        f = cJSON_GetObjectItemCaseSensitive(rp, "partial_rotary_factor");
    if (f && !cJSON_IsNull(f)) {
        if (!cJSON_IsNumber(f) || !(f->valuedouble > 0 && f->valuedouble <= 1))
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"partial_rotary_factor\" must be a number in (0, 1]", path);
        const int hd = c->head_dim > 0 ? c->head_dim : c->d_model / c->n_head;
        c->rope_dim = (int)(hd * f->valuedouble);
    }
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    if (sw && !cJSON_IsNull(sw)) {
        if (!cJSON_IsNumber(sw) || sw->valuedouble < 1 || sw->valuedouble > PEFT_MAX_CTX)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"sliding_window\" must be a positive integer", path);
        set_all_sliding(c, (int)sw->valuedouble);
    }
    return arch_hf_pad_token(root, c, path, err);
}

static int phi3_gguf_extra(const gguf_file *g, model_config *c, peft_err *err) {
    int64_t w = 0;
    if (gguf_find_key(g, "phi3.attention.sliding_window") >= 0) {
        if (gguf_get_int(g, "phi3.attention.sliding_window", &w, err)) return err->code;
        if (w < 0 || w > PEFT_MAX_CTX)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: phi3.attention.sliding_window = %lld is out of range",
                             gguf_path(g), (long long)w);
    }
    set_all_sliding(c, (int)w);
    return 0;
}

#define B(r) (1u << (r))
static const arch_target phi3_targets[] = {
    {"qkv_proj", B(ROLE_QKV)}, {"o_proj", B(ROLE_O)}, {"gate_up_proj", B(ROLE_UP)}, {"down_proj", B(ROLE_DOWN)},
    {"self_attn.qkv_proj", B(ROLE_QKV)}, {"self_attn.o_proj", B(ROLE_O)}, {"mlp.gate_up_proj", B(ROLE_UP)},
    {"mlp.down_proj", B(ROLE_DOWN)}, {NULL, 0}};

const arch_desc arch_phi3 = {
    .name = "phi3",
    .kind = PEFT_ARCH_LLAMA,
    ARCH_LLAMA_HF_SIZES,
    .default_n_ctx = 4096,
    .default_norm_eps = 1e-5f,
    .default_tied = false,
    .hf_extra = phi3_hf_extra,
    .gguf_extra = phi3_gguf_extra,
    ARCH_LLAMA_NAMES,
    .hf_lin = {[ROLE_QKV] = "self_attn.qkv_proj", [ROLE_O] = "self_attn.o_proj", [ROLE_UP] = "mlp.gate_up_proj",
               [ROLE_DOWN] = "mlp.down_proj"},
    .hf_norm = {[NORM_ATTN] = "input_layernorm", [NORM_MLP] = "post_attention_layernorm"},
    .gguf_norm = {[NORM_ATTN] = "attn_norm", [NORM_MLP] = "ffn_norm"},
    .norm = ARCH_NORM_RMS,
    .act = ARCH_ACT_SWIGLU,
    .pos = ARCH_POS_ROPE,
    .fused_gate_up = true,
    .targets = phi3_targets,
    .target_help = "qkv_proj, o_proj, gate_up_proj, down_proj or all-linear",
    .lora_targets = 0,   /* HF peft has none for phi3: --target is required */
    .ia3_targets = 0,
    .ia3_ff = 0,
    .cls_class = "Phi3ForSequenceClassification",
    .gguf_lora_arch = "phi3",
};
#undef B
