/* safetensors.c — mmap reader (single file, folder, sharded index) and an
 * atomic streaming writer for the safetensors format.
 *
 * Layout: u64 LE header length N | N bytes of JSON | data section. Each
 * tensor entry gives dtype, shape and [begin, end) offsets relative to the
 * data section; end - begin must be numel * elem_size, ranges must lie in
 * the data section and not overlap. The header is padded with spaces so the
 * data section starts 8-byte aligned (what the reference library writes). */
#include "formats/safetensors.h"
#include "core/limits.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The reference implementation refuses headers above 100 MB. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
/* JSON numbers are doubles: integers are exact below 2^53. */
#define ST_MAX_JSON_INT 9007199254740992.0

typedef struct {
    char *path;
    peft_mmap map;
} st_file;

struct st_archive {
    st_file *files;
    int n_files;
    st_tensor *tensors;
    int n, cap;
    uint64_t *begin, *end;   /* per tensor, offsets within the data section (for checks) */
    char **meta;             /* key, value, key, value ... of the first file */
    int n_meta;
    int *hash;               /* open addressing over tensor indices, -1 = empty */
    size_t hash_cap;
};

static const struct { const char *name; peft_dtype t; } st_dtypes[] = {
    {"F32", PEFT_DT_F32}, {"F16", PEFT_DT_F16}, {"BF16", PEFT_DT_BF16}, {"F64", PEFT_DT_F64},
    {"I8", PEFT_DT_I8},   {"I16", PEFT_DT_I16}, {"I32", PEFT_DT_I32},   {"I64", PEFT_DT_I64},
    {"U8", PEFT_DT_U8},   {"BOOL", PEFT_DT_BOOL},
};

/* dtype names of the safetensors spec that we do not map (valid files we
 * cannot handle: PEFT_ERR_UNSUPPORTED rather than PEFT_ERR_FORMAT). */
static const char *const st_known_unmapped[] = {
    "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64",
};

int st_dtype_from_name(const char *s) {
    if (!s) return -1;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) return (int)st_dtypes[i].t;
    return -1;
}

const char *st_dtype_to_name(peft_dtype t) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].t == t) return st_dtypes[i].name;
    return NULL;
}

static uint64_t st_hash_str(const char *s) {
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 1099511628211ULL; }
    return h;
}

void st_close(st_archive *a) {
    if (!a) return;
    for (int i = 0; i < a->n; i++) free(a->tensors[i].name);
    free(a->tensors);
    free(a->begin);
    free(a->end);
    for (int i = 0; i < a->n_files; i++) {
        peft_mmap_close(&a->files[i].map);
        free(a->files[i].path);
    }
    free(a->files);
    for (int i = 0; i < 2 * a->n_meta; i++) free(a->meta[i]);
    free(a->meta);
    free(a->hash);
    free(a);
}

int st_count(const st_archive *a) { return a ? a->n : 0; }

const st_tensor *st_at(const st_archive *a, int i) {
    return (a && i >= 0 && i < a->n) ? &a->tensors[i] : NULL;
}

const st_tensor *st_find(const st_archive *a, const char *name) {
    if (!a || !name || !a->hash_cap) return NULL;
    size_t mask = a->hash_cap - 1;
    for (size_t h = (size_t)st_hash_str(name) & mask;; h = (h + 1) & mask) {
        int i = a->hash[h];
        if (i < 0) return NULL;
        if (strcmp(a->tensors[i].name, name) == 0) return &a->tensors[i];
    }
}

