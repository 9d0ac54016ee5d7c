/* adapter.h — a trained add-on to a frozen model, for every method peft.c
 * has, each optionally with a sequence-classification head.
 *
 * Every trainable value lives in one contiguous f32 block (params) with a
 * gradient block of the same layout (grads), so the optimizer, the
 * checkpoints and the gradient checks see one vector; frozen buffers
 * (adapter_add_buffer) live in a third block. Each tensor is also listed in
 * `tensors` with the key it has in adapter_model.safetensors (HF PEFT names
 * where HF PEFT has the method), which is what generic saving, loading and
 * tests walk.
 *
 * Methods are plug-ins (peft/method.h, one file each in peft/methods/):
 * `ops` and `priv` are the method's table and state (LoRA's, reached by
 * the LoRA family's files through lora_of in peft/lora.h). The
 * classification head, shared by every method, is modules_to_save.c's
 * (`head`). */
#ifndef PEFT_ADAPTER_H
#define PEFT_ADAPTER_H

#include "model/model.h"
#include "peft/modules_to_save.h"

#include <stdatomic.h>

typedef struct method_ops method_ops;   /* peft/method.h */

/* The --method name of an adapter. */
const char *adapter_method_name(const struct adapter *a);

/* Parameter groups of a tensor (adapter_tensor.group, flag bits), set where
 * the tensor is registered; the trainer turns them into per-tensor
 * learning rates and weight decay (src/train/param_groups.c).
 *   PG_NO_DECAY   no weight decay: what HF's Trainer leaves out of decay
 *                 (get_decay_parameter_names: biases, LayerNorm / RMSNorm
 *                 weights)
 *   PG_LORA_B     LoRA+'s group B (lr × loraplus_lr_ratio): lora_B and, as
 *                 HF peft's create_loraplus_optimizer has it, every 1-D
 *                 tensor of a LoRA adapter (DoRA's magnitude)
 *   PG_EMBEDDING  LoRA+'s embedding group (lr = loraplus_lr_embedding): the
 *                 A/B of a LoRA on an embedding layer */
enum { PG_NO_DECAY = 1, PG_LORA_B = 2, PG_EMBEDDING = 4 };

/* One tensor of the block. key "" means not saved in the final adapter
 * (prefix tuning's reparametrising MLP: only its output table is saved,
 * as HF PEFT does; checkpoints keep everything). */
typedef struct {
    char key[200];
    int ndim;
    int64_t shape[2];
    int64_t n;
    float *p, *g;         /* g NULL for a frozen buffer */
    bool saved;
    bool frozen;          /* a buffer: saved and loaded, never trained (not in params) */
    uint8_t group;        /* PG_* bits; 0: decayed, lr as given (trained tensors only) */
} adapter_tensor;

/* What a method is made from. The generic fields are those the CLI's
 * shared options (--r, --alpha, --dropout, --target, --layers) and the
 * API's peft_lora_params fill for every method that lists them; 0 (alpha:
 * NAN) means the method's default. */
typedef struct {
    const method_ops *ops;       /* the method (method.h) */
    int r;                       /* rank; 0: the method's default */
    float alpha;                 /* NAN: the method's default */
    float dropout;
    uint32_t targets;            /* bit (1u << model_linear_role) per targeted linear; 0: the default */
    uint64_t layers;             /* bit per layer to transform; 0 = all */
    /* classification head: n_labels > 0 adds score (n_labels, d) */
    int n_labels;
    uint64_t seed;
    /* the method's own options, "key=value;key=value" (method_option_get) */
    char options[1024];   /* PEFT_METHOD_OPTIONS_MAX */
} method_config;

typedef struct adapter {
    method_config mc;
    const method_ops *ops;  /* the method's table (method.h) */
    void *priv;             /* the method's own state */
    float *buffers;         /* frozen buffers (adapter_add_buffer), one block */
    int64_t n_buffers;
    float *params, *grads;
    int64_t n_params;
    char *base_model;     /* base_model_name_or_path written to the config */
    int n_layer;          /* the model's layer count */
    int sig_d, sig_kvd, sig_ff, sig_vocab;   /* the model it was made for (adapter_fits) */
    int n_tensors, cap_tensors;
    adapter_tensor *tensors;
    mts_head head;        /* the classification head (modules_to_save.h), shared by every method */
    /* references besides its creator's: sessions using it (peft_session) */
    atomic_int users;
} adapter;

void adapter_free(adapter *a);
/* A session takes a reference (adapter_retain) and gives it back
 * (adapter_release); the creator's is given back by adapter_release too.
 * The last one frees a. */
void adapter_retain(const adapter *a);
void adapter_release(const adapter *a);
/* Records m's shape in a; adapter_fits checks a model against it (a clear
 * PEFT_ERR_SHAPE naming what differs). */
void adapter_set_signature(adapter *a, const peft_model *m);
int adapter_fits(const adapter *a, const peft_model *m, peft_err *err);

/* Registers a tensor of n = shape product floats; adapter_finish_alloc
 * places them all in one block. */
