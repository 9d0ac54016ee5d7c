/* method.h — what a fine-tuning method is to the rest of peft.c.
 *
 * A method is one file, src/peft/methods/<name>.c, exporting one
 * `method_ops` table, plus one line in src/peft/methods/registry.c. The
 * training graph (train/graph.c), the inference forward (model/forward.c),
 * saving and loading (adapter_io.c), merging (lora_merge.c) and the CLI reach
 * a method only through its table: they know hook points, not methods.
 *
 * Hook points (each optional; a NULL entry means "not hooked"):
 *   linear (l, r)      the method adds a term to a frozen linear's output
 *                      (HOOK_ADD: y = x·Wᵀ + b + delta(x); the graph does the
 *                      base product and its input gradient) or replaces the
 *                      linear (HOOK_REPLACE: the method computes y and every
 *                      gradient, base product included);
 *   sub-layer output   the method transforms a sub-layer's output h before the
 *   (l, site)          residual add: y += g(h) (site 0 attention, 1 MLP;
 *                      bottleneck adapters: g(h) = h + up(f(down(h))));
 * State a method keeps lives behind adapter.priv; its trainable tensors are
 * registered in the adapter's registry (adapter_add_tensor) so the optimizer,
 * checkpoints, saving and gradient checks see them without knowing the
 * method. A frozen buffer (VeRA's shared projections) is registered with
 * adapter_add_buffer: saved and loaded like a tensor, never trained. */
#ifndef PEFT_METHOD_H
#define PEFT_METHOD_H

#include "peft/adapter.h"

#include <cjson/cJSON.h>

typedef enum { HOOK_NONE = 0, HOOK_ADD, HOOK_REPLACE } hook_kind;

/* One call of a hooked linear. x (N, in) rows contiguous; y (N, out) with
 * row stride ldy. */
typedef struct {
    const peft_model *m;
    int l;
    model_linear_role r;
    const kern_weight *W;   /* the base weight (out, in) */
    const float *bias;      /* the effective bias (base or the method's), or NULL */
    int in, out, N;
    const float *x;
    float *y;
    int ldy;
    float beta;             /* HOOK_REPLACE: y = beta·y + f(x) */
    void *act;              /* lin_act_bytes bytes kept from forward to backward */
    float *scr;             /* the method's scratch (scratch_floats), not kept */
    float *mm_scr;          /* kern_matmul / kern_matmul_dx scratch */
    bool train;             /* a training forward (dropout on) */
    uint64_t seed;          /* this step's dropout seed */
    int nt;
} lin_call;

/* One call of a hooked sub-layer output: h (N, d) is the sub-layer's output
 * (its output projection applied), y (N, d) the residual stream, y += g(h). */
typedef struct {
    const peft_model *m;
    int l, site, N, d;
    const float *h;
    float *y;
    void *act;              /* sub_act_bytes bytes kept from forward to backward */
    float *scr;             /* the method's scratch (scratch_floats) */
    int nt;
} sub_call;

/* A command-line option of a method: --name VALUE (or a flag when metavar
 * is NULL). The CLI collects them as "name=value" (dashes as '_') into
 * method_config.options; the method reads them in check and create. Options
 * several methods list are one --help entry naming its owners, and an
 * option given for a method that does not list it is an error. Names with a
 * meaning of their own (method_option_is_field): r, alpha, dropout, target,
 * layers fill method_config's generic fields; loraplus-lr-ratio and
 * loraplus-lr-embedding are the trainer's (LoRA+ parameter groups) and go
 * to its parameters. */
typedef struct {
    const char *name;
    const char *metavar;    /* NULL: a flag */
    const char *help;
} method_option;

/* The help of the shared options, one text for every method listing them
 * (--help shows one line per distinct text). */
#define METHOD_HELP_TARGET                                                                                           \
    "modules: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj | c_attn,c_proj,c_fc | all-linear (default: " \
    "the method's for the architecture)"
#define METHOD_HELP_LAYERS "layers to transform, e.g. 0,1,2 (default all)"
#define METHOD_HELP_DROPOUT "dropout on the adapter's input (default 0)"

struct method_ops {
    const char *name;                 /* --method NAME, peft_adapter_method */
    const char *const *aliases;       /* NULL-terminated, or NULL */
    const char *peft_type;            /* adapter_config.json "peft_type" */
    const char *summary;              /* one line for --help */
    const method_option *options;     /* terminated by {NULL}, or NULL */
    unsigned flags;                   /* METHOD_PROMPT_LEARNING, METHOD_SAVES_MODEL */

    /* The method mc's options select instead of this one (LoRA's
     * --use-dora: DoRA), or NULL / this one. */
    const method_ops *(*resolve)(const method_config *mc);