const char *st_metadata(const st_archive *a, const char *key) {
    if (!a || !key) return NULL;
    for (int i = 0; i < a->n_meta; i++)
        if (strcmp(a->meta[2 * i], key) == 0) return a->meta[2 * i + 1];
    return NULL;
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* A JSON number that is a non-negative integer exactly representable. */
static bool st_json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d >= ST_MAX_JSON_INT || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int st_push_tensor(st_archive *a, peft_err *err) {
    if (a->n < a->cap) return 0;
    int cap = a->cap ? a->cap * 2 : 64;
    st_tensor *t = realloc(a->tensors, (size_t)cap * sizeof *t);
    if (!t) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading safetensors headers");
    a->tensors = t;
    uint64_t *b = realloc(a->begin, (size_t)cap * sizeof *b);
    if (!b) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading safetensors headers");
    a->begin = b;
    uint64_t *e = realloc(a->end, (size_t)cap * sizeof *e);
    if (!e) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading safetensors headers");
    a->end = e;
    a->cap = cap;
    return 0;
}

/* Parses one tensor entry of file `path` (shard index `shard`). */
static int st_parse_entry(st_archive *a, const char *path, int shard, const cJSON *e,
                          const uint8_t *data, uint64_t data_size, peft_err *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", path, name);
    int dt = st_dtype_from_name(jd->valuestring);
    if (dt < 0) {
        for (size_t i = 0; i < sizeof st_known_unmapped / sizeof st_known_unmapped[0]; i++)
            if (strcmp(jd->valuestring, st_known_unmapped[i]) == 0)
                return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s is not supported",
                                 path, name, jd->valuestring);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%.64s\"", path, name,
                         jd->valuestring);
    }
    if (!cJSON_IsArray(js))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", path, name);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > ST_MAX_DIMS)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor '%s': %d dimensions (at most %d supported)",
                         path, name, ndim, ST_MAX_DIMS);
    if (a->n >= PEFT_MAX_TENSORS)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: more than %d tensors (the limit)", path, PEFT_MAX_TENSORS);
    int rc = st_push_tensor(a, err);
    if (rc) return rc;
    st_tensor *t = &a->tensors[a->n];
    memset(t, 0, sizeof *t);
    t->dtype = (peft_dtype)dt;
    t->ndim = ndim;
    t->shard = shard;
    /* numel and byte size with overflow checks: anything above 2^62 bytes is
     * absurd for a file and would overflow int64 arithmetic downstream. */
    const uint64_t limit = (uint64_t)1 << 62;
    /* The product of the non-zero dimensions is bounded too: [0, 2^62, 2^62]
     * has no elements, but a product of its trailing dims (a row count, a
     * row length) would overflow wherever it is taken. */
    uint64_t numel = 1, nonzero = 1;
    int k = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, js) {
        uint64_t v;
        if (!st_json_uint(dim, &v) || v > (uint64_t)INT64_MAX)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a valid dimension",
                             path, name, k);
        if (v != 0 && nonzero > limit / v)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': absurd shape (element count overflows)",
                             path, name);
        numel *= v;
        if (v) nonzero *= v;
        t->shape[k++] = (int64_t)v;
    }
    size_t es = peft_dtype_elem_size(t->dtype);
    if (numel > limit / es)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': absurd shape (byte size overflows)", path, name);
    uint64_t nbytes = numel * es;
    uint64_t b, en;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !st_json_uint(cJSON_GetArrayItem(jo, 0), &b) ||
        !st_json_uint(cJSON_GetArrayItem(jo, 1), &en))
        return peft_fail(err, PEFT_ERR_FORMAT,
                         "%s: tensor '%s': \"data_offsets\" must be two non-negative integers", path, name);
    if (en < b)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", path,
                         name, (unsigned long long)b, (unsigned long long)en);
    if (en - b != nbytes)
        return peft_fail(err, PEFT_ERR_FORMAT,
                         "%s: tensor '%s': shape x %s size is %llu bytes but data_offsets span %llu", path, name,
                         st_dtype_to_name(t->dtype), (unsigned long long)nbytes, (unsigned long long)(en - b));
    if (en > data_size)
        return peft_fail(err, PEFT_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu] run past the data section (%llu bytes)", path,
                         name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    t->name = peft_strdup(name, err);
    if (!t->name) return PEFT_ERR_NOMEM;
    t->data = data + b;
    t->nbytes = (size_t)nbytes;
    a->begin[a->n] = b;
    a->end[a->n] = en;
    a->n++;
    return 0;
}

