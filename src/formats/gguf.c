/* gguf.c — validating mmap reader and atomic writer for GGUF v2/v3.
 *
 * Every read goes through a bounds-checked cursor, so a truncated or
 * corrupt file fails with PEFT_ERR_FORMAT and a message naming the file,
 * the offset and what was being read. Counts are checked against the bytes
 * left before anything is allocated for them, so a forged n_kv or array
 * length cannot make us allocate gigabytes.
 *
 * Strings of string arrays (tokenizer.ggml.tokens, merges: ~50k each) are
 * copied once at open into one buffer per array (NUL-terminated, with an
 * offset table), so lookups by index are O(1) and allocation-free. */
#include "formats/gguf.h"
#include "kernels/quant.h"
#include "core/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DEPTH 8        /* arrays of arrays nesting */
#define GGUF_MAX_NAME 64        /* ggml's GGML_MAX_NAME, NUL included */

struct gguf_value {
    gguf_vtype type;
    union { uint64_t u; int64_t i; double f; } num;  /* scalars (ints widened, floats as double) */
    char *str;                  /* STRING: NUL-terminated copy */
    uint64_t str_len;
    gguf_vtype arr_type;        /* ARRAY: element type, count */
    uint64_t n;
    const uint8_t *raw;         /* ARRAY: first element in the mapping */
    char *sbuf;                 /* ARRAY of STRING: n strings, each NUL-terminated */
    uint64_t *soff;             /* ... at sbuf + soff[i], length soff[i+1] - soff[i] - 1 */
    struct gguf_value *items;   /* ARRAY of ARRAY */
    const uint8_t *span;        /* encoded value (after the type tag), for copying */
    size_t span_len;
};

typedef struct {
    char *key;
    gguf_value v;
} gguf_kv;

struct gguf_file {
    char *path;
    peft_mmap map;
    uint32_t version;
    size_t alignment;
    size_t data_off;
    gguf_kv *kv;
    int n_kv;
    gguf_tensor *t;
    int n_t;
    int *khash, *thash;        /* open addressing, -1 = empty */
    size_t khcap, thcap;
};

/* ---- ggml types ---------------------------------------------------------------- */

typedef struct {
    const char *name;
    uint32_t blk, bytes;       /* elements and bytes per block; 0: unknown id */
    peft_dtype dt;
} gguf_ggml_type;

/* Indexed by ggml type id (ggml.h enum ggml_type; ids 4, 5, 31-33, 36-38 were
 * removed from ggml and are unknown here). */
static const gguf_ggml_type gguf_types[] = {
    [0] = {"F32", 1, 4, PEFT_DT_F32},          [1] = {"F16", 1, 2, PEFT_DT_F16},
    [2] = {"Q4_0", 32, 18, PEFT_DT_Q4_0},      [3] = {"Q4_1", 32, 20, PEFT_DT_Q4_1},
    [6] = {"Q5_0", 32, 22, PEFT_DT_Q5_0},      [7] = {"Q5_1", 32, 24, PEFT_DT_Q5_1},
    [8] = {"Q8_0", 32, 34, PEFT_DT_Q8_0},      [9] = {"Q8_1", 32, 36, PEFT_DT_COUNT},
    [10] = {"Q2_K", 256, 84, PEFT_DT_Q2_K},    [11] = {"Q3_K", 256, 110, PEFT_DT_Q3_K},
    [12] = {"Q4_K", 256, 144, PEFT_DT_Q4_K},   [13] = {"Q5_K", 256, 176, PEFT_DT_Q5_K},
    [14] = {"Q6_K", 256, 210, PEFT_DT_Q6_K},   [15] = {"Q8_K", 256, 292, PEFT_DT_Q8_K},
    [16] = {"IQ2_XXS", 256, 66, PEFT_DT_COUNT}, [17] = {"IQ2_XS", 256, 74, PEFT_DT_COUNT},
    [18] = {"IQ3_XXS", 256, 98, PEFT_DT_COUNT}, [19] = {"IQ1_S", 256, 50, PEFT_DT_COUNT},
    [20] = {"IQ4_NL", 32, 18, PEFT_DT_COUNT},  [21] = {"IQ3_S", 256, 110, PEFT_DT_COUNT},
    [22] = {"IQ2_S", 256, 82, PEFT_DT_COUNT},  [23] = {"IQ4_XS", 256, 136, PEFT_DT_COUNT},
    [24] = {"I8", 1, 1, PEFT_DT_I8},           [25] = {"I16", 1, 2, PEFT_DT_I16},
    [26] = {"I32", 1, 4, PEFT_DT_I32},         [27] = {"I64", 1, 8, PEFT_DT_I64},
    [28] = {"F64", 1, 8, PEFT_DT_F64},         [29] = {"IQ1_M", 256, 56, PEFT_DT_COUNT},
    [30] = {"BF16", 1, 2, PEFT_DT_BF16},       [34] = {"TQ1_0", 256, 54, PEFT_DT_COUNT},
    [35] = {"TQ2_0", 256, 66, PEFT_DT_COUNT},  [39] = {"MXFP4", 32, 17, PEFT_DT_COUNT},
};
#define GGUF_N_TYPES ((uint32_t)(sizeof gguf_types / sizeof gguf_types[0]))

static const gguf_ggml_type *gguf_type_info(uint32_t id) {
    return (id < GGUF_N_TYPES && gguf_types[id].blk) ? &gguf_types[id] : NULL;
}

peft_dtype gguf_dtype_from_ggml(uint32_t ggml_type) {
    const gguf_ggml_type *ti = gguf_type_info(ggml_type);
    return ti ? ti->dt : PEFT_DT_COUNT;
}

