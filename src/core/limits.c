/* limits.c — range-checked JSON number to integer conversion. */
#include "core/limits.h"

#include <math.h>
#include <sys/stat.h>

int peft_json_to_int(const cJSON *v, const char *path, const char *key, int64_t lo, int64_t hi, int64_t *out,
                     peft_err *err) {
    if (!cJSON_IsNumber(v))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be an integer in [%lld, %lld]", path, key,
                         (long long)lo, (long long)hi);
    /* Doubles hold every integer up to 2^53 exactly: a wider range would
     * let (double)hi round up and the conversion below overflow. */
    const int64_t exact = (int64_t)1 << 53;
    if (hi > exact) hi = exact;
    if (lo < -exact) lo = -exact;
    double d = v->valuedouble;
    /* !(a && b) also catches NaN. */
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" is %.17g, must be an integer in [%lld, %lld]", path, key,
                         d, (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return 0;
}

int peft_json_get_int(const cJSON *obj, const char *key, int dflt, bool required, int64_t lo, int64_t hi,
                      int *out, const char *path, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing key \"%s\"", path, key);
        *out = dflt;
        return 0;
    }
    if (lo < INT32_MIN) lo = INT32_MIN;
    if (hi > INT32_MAX) hi = INT32_MAX;
    int64_t x;
    int rc = peft_json_to_int(v, path, key, lo, hi, &x, err);
    if (rc) return rc;
    *out = (int)x;
    return 0;
}

int peft_read_file_max(const char *path, size_t max, char **data, size_t *len, peft_err *err) {
    struct stat st;
    if (path && stat(path, &st) == 0) {
        /* fopen of a FIFO waits for a writer forever; a device has no size. */
        if (!S_ISREG(st.st_mode)) return peft_fail(err, PEFT_ERR_IO, "%s: not a regular file", path);
        if ((uint64_t)st.st_size > (uint64_t)max)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: %lld bytes, more than the %zu MiB this file may have", path,
                             (long long)st.st_size, max >> 20);
    }
    return peft_read_file(path, data, len, err);
}
