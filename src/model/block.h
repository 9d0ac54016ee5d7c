/* block.h — the one recipe of a transformer block, driven by the model's
 * architecture descriptor (model/arch.h), shared by the inference forward
 * (model/forward.c, with its KV cache) and the training graph
 * (train/graph.c, which keeps the activations and runs the backward).
 *
 * The recipe owns the math between the products: norms, RoPE, the
 * activation, the residual adds. What differs between inference and
 * training — how a linear runs (through the adapter's hooks, with kept
 * activations or scratch), where keys and values come from (the cache, or
 * the batch's segments and a prefix), timing — the caller supplies as
 * callbacks in block_env. */
#ifndef PEFT_MODEL_BLOCK_H
#define PEFT_MODEL_BLOCK_H

#include "model/model.h"

/* A layer's activations, rows N = the caller's. xmid may be xin, xout may
 * be xmid (inference: one residual buffer); the norm statistics may be
 * NULL (not kept); u is NULL unless the MLP is gated; a may be g
 * (in place) when the backward is not run. */
typedef struct {
    float *xin;                 /* (N, d) the layer's input */
    float *mean1, *rstd1, *h1;  /* attention norm: stats (N), output (N, d) */
    float *qkv;                 /* (N, ldq): q | k | v, q and k after their norms and RoPE */
    float *qk_in, *qk_rstd;     /* per-head q/k norms (Qwen3): q | k before them (N, qd + kvd) and their
                                   statistics (N, n_head + n_kv_head); NULL: not kept */
    float *att;                 /* (N, qd) attention output (before o) */
    float *xmid;                /* (N, d) xin + o(att) */
    float *mean2, *rstd2, *h2;  /* MLP norm */
    float *g, *u, *a;           /* (N, ff): gate (GELU: up before the activation), up, activation output */
    float *xout;                /* (N, d) xmid + down(a) */
} block_acts;

/* The backward's buffers (N rows each): dx holds ∂L/∂xout on entry and
 * ∂L/∂xin on return (when asked for). */
typedef struct {
    float *dx, *dxmid, *dh, *dqkv, *datt, *dg, *du, *da;
    float *dqk;                 /* (N, qd + kvd): per-head q/k norms only */
} block_grads;

typedef struct block_env {
    peft_model *m;
    const struct adapter *ad;   /* for the norm parameters (NULL: the base's) */
    int N;                      /* rows */
    const int32_t *pos;         /* (N) RoPE positions */
    int nt;
    void *u;                    /* the caller's state, passed to every callback */
    /* y (N, out, row stride ldy) = beta·y + linear (l, r) of x */
    int (*lin)(void *u, int l, model_linear_role r, const float *x, float *y, int ldy, float beta);
    /* qkv = [q | k | v] of x (separate q, k, v linears); NULL: lin three times */
    int (*qkv)(void *u, int l, const float *x, float *qkv);
    /* y (N, d) += the output of the sub-layer ending in linear (l, r) at site (0 attention, 1 MLP) */
    int (*sub_out)(void *u, int l, model_linear_role r, int site, const float *x, float *y);
    /* A->att from A->qkv */
    int (*attn)(void *u, int l, block_acts *A);
    /* training only */
    int (*lin_bwd)(void *u, int l, model_linear_role r, const float *x, const float *dy, int ldy, float *dx);
    int (*qkv_bwd)(void *u, int l, const float *x, const float *dqkv, float *dx);   /* NULL: lin_bwd three times */
    int (*sub_out_bwd)(void *u, int l, model_linear_role r, int site, const float *x, const float *dy, float *dx);
    /* G->dqkv (zeroed) += the gradient of attention from G->datt */
    void (*attn_bwd)(void *u, int l, const block_acts *A, block_grads *G);
    /* the gradients of trainable norm parameters (which, bias), or NULL */
    float *(*norm_grad)(void *u, int l, int which, bool bias);
    void (*zero)(void *u, float *p, size_t n);
    void (*copy)(void *u, float *dst, const float *src, size_t n);
} block_env;

/* Layer l forward: A->xout from A->xin. */
int block_fwd(const block_env *e, int l, block_acts *A);
/* Layer l backward from G->dx = ∂L/∂xout; parameter gradients through the
 * callbacks; G->dx = ∂L/∂xin when need_dx (else G->dx is left clobbered). */
int block_bwd(const block_env *e, int l, const block_acts *A, block_grads *G, bool need_dx);

/* Norm `which` (0 attention, 1 MLP; l == n_layer: the final norm) of rows
 * x into y, with the adapter's parameters; mean/rstd saved when non-NULL. */
void block_norm_fwd(const block_env *e, int l, int which, float *y, float *mean, float *rstd, const float *x, int rows);
/* dx += its backward from dy (norm parameter gradients via e->norm_grad). */
void block_norm_bwd(const block_env *e, int l, int which, float *dx, const float *dy, const float *x,
                    const float *mean, const float *rstd);

/* Whether the model computes q, k, v with one fused linear (GPT-2's c_attn). */
bool block_fused_qkv(const peft_model *m);
/* Whether it normalizes each head of q and k (Qwen3). */
bool block_qk_norm(const peft_model *m);

#endif