int gguf_ggml_from_dtype(peft_dtype t) {
    if (t >= PEFT_DT_COUNT) return -1;
    for (uint32_t i = 0; i < GGUF_N_TYPES; i++)
        if (gguf_types[i].blk && gguf_types[i].dt == t) return (int)i;
    return -1;
}

const char *gguf_ggml_type_name(uint32_t ggml_type) {
    const gguf_ggml_type *ti = gguf_type_info(ggml_type);
    return ti ? ti->name : NULL;
}

static const char *const gguf_vtype_names[GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
    "string", "array", "uint64", "int64", "float64",
};

const char *gguf_vtype_name(gguf_vtype t) {
    return (unsigned)t < GGUF_TYPE_COUNT ? gguf_vtype_names[t] : "?";
}

/* Bytes of a fixed-size value type, 0 for string/array. */
static size_t gguf_vtype_size(gguf_vtype t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* ---- little-endian helpers ------------------------------------------------------ */

static uint64_t gguf_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = (v << 8) | p[i];
    return v;
}

static uint64_t gguf_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
    return h;
}

/* ---- reader --------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *path;
    peft_err *err;
    uint64_t n_nested;   /* items of arrays of arrays so far (each costs a gguf_value, ~9x its 12 bytes) */
} gguf_rd;

static int rd_need(gguf_rd *r, uint64_t n, const char *what) {
    if (n > r->size - r->pos)
        return peft_fail(r->err, PEFT_ERR_FORMAT,
                         "%s: truncated: %s at offset %zu needs %" PRIu64 " bytes, only %zu remain", r->path, what,
                         r->pos, n, r->size - r->pos);
    return 0;
}

static int rd_uint(gguf_rd *r, size_t n, uint64_t *out, const char *what) {
    int rc = rd_need(r, n, what);
    if (rc) return rc;
    *out = gguf_le(r->p + r->pos, n);
    r->pos += n;
    return 0;
}

/* A string: u64 length + bytes. Returns a pointer into the mapping. */
static int rd_str(gguf_rd *r, const uint8_t **s, uint64_t *len, const char *what) {
    uint64_t n;
    int rc = rd_uint(r, 8, &n, what);
    if (rc) return rc;
    if (n > r->size - r->pos)
        return peft_fail(r->err, PEFT_ERR_FORMAT,
                         "%s: %s at offset %zu: string length %" PRIu64 " runs past the end of the file (%zu bytes left)",
                         r->path, what, r->pos - 8, n, r->size - r->pos);
    *s = r->p + r->pos;
    *len = n;
    r->pos += (size_t)n;
    return 0;
}

static void gguf_value_free(gguf_value *v) {
    free(v->str);
    free(v->sbuf);
    free(v->soff);
    if (v->items) {
        for (uint64_t i = 0; i < v->n; i++) gguf_value_free(&v->items[i]);
        free(v->items);
    }
    memset(v, 0, sizeof *v);
}

/* Parses an ARRAY body (u32 element type, u64 count, elements). */
static int rd_array(gguf_rd *r, gguf_value *v, int depth, const char *key) {
    uint64_t et, n;
    int rc = rd_uint(r, 4, &et, "array element type");
    if (!rc) rc = rd_uint(r, 8, &n, "array length");
    if (rc) return rc;
    if (et >= GGUF_TYPE_COUNT)
        return peft_fail(r->err, PEFT_ERR_FORMAT, "%s: key '%s': array has unknown element type %" PRIu64, r->path,
                         key, et);
    v->arr_type = (gguf_vtype)et;
    v->n = n;
    v->raw = r->p + r->pos;
    size_t left = r->size - r->pos;
    size_t es = gguf_vtype_size(v->arr_type);
    if (es) {
        if (n > left / es)
            return peft_fail(r->err, PEFT_ERR_FORMAT,
                             "%s: key '%s': array of %" PRIu64 " %s runs past the end of the file", r->path, key, n,
                             gguf_vtype_name(v->arr_type));
        r->pos += (size_t)n * es;
        return 0;
    }
    if (v->arr_type == GGUF_TYPE_STRING) {
        if (n > left / 8)
            return peft_fail(r->err, PEFT_ERR_FORMAT,
                             "%s: key '%s': array of %" PRIu64 " strings cannot fit in the file", r->path, key, n);
        /* Pass 1: bounds-check every length and total the bytes. */
        size_t start = r->pos, total = 0;
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *s;
            uint64_t len;
            rc = rd_str(r, &s, &len, "array string");
            if (rc) return rc;
            total += (size_t)len + 1;
        }
        /* Pass 2: copy into one buffer. */
        v->sbuf = malloc(total ? total : 1);
        v->soff = malloc(((size_t)n + 1) * sizeof *v->soff);
        if (!v->sbuf || !v->soff)
            return peft_fail(r->err, PEFT_ERR_NOMEM, "%s: key '%s': out of memory for %" PRIu64 " strings", r->path,
                             key, n);
        size_t o = 0, pos = start;
        for (uint64_t i = 0; i < n; i++) {
            size_t len = (size_t)gguf_le(r->p + pos, 8);
            memcpy(v->sbuf + o, r->p + pos + 8, len);
            v->soff[i] = o;
            o += len;
            v->sbuf[o++] = 0;
            pos += 8 + len;
        }
        v->soff[n] = o;
        return 0;
    }
    /* Arrays of arrays: each item is itself an array body (>= 12 bytes). */
    if (depth >= GGUF_MAX_DEPTH)
        return peft_fail(r->err, PEFT_ERR_FORMAT, "%s: key '%s': arrays nested deeper than %d levels", r->path, key,
                         GGUF_MAX_DEPTH);
    if (n > left / 12)
        return peft_fail(r->err, PEFT_ERR_FORMAT,
                         "%s: key '%s': array of %" PRIu64 " arrays cannot fit in the file", r->path, key, n);
    if (n > PEFT_MAX_NESTED_ITEMS - r->n_nested)
        return peft_fail(r->err, PEFT_ERR_FORMAT,
                         "%s: key '%s': more than %d items in arrays of arrays (no model uses them)", r->path, key,
                         PEFT_MAX_NESTED_ITEMS);
    r->n_nested += n;
    v->items = calloc(n ? (size_t)n : 1, sizeof *v->items);
    if (!v->items) return peft_fail(r->err, PEFT_ERR_NOMEM, "%s: key '%s': out of memory", r->path, key);
    for (uint64_t i = 0; i < n; i++) {
        gguf_value *it = &v->items[i];
        it->type = GGUF_TYPE_ARRAY;
        it->span = r->p + r->pos;
        rc = rd_array(r, it, depth + 1, key);
        if (rc) return rc;
        it->span_len = (size_t)(r->p + r->pos - it->span);
    }
    return 0;
}

