/* core.h — errors, allocation, RNG, timing and small file helpers shared by
 * every layer of libpeft. Nothing here knows about models or file formats. */
#ifndef PEFT_CORE_H
#define PEFT_CORE_H

#include "peft.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An error slot. Internal functions take a peft_err * and, on failure, fill
 * it and return the (negative) status, so `return peft_fail(err, ...)` reads
 * naturally. The message names the file and the problem. */
typedef struct {
    int code;
    char msg[1024];
} peft_err;

int peft_fail(peft_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void peft_err_clear(peft_err *err);

/* Allocation that records PEFT_ERR_NOMEM in err on failure (err may be NULL). */
void *peft_malloc(size_t n, peft_err *err);
void *peft_calloc(size_t count, size_t size, peft_err *err);
char *peft_strdup(const char *s, peft_err *err);
char *peft_strndup(const char *s, size_t n, peft_err *err);

/* Whole-file read (NUL-terminated, *len excludes the NUL). */
int peft_read_file(const char *path, char **data, size_t *len, peft_err *err);
/* Atomic write: writes path.tmp.<pid>, fsyncs, renames over path. */
int peft_write_file_atomic(const char *path, const void *data, size_t len, peft_err *err);
/* Copies src_dir/name to dst_dir/name (atomically) when it exists; 0 when it
 * does not. */
int peft_copy_file_if_exists(const char *src_dir, const char *dst_dir, const char *name, peft_err *err);
/* mkdir -p; fails when dir exists but is not a folder. */
int peft_mkdir_p(const char *dir, peft_err *err);
bool peft_file_exists(const char *path);
bool peft_is_dir(const char *path);
/* "dir" + "/" + "name" into a fresh string. */
char *peft_path_join(const char *dir, const char *name, peft_err *err);

/* Read-only mapping of a whole file. */
typedef struct {
    void *data;
    size_t size;
} peft_mmap;
int peft_mmap_open(const char *path, peft_mmap *m, peft_err *err);
void peft_mmap_close(peft_mmap *m);

/* Deterministic RNG (xoshiro256**, seeded with splitmix64). */
typedef struct { uint64_t s[4]; } peft_rng;
void peft_rng_seed(peft_rng *r, uint64_t seed);
uint64_t peft_rng_u64(peft_rng *r);
float peft_rng_uniform(peft_rng *r);   /* [0, 1) */
float peft_rng_normal(peft_rng *r);    /* N(0, 1) */

double peft_time_s(void);              /* monotonic seconds */
/* Memory of this process (Linux /proc; 0 where unavailable): resident now,
 * the peak so far (getrusage), and the resident part of the mapping that
 * starts at base (a mmap'd model file: /proc/self/smaps). */
size_t peft_rss_now(void);
size_t peft_rss_peak(void);
size_t peft_mapping_rss(const void *base);

/* Growable byte buffer. */
typedef struct { char *data; size_t len, cap; } peft_buf;
int peft_buf_append(peft_buf *b, const void *data, size_t n);
int peft_buf_printf(peft_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void peft_buf_free(peft_buf *b);

/* Half-precision conversions. */
float peft_f16_to_f32(uint16_t h);
uint16_t peft_f32_to_f16(float f);
float peft_bf16_to_f32(uint16_t h);
uint16_t peft_f32_to_bf16(float f);

/* Bytes per element for plain (non-block) dtypes, 0 for block-quantized ones. */
size_t peft_dtype_elem_size(peft_dtype t);

#define PEFT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PEFT_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