    /* Checks mc's options before anything is loaded (the CLI's usage errors);
     * what needs the model is checked by create. */
    int (*check)(const method_config *mc, peft_err *err);
    /* Fills a's method state from mc (defaults, mc->options), checks it
     * and registers every tensor and buffer (adapter_add_tensor /
     * adapter_add_buffer). The registry is allocated after it returns. */
    int (*create)(adapter *a, const peft_model *m, const method_config *mc, peft_err *err);
    /* After allocation: sets the method's pointers into the block. */
    int (*wire)(adapter *a, const peft_model *m, peft_err *err);
    /* A fresh adapter's initial values (after wire). */
    int (*init)(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err);
    void (*free_priv)(adapter *a);

    /* adapter_config.json: the method's fields, written into o (the common
     * ones — peft_type, base_model_name_or_path, task_type — are there
     * already), and read back into mc before create. */
    int (*config_write)(const adapter *a, const peft_model *m, cJSON *o);
    int (*config_read)(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err);
    /* Instead of config_read and create, where the file's tensors decide
     * the shapes (LoRA's per-module ranks): the adapter a config o and the
     * tensors st describe, with a head of n_labels, its values not yet read
     * (adapter_load reads them). */
    int (*load)(const peft_model *m, const cJSON *o, const char *cfg_path, const st_archive *st, const char *st_path,
                int n_labels, adapter **out, peft_err *err);
    /* Whether a can be trained here (NULL: yes); a loaded adapter may hold
     * settings only inference supports. */
    int (*train_check)(const adapter *a, peft_err *err);
    /* A llama.cpp GGUF adapter file (optional). */
    int (*export_gguf)(const adapter *a, const peft_model *m, const char *path, peft_err *err);

    /* linear hooks */
    hook_kind (*lin_kind)(const adapter *a, int l, model_linear_role r);
    size_t (*lin_act_bytes)(const adapter *a, int l, model_linear_role r, int N);
    size_t (*scratch_floats)(const adapter *a, const peft_model *m, int N);
    int (*lin_fwd)(const adapter *a, const lin_call *c);
    /* dy (N, out) row stride lddy. HOOK_ADD: parameter gradients and
     * dx += d delta / dx; HOOK_REPLACE: everything, dx included. dx (N, in)
     * may be NULL (parameter gradients only). */
    int (*lin_bwd)(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx);
    /* a linear's bias replaced by the method's (BitFit), or NULL: the base's */
    const float *(*lin_bias)(const adapter *a, int l, model_linear_role r);
    /* norms: the method's weight or bias of norm `which` (NORM_*, model/arch.h)
     * of layer l (l == n_layer: the final norm), or NULL: the base's; and
     * the gradient it accumulates into (NULL: not trained) */
    const float *(*norm_param)(const adapter *a, int l, int which, bool bias);
    float *(*norm_grad)(adapter *a, int l, int which, bool bias);
    /* embeddings (which 0: tokens, 1: positions, 2: the head, 3: token types): the method's
     * weight (built in tmp) or NULL for the base's, and its gradient */
    const kern_weight *(*emb_weight)(const adapter *a, const peft_model *m, int which, kern_weight *tmp);
    float *(*emb_grad)(adapter *a, int which);
    /* saving that is not an adapter folder (full fine-tuning: a model) */
    int (*save)(const adapter *a, const peft_model *m, const char *dir, peft_err *err);
    /* sub-layer output hooks */
    bool (*sub_hooked)(const adapter *a, int l, int site);
    size_t (*sub_act_bytes)(const adapter *a, int l, int site, int N);
    int (*sub_fwd)(const adapter *a, const sub_call *c);
    /* from dy (N, d), the gradient of y: parameter gradients and dh (N, d),
     * the gradient of h (overwritten). */
    int (*sub_bwd)(adapter *a, const sub_call *c, const float *dy, float *dh);
    /* input rows: P rows (d floats each) put before every sequence */
    int (*input_rows)(const adapter *a);
    const float *(*input_row)(const adapter *a, int p);
    float *(*input_grad)(adapter *a, int p);
    /* attention keys/values: P rows per layer every query sees first; k
     * and v point at the kvd floats of row p of layer l */
    int (*kv_rows)(const adapter *a);
    void (*kv_row)(const adapter *a, int l, int p, const float **k, const float **v);
    void (*kv_grad)(adapter *a, int l, int p, float **gk, float **gv);
    /* values derived from the parameters, recomputed after every change
     * (adapter_refresh), and the backward through them (adapter_refresh_bwd) */
    int (*refresh)(adapter *a, const peft_model *m, peft_err *err);
    void (*refresh_bwd)(adapter *a, const peft_model *m);
    /* The lowest layer with a hook (the backward stops there). */
    int (*lowest_layer)(const adapter *a, const peft_model *m);

    /* merge: whether linear (l, r) changes, and its merged rows from the
     * base's: row q of the stored weight (an output row, or with
     * `transposed` an input column of a GPT-2 Conv1D), n_cols values. */
    bool (*merge_touches)(const adapter *a, int l, model_linear_role r);
    void (*merge_row)(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                      int64_t n_cols);
    /* The merged bias from the base's (NULL: unchanged). */
    void (*merge_bias)(const adapter *a, int l, model_linear_role r, float *bias, int n);
    /* A line for `peft train`'s summary: "r=8 on 4 modules". */
    void (*describe)(const adapter *a, char *buf, size_t cap);

