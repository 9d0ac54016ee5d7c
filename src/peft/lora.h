/* lora.h — LoRA adapters on a frozen model: y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ
 * with A (r, in), B (out, r), s = alpha/r (or alpha/sqrt(r) with rsLoRA).
 * Parameters live in one contiguous f32 block (params), gradients in a
 * second of the same layout (grads), so the optimizer sees one vector.
 * Files: the Hugging Face PEFT format (adapter_config.json +
 * adapter_model.safetensors, keys base_model.model.<module>.lora_A.weight),
 * and llama.cpp's GGUF LoRA for export. */
#ifndef PEFT_LORA_H
#define PEFT_LORA_H



#include "peft/adapter.h"

#include <cjson/cJSON.h>

/* The LoRA family's methods (methods/lora.c): `lora` and `dora`, both
 * peft_type LORA (use_dora tells them apart). */
extern const method_ops method_lora, method_dora;

typedef enum { LORA_INIT_KAIMING = 0, LORA_INIT_GAUSSIAN, LORA_INIT_ZERO_B_RANDOM_BOTH } lora_init;

typedef struct {
    int r;
    float alpha;
    float dropout;
    bool rslora;
    lora_init init;            /* kaiming: HF default (A kaiming-uniform a=sqrt(5), B = 0) */
    uint32_t targets;          /* bit (1u << model_linear_role) per targeted linear */
    uint64_t layers;           /* bit per layer to transform; 0 = all (layers_to_transform) */
    uint64_t seed;             /* init */
    bool dora;                 /* DoRA: a magnitude vector per module */
} lora_config;

typedef struct {
    int layer;
    model_linear_role role;
    int in, out, r;
    float alpha;       /* the module's lora_alpha (alpha_pattern, else the config's) */
    float scale;
    float *A, *B;      /* into params: (r, in), (out, r) */
    float *gA, *gB;    /* into grads, same shapes */
    /* DoRA: magnitude (out) in params/grads; wnorm (out) = ||W + s·B·A|| per
     * output row, recomputed by adapter_refresh (treated as a constant in
     * the backward, as HF PEFT detaches it). NULL without DoRA. */
    float *mag, *gmag, *wnorm;
} lora_module;

/* The state of a LoRA or DoRA adapter (its adapter.priv). */
typedef struct {
    lora_config cfg;
    int n_modules;
    lora_module *mods;    /* layer-major, then by role */
    lora_module **slot;   /* (n_layer * ROLE_N_LINEAR), NULL where not targeted */
    float *dora_norms;    /* all modules' wnorm, one buffer */
} lora_state;

/* a's LoRA state, NULL when a is not a LoRA or DoRA adapter. */
lora_state *lora_of(const adapter *a);
/* Whether a is plain LoRA (not DoRA). */
bool adapter_is_plain_lora(const adapter *a);

/* r 8, alpha 16, dropout 0, kaiming init, seed 42, all layers, and
 * targets 0, which lora_new reads as the architecture's default
 * (lora_default_targets: q_proj + v_proj for llama-family, c_attn for GPT-2). */
lora_config lora_default_config(void);
/* Parses "q_proj,v_proj", "all-linear", GPT-2's "c_attn,c_proj,c_fc" into
 * target bits for m's architecture; unknown names are an error. */
int lora_parse_targets(const peft_model *m, const char *list, uint32_t *targets, peft_err *err);
/* Creates modules for every targeted linear and initialises them. */
int lora_new(const peft_model *m, const lora_config *cfg, adapter **out, peft_err *err);
/* The same with a classification head of n_labels (0: none); cfg->dora adds
 * DoRA magnitudes. */
int lora_new_head(const peft_model *m, const lora_config *cfg, int n_labels, adapter **out, peft_err *err);
lora_module *lora_find(const adapter *a, int layer, model_linear_role role);
float lora_scale(const lora_config *c);

/* HF PEFT format (lora_io.c). lora_config_write adds LoraConfig's fields
 * to an adapter_config.json object that has the common ones; lora_load_st
 * makes the adapter a LORA file describes, its ranks and modules read from
 * the tensors (every name and shape checked against m), the values not yet
 * read. lora_load is adapter_load for a LORA folder (anything else is an
 * error). */
int lora_config_write(const adapter *a, const peft_model *m, cJSON *o);
int lora_load_st(const peft_model *m, const cJSON *o, const char *cfg_path, const st_archive *st, const char *st_path,
                 int n_labels, adapter **out, peft_err *err);
int lora_load(const peft_model *m, const char *dir, adapter **out, peft_err *err);

/* llama.cpp GGUF LoRA adapter: general.type=adapter, adapter.type=lora,
 * adapter.lora.alpha, tensors <gguf base tensor>.lora_a / .lora_b (with
 * llama.cpp's Q/K row permutation re-applied to lora_b for llama). */
