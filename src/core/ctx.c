/* ctx.c — context creation, logging, error reporting. */
#include "core/ctx.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

peft_ctx_params peft_ctx_default_params(void) {
    peft_ctx_params p;
    memset(&p, 0, sizeof p);
    p.n_threads = 0;
    p.log_level = PEFT_LOG_INFO;
    return p;
}

peft_ctx *peft_init(const peft_ctx_params *p) {
    peft_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    peft_ctx_params d = peft_ctx_default_params();
    if (!p) p = &d;
    ctx->n_threads = p->n_threads;
    if (ctx->n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        ctx->n_threads = n > 0 ? (int)n : 1;
    }
    ctx->log = p->log;
    ctx->log_user = p->log_user;
    ctx->log_level = p->log_level;
    /* Parallelism comes from our OpenMP loops, each calling single-threaded
     * BLAS; two thread pools competing for the same cores would be slower.
     * This is OpenBLAS's process-wide setting. */
    openblas_set_num_threads(1);
    return ctx;
}

void peft_free(peft_ctx *ctx) { free(ctx); }

const char *peft_last_error(const peft_ctx *ctx) { return ctx ? ctx->err.msg : "no context"; }

int peft_ctx_threads(const peft_ctx *ctx) { return ctx->n_threads; }

void peft_log(const peft_ctx *ctx, peft_log_level level, const char *fmt, ...) {
    if (!ctx || !ctx->log || level > ctx->log_level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ctx->log(level, buf, ctx->log_user);
}

int peft_ctx_fail(peft_ctx *ctx, const peft_err *err) {
    if (ctx && err && err != &ctx->err) ctx->err = *err;
    return err ? err->code : PEFT_ERR_INVALID;
}

int peft_error_set(peft_error *e, const peft_err *err) {
    if (e) {
        e->status = err->code;
        snprintf(e->msg, sizeof e->msg, "%s", err->msg);
    }
    return err->code;
}