    /* training hooks (train/trainer.c), for methods that change during a
     * run (AdaLoRA's rank allocator):
     *   train_begin  before the first of total_steps optimizer steps
     *                (start_step > 0: a resume); checks the run fits the
     *                method's schedule;
     *   extra_loss   once per optimizer step, after the backward of its
     *                micro-batches and before clipping: the method's own
     *                term of the loss into *loss, its gradient added to
     *                a->grads (a regulariser);
     *   step_end     after optimizer step `step` (0-based), a->grads still
     *                the step's clipped gradient (HF calls AdaLoRA's
     *                update_and_allocate there, before zero_grad). */
    int (*train_begin)(adapter *a, const peft_model *m, int total_steps, int start_step, peft_err *err);
    int (*extra_loss)(adapter *a, const peft_model *m, double *loss, peft_err *err);
    int (*step_end)(adapter *a, const peft_model *m, int step, int total_steps, peft_err *err);
};

/* HF's prompt-learning methods: one wrapper level less in the head's key
 * (base_model.score.weight), no layers_to_transform, no packing. */
enum {
    METHOD_PROMPT_LEARNING = 1u << 0,
    /* the result is a model (saved by `save`), every parameter trained */
    METHOD_SAVES_MODEL = 1u << 1,
};

#define PEFT_METHOD_OPTIONS_MAX 1024

/* ---- the registry (methods/registry.c) ---------------------------------- */

/* Every method, NULL-terminated. */
const method_ops *const *method_registry(void);
/* By --method name or alias; NULL when unknown. */
const method_ops *method_find(const char *name);
/* By adapter_config.json peft_type (the first method of that type: LORA is
 * lora, which loads DoRA too); NULL when unknown. */
const method_ops *method_find_peft_type(const char *peft_type);

/* ---- the framework (method.c) ------------------------------------------- */

/* A method's adapter for m from mc (mc->ops set): create, the head
 * (mc->n_labels), allocation, wire, and with `fresh` the initial values. */
int method_adapter_new(const peft_model *m, const method_config *mc, bool fresh, adapter **out, peft_err *err);

/* The hooked linear (l, r) of an adapter: hook_kind and the call. */
hook_kind method_lin_kind(const adapter *a, int l, model_linear_role r);
bool method_sub_hooked(const adapter *a, int l, int site);

/* ---- helpers for method files -------------------------------------------- */

/* "key=value;key=value" options: the value of key, or NULL. */
const char *method_option_get(const method_config *mc, const char *key, char *buf, size_t cap);
/* The option as a number in [lo, hi] (*out unchanged when absent). */
int method_option_float(const method_config *mc, const char *key, double lo, double hi, double *out, peft_err *err);
int method_option_bool(const method_config *mc, const char *key, bool *out, peft_err *err);
/* Whether the method has option key (its CLI name with '-' for '_'). */
bool method_has_option(const method_ops *ops, const char *key);
/* Whether option `name` fills a generic field of method_config (r, alpha,
 * dropout, target, layers) rather than method_config.options. */
bool method_option_is_field(const char *name);
/* Appends key=value to mc->options. */
int method_option_add(method_config *mc, const char *key, const char *value, peft_err *err);

/* The linears a LoRA-like method targets in m from mc's targets and
 * layers: slot (l * ROLE_N_LINEAR + r) is true where targeted. Fails
 * naming the method when nothing is. */
/* A --target list ("q_proj,v_proj", "all-linear", GPT-2's "c_attn,c_proj")
 * into role bits for m; unknown names are an error. */
int method_parse_targets(const peft_model *m, const char *list, uint32_t *targets, peft_err *err);
int method_target_slots(const peft_model *m, const method_config *mc, const char *what, bool *slots, peft_err *err);

/* adapter_config.json helpers: target_modules from role bits (HF names);
 * target names (a list or a string) into role bits; a number or a bool
 * with a default and a range (errors name the file and the key). */
int method_write_targets(const peft_model *m, uint32_t targets, cJSON *o);
int adapter_json_targets(const peft_model *m, const cJSON *v, uint32_t *bits, const char *path, peft_err *err);
int method_read_number(const cJSON *o, const char *key, double dflt, double lo, double hi, double *out,
                       const char *path, peft_err *err);
int method_read_bool(const cJSON *o, const char *key, bool dflt, bool *out, const char *path, peft_err *err);

/* A call of linear (l, r) on x (N rows) into y: the weight, its effective
 * bias and the shapes filled; act, scr, mm_scr, train, seed, nt are the
 * caller's to set. */
lin_call method_lin_call(const adapter *a, const peft_model *m, int l, model_linear_role r, const float *x, int N,
                         float *y, int ldy, float beta);

/* Runs the base product of c (y = beta·y + x·Wᵀ + b). */
int method_base_fwd(const lin_call *c);
/* dx += dy·W. */
int method_base_dx(const lin_call *c, const float *dy, int lddy, float *dx);

#endif