static int rd_value(gguf_rd *r, gguf_value *v, const char *key) {
    v->span = r->p + r->pos;
    size_t es = gguf_vtype_size(v->type);
    int rc = 0;
    if (es) {
        uint64_t x;
        rc = rd_uint(r, es, &x, "value");
        if (rc) return rc;
        switch (v->type) {
        case GGUF_TYPE_INT8: v->num.i = (int8_t)(uint8_t)x; break;
        case GGUF_TYPE_INT16: v->num.i = (int16_t)(uint16_t)x; break;
        case GGUF_TYPE_INT32: v->num.i = (int32_t)(uint32_t)x; break;
        case GGUF_TYPE_INT64: v->num.i = (int64_t)x; break;
        case GGUF_TYPE_FLOAT32: { uint32_t b = (uint32_t)x; float f; memcpy(&f, &b, 4); v->num.f = f; break; }
        case GGUF_TYPE_FLOAT64: memcpy(&v->num.f, &x, 8); break;
        default: v->num.u = x; break;   /* unsigned and bool */
        }
    } else if (v->type == GGUF_TYPE_STRING) {
        const uint8_t *s;
        uint64_t len;
        rc = rd_str(r, &s, &len, "string value");
        if (rc) return rc;
        v->str = peft_strndup((const char *)s, (size_t)len, r->err);
        if (!v->str) return PEFT_ERR_NOMEM;
        v->str_len = len;
    } else {
        rc = rd_array(r, v, 0, key);
        if (rc) return rc;
    }
    v->span_len = (size_t)(r->p + r->pos - v->span);
    return 0;
}

static int gguf_index(int **tab, size_t *cap, int n, const char *(*name)(const gguf_file *, int), const gguf_file *f,
                      int *dup) {
    size_t c = 16;
    while (c < (size_t)n * 2) c *= 2;
    *tab = malloc(c * sizeof **tab);
    if (!*tab) return PEFT_ERR_NOMEM;
    memset(*tab, 0xff, c * sizeof **tab);
    *cap = c;
    *dup = -1;
    for (int i = 0; i < n; i++) {
        const char *s = name(f, i);
        size_t h = (size_t)gguf_hash(s) & (c - 1);
        while ((*tab)[h] >= 0) {
            if (strcmp(name(f, (*tab)[h]), s) == 0) { *dup = i; return 0; }
            h = (h + 1) & (c - 1);
        }
        (*tab)[h] = i;
    }
    return 0;
}

static int gguf_lookup(const int *tab, size_t cap, const char *s, const char *(*name)(const gguf_file *, int),
                       const gguf_file *f) {
    if (!cap || !s) return -1;
    for (size_t h = (size_t)gguf_hash(s) & (cap - 1);; h = (h + 1) & (cap - 1)) {
        if (tab[h] < 0) return -1;
        if (strcmp(name(f, tab[h]), s) == 0) return tab[h];
    }
}

static const char *gguf_kname(const gguf_file *f, int i) { return f->kv[i].key; }
static const char *gguf_tname(const gguf_file *f, int i) { return f->t[i].name; }

void gguf_close(gguf_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_kv; i++) {
        free(f->kv[i].key);
        gguf_value_free(&f->kv[i].v);
    }
    free(f->kv);
    for (int i = 0; i < f->n_t; i++) free(f->t[i].name);
    free(f->t);
    free(f->khash);
    free(f->thash);
    peft_mmap_close(&f->map);
    free(f->path);
    free(f);
}

static int gguf_cmp_range(const void *x, const void *y) {
    const uint64_t *p = x, *q = y;
    return p[0] < q[0] ? -1 : p[0] > q[0] ? 1 : (p[1] < q[1] ? -1 : p[1] > q[1]);
}