int adapter_add_tensor(adapter *a, const char *key, int ndim, int64_t d0, int64_t d1, bool saved,
                       peft_err *err);
int adapter_finish_alloc(adapter *a, peft_err *err);
/* A frozen buffer of n floats: saved and loaded, never trained. */
int adapter_add_buffer(adapter *a, const char *key, int ndim, int64_t d0, int64_t d1, bool saved, peft_err *err);
/* Sets tensor idx's PG_* bits (idx < 0, a failed add: nothing). */
void adapter_tensor_set_group(adapter *a, int idx, unsigned flags);
adapter_tensor *adapter_find_tensor(const adapter *a, const char *key);

/* A new adapter of method mc->ops for m. */
int adapter_new(const peft_model *m, const method_config *mc, adapter **out, peft_err *err);
/* Recomputes what derives from the parameters (DoRA weight norms, the
 * prefix table under a projection). Call after every parameter change. */
int adapter_refresh(adapter *a, const peft_model *m, peft_err *err);
/* Backward of the derived values: prefix_gtable → MLP gradients. */
void adapter_refresh_bwd(adapter *a, const peft_model *m);

/* Effective weight, bias and norm parameters of linear (l, r) with a
 * (NULL: the base). */
const kern_weight *adapter_weight(const adapter *a, const peft_model *m, int l, model_linear_role r);
const float *adapter_bias(const adapter *a, const peft_model *m, int l, model_linear_role r);
/* which: NORM_* (model/arch.h) of layer l; l == n_layer: the final norm
 * (which NORM_ATTN). Norm slots for per-norm arrays: adapter_norm_slot. */
const float *adapter_norm_w(const adapter *a, const peft_model *m, int l, int which);
const float *adapter_norm_b(const adapter *a, const peft_model *m, int l, int which);
const kern_weight *adapter_tok_emb(const adapter *a, const peft_model *m, kern_weight *tmp);
const kern_weight *adapter_pos_emb(const adapter *a, const peft_model *m, kern_weight *tmp);
const kern_weight *adapter_lm_head(const adapter *a, const peft_model *m, kern_weight *tmp);

/* Rows of virtual tokens the method prepends to a sequence (prompt), and
 * prefix key/value rows (prefix): 0 otherwise. */
int adapter_prompt_rows(const adapter *a);
int adapter_prefix_rows(const adapter *a);

/* Helpers shared by lora.c and adapter_io.c. */
/* Kaiming-uniform with a = sqrt(5) on n values of a (rows, fan_in) matrix,
 * as nn.Linear.reset_parameters: gain = sqrt(2 / (1 + a²)) = sqrt(1/3),
 * bound = gain · sqrt(3 / fan_in) = 1 / sqrt(fan_in). */
void adapter_kaiming_uniform(float *w, int64_t n, int fan_in, peft_rng *rng);
int adapter_layer_prefix(const peft_model *m, int l, char *buf, size_t cap);
/* Index of norm (l, which) in an array of adapter_norm_slots(m) entries
 * (l == n_layer, which NORM_ATTN: the final norm, the last slot). */
static inline int adapter_norm_slot(int l, int which) { return l * MODEL_N_NORMS + which; }
static inline int adapter_norm_slots(const peft_model *m) { return m->cfg.n_layer * MODEL_N_NORMS + 1; }
/* The base's norm weight / bias (which NORM_*; l == n_layer: the
 * final norm), NULL where it has none. */
const float *adapter_base_norm_w(const peft_model *m, int l, int which);
const float *adapter_base_norm_b(const peft_model *m, int l, int which);
int adapter_norm_name(const peft_model *m, int l, int which, const char *field, char *buf, size_t cap);

/* Save / load any method (adapter_io.c): HF PEFT format for LoRA, DoRA,
 * IA3, prompt and prefix tuning; documented peft.c configs (peft_type
 * BOTTLENECK, BITFIT) for the others; full fine-tuning as an HF model
 * folder. load tells the method from adapter_config.json. */
int adapter_save(const adapter *a, const peft_model *m, const char *dir, peft_err *err);
int adapter_load(const peft_model *m, const char *dir, adapter **out, peft_err *err);
/* A llama.cpp GGUF adapter file, for a method that has one (LoRA). */
int adapter_export_gguf(const adapter *a, const peft_model *m, const char *path, peft_err *err);
/* The adapter_config.json text of a (common keys, layers_to_transform, the
 * method's own); the caller frees it. */
char *adapter_config_json(const adapter *a, const peft_model *m, peft_err *err);
/* dir/adapter_config.json (config_json) + dir/adapter_model.safetensors (the
 * saved tensors of the registry), atomically. */
int adapter_write_folder(const adapter *a, const peft_model *m, const char *dir, const char *config_json,
                         peft_err *err);
/* Fills every saved registry tensor from st (shapes checked; a tensor of st
 * the registry does not know is an error). */
int adapter_read_tensors(adapter *a, const st_archive *st, const char *st_path, peft_err *err);

#endif