/* Sort helper for the overlap check: (begin, end, index) triples by range. */
static int st_cmp_u64pair(const void *x, const void *y) {
    const uint64_t *p = x, *q = y;
    return p[0] < q[0] ? -1 : p[0] > q[0] ? 1 : (p[1] < q[1] ? -1 : p[1] > q[1]);
}

/* Checks that the non-empty ranges of tensors [first, a->n) do not overlap. */
static int st_check_overlap(st_archive *a, int first, const char *path, peft_err *err) {
    int m = a->n - first;
    if (m < 2) return 0;
    uint64_t *r = malloc((size_t)m * 3 * sizeof *r);   /* begin, end, index */
    if (!r) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory checking offsets", path);
    int k = 0;
    for (int i = first; i < a->n; i++) {
        if (a->begin[i] == a->end[i]) continue;   /* empty tensors occupy nothing */
        r[3 * k] = a->begin[i];
        r[3 * k + 1] = a->end[i];
        r[3 * k + 2] = (uint64_t)i;
        k++;
    }
    qsort(r, (size_t)k, 3 * sizeof *r, st_cmp_u64pair);
    int rc = 0;
    for (int i = 1; i < k; i++) {
        if (r[3 * i] < r[3 * (i - 1) + 1]) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensors '%s' and '%s' have overlapping data ranges", path,
                           a->tensors[r[3 * (i - 1) + 2]].name, a->tensors[r[3 * i + 2]].name);
            break;
        }
    }
    free(r);
    return rc;
}

static int st_store_metadata(st_archive *a, const char *path, const cJSON *m, peft_err *err) {
    if (!cJSON_IsObject(m))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", path);
    if (a->meta)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"__metadata__\" given more than once", path);
    int n = cJSON_GetArraySize(m);
    a->meta = peft_calloc((size_t)n * 2 + 1, sizeof *a->meta, err);
    if (!a->meta) return PEFT_ERR_NOMEM;
    const cJSON *v;
    cJSON_ArrayForEach(v, m) {
        if (!cJSON_IsString(v))
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string", path,
                             v->string);
        char *k = peft_strdup(v->string, err), *s = k ? peft_strdup(v->valuestring, err) : NULL;
        if (!s) { free(k); return PEFT_ERR_NOMEM; }
        a->meta[2 * a->n_meta] = k;
        a->meta[2 * a->n_meta + 1] = s;
        a->n_meta++;
    }
    return 0;
}

/* Maps and parses one .safetensors file as shard number a->n_files. */
static int st_add_file(st_archive *a, const char *path, peft_err *err) {
    st_file *files = realloc(a->files, (size_t)(a->n_files + 1) * sizeof *files);
    if (!files) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory", path);
    a->files = files;
    st_file *f = &a->files[a->n_files];
    memset(f, 0, sizeof *f);
    f->path = peft_strdup(path, err);
    if (!f->path) return PEFT_ERR_NOMEM;
    int shard = a->n_files++;
    int rc = peft_mmap_open(path, &f->map, err);
    if (rc) return rc;
    const uint8_t *p = f->map.data;
    size_t size = f->map.size;
    if (size < 8)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                         path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > size - 8)
        return peft_fail(err, PEFT_ERR_FORMAT,
                         "%s: header length %llu runs past the end of the file (%zu bytes): truncated or not "
                         "a safetensors file", path, (unsigned long long)hlen, size);
    if (hlen > ST_MAX_HEADER)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: header length %llu exceeds the 100 MB limit", path,
                         (unsigned long long)hlen);
    const char *hdr = (const char *)p + 8;
    if (hlen < 2 || hdr[0] != '{')
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: header does not start with a JSON object", path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        const char *at = end;   /* cJSON reports the error position here */
        long off = (at && at >= hdr && at <= hdr + hlen) ? (long)(at - hdr) : -1;
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: header is not valid JSON (error near byte %ld of %llu)", path,
                         off, (unsigned long long)hlen);
    }
    /* Only whitespace (the writer's space padding) may follow the object. */
    for (const char *q = end; q && q < hdr + hlen; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            cJSON_Delete(root);
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: header has trailing bytes after the JSON object", path);
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    const uint8_t *data = p + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    int first = a->n, seen_meta = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            /* cJSON keeps duplicate keys; a second __metadata__ would be a
             * second set of values for the same keys (which one wins is
             * undefined), so such a header is refused. */
            if (seen_meta++)
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: header has the key \"__metadata__\" more than once", path);
            else
                rc = shard == 0 ? st_store_metadata(a, path, e, err) : 0;
        } else {
            rc = st_parse_entry(a, path, shard, e, data, data_size, err);
        }
        if (rc) break;
    }
    cJSON_Delete(root);
    if (rc) return rc;
    return st_check_overlap(a, first, path, err);
}