static int gguf_parse(gguf_file *f, peft_err *err) {
    gguf_rd r = {f->map.data, f->map.size, 0, f->path, err, 0};
    const char *path = f->path;
    int rc = rd_need(&r, 4, "magic");
    if (rc) return rc;
    if (memcmp(r.p, GGUF_MAGIC, 4) != 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file",
                         path, r.p[0], r.p[1], r.p[2], r.p[3]);
    r.pos = 4;
    uint64_t ver, n_t, n_kv;
    if ((rc = rd_uint(&r, 4, &ver, "version"))) return rc;
    if (ver != 2 && ver != 3) {
        if ((ver & 0xffff) == 0 && ver)
            return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: big-endian GGUF files are not supported", path);
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: GGUF version %" PRIu64 " is not supported (2 or 3 only)",
                         path, ver);
    }
    f->version = (uint32_t)ver;
    if ((rc = rd_uint(&r, 8, &n_t, "tensor count"))) return rc;
    if ((rc = rd_uint(&r, 8, &n_kv, "key/value count"))) return rc;
    /* A key/value pair takes at least 13 bytes (key length, type, 1-byte
     * value), a tensor info at least 24 (name length, n_dims, type, offset). */
    size_t left = r.size - r.pos;
    if (n_kv > left / 13)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: key/value count %" PRIu64 " is absurd for a %zu-byte file", path,
                         n_kv, r.size);
    if (n_t > left / 24)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor count %" PRIu64 " is absurd for a %zu-byte file", path,
                         n_t, r.size);
    /* Each pair / info costs ~100 bytes here for its 13 / 24 in the file. */
    if (n_kv > PEFT_MAX_KV)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: key/value count %" PRIu64 " exceeds the limit of %d", path, n_kv,
                         PEFT_MAX_KV);
    if (n_t > PEFT_MAX_TENSORS)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor count %" PRIu64 " exceeds the limit of %d", path, n_t,
                         PEFT_MAX_TENSORS);
    f->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *f->kv);
    f->t = calloc(n_t ? (size_t)n_t : 1, sizeof *f->t);
    if (!f->kv || !f->t) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);

    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        const uint8_t *ks;
        uint64_t klen, ty;
        if ((rc = rd_str(&r, &ks, &klen, "key"))) return rc;
        gguf_kv *kv = &f->kv[f->n_kv];
        kv->key = peft_strndup((const char *)ks, (size_t)klen, err);
        if (!kv->key) return PEFT_ERR_NOMEM;
        f->n_kv++;
        if (strlen(kv->key) != klen)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: key at offset %zu contains a NUL byte", path,
                             r.pos - (size_t)klen);
        if ((rc = rd_uint(&r, 4, &ty, "value type"))) return rc;
        if (ty >= GGUF_TYPE_COUNT)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: key '%s' has unknown value type %" PRIu64, path, kv->key, ty);
        kv->v.type = (gguf_vtype)ty;
        if ((rc = rd_value(&r, &kv->v, kv->key))) return rc;
        if (strcmp(kv->key, "general.alignment") == 0) {
            if (kv->v.type != GGUF_TYPE_UINT32 || kv->v.num.u == 0 || (kv->v.num.u & (kv->v.num.u - 1)))
                return peft_fail(err, PEFT_ERR_FORMAT,
                                 "%s: general.alignment must be a uint32 power of two", path);
            f->alignment = (size_t)kv->v.num.u;
        }
    }
    int dup;
    if (gguf_index(&f->khash, &f->khcap, f->n_kv, gguf_kname, f, &dup))
        return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);
    if (dup >= 0) return peft_fail(err, PEFT_ERR_FORMAT, "%s: duplicate key '%s'", path, f->kv[dup].key);

    for (uint64_t i = 0; i < n_t; i++) {
        const uint8_t *ns;
        uint64_t nlen, nd, ty, off;
        if ((rc = rd_str(&r, &ns, &nlen, "tensor name"))) return rc;
        gguf_tensor *t = &f->t[f->n_t];
        t->name = peft_strndup((const char *)ns, (size_t)nlen, err);
        if (!t->name) return PEFT_ERR_NOMEM;
        f->n_t++;
        if (strlen(t->name) != nlen)   /* a NUL would make two names the same */
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor name at offset %zu contains a NUL byte", path,
                             r.pos - (size_t)nlen);
        if ((rc = rd_uint(&r, 4, &nd, "tensor n_dims"))) return rc;
        if (nd > GGUF_MAX_DIMS)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s' has %" PRIu64 " dimensions (at most %d)", path,
                             t->name, nd, GGUF_MAX_DIMS);
        t->ndim = (int)nd;
        for (int k = 0; k < GGUF_MAX_DIMS; k++) t->ne[k] = 1;
        for (int k = 0; k < t->ndim; k++) {
            uint64_t ne;
            if ((rc = rd_uint(&r, 8, &ne, "tensor dimension"))) return rc;
            if (ne > (uint64_t)INT64_MAX)
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': ne[%d] = %" PRIu64 " is negative/absurd",
                                 path, t->name, k, ne);
            t->ne[k] = (int64_t)ne;
        }
        if ((rc = rd_uint(&r, 4, &ty, "tensor type"))) return rc;
        if ((rc = rd_uint(&r, 8, &off, "tensor offset"))) return rc;
        t->ggml_type = (uint32_t)ty;
        t->dtype = gguf_dtype_from_ggml(t->ggml_type);
        t->offset = off;
    }
    if (gguf_index(&f->thash, &f->thcap, f->n_t, gguf_tname, f, &dup))
        return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);
    if (dup >= 0) return peft_fail(err, PEFT_ERR_FORMAT, "%s: duplicate tensor name '%s'", path, f->t[dup].name);

    /* Data section: after the infos, padded to the alignment. */
    size_t a = f->alignment;
    size_t data_off = r.pos % a ? r.pos + (a - r.pos % a) : r.pos;
    if (data_off > r.size) {
        if (f->n_t) return peft_fail(err, PEFT_ERR_FORMAT, "%s: truncated: the data section is missing", path);
        data_off = r.size;
    }
    f->data_off = data_off;
    uint64_t data_size = r.size - data_off;
    const uint8_t *data = r.p + data_off;
    uint64_t *ranges = malloc((size_t)(f->n_t ? f->n_t : 1) * 3 * sizeof *ranges);
    if (!ranges) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);
    int nr = 0;
    for (int i = 0; i < f->n_t && !rc; i++) {
        gguf_tensor *t = &f->t[i];
        const gguf_ggml_type *ti = gguf_type_info(t->ggml_type);
        if (!ti) {
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has ggml type %u, unknown to this build: its size (and so the file "
                           "layout) cannot be checked", path, t->name, t->ggml_type);
            break;
        }
        if (t->ne[0] % ti->blk != 0) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': ne[0] = %" PRId64
                           " is not a multiple of the %s block size %u", path, t->name, t->ne[0], ti->name, ti->blk);
            break;
        }
        /* bytes = (ne0 / blk) * bytes_per_block * ne1 * ne2 * ne3, checked. */
        const uint64_t limit = (uint64_t)1 << 62;
        /* As for safetensors, the product of the non-zero dims is bounded
         * as well: [0, 2^40, 2^40] has no bytes but its row count overflows. */
        uint64_t nb = (uint64_t)(t->ne[0] / ti->blk);
        uint64_t bytes = nb > limit / ti->bytes ? limit + 1 : nb * ti->bytes, numel = (uint64_t)t->ne[0];
        uint64_t nonzero = t->ne[0] ? (uint64_t)t->ne[0] : 1;
        for (int k = 1; k < GGUF_MAX_DIMS && bytes <= limit; k++) {
            uint64_t ne = (uint64_t)t->ne[k];
            if (ne && (bytes > limit / ne || numel > limit / ne || nonzero > limit / ne)) bytes = limit + 1;
            else { bytes *= ne; numel *= ne; if (ne) nonzero *= ne; }
        }
        if (bytes > limit) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': absurd dimensions (size overflows)", path, t->name);
            break;
        }
        if (t->offset % a != 0) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': offset %" PRIu64 " is not a multiple of the "
                           "alignment %zu", path, t->name, t->offset, a);
            break;
        }
        if (t->offset > data_size || bytes > data_size - t->offset) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': data [%" PRIu64 ", +%" PRIu64
                           ") runs past the end of the data section (%" PRIu64 " bytes): truncated file?",
                           path, t->name, t->offset, bytes, data_size);
            break;
        }
        t->nbytes = (size_t)bytes;
        t->data = data + t->offset;
        if (bytes) {
            ranges[3 * nr] = t->offset;
            ranges[3 * nr + 1] = t->offset + bytes;
            ranges[3 * nr + 2] = (uint64_t)i;
            nr++;
        }
    }
    if (!rc) {
        qsort(ranges, (size_t)nr, 3 * sizeof *ranges, gguf_cmp_range);
        for (int i = 1; i < nr && !rc; i++)
            if (ranges[3 * i] < ranges[3 * (i - 1) + 1])
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path,
                               f->t[ranges[3 * (i - 1) + 2]].name, f->t[ranges[3 * i + 2]].name);
    }
    free(ranges);
    return rc;
}

