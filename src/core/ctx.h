/* ctx.h — the library context: thread count, logging, last error. */
#ifndef PEFT_CORE_CTX_H
#define PEFT_CORE_CTX_H

#include "core/core.h"

struct peft_ctx {
    int n_threads;
    peft_log_fn log;
    void *log_user;
    peft_log_level log_level;
    peft_err err;
};

void peft_log(const peft_ctx *ctx, peft_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Records err on the context and returns its code. */
int peft_ctx_fail(peft_ctx *ctx, const peft_err *err);
/* Copies err into a caller's peft_error (may be NULL); returns err->code. */
int peft_error_set(peft_error *e, const peft_err *err);

#endif