int lora_export_gguf(const adapter *a, const peft_model *m, const char *path, peft_err *err);

/* W' = W + s·B·A for every module, written as a new model: an HF folder
 * (safetensors) from an HF base, or a GGUF from a GGUF base; tensors the
 * adapter does not change are copied byte for byte.
 *
 * outtype, the type of the tensors the adapter changes:
 *   MERGE_OUT_DEFAULT  float bases keep their dtype (F32, F16, BF16); GGUF
 *                      tensors of a quantized type become MERGE_DEFAULT_QUANT_OUT,
 *                      because re-quantizing to the base's few bits rounds a
 *                      low-rank delta away (docs/formats.md has the numbers);
 *   MERGE_OUT_KEEP     every tensor keeps its base type where kern_quant_row
 *                      can write it and the rows fit its blocks, else F16;
 *   a peft_dtype       that type (F32, F16, BF16; GGUF also Q8_0, Q5_1, Q5_0,
 *                      Q4_1, Q4_0), F16 where a row does not fit its blocks.
 * Biases (IA3 scales them) keep their stored type. */
enum { MERGE_OUT_DEFAULT = -1, MERGE_OUT_KEEP = -2 };
#define MERGE_DEFAULT_QUANT_OUT PEFT_DT_F16
/* "default", "keep", "f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1",
 * "q4_0" (any case) into *outtype; PEFT_ERR_INVALID naming the choices. */
int lora_merge_outtype_parse(const char *name, int *outtype, peft_err *err);
/* The output types of one merge: changed tensors per dtype. */
typedef struct {
    int n_changed;
    int n_by_dtype[PEFT_DT_COUNT];
} merge_summary;
int lora_merge_save(const adapter *a, const peft_model *m, const char *out_path, peft_err *err);
int lora_merge_save_as(const adapter *a, const peft_model *m, const char *out_path, int outtype,
                       merge_summary *sum, peft_err *err);

/* How much of the adapter's effect on the logits a merged model keeps
 * (peft_merge_check in peft.h has the fields): base (m alone), adapted (m
 * with a attached) and merged (the model at merged_path) logits on a few
 * fixed token sequences. */
typedef peft_merge_check merge_check;
int lora_merge_verify(const adapter *a, peft_model *m, const char *merged_path, merge_check *out, peft_err *err);

/* ---- math (lora_compute.c) ------------------------------------------------
 * x (N, in) row stride ldx, y (N, out) row stride ldy, xa (N, r).
 * mask: NULL without dropout, else (N, in) bytes, 1 = kept; kept inputs are
 * scaled by 1/(1-p) (inverted dropout, as torch.nn.Dropout). xd is scratch
 * (N, in) for the dropped input when mask is set. */
/* y += s·(drop(x)·Aᵀ)·Bᵀ, keeping xa = drop(x)·Aᵀ for the backward. */
void lora_fwd(const lora_module *mod, const float *x, int ldx, int N, const uint8_t *mask,
              float p_drop, float *xd, float *xa, float *y, int ldy, int n_threads);
/* From dy (N, out): gB += s·dyᵀ·xa, dxa = s·dy·B, gA += dxaᵀ·drop(x),
 * dx (N, in) += drop'(dxa·A) when dx is non-NULL. dxa is scratch (N, r). */
void lora_bwd(const lora_module *mod, const float *x, int ldx, int N, const uint8_t *mask,
              float p_drop, float *xd, const float *xa, const float *dy, int ldy, float *dxa,
              float *dx, int lddx, int n_threads);

/* ---- helpers shared by lora*.c and callers (additions) ------------------- */

uint32_t lora_default_targets(const peft_model *m);
/* HF PEFT "all-linear": every linear in the blocks, never the output head. */
uint32_t lora_all_linear_targets(const peft_model *m);
/* HF target_modules names for target bits (GPT-2: "c_proj" when both
 * projections are targeted, else "attn.c_proj" / "mlp.c_proj"). Writes up to
 * cap pointers to static strings, returns the count. */
int lora_target_names(const peft_model *m, uint32_t targets, const char **names, int cap);
/* s for a module of rank r under c's alpha and rsLoRA setting. */
float lora_scale_r(const lora_config *c, int r);
/* Whether layer l is in a layers mask (0 = all). */
bool lora_layer_selected(uint64_t layers, int l);
/* Allocates an adapter (zeroed params/grads) with a module of rank
 * slot_r[l * ROLE_N_LINEAR + role] wherever that is > 0. */
int lora_alloc(const peft_model *m, const lora_config *cfg, const int *slot_r, int n_labels, adapter **out,
               peft_err *err);