int gguf_open(const char *path, gguf_file **out, peft_err *err) {
    *out = NULL;
    if (!path) return peft_fail(err, PEFT_ERR_INVALID, "gguf_open: path is NULL");
    gguf_file *f = peft_calloc(1, sizeof *f, err);
    if (!f) return PEFT_ERR_NOMEM;
    f->path = peft_strdup(path, err);
    int rc = f->path ? peft_mmap_open(path, &f->map, err) : PEFT_ERR_NOMEM;
    if (!rc) rc = gguf_parse(f, err);
    if (rc) { gguf_close(f); return rc; }
    *out = f;
    return 0;
}

const char *gguf_path(const gguf_file *f) { return f->path; }
uint32_t gguf_version(const gguf_file *f) { return f->version; }
size_t gguf_alignment(const gguf_file *f) { return f->alignment; }
size_t gguf_data_offset(const gguf_file *f) { return f->data_off; }
int gguf_n_kv(const gguf_file *f) { return f->n_kv; }
const char *gguf_kv_key(const gguf_file *f, int i) { return (i >= 0 && i < f->n_kv) ? f->kv[i].key : NULL; }
gguf_vtype gguf_kv_type(const gguf_file *f, int i) {
    return (i >= 0 && i < f->n_kv) ? f->kv[i].v.type : GGUF_TYPE_COUNT;
}
int gguf_find_key(const gguf_file *f, const char *key) {
    return gguf_lookup(f->khash, f->khcap, key, gguf_kname, f);
}
int gguf_n_tensors(const gguf_file *f) { return f->n_t; }
const gguf_tensor *gguf_tensor_at(const gguf_file *f, int i) { return (i >= 0 && i < f->n_t) ? &f->t[i] : NULL; }
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    int i = gguf_lookup(f->thash, f->thcap, name, gguf_tname, f);
    return i < 0 ? NULL : &f->t[i];
}

const gguf_value *gguf_kv_value(const gguf_file *f, int i) { return (i >= 0 && i < f->n_kv) ? &f->kv[i].v : NULL; }
gguf_vtype gguf_value_type(const gguf_value *v) { return v->type; }