/* Builds the name index; reports duplicate names (within or across files). */
static int st_build_index(st_archive *a, peft_err *err) {
    size_t cap = 16;
    while (cap < (size_t)a->n * 2) cap *= 2;
    a->hash = malloc(cap * sizeof *a->hash);
    if (!a->hash) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory indexing tensors");
    memset(a->hash, 0xff, cap * sizeof *a->hash);
    a->hash_cap = cap;
    for (int i = 0; i < a->n; i++) {
        size_t h = (size_t)st_hash_str(a->tensors[i].name) & (cap - 1);
        while (a->hash[h] >= 0) {
            const st_tensor *o = &a->tensors[a->hash[h]];
            if (strcmp(o->name, a->tensors[i].name) == 0)
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: duplicate tensor name '%s' (also in %s)",
                                 a->files[a->tensors[i].shard].path, o->name, a->files[o->shard].path);
            h = (h + 1) & (cap - 1);
        }
        a->hash[h] = i;
    }
    return 0;
}

int st_insert_after_prefix(st_archive *a, const char *root, const char *ins, peft_err *err) {
    const size_t rl = strlen(root), il = strlen(ins);
    int changed = 0;
    for (int i = 0; i < a->n; i++) {
        const char *nm = a->tensors[i].name;
        if (strncmp(nm, root, rl) || !strncmp(nm + rl, ins, il)) continue;
        const size_t n = strlen(nm);
        char *nn = malloc(n + il + 1);
        if (!nn) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory renaming tensors");
        memcpy(nn, nm, rl);
        memcpy(nn + rl, ins, il);
        memcpy(nn + rl + il, nm + rl, n - rl + 1);
        free(a->tensors[i].name);
        a->tensors[i].name = nn;
        changed++;
    }
    if (!changed) return 0;
    free(a->hash);
    a->hash = NULL;
    a->hash_cap = 0;
    return st_build_index(a, err);
}

/* A shard file name from an index must stay inside the index's folder. */
static bool st_safe_relpath(const char *s) {
    if (!s[0] || s[0] == '/') return false;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') return false;
        if (!q) break;
        p = q + 1;
    }
    return true;
}

