/* gemma2.c — Gemma 2.
 *
 * Block:  h = x·sqrt(d) at the input; every norm is RMSNorm·(1 + w) (HF
 *         stores w; llama.cpp's converter stores 1 + w, so the HF loader adds
 *         the 1); x += norm_attn_out(attn(norm_attn(x)));
 *         x += norm_mlp_out(down(gelu_tanh(gate(h)) ⊙ up(h))), h = norm_mlp(x).
 * Attention: scores scaled by query_pre_attn_scalar^-1/2, soft-capped
 * (attn_logit_softcapping), even layers within a sliding window; logits
 * soft-capped (final_logit_softcapping). GGUF files carry no
 * query_pre_attn_scalar: llama.cpp scales by 1/sqrt(head_dim), or by
 * 1/sqrt(d/n_head) for the 46-layer 27B, and so does this loader. */
#include "model/arch.h"
#include "model/model.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int json_cap(const cJSON *root, const char *key, float *out, const char *path, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0 && v->valuedouble < 1e6))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be a positive number or null", path, key);
    *out = (float)v->valuedouble;
    return 0;
}

static int gemma2_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_activation");
    if (!act) act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu_pytorch_tanh") && strcmp(act->valuestring, "gelu_tanh"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: gemma2 activation \"%.40s\" is not supported (gelu_pytorch_tanh is)",
                         path, act->valuestring);
    int rc, qpas = 0, window = 0;
    if ((rc = json_cap(root, "attn_logit_softcapping", &c->attn_softcap, path, err)) ||
        (rc = json_cap(root, "final_logit_softcapping", &c->final_softcap, path, err)) ||
        (rc = peft_json_get_int(root, "query_pre_attn_scalar", 256, false, 1, 1 << 20, &qpas, path, err)) ||
        (rc = peft_json_get_int(root, "sliding_window", 4096, false, 1, PEFT_MAX_CTX, &window, path, err)))
        return rc;
    c->attn_scale = 1.0f / sqrtf((float)qpas);
    c->sliding_window = window;
    /* layer_types names each layer; without it every other layer slides,
     * starting with layer 0 (transformers' default, llama.cpp's pattern) */
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (lt && !cJSON_IsNull(lt) && (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layer))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"layer_types\" must list the %d layers", path, c->n_layer);
    for (int l = 0; l < c->n_layer; l++) {
        bool sliding = l % 2 == 0;
        if (cJSON_IsArray(lt)) {
            const cJSON *e = cJSON_GetArrayItem(lt, l);
            if (!cJSON_IsString(e) ||
                (strcmp(e->valuestring, "sliding_attention") && strcmp(e->valuestring, "full_attention")))
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: layer_types[%d] must be \"sliding_attention\" or "
                                 "\"full_attention\"", path, l);
            sliding = !strcmp(e->valuestring, "sliding_attention");
        }
        if (sliding) c->sliding[l / 64] |= 1ull << (l % 64);
    }
    return arch_hf_pad_token(root, c, path, err);
}

static int gguf_float(const gguf_file *g, const char *key, float *out, peft_err *err) {
    double v;
    if (gguf_find_key(g, key) < 0) return 0;
    if (gguf_get_float(g, key, &v, err)) return err->code;
    if (!(v >= 0 && v < 1e6)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: %s = %g is out of range", gguf_path(g), key, v);
    *out = (float)v;
    return 0;
}

static int gemma2_gguf_extra(const gguf_file *g, model_config *c, peft_err *err) {
    int rc;
    int64_t w = 0;
    if ((rc = gguf_float(g, "gemma2.attn_logit_softcapping", &c->attn_softcap, err)) ||
        (rc = gguf_float(g, "gemma2.final_logit_softcapping", &c->final_softcap, err)))
        return rc;
    if (gguf_find_key(g, "gemma2.attention.sliding_window") >= 0) {
        if (gguf_get_int(g, "gemma2.attention.sliding_window", &w, err)) return err->code;
        if (w < 0 || w > PEFT_MAX_CTX)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: gemma2.attention.sliding_window = %lld is out of range",
                             gguf_path(g), (long long)w);
    }
    c->sliding_window = (int)w;
    for (int l = 0; l < c->n_layer; l += 2) c->sliding[l / 64] |= 1ull << (l % 64);
    const int hd = c->head_dim > 0 ? c->head_dim : c->d_model / c->n_head;
    c->attn_scale = 1.0f / sqrtf((float)(c->n_layer == 46 ? c->d_model / c->n_head : hd));
    return 0;
}

#define B(r) (1u << (r))
const arch_desc arch_gemma2 = {
    .name = "gemma2",
    .kind = PEFT_ARCH_LLAMA,
    ARCH_LLAMA_HF_SIZES,
    .hf_head_dim = "head_dim",
    .default_n_ctx = 8192,
    .default_norm_eps = 1e-6f,
    .default_tied = true,
    .hf_extra = gemma2_hf_extra,
    .gguf_extra = gemma2_gguf_extra,
    ARCH_LLAMA_NAMES,
    ARCH_LLAMA_LINEARS,
    .hf_norm = {[NORM_ATTN] = "input_layernorm", [NORM_ATTN_OUT] = "post_attention_layernorm",
                [NORM_MLP] = "pre_feedforward_layernorm", [NORM_MLP_OUT] = "post_feedforward_layernorm"},
    .gguf_norm = {[NORM_ATTN] = "attn_norm", [NORM_ATTN_OUT] = "post_attention_norm", [NORM_MLP] = "ffn_norm",
                  [NORM_MLP_OUT] = "post_ffw_norm"},
    .norm = ARCH_NORM_RMS,
    .act = ARCH_ACT_GEGLU_TANH,
    .pos = ARCH_POS_ROPE,
    .norm_plus_one = true,
    .embed_scale = true,
    .targets = arch_llama_targets,
    .target_help = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear",
    .lora_targets = B(ROLE_Q) | B(ROLE_V),
    .ia3_targets = B(ROLE_Q) | B(ROLE_V) | B(ROLE_DOWN),   /* HF peft's gemma2 entry */
    .ia3_ff = B(ROLE_DOWN),
    .cls_class = "Gemma2ForSequenceClassification",
    .gguf_lora_arch = "gemma2",
};
#undef B
