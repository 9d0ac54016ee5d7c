/* gpt2.c — GPT-2.
 *
 * Block (pre-norm):  h = ln_1(x); qkv = h·Wqkvᵀ + b; x += attn(q, K, V)·Woᵀ + b;
 *                    h = ln_2(x); x += gelu_tanh(h·Wfcᵀ + b)·Wprojᵀ + b
 * with a learned position table added to the token embeddings. HF stores
 * the linears as Conv1D, (in, out); checkpoints come with and without the
 * "transformer." prefix. */
#include "model/arch.h"
#include "model/model.h"

#include <cjson/cJSON.h>
#include <string.h>

static int gpt2_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    (void)c;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu_new") && strcmp(act->valuestring, "gelu_pytorch_tanh"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: GPT-2 activation \"%s\" is not supported (gelu_new is)", path,
                         act->valuestring);
    return 0;
}

/* "c_proj" is a suffix of both attn.c_proj and mlp.c_proj: as with HF peft's
 * suffix matching it selects both; the qualified names select one. */
#define B(r) (1u << (r))
static const arch_target gpt2_targets[] = {
    {"c_attn", B(ROLE_QKV)},     {"c_fc", B(ROLE_UP)},     {"c_proj", B(ROLE_O) | B(ROLE_DOWN)},
    {"attn.c_attn", B(ROLE_QKV)}, {"mlp.c_fc", B(ROLE_UP)}, {"attn.c_proj", B(ROLE_O)},
    {"mlp.c_proj", B(ROLE_DOWN)}, {NULL, 0}};

const arch_desc arch_gpt2 = {
    .name = "gpt2",
    .kind = PEFT_ARCH_GPT2,
    .hf_d_model = "n_embd",
    .hf_n_layer = "n_layer",
    .hf_n_head = "n_head",
    .hf_d_ff = "n_inner",
    .hf_n_ctx = "n_positions",
    .hf_norm_eps = "layer_norm_epsilon",
    .default_n_ctx = 1024,
    .default_norm_eps = 1e-5f,
    .default_tied = true,
    .d_ff_mult = 4,
    .hf_extra = gpt2_hf_extra,
    .hf_prefix = "transformer.",
    .hf_layer = "h.%d",
    .hf_lin = {NULL, NULL, NULL, "attn.c_attn", "attn.c_proj", NULL, "mlp.c_fc", "mlp.c_proj"},
    .hf_norm = {[NORM_ATTN] = "ln_1", [NORM_MLP] = "ln_2"},
    .hf_tok_emb = "wte",
    .hf_pos_emb = "wpe",
    .hf_out_norm = "ln_f",
    .hf_lm_head = "lm_head",
    .gguf_lin = arch_gguf_lin,
    .gguf_norm = {[NORM_ATTN] = "attn_norm", [NORM_MLP] = "ffn_norm"},
    .hf_conv1d = true,
    .norm = ARCH_NORM_LAYER,
    .norm_bias = true,
    .act = ARCH_ACT_GELU_TANH,
    .pos = ARCH_POS_LEARNED,
    .lin_bias = true,
    .targets = gpt2_targets,
    .target_help = "c_attn, c_proj, c_fc or all-linear",
    .lora_targets = B(ROLE_QKV),
    .ia3_targets = B(ROLE_QKV) | B(ROLE_DOWN),
    .ia3_ff = B(ROLE_DOWN),
    .cls_class = "GPT2ForSequenceClassification",
    .gguf_lora_arch = "gpt2",
};
#undef B