static int st_open_index(st_archive *a, const char *path, peft_err *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = peft_read_file_max(path, PEFT_MAX_JSON_BYTES, &text, &len, err);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return peft_fail(err, PEFT_ERR_FORMAT, "%s: index is not valid JSON", path);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: index has no \"weight_map\" object", path);
    }
    /* Folder of the index: shard names are relative to it. */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? peft_strndup(path, (size_t)(slash - path + 1), err) : peft_strdup("", err);
    if (!dir) { cJSON_Delete(root); return PEFT_ERR_NOMEM; }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !st_safe_relpath(e->valuestring)) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: weight_map entry '%s' is not a valid shard file name", path,
                           e->string);
            break;
        }
        /* Open each distinct shard once, in order of first mention. */
        char *shard = dir[0] ? peft_path_join(dir, e->valuestring, err) : peft_strdup(e->valuestring, err);
        if (!shard) { rc = PEFT_ERR_NOMEM; break; }
        bool seen = false;
        for (int i = 0; i < a->n_files && !seen; i++) seen = strcmp(a->files[i].path, shard) == 0;
        if (!seen) {
            rc = st_add_file(a, shard, err);
            if (rc && err) {   /* name the index too: it is what the caller opened */
                char inner[sizeof err->msg];
                memcpy(inner, err->msg, sizeof inner);
                peft_fail(err, rc, "%s: shard %s: %s", path, e->valuestring, inner);
            }
        }
        free(shard);
        if (rc) break;
    }
    if (!rc && a->n_files == 0) rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: weight_map is empty", path);
    if (!rc) rc = st_build_index(a, err);
    /* Every tensor the index names must be in the shard it names. */
    if (!rc) {
        cJSON_ArrayForEach(e, wm) {
            const st_tensor *t = st_find(a, e->string);
            const char *f = t ? a->files[t->shard].path : NULL;
            size_t fl = f ? strlen(f) : 0, el = strlen(e->valuestring);
            if (!t || fl < el || strcmp(f + fl - el, e->valuestring) != 0) {
                rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor '%s' is listed in %s but not found there", path,
                               e->string, e->valuestring);
                break;
            }
        }
    }
    free(dir);
    cJSON_Delete(root);
    return rc;
}

static bool st_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Folder: model.safetensors, else model.safetensors.index.json, else the one
 * *.safetensors (or *.safetensors.index.json) file in it. */
static int st_resolve_dir(const char *dir, char **out, peft_err *err) {
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json"};
    for (int i = 0; i < 2; i++) {
        char *p = peft_path_join(dir, names[i], err);
        if (!p) return PEFT_ERR_NOMEM;
        if (peft_file_exists(p)) { *out = p; return 0; }
        free(p);
    }
    DIR *d = opendir(dir);
    if (!d) return peft_fail(err, PEFT_ERR_IO, "%s: cannot list folder: %s", dir, strerror(errno));
    char *found = NULL, *found_index = NULL;
    int n_found = 0, n_index = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        bool st = st_ends_with(de->d_name, ".safetensors"), ix = st_ends_with(de->d_name, ".safetensors.index.json");
        if (!st && !ix) continue;
        char **slot = st ? &found : &found_index;
        if (st) n_found++;
        else n_index++;
        if (!*slot) *slot = peft_strdup(de->d_name, err);
    }
    closedir(d);
    int rc = 0;
    const char *pick = n_found == 1 ? found : (n_found == 0 && n_index == 1 ? found_index : NULL);
    if (pick) {
        *out = peft_path_join(dir, pick, err);
        if (!*out) rc = PEFT_ERR_NOMEM;
    } else if (n_found == 0 && n_index == 0) {
        rc = peft_fail(err, PEFT_ERR_IO, "%s: no .safetensors file in folder", dir);
    } else {
        rc = peft_fail(err, PEFT_ERR_INVALID, "%s: %d .safetensors files and no model.safetensors.index.json: "
                       "which one to load is ambiguous", dir, n_found);
    }
    free(found);
    free(found_index);
    return rc;
}

int st_open(const char *path, st_archive **out, peft_err *err) {
    *out = NULL;
    if (!path) return peft_fail(err, PEFT_ERR_INVALID, "st_open: path is NULL");
    char *resolved = NULL;
    int rc = 0;
    if (peft_is_dir(path)) {
        rc = st_resolve_dir(path, &resolved, err);
        if (rc) return rc;
    } else {
        resolved = peft_strdup(path, err);
        if (!resolved) return PEFT_ERR_NOMEM;
    }
    st_archive *a = peft_calloc(1, sizeof *a, err);
    if (!a) { free(resolved); return PEFT_ERR_NOMEM; }
    if (st_ends_with(resolved, ".json")) {
        rc = st_open_index(a, resolved, err);
    } else {
        rc = st_add_file(a, resolved, err);
        if (!rc) rc = st_build_index(a, err);
    }
    free(resolved);
    if (rc) { st_close(a); return rc; }
    *out = a;
    return 0;
}