static bool gguf_is_int(gguf_vtype t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64:
    case GGUF_TYPE_BOOL:
        return true;
    default:
        return false;
    }
}
static bool gguf_is_signed(gguf_vtype t) {
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

int gguf_value_int(const gguf_value *v, int64_t *out) {
    if (!gguf_is_int(v->type)) return PEFT_ERR_FORMAT;
    if (gguf_is_signed(v->type)) { *out = v->num.i; return 0; }
    if (v->type == GGUF_TYPE_BOOL) { *out = v->num.u != 0; return 0; }
    if (v->num.u > (uint64_t)INT64_MAX) return PEFT_ERR_FORMAT;
    *out = (int64_t)v->num.u;
    return 0;
}

uint64_t gguf_value_u64(const gguf_value *v) { return v->num.u; }

int gguf_value_float(const gguf_value *v, double *out) {
    if (v->type == GGUF_TYPE_FLOAT32 || v->type == GGUF_TYPE_FLOAT64) { *out = v->num.f; return 0; }
    if (gguf_is_signed(v->type)) { *out = (double)v->num.i; return 0; }
    if (gguf_is_int(v->type)) { *out = (double)v->num.u; return 0; }
    return PEFT_ERR_FORMAT;
}

const char *gguf_value_str(const gguf_value *v, size_t *len) {
    if (v->type != GGUF_TYPE_STRING) return NULL;
    if (len) *len = (size_t)v->str_len;
    return v->str;
}

int gguf_value_arr(const gguf_value *v, gguf_vtype *elem_type, uint64_t *n, const void **data) {
    if (v->type != GGUF_TYPE_ARRAY) return PEFT_ERR_FORMAT;
    if (elem_type) *elem_type = v->arr_type;
    if (n) *n = v->n;
    if (data) *data = v->raw;
    return 0;
}

const char *gguf_value_arr_str(const gguf_value *v, uint64_t i, size_t *len) {
    if (v->type != GGUF_TYPE_ARRAY || v->arr_type != GGUF_TYPE_STRING || i >= v->n) return NULL;
    if (len) *len = (size_t)(v->soff[i + 1] - v->soff[i] - 1);
    return v->sbuf + v->soff[i];
}

const gguf_value *gguf_value_arr_item(const gguf_value *v, uint64_t i) {
    if (v->type != GGUF_TYPE_ARRAY || v->arr_type != GGUF_TYPE_ARRAY || i >= v->n) return NULL;
    return &v->items[i];
}

static const gguf_value *gguf_get_value(const gguf_file *f, const char *key, peft_err *err) {
    int i = gguf_find_key(f, key);
    if (i < 0) {
        peft_fail(err, PEFT_ERR_INVALID, "%s: key '%s' not found", f->path, key);
        return NULL;
    }
    return &f->kv[i].v;
}

int gguf_get_int(const gguf_file *f, const char *key, int64_t *out, peft_err *err) {
    const gguf_value *v = gguf_get_value(f, key, err);
    if (!v) return PEFT_ERR_INVALID;
    if (gguf_value_int(v, out) != 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: key '%s' is a %s, expected an integer that fits int64", f->path,
                         key, gguf_vtype_name(v->type));
    return 0;
}

int gguf_get_float(const gguf_file *f, const char *key, double *out, peft_err *err) {
    const gguf_value *v = gguf_get_value(f, key, err);
    if (!v) return PEFT_ERR_INVALID;
    if (gguf_value_float(v, out) != 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: key '%s' is a %s, expected a number", f->path, key,
                         gguf_vtype_name(v->type));
    return 0;
}

const char *gguf_get_str(const gguf_file *f, const char *key) {
    int i = gguf_find_key(f, key);
    return i < 0 ? NULL : gguf_value_str(&f->kv[i].v, NULL);
}

int gguf_get_arr(const gguf_file *f, const char *key, gguf_vtype *elem_type, uint64_t *n, const void **data,
                 peft_err *err) {
    const gguf_value *v = gguf_get_value(f, key, err);
    if (!v) return PEFT_ERR_INVALID;
    if (gguf_value_arr(v, elem_type, n, data) != 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: key '%s' is a %s, expected an array", f->path, key,
                         gguf_vtype_name(v->type));
    return 0;
}

const char *gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t i) {
    int k = gguf_find_key(f, key);
    return k < 0 ? NULL : gguf_value_arr_str(&f->kv[k].v, i, NULL);
}

int gguf_kv_to_string(const gguf_file *f, int i, char *buf, size_t cap) {
    if (i < 0 || i >= f->n_kv || !buf || !cap) return PEFT_ERR_INVALID;
    const gguf_value *v = &f->kv[i].v;
    int n;
    switch (v->type) {
    case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64: n = snprintf(buf, cap, "%g", v->num.f); break;
    case GGUF_TYPE_BOOL: n = snprintf(buf, cap, "%s", v->num.u ? "true" : "false"); break;
    case GGUF_TYPE_STRING: n = snprintf(buf, cap, "\"%s\"", v->str); break;
    case GGUF_TYPE_ARRAY:
        n = snprintf(buf, cap, "[%" PRIu64 " x %s]", v->n, gguf_vtype_name(v->arr_type));
        break;
    default:
        if (gguf_is_signed(v->type)) n = snprintf(buf, cap, "%" PRId64, v->num.i);
        else n = snprintf(buf, cap, "%" PRIu64, v->num.u);
        break;
    }
    return n < 0 ? PEFT_ERR_INVALID : 0;
}

/* ---- writer --------------------------------------------------------------------- */

typedef struct {
    char *key;
    gguf_vtype type;
    uint8_t *val;   /* encoded value after the type tag */
    size_t len;
} gguf_wkv;

typedef struct {
    char *name;
    uint32_t gtype;
    int ndim;
    int64_t ne[GGUF_MAX_DIMS];
    const void *data;
    size_t nbytes;
} gguf_wtensor;

struct gguf_writer {
    gguf_wkv *kv;
    int n_kv, cap_kv;
    gguf_wtensor *t;
    int n_t, cap_t;
    size_t alignment;
    peft_err err;   /* first error, reported again by gguf_writer_save */
};

gguf_writer *gguf_writer_new(peft_err *err) {
    gguf_writer *w = peft_calloc(1, sizeof *w, err);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val); }
    free(w->kv);
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w);
}

static int gw_fail(gguf_writer *w, int code, const char *fmt, const char *arg) {
    if (!w->err.code) peft_fail(&w->err, code, fmt, arg);
    return code;
}

/* Sets key to an encoded value (taking ownership of val), replacing an
 * earlier value of the same key. */
