/* safetensors.h — read (mmap) and write the safetensors format.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
 *  "__metadata__": {"k": "v"}}, then the data section; offsets are relative
 * to the start of the data section. */
#ifndef PEFT_FORMATS_SAFETENSORS_H
#define PEFT_FORMATS_SAFETENSORS_H

#include "core/core.h"

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    peft_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];   /* row-major, shape[ndim-1] innermost */
    const void *data;             /* points into the mapping */
    size_t nbytes;
    int shard;                    /* index of the file it lives in */
} st_tensor;

/* A set of tensors from one file or from the shards of a sharded checkpoint. */
typedef struct st_archive st_archive;

/* path may be: a .safetensors file; a model.safetensors.index.json; or a
 * folder holding model.safetensors or model.safetensors.index.json (or a
 * single *.safetensors file, e.g. adapter_model.safetensors when name_hint
 * says so). Validates the header completely: JSON, dtypes, shapes vs offsets,
 * offsets inside the file, no overlap. Errors name the file. */
int st_open(const char *path, st_archive **out, peft_err *err);
void st_close(st_archive *a);

int st_count(const st_archive *a);
const st_tensor *st_at(const st_archive *a, int i);
const st_tensor *st_find(const st_archive *a, const char *name);
/* Renames every tensor whose name starts with root but does not continue
 * with ins to root + ins + the rest (an adapter of a bare encoder read as
 * its task model's: "base_model.model." + "bert."). Duplicates that result
 * are PEFT_ERR_FORMAT. */
int st_insert_after_prefix(st_archive *a, const char *root, const char *ins, peft_err *err);
/* Value of a "__metadata__" key in the (first) file, NULL when absent. */
const char *st_metadata(const st_archive *a, const char *key);
int64_t st_numel(const st_tensor *t);

/* Writing: tensors are written in the order given; data must hold
 * numel * elem_size bytes of the dtype (plain dtypes only). metadata is a
 * NULL-terminated list of key, value pairs (may be NULL). The file is written
 * to a temporary name, fsynced and renamed. */
typedef struct {
    const char *name;
    peft_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_write_tensor;

int st_write(const char *path, const st_write_tensor *tensors, int n,
             const char *const *metadata, peft_err *err);

/* "F32" <-> PEFT_DT_F32 etc.; returns -1 for an unknown name. */
int st_dtype_from_name(const char *s);
const char *st_dtype_to_name(peft_dtype t);

/* The mapped files (shards) of an archive (for memory accounting). */
int st_map_count(const st_archive *a);
const void *st_map_base(const st_archive *a, int i, size_t *size);

#endif
