/* fuzz_safetensors.c — the safetensors reader. An input without part
 * headers is one .safetensors file; a multi-file input (fuzz.h) is a folder
 * (model.safetensors.index.json and its shards, or one *.safetensors file)
 * opened as a folder, and its index, when there is one, opened directly.
 * Every tensor's bytes are read end to end and its name looked up. */
#include "fuzz.h"
#include "formats/safetensors.h"

#include <string.h>

static int walk(const char *path) {
    st_archive *a = NULL;
    peft_err err = {0};
    if (st_open(path, &a, &err) != 0) return fuzz_err_msg(&err);
    volatile size_t sum = 0;
    static const char *keys[] = {"format", "", "__metadata__", "total_size"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *v = st_metadata(a, keys[k]);
        if (v) sum += strlen(v);
    }
    for (int i = 0; i < st_count(a); i++) {
        const st_tensor *t = st_at(a, i);
        if (!t) continue;
        sum += (size_t)st_numel(t) + (size_t)t->ndim + (size_t)t->shard;
        sum += st_find(a, t->name) != NULL;
        const unsigned char *p = t->data;
        for (size_t j = 0; p && j < t->nbytes; j += 61) sum += p[j];
        if (p && t->nbytes) sum += p[t->nbytes - 1];
    }
    (void)sum;
    st_close(a);
    return 1;
}

int fuzz_safetensors_one(const uint8_t *data, size_t size) {
    if (!fuzz_dir()) return 0;
    if (fuzz_write_parts(data, size, "x.safetensors") == 1 && fuzz_has("x.safetensors"))
        return walk(fuzz_path("x.safetensors"));
    int rc = walk(fuzz_dir_path());
    if (fuzz_has("model.safetensors.index.json")) {
        int r2 = walk(fuzz_path("model.safetensors.index.json"));
        if (r2 < 0) rc = -1;
    }
    return rc;
}

FUZZ_MAIN(fuzz_safetensors_one)