/* ---- writer ------------------------------------------------------------------ */

/* Streams to path.tmp.<pid>, fsyncs, renames over path. */
typedef struct {
    int fd;
    char *tmp;
    const char *path;
} st_afile;

static int st_af_open(st_afile *f, const char *path, peft_err *err) {
    size_t n = strlen(path) + 32;
    f->path = path;
    f->tmp = peft_malloc(n, err);
    if (!f->tmp) return PEFT_ERR_NOMEM;
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f->fd < 0) {
        int e = errno;
        free(f->tmp);
        f->tmp = NULL;
        return peft_fail(err, PEFT_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    return 0;
}

static void st_af_abort(st_afile *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) { unlink(f->tmp); free(f->tmp); }
    f->fd = -1;
    f->tmp = NULL;
}

static int st_af_write(st_afile *f, const void *data, size_t len, peft_err *err) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(f->fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            st_af_abort(f);
            return peft_fail(err, PEFT_ERR_IO, "%s: write failed: %s", f->path, strerror(e));
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int st_af_commit(st_afile *f, peft_err *err) {
    if (fsync(f->fd) != 0) {
        int e = errno;
        st_af_abort(f);
        return peft_fail(err, PEFT_ERR_IO, "%s: fsync failed: %s", f->path, strerror(e));
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0 || rename(f->tmp, f->path) != 0) {
        int e = errno;
        st_af_abort(f);
        return peft_fail(err, PEFT_ERR_IO, "%s: cannot finish writing: %s", f->path, strerror(e));
    }
    free(f->tmp);
    f->tmp = NULL;
    return 0;
}

static int st_json_str(peft_buf *b, const char *s) {
    int rc = peft_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; !rc && *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            rc = peft_buf_append(b, esc, 2);
        } else if (*p < 0x20) {
            rc = peft_buf_printf(b, "\\u%04x", *p);
        } else {
            rc = peft_buf_append(b, p, 1);
        }
    }
    return rc ? rc : peft_buf_append(b, "\"", 1);
}

