/* bert.c — BERT-family encoders: BERT (and sentence-transformers' MiniLM,
 * saved as a bare BertModel without the "bert." prefix) and RoBERTa.
 *
 * Input:  x = LayerNorm(word[id] + position[offset + t] + type[tt]), the
 *         out norm slot holding embeddings.LayerNorm (RoBERTa's positions
 *         start at padding_idx + 1 = 2).
 * Block (post-norm, bidirectional attention over the sequence's tokens):
 *         x = LN(x + attn(x)·Woᵀ + b);  x = LN(x + gelu_erf(x·Wiᵀ + b)·Wdᵀ + b)
 * No LM head: sequence classification pools the first token (BERT's
 * pooler + classifier, RoBERTa's classification head); sentence
 * embeddings mean-pool the last hidden states. llama.cpp's converter
 * writes both as GGUF architecture "bert" (RoBERTa with its first two
 * position rows dropped), the pooler left out. */
#include "model/arch.h"
#include "model/model.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

static int bert_act(const cJSON *root, const char *path, peft_err *err) {
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: BERT activation \"%.40s\" is not supported (gelu is)", path,
                         act->valuestring);
    const cJSON *pe = cJSON_GetObjectItemCaseSensitive(root, "position_embedding_type");
    if (cJSON_IsString(pe) && strcmp(pe->valuestring, "absolute"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: position_embedding_type \"%.40s\" is not supported (absolute is)",
                         path, pe->valuestring);
    return 0;
}

static int bert_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    int rc = bert_act(root, path, err);
    if (!rc) rc = peft_json_get_int(root, "type_vocab_size", 2, false, 0, 1024, &c->n_types, path, err);
    return rc;
}

/* RoBERTa numbers positions from padding_idx + 1 (create_position_ids_from_input_ids) */
static int roberta_hf_extra(const cJSON *root, model_config *c, const char *path, peft_err *err) {
    int pad = 1, rc = bert_hf_extra(root, c, path, err);
    if (!rc) rc = peft_json_get_int(root, "pad_token_id", 1, false, 0, PEFT_MAX_VOCAB, &pad, path, err);
    if (rc) return rc;
    c->pos_offset = pad + 1;
    if (c->n_ctx <= c->pos_offset)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: max_position_embeddings %d leaves no position after the offset %d",
                         path, c->n_ctx, c->pos_offset);
    c->n_ctx -= c->pos_offset;
    return 0;
}

static int bert_gguf_extra(const gguf_file *g, model_config *c, peft_err *err) {
    (void)err;
    const gguf_tensor *t = gguf_find_tensor(g, "token_types.weight");
    c->n_types = t && t->ndim == 2 && t->ne[1] > 0 && t->ne[1] <= 1024 ? (int)t->ne[1] : 0;
    return 0;
}

#define B(r) (1u << (r))
/* HF peft matches by suffix: "dense" is every dense layer (HF also adapts
 * the pooler's, which has no hook here), "output.dense" both the
 * attention's and the MLP's output projection. The first names are the
 * ones adapter_config.json gets. */
static const arch_target bert_targets[] = {
    {"query", B(ROLE_Q)},
    {"key", B(ROLE_K)},
    {"value", B(ROLE_V)},
    {"intermediate.dense", B(ROLE_UP)},
    {"output.dense", B(ROLE_O) | B(ROLE_DOWN)},
    {"attention.output.dense", B(ROLE_O)},
    {"dense", B(ROLE_O) | B(ROLE_UP) | B(ROLE_DOWN)},
    {"attention.self.query", B(ROLE_Q)},
    {"attention.self.key", B(ROLE_K)},
    {"attention.self.value", B(ROLE_V)},
    {NULL, 0}};

#define BERT_COMMON                                                                                                \
    .kind = PEFT_ARCH_BERT, .hf_d_model = "hidden_size", .hf_n_layer = "num_hidden_layers",                        \
    .hf_n_head = "num_attention_heads", .hf_d_ff = "intermediate_size", .hf_n_ctx = "max_position_embeddings",      \
    .hf_norm_eps = "layer_norm_eps", .default_n_ctx = 512, .default_norm_eps = 1e-12f, .default_tied = false,       \
    .gguf_extra = bert_gguf_extra, .hf_layer = "encoder.layer.%d",                                                 \
    .hf_lin = {[ROLE_Q] = "attention.self.query", [ROLE_K] = "attention.self.key",                                 \
               [ROLE_V] = "attention.self.value", [ROLE_O] = "attention.output.dense",                             \
               [ROLE_UP] = "intermediate.dense", [ROLE_DOWN] = "output.dense"},                                    \
    .hf_norm = {[NORM_ATTN] = "attention.output.LayerNorm", [NORM_MLP] = "output.LayerNorm"},                     \
    .hf_tok_emb = "embeddings.word_embeddings", .hf_pos_emb = "embeddings.position_embeddings",                    \
    .hf_type_emb = "embeddings.token_type_embeddings", .hf_out_norm = "embeddings.LayerNorm",                      \
    .gguf_out_norm = "token_embd_norm",                                                                            \
    .gguf_lin = bert_gguf_lin, .gguf_norm = {[NORM_ATTN] = "attn_output_norm", [NORM_MLP] = "layer_output_norm"},  \
    .norm = ARCH_NORM_LAYER, .norm_bias = true, .act = ARCH_ACT_GELU_ERF, .pos = ARCH_POS_LEARNED,                 \
    .lin_bias = true, .encoder = true, .targets = bert_targets,                                                    \
    .target_help = "query, key, value, dense, intermediate.dense, output.dense, attention.output.dense or all-linear", \
    .lora_targets = B(ROLE_Q) | B(ROLE_V), .ia3_targets = B(ROLE_K) | B(ROLE_V) | B(ROLE_O) | B(ROLE_DOWN),        \
    .ia3_ff = B(ROLE_O) | B(ROLE_DOWN)

static const char *const bert_gguf_lin[ROLE_N_LINEAR] = {
    [ROLE_Q] = "attn_q", [ROLE_K] = "attn_k", [ROLE_V] = "attn_v", [ROLE_O] = "attn_output",
    [ROLE_UP] = "ffn_up", [ROLE_DOWN] = "ffn_down"};

const arch_desc arch_bert = {
    .name = "bert", BERT_COMMON, .hf_extra = bert_hf_extra, .hf_prefix = "bert.", .cls = ARCH_CLS_POOLER,
    .hf_pooler = "pooler.dense",
    .cls_class = "BertForSequenceClassification", .gguf_lora_arch = "bert",
};

const arch_desc arch_roberta = {
    .name = "roberta", BERT_COMMON, .hf_extra = roberta_hf_extra, .hf_prefix = "roberta.", .cls = ARCH_CLS_DENSE,
    .cls_class = "RobertaForSequenceClassification", .gguf_lora_arch = "bert",
};
#undef B
