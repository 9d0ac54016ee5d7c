/* probe.h — which linears a low-rank update would help most, measured on
 * the user's data (`peft probe`, docs/search.md "choosing parameters").
 *
 * For every probed linear W (out, in) of every layer the probe accumulates
 * the full gradient of the training loss over N batches,
 *     G = ∂L/∂W = Σ_t g_t x_tᵀ     (g_t the output gradient, x_t the input),
 * through an internal method (not in the registry) that hooks every linear
 * with no forward effect and adds dyᵀ·x in its backward hook. Its singular
 * values σ_1 >= σ_2 >= ... give, for each rank r, the first-order loss
 * decrease of the best rank-r update of unit Frobenius norm:
 *     max_{rank ΔW <= r, ‖ΔW‖_F = 1} -<G, ΔW> = sqrt(Σ_{i<=r} σ_i²)
 * (Eckart–Young; the direction LoRA-GA, Wang et al. 2024, initialises LoRA
 * from). Over several modules under one norm budget the decreases add in
 * squares, so E_m(r) = Σ_{i<=r} σ_i² of module m is the additive score the
 * budgeted proposal maximises (greedy by ΔE per parameter). G is kept
 * exactly in f32: the probe refuses, naming the size, when the modules'
 * gradients exceed the memory limit (probe fewer kinds or layers). */
#ifndef PEFT_TRAIN_PROBE_H
#define PEFT_TRAIN_PROBE_H

#include "peft/adapter.h"
#include "train/data.h"
#include "train/graph.h"

typedef struct {
    int layer;
    model_linear_role role;
    int in, out;
    float *G;      /* (out, in): Σ over batches of dyᵀ·x, divided by the targets at probe_finish */
    double *sv;    /* min(in, out) singular values of G, descending (probe_finish) */
    int n_sv;
    double fro2;   /* ‖G‖_F² */
} probe_module;

typedef struct {
    int n_modules;
    probe_module *mods;    /* layer-major, then by role */
    probe_module **slot;   /* (n_layer * ROLE_N_LINEAR) */
    double loss_sum;
    int64_t n_targets;
    int n_batches;
    bool finished;
} probe_state;

/* The bytes the gradients of the linears (targets bits, 0: every linear;
 * layers mask, 0: all) of m take. */
size_t probe_grad_bytes(const peft_model *m, uint32_t targets, uint64_t layers);
/* An adapter whose hooks accumulate G for those linears (with a classification
 * head of n_labels, initialised from seed as training's, when n_labels > 0).
 * PEFT_ERR_NOMEM naming the size when it is over max_bytes. */
int probe_adapter_new(const peft_model *m, uint32_t targets, uint64_t layers, int n_labels, uint64_t seed,
                      size_t max_bytes, adapter **out, peft_err *err);
/* a's state, NULL when a is not a probe adapter. */
probe_state *probe_of(const adapter *a);
/* One batch through g (built for a): forward, backward, G += Σ dyᵀ·x of
 * its summed loss. */
int probe_batch(train_graph *g, adapter *a, const data_batch *b, peft_err *err);
/* G /= the targets seen (the gradient of the mean loss, as training's
 * token-normalised loss) and the singular values of every G. */
int probe_finish(adapter *a, peft_err *err);
/* The top singular pair of module md's G: u (out), v (in), unit norm, with
 * G·v = σ_1·u. */
int probe_top_pair(const probe_module *md, float *u, float *v, double *s1, peft_err *err);

#endif