int st_write(const char *path, const st_write_tensor *tensors, int n, const char *const *metadata,
             peft_err *err) {
    if (!path || n < 0 || (n > 0 && !tensors))
        return peft_fail(err, PEFT_ERR_INVALID, "%s: st_write: bad arguments", path ? path : "(null)");
    uint64_t *size = peft_calloc((size_t)n + 1, sizeof *size, err);
    if (!size) return PEFT_ERR_NOMEM;
    int rc = 0;
    /* Validate everything before creating a file. */
    for (int i = 0; i < n && !rc; i++) {
        const st_write_tensor *t = &tensors[i];
        size_t es = peft_dtype_elem_size(t->dtype);
        const char *dn = st_dtype_to_name(t->dtype);
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0) {
            rc = peft_fail(err, PEFT_ERR_INVALID, "%s: tensor %d has an invalid name", path, i);
        } else if (!dn || !es) {
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s cannot be stored in safetensors",
                           path, t->name, peft_dtype_name(t->dtype));
        } else if (t->ndim < 0 || t->ndim > ST_MAX_DIMS) {
            rc = peft_fail(err, PEFT_ERR_INVALID, "%s: tensor '%s': bad ndim %d", path, t->name, t->ndim);
        } else {
            uint64_t numel = 1;
            for (int k = 0; k < t->ndim && !rc; k++) {
                uint64_t v = (uint64_t)t->shape[k];
                if (t->shape[k] < 0 || (v && numel > ((uint64_t)1 << 62) / v))
                    rc = peft_fail(err, PEFT_ERR_INVALID, "%s: tensor '%s': bad shape", path, t->name);
                else
                    numel *= v;
            }
            if (!rc && numel > ((uint64_t)1 << 62) / es)
                rc = peft_fail(err, PEFT_ERR_INVALID, "%s: tensor '%s': bad shape", path, t->name);
            size[i] = numel * es;
            if (!rc && size[i] > 0 && !t->data)
                rc = peft_fail(err, PEFT_ERR_INVALID, "%s: tensor '%s': data is NULL", path, t->name);
        }
        for (int j = 0; j < i && !rc; j++)
            if (strcmp(tensors[j].name, t->name) == 0)
                rc = peft_fail(err, PEFT_ERR_INVALID, "%s: duplicate tensor name '%s'", path, t->name);
    }
    /* Header: __metadata__ first, then tensors in the given order, laid out
     * back to back in that order. */
    peft_buf h = {0};
    if (!rc) rc = peft_buf_append(&h, "{", 1);
    if (!rc && metadata && metadata[0]) {
        rc = peft_buf_append(&h, "\"__metadata__\":{", 16);
        for (int i = 0; !rc && metadata[i]; i += 2) {
            if (!metadata[i + 1]) {
                rc = peft_fail(err, PEFT_ERR_INVALID, "%s: metadata key '%s' has no value", path, metadata[i]);
                break;
            }
            for (int j = 0; j < i && !rc; j += 2)
                if (strcmp(metadata[j], metadata[i]) == 0)
                    rc = peft_fail(err, PEFT_ERR_INVALID, "%s: duplicate metadata key '%s'", path, metadata[i]);
            if (!rc && i) rc = peft_buf_append(&h, ",", 1);
            if (!rc) rc = st_json_str(&h, metadata[i]);
            if (!rc) rc = peft_buf_append(&h, ":", 1);
            if (!rc) rc = st_json_str(&h, metadata[i + 1]);
        }
        if (!rc) rc = peft_buf_append(&h, n ? "}," : "}", n ? 2 : 1);
    }
    uint64_t off = 0;
    for (int i = 0; i < n && !rc; i++) {
        const st_write_tensor *t = &tensors[i];
        if (i) rc = peft_buf_append(&h, ",", 1);
        if (!rc) rc = st_json_str(&h, t->name);
        if (!rc) rc = peft_buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_to_name(t->dtype));
        for (int k = 0; k < t->ndim && !rc; k++)
            rc = peft_buf_printf(&h, k ? ",%lld" : "%lld", (long long)t->shape[k]);
        if (!rc) rc = peft_buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                      (unsigned long long)(off + size[i]));
        off += size[i];
    }
    if (!rc) rc = peft_buf_append(&h, "}", 1);
    while (!rc && h.len % 8 != 0) rc = peft_buf_append(&h, " ", 1);
    if (rc && !(err && err->code == rc)) rc = peft_fail(err, rc, "%s: cannot build header (%s)", path,
                                                        peft_status_name(rc));
    st_afile f = {.fd = -1};
    if (!rc) rc = st_af_open(&f, path, err);
    if (!rc) {
        uint8_t len8[8];
        for (int k = 0; k < 8; k++) len8[k] = (uint8_t)((uint64_t)h.len >> (8 * k));
        rc = st_af_write(&f, len8, 8, err);
        if (!rc) rc = st_af_write(&f, h.data, h.len, err);
        for (int i = 0; i < n && !rc; i++)
            if (size[i]) rc = st_af_write(&f, tensors[i].data, (size_t)size[i], err);
        if (!rc) rc = st_af_commit(&f, err);
        else st_af_abort(&f);
    }
    peft_buf_free(&h);
    free(size);
    return rc;
}

int st_map_count(const st_archive *a) { return a ? a->n_files : 0; }

const void *st_map_base(const st_archive *a, int i, size_t *size) {
    *size = a->files[i].map.size;
    return a->files[i].map.data;
}