static int gw_set(gguf_writer *w, const char *key, gguf_vtype type, uint8_t *val, size_t len) {
    if (!val) return gw_fail(w, PEFT_ERR_NOMEM, "gguf writer: out of memory setting '%s'", key);
    if (!key || !key[0]) { free(val); return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: empty key%s", ""); }
    if (strcmp(key, "general.alignment") == 0) {
        uint64_t a = type == GGUF_TYPE_UINT32 ? gguf_le(val, 4) : 0;
        if (!a || (a & (a - 1))) {
            free(val);
            return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: %s must be a uint32 power of two", key);
        }
        w->alignment = (size_t)a;
    }
    for (int i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].val);
            w->kv[i].type = type;
            w->kv[i].val = val;
            w->kv[i].len = len;
            return 0;
        }
    }
    if (w->n_kv == w->cap_kv) {
        int cap = w->cap_kv ? 2 * w->cap_kv : 32;
        gguf_wkv *kv = realloc(w->kv, (size_t)cap * sizeof *kv);
        if (!kv) { free(val); return gw_fail(w, PEFT_ERR_NOMEM, "gguf writer: out of memory setting '%s'", key); }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) { free(val); return gw_fail(w, PEFT_ERR_NOMEM, "gguf writer: out of memory setting '%s'", key); }
    w->kv[w->n_kv++] = (gguf_wkv){k, type, val, len};
    return 0;
}

static uint8_t *gw_le(uint64_t v, size_t n) {
    uint8_t *p = malloc(n);
    if (p) for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p;
}

int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v) { return gw_set(w, key, GGUF_TYPE_UINT32, gw_le(v, 4), 4); }
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v) {
    return gw_set(w, key, GGUF_TYPE_INT32, gw_le((uint32_t)v, 4), 4);
}
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t v) { return gw_set(w, key, GGUF_TYPE_UINT64, gw_le(v, 8), 8); }
int gguf_w_f32(gguf_writer *w, const char *key, float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return gw_set(w, key, GGUF_TYPE_FLOAT32, gw_le(b, 4), 4);
}
int gguf_w_bool(gguf_writer *w, const char *key, bool v) { return gw_set(w, key, GGUF_TYPE_BOOL, gw_le(v ? 1 : 0, 1), 1); }

int gguf_w_str(gguf_writer *w, const char *key, const char *v) {
    if (!v) return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: NULL string for '%s'", key ? key : "");
    size_t n = strlen(v);
    uint8_t *p = malloc(8 + n);
    if (p) {
        for (int i = 0; i < 8; i++) p[i] = (uint8_t)((uint64_t)n >> (8 * i));
        memcpy(p + 8, v, n);
    }
    return gw_set(w, key, GGUF_TYPE_STRING, p, 8 + n);
}

int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    size_t total = 12;
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i]) return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: NULL string in array '%s'", key ? key : "");
        total += 8 + strlen(v[i]);
    }
    uint8_t *p = malloc(total);
    if (p) {
        size_t o = 0;
        for (int i = 0; i < 4; i++) p[o++] = (uint8_t)(GGUF_TYPE_STRING >> (8 * i));
        for (int i = 0; i < 8; i++) p[o++] = (uint8_t)(n >> (8 * i));
        for (uint64_t k = 0; k < n; k++) {
            size_t len = strlen(v[k]);
            for (int i = 0; i < 8; i++) p[o++] = (uint8_t)((uint64_t)len >> (8 * i));
            memcpy(p + o, v[k], len);
            o += len;
        }
    }
    return gw_set(w, key, GGUF_TYPE_ARRAY, p, total);
}

/* Numeric arrays: data holds n elements in host order (little-endian hosts). */
int gguf_w_arr(gguf_writer *w, const char *key, gguf_vtype elem_type, const void *data, uint64_t n) {
    if (elem_type == GGUF_TYPE_STRING) return gguf_w_arr_str(w, key, data, n);
    size_t es = gguf_vtype_size(elem_type);
    if (!es) return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: '%s': unsupported array element type", key ? key : "");
    if (n > (SIZE_MAX - 12) / es || (n && !data))
        return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: '%s': bad array", key ? key : "");
    uint8_t *p = malloc(12 + (size_t)n * es);
    if (p) {
        for (int i = 0; i < 4; i++) p[i] = (uint8_t)((uint32_t)elem_type >> (8 * i));
        for (int i = 0; i < 8; i++) p[4 + i] = (uint8_t)(n >> (8 * i));
        if (n) memcpy(p + 12, data, (size_t)n * es);
    }
    return gw_set(w, key, GGUF_TYPE_ARRAY, p, 12 + (size_t)n * es);
}

int gguf_w_copy_kv(gguf_writer *w, const gguf_file *src, const char *skip_prefix) {
    size_t sp = skip_prefix ? strlen(skip_prefix) : 0;
    for (int i = 0; i < src->n_kv; i++) {
        const gguf_kv *kv = &src->kv[i];
        if (sp && strncmp(kv->key, skip_prefix, sp) == 0) continue;
        uint8_t *p = malloc(kv->v.span_len ? kv->v.span_len : 1);
        if (p) memcpy(p, kv->v.span, kv->v.span_len);
        int rc = gw_set(w, kv->key, kv->v.type, p, kv->v.span_len);
        if (rc) return rc;
    }
    return 0;
}

