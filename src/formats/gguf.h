/* gguf.h — read (mmap) and write GGUF v2/v3 files.
 *
 * Layout: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
 * key/value pairs (string key, u32 type, value), then n_tensors infos
 * (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset), then
 * padding to general.alignment (default 32) and the data section. Strings are
 * u64 length + bytes, no NUL. ne[0] is the innermost (contiguous) dimension. */
#ifndef PEFT_FORMATS_GGUF_H
#define PEFT_FORMATS_GGUF_H

#include "core/core.h"

typedef enum {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12, GGUF_TYPE_COUNT
} gguf_vtype;

#define GGUF_MAX_DIMS 4

typedef struct {
    char *name;
    uint32_t ggml_type;     /* as stored */
    peft_dtype dtype;       /* mapped; PEFT_DT_COUNT when unknown to us */
    int ndim;
    int64_t ne[GGUF_MAX_DIMS];  /* ne[0] innermost */
    uint64_t offset;        /* relative to the data section */
    const void *data;
    size_t nbytes;
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Validates everything: magic, version, counts against file size, every key
 * and value, string lengths, tensor dims (no overflow), types, offsets and
 * sizes inside the data section. Errors name the file. */
int gguf_open(const char *path, gguf_file **out, peft_err *err);
void gguf_close(gguf_file *f);
const char *gguf_path(const gguf_file *f);
uint32_t gguf_version(const gguf_file *f);
size_t gguf_alignment(const gguf_file *f);

/* Metadata. Index-based access, plus typed getters by key that return
 * PEFT_ERR_FORMAT (message naming key and file) on a type mismatch and
 * PEFT_ERR_INVALID when the key is missing. */
int gguf_n_kv(const gguf_file *f);
const char *gguf_kv_key(const gguf_file *f, int i);
gguf_vtype gguf_kv_type(const gguf_file *f, int i);
int gguf_find_key(const gguf_file *f, const char *key);   /* -1 if absent */

int gguf_get_int(const gguf_file *f, const char *key, int64_t *out, peft_err *err);    /* any integer type or bool */
int gguf_get_float(const gguf_file *f, const char *key, double *out, peft_err *err);   /* float32/64 or integer */
const char *gguf_get_str(const gguf_file *f, const char *key);  /* NULL if absent or not a string */

/* Arrays: element type, length; numeric arrays as a pointer to the raw
 * little-endian elements (may be unaligned: read with memcpy); strings by
 * index (NUL-terminated copies owned by f). */
int gguf_get_arr(const gguf_file *f, const char *key, gguf_vtype *elem_type, uint64_t *n,
                 const void **data, peft_err *err);
const char *gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t i);
/* Scalar value as text for display ("42", "1e-05", "\"llama\"", "[49152 x string]"). */
int gguf_kv_to_string(const gguf_file *f, int i, char *buf, size_t cap);

int gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Generic access to any value, including arrays of arrays (added).
 * Numeric array data points into the mapping (little-endian, may be
 * unaligned); strings are NUL-terminated copies owned by the file, with their
 * byte length (they may contain NULs). */
typedef struct gguf_value gguf_value;
const gguf_value *gguf_kv_value(const gguf_file *f, int i);
gguf_vtype gguf_value_type(const gguf_value *v);
int gguf_value_int(const gguf_value *v, int64_t *out);      /* integers, bool; PEFT_ERR_FORMAT otherwise */
uint64_t gguf_value_u64(const gguf_value *v);               /* raw bits of an unsigned/bool scalar */
int gguf_value_float(const gguf_value *v, double *out);     /* floats and integers */
const char *gguf_value_str(const gguf_value *v, size_t *len);  /* NULL unless a string */
int gguf_value_arr(const gguf_value *v, gguf_vtype *elem_type, uint64_t *n, const void **data);
const char *gguf_value_arr_str(const gguf_value *v, uint64_t i, size_t *len);
const gguf_value *gguf_value_arr_item(const gguf_value *v, uint64_t i);  /* arrays of arrays */
const char *gguf_vtype_name(gguf_vtype t);
/* Byte offset of the data section in the file. */
size_t gguf_data_offset(const gguf_file *f);

/* ggml type id <-> peft dtype. */
peft_dtype gguf_dtype_from_ggml(uint32_t ggml_type);   /* PEFT_DT_COUNT if unknown */
int gguf_ggml_from_dtype(peft_dtype t);                /* -1 if none */
const char *gguf_ggml_type_name(uint32_t ggml_type);    /* "Q4_K", NULL if unknown */

/* Writer (version 3, alignment 32). Values are copied; tensor data is
 * referenced until gguf_writer_save returns. Saves atomically. */
typedef struct gguf_writer gguf_writer;
gguf_writer *gguf_writer_new(peft_err *err);
void gguf_writer_free(gguf_writer *w);
int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_w_f32(gguf_writer *w, const char *key, float v);
int gguf_w_bool(gguf_writer *w, const char *key, bool v);
int gguf_w_str(gguf_writer *w, const char *key, const char *v);
int gguf_w_arr(gguf_writer *w, const char *key, gguf_vtype elem_type, const void *data, uint64_t n);
int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* Copies every key/value pair of src (used when rewriting a model). */
int gguf_w_copy_kv(gguf_writer *w, const gguf_file *src, const char *skip_prefix);
int gguf_w_tensor(gguf_writer *w, const char *name, peft_dtype t, int ndim, const int64_t *ne,
                  const void *data, size_t nbytes);
int gguf_writer_save(gguf_writer *w, const char *path, peft_err *err);

/* The file's mapping (for memory accounting). */
const void *gguf_map_base(const gguf_file *f, size_t *size);

#endif