/* The pieces of lora_alloc and of the methods' create / wire / init:
 * cfg checked against m, with the default targets filled in (*out) and the
 * rank per slot (*slot_r, malloc'ed); a's LoRA state (its priv) with every
 * module's tensors registered; the modules pointed at the allocated block;
 * the initial values (HF PEFT's init_lora_weights, DoRA's magnitudes). */
int lora_plan(const peft_model *m, const lora_config *cfg, lora_config *out, int **slot_r, peft_err *err);
int lora_setup(adapter *a, const peft_model *m, const lora_config *cfg, const int *slot_r, peft_err *err);
void lora_wire(adapter *a);
int lora_init_values(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err);
/* GGUF names: "blk.<l>.<attn_q|...>.weight" of a linear (into buf). */
int lora_gguf_weight_name(const peft_model *m, int layer, model_linear_role r, char *buf, size_t cap);

/* ---- adapter arithmetic (lora_combine.c) ---------------------------------
 * HF peft's LoraModel.add_weighted_adapter: LoRA adapters of one base, with
 * weights, into a new LoRA adapter (docs/methods.md, "Adapter arithmetic"). */
typedef enum {
    COMBINE_LINEAR = 0,
    COMBINE_CAT,
    COMBINE_SVD,
    COMBINE_TIES,
    COMBINE_TIES_SVD,
    COMBINE_DARE_LINEAR,
    COMBINE_DARE_TIES,
    COMBINE_DARE_LINEAR_SVD,
    COMBINE_DARE_TIES_SVD,
    COMBINE_MAGNITUDE_PRUNE,
    COMBINE_MAGNITUDE_PRUNE_SVD,
    COMBINE_N
} combine_type;

typedef struct {
    combine_type type;     /* svd (HF's default) */
    double density;        /* fraction kept, (0, 1]; 0: not given (ties, dare_*, magnitude_prune* need it) */
    bool sign_frequency;   /* TIES sign election: majority_sign_method "frequency" instead of "total" */
    int svd_rank;          /* *svd: the result's rank; 0: the largest input rank */
    double svd_clamp;      /* *svd: clamp the factors at this quantile, in [0, 1]; < 0: none */
    uint64_t seed;         /* dare_*: the random masks */
} combine_opts;

combine_opts combine_default_opts(void);
/* HF's combination_type names ("linear", "dare_ties_svd", ...). */
int combine_type_parse(const char *name, combine_type *out, peft_err *err);
const char *combine_type_name(combine_type t);
/* in[0..n) with weights w, all loaded for m, into *out (a new LoRA adapter
 * for m). names[i] (may be NULL) names input i in messages. Every check
 * (methods, bases, ranks, the modules the type allows, numbers) comes
 * before anything is computed; nothing is written. */
/* The svd types' clamp of factors A (na values) and B (nb) to
 * ±quantile(B ∪ A, q), in place. It depends on the sign of each singular
 * pair, which LAPACK implementations choose differently. */
int combine_clamp_factors(float *A, int64_t na, float *B, int64_t nb, double q, peft_err *err);
int lora_combine(const peft_model *m, const adapter *const *in, const double *w, int n, const char *const *names,
                 const combine_opts *o, adapter **out, peft_err *err);

/* ---- per-module settings (lora_pattern.c) --------------------------------
 * HF peft's rank_pattern / alpha_pattern (targets false: key -> number, the
 * first key K in order whose r"(.*\.)?(K)$" matches a module's full name)
 * and target_modules as names (targets true: a module named T or ending in
 * "." + T). */
typedef struct {
    char *key;
    double v;
    void *re;   /* pcre2_code: r"(.*\.)?(key)$", anchored (NULL for targets) */
} lora_pattern_item;
typedef struct {
    int n;
    bool targets;
    lora_pattern_item *it;
} lora_pattern;
/* From a spec: "K=N,K=N" (targets: "T,T"), or "@FILE": the value under
 * json_key of that JSON file. An empty or NULL spec is an empty pattern. */
int lora_pattern_parse(const char *spec, const char *json_key, bool targets, lora_pattern *out, peft_err *err);
/* From a JSON value (an object of numbers, or for targets a list of names
 * or one name); NULL or null: empty. what names it in errors. */
int lora_pattern_from_json(const cJSON *v, bool targets, const char *what, lora_pattern *out, peft_err *err);
/* The index of the entry module (a full HF module name) matches, or -1. */
int lora_pattern_find(const lora_pattern *p, const char *module);
void lora_pattern_free(lora_pattern *p);
/* Module md's alpha set to alpha, its scale following (rsLoRA as cfg). */
void lora_module_set_alpha(lora_module *md, const lora_config *cfg, float alpha);

#endif