int gguf_w_tensor(gguf_writer *w, const char *name, peft_dtype t, int ndim, const int64_t *ne, const void *data,
                  size_t nbytes) {
    if (!name || !name[0] || strlen(name) >= GGUF_MAX_NAME)
        return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: tensor name '%s' is empty or longer than 63 bytes",
                       name ? name : "");
    int gt = gguf_ggml_from_dtype(t);
    if (gt < 0) return gw_fail(w, PEFT_ERR_UNSUPPORTED, "gguf writer: tensor '%s': dtype has no ggml type", name);
    if (ndim < 1 || ndim > GGUF_MAX_DIMS)
        return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: tensor '%s': ndim must be 1..4", name);
    /* Expected size: row bytes of ne[0] times the other dims, checked. */
    size_t row = kern_dtype_row_bytes(t, ne[0]);
    uint64_t size = row;
    if (ne[0] < 0 || (ne[0] > 0 && row == 0))
        return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: tensor '%s': ne[0] is not a multiple of the block size",
                       name);
    for (int k = 1; k < ndim; k++) {
        if (ne[k] < 0 || (ne[k] && size > ((uint64_t)1 << 62) / (uint64_t)ne[k]))
            return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: tensor '%s': bad dimensions", name);
        size *= (uint64_t)ne[k];
    }
    if (size != nbytes || (nbytes && !data))
        return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: tensor '%s': nbytes does not match dtype and shape", name);
    for (int i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return gw_fail(w, PEFT_ERR_INVALID, "gguf writer: duplicate tensor name '%s'", name);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 64;
        gguf_wtensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return gw_fail(w, PEFT_ERR_NOMEM, "gguf writer: out of memory adding '%s'", name);
        w->t = nt;
        w->cap_t = cap;
    }
    gguf_wtensor *wt = &w->t[w->n_t];
    memset(wt, 0, sizeof *wt);
    wt->name = strdup(name);
    if (!wt->name) return gw_fail(w, PEFT_ERR_NOMEM, "gguf writer: out of memory adding '%s'", name);
    wt->gtype = (uint32_t)gt;
    wt->ndim = ndim;
    for (int k = 0; k < GGUF_MAX_DIMS; k++) wt->ne[k] = k < ndim ? ne[k] : 1;
    wt->data = data;
    wt->nbytes = nbytes;
    w->n_t++;
    return 0;
}

static int gw_put(peft_buf *b, uint64_t v, size_t n) {
    uint8_t tmp[8];
    for (size_t i = 0; i < n; i++) tmp[i] = (uint8_t)(v >> (8 * i));
    return peft_buf_append(b, tmp, n);
}

static int gw_write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t k = write(fd, p, len);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

int gguf_writer_save(gguf_writer *w, const char *path, peft_err *err) {
    if (!w || !path) return peft_fail(err, PEFT_ERR_INVALID, "gguf_writer_save: NULL argument");
    if (w->err.code) return peft_fail(err, w->err.code, "%s: %s", path, w->err.msg);
    const size_t a = w->alignment;
    /* Header, key/values and tensor infos go to one buffer; tensor data is
     * streamed from the caller's memory. */
    peft_buf h = {0};
    int rc = peft_buf_append(&h, GGUF_MAGIC, 4);
    if (!rc) rc = gw_put(&h, 3, 4);
    if (!rc) rc = gw_put(&h, (uint64_t)w->n_t, 8);
    if (!rc) rc = gw_put(&h, (uint64_t)w->n_kv, 8);
    for (int i = 0; i < w->n_kv && !rc; i++) {
        size_t kl = strlen(w->kv[i].key);
        rc = gw_put(&h, kl, 8);
        if (!rc) rc = peft_buf_append(&h, w->kv[i].key, kl);
        if (!rc) rc = gw_put(&h, (uint64_t)w->kv[i].type, 4);
        if (!rc) rc = peft_buf_append(&h, w->kv[i].val, w->kv[i].len);
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n_t && !rc; i++) {
        const gguf_wtensor *t = &w->t[i];
        size_t nl = strlen(t->name);
        rc = gw_put(&h, nl, 8);
        if (!rc) rc = peft_buf_append(&h, t->name, nl);
        if (!rc) rc = gw_put(&h, (uint64_t)t->ndim, 4);
        for (int k = 0; k < t->ndim && !rc; k++) rc = gw_put(&h, (uint64_t)t->ne[k], 8);
        if (!rc) rc = gw_put(&h, t->gtype, 4);
        if (!rc) rc = gw_put(&h, off, 8);
        off += t->nbytes;
        if (off % a) off += a - off % a;
    }
    static const uint8_t zeros[256] = {0};
    while (!rc && h.len % a) rc = peft_buf_append(&h, zeros, PEFT_MIN(a - h.len % a, sizeof zeros));
    if (rc) {
        peft_buf_free(&h);
        return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory building the GGUF header", path);
    }
    size_t tn = strlen(path) + 32;
    char *tmp = peft_malloc(tn, err);
    if (!tmp) { peft_buf_free(&h); return PEFT_ERR_NOMEM; }
    snprintf(tmp, tn, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        peft_buf_free(&h);
        return peft_fail(err, PEFT_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    int bad = gw_write_all(fd, h.data, h.len);
    peft_buf_free(&h);
    for (int i = 0; i < w->n_t && !bad; i++) {
        const gguf_wtensor *t = &w->t[i];
        if (t->nbytes) bad = gw_write_all(fd, t->data, t->nbytes);
        size_t pad = t->nbytes % a ? a - t->nbytes % a : 0;
        while (!bad && pad) {
            size_t k = PEFT_MIN(pad, sizeof zeros);
            bad = gw_write_all(fd, zeros, k);
            pad -= k;
        }
    }
    if (!bad) bad = fsync(fd);
    int e = errno;
    if (close(fd) != 0 && !bad) { bad = 1; e = errno; }
    if (!bad && rename(tmp, path) != 0) { bad = 1; e = errno; }
    if (bad) {
        unlink(tmp);
        free(tmp);
        return peft_fail(err, PEFT_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    free(tmp);
    return 0;
}

const void *gguf_map_base(const gguf_file *f, size_t *size) {
    *size = f ? f->map.size : 0;
    return f ? f->map.data : NULL;
}
