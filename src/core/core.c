/* core.c — errors, allocation, files, RNG, timing. */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int peft_fail(peft_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void peft_err_clear(peft_err *err) {
    if (err) { err->code = 0; err->msg[0] = 0; }
}

void *peft_malloc(size_t n, peft_err *err) {
    void *p = malloc(n ? n : 1);
    if (!p) peft_fail(err, PEFT_ERR_NOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *peft_calloc(size_t count, size_t size, peft_err *err) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) peft_fail(err, PEFT_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

char *peft_strndup(const char *s, size_t n, peft_err *err) {
    char *p = peft_malloc(n + 1, err);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

char *peft_strdup(const char *s, peft_err *err) { return peft_strndup(s, strlen(s), err); }

int peft_read_file(const char *path, char **data, size_t *len, peft_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return peft_fail(err, PEFT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return peft_fail(err, PEFT_ERR_IO, "%s: cannot seek", path); }
    long n = ftell(f);
    if (n < 0) { fclose(f); return peft_fail(err, PEFT_ERR_IO, "%s: cannot tell size (is it a directory?)", path); }
    rewind(f);
    char *buf = peft_malloc((size_t)n + 1, err);
    if (!buf) { fclose(f); return PEFT_ERR_NOMEM; }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf); fclose(f);
        return peft_fail(err, PEFT_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    if (len) *len = (size_t)n;
    return 0;
}

int peft_write_file_atomic(const char *path, const void *data, size_t len, peft_err *err) {
    size_t n = strlen(path) + 32;
    char *tmp = peft_malloc(n, err);
    if (!tmp) return PEFT_ERR_NOMEM;
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int e = errno; free(tmp);
        return peft_fail(err, PEFT_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno; close(fd); unlink(tmp); free(tmp);
            return peft_fail(err, PEFT_ERR_IO, "%s: write failed: %s", path, strerror(e));
        }
        p += w; left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno; unlink(tmp); free(tmp);
        return peft_fail(err, PEFT_ERR_IO, "%s: flush failed: %s", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno; unlink(tmp); free(tmp);
        return peft_fail(err, PEFT_ERR_IO, "%s: rename failed: %s", path, strerror(e));
    }
    free(tmp);
    return 0;
}

int peft_mkdir_p(const char *dir, peft_err *err) {
    size_t n = strlen(dir);
    char *p = peft_malloc(n + 1, err);
    if (!p) return PEFT_ERR_NOMEM;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int e = errno;
            free(p);
            return peft_fail(err, PEFT_ERR_IO, "%s: cannot create folder: %s", dir, strerror(e));
        }
        p[i] = c;
    }
    free(p);
    if (!peft_is_dir(dir)) return peft_fail(err, PEFT_ERR_IO, "%s: exists and is not a folder", dir);
    return 0;
}

bool peft_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool peft_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *peft_path_join(const char *dir, const char *name, peft_err *err) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = peft_malloc(a + b + 2, err);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t o = a;
    if (a > 0 && dir[a - 1] != '/') p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

int peft_mmap_open(const char *path, peft_mmap *m, peft_err *err) {
    m->data = NULL; m->size = 0;
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer before
     * fstat could refuse it; it changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return peft_fail(err, PEFT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return peft_fail(err, PEFT_ERR_IO, "%s: cannot stat", path); }
    if (!S_ISREG(st.st_mode)) { close(fd); return peft_fail(err, PEFT_ERR_IO, "%s: not a regular file", path); }
    m->size = (size_t)st.st_size;
    if (m->size == 0) { close(fd); return peft_fail(err, PEFT_ERR_FORMAT, "%s: file is empty", path); }
#ifdef PEFT_NO_MMAP
    /* Fuzz build: AddressSanitizer cannot see a read past the end of a
     * mapping (the page tail is readable), so the file goes into a heap
     * buffer of exactly its size instead. */
    char *buf = malloc(m->size);
    if (!buf) { close(fd); return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, m->size); }
    size_t got = 0;
    while (got < m->size) {
        ssize_t r = read(fd, buf + got, m->size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(buf); close(fd); m->size = 0;
            return peft_fail(err, PEFT_ERR_IO, "%s: short read: %s", path, e ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    m->data = buf;
    return 0;
#else
    void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return peft_fail(err, PEFT_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    return 0;
#endif
}

void peft_mmap_close(peft_mmap *m) {
#ifdef PEFT_NO_MMAP
    free(m->data);
#else
    if (m->data) munmap(m->data, m->size);
#endif
    m->data = NULL; m->size = 0;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void peft_rng_seed(peft_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t peft_rng_u64(peft_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return result;
}

float peft_rng_uniform(peft_rng *r) { return (float)(peft_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

float peft_rng_normal(peft_rng *r) {
    /* Box-Muller; one value per call keeps the state simple to checkpoint. */
    double u1 = ((double)(peft_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(peft_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

double peft_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t peft_rss_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, res = 0;
    const int ok = f && fscanf(f, "%llu %llu", &size, &res) == 2;
    if (f) fclose(f);
    const long pg = sysconf(_SC_PAGESIZE);
    return ok && pg > 0 ? (size_t)res * (size_t)pg : 0;
}

size_t peft_rss_peak(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (size_t)ru.ru_maxrss * 1024u : 0;   /* Linux: KiB */
}

size_t peft_mapping_rss(const void *base) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    bool in = false;
    size_t rss = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo, hi;
        /* a mapping's header: "lo-hi perms offset dev inode path" */
        if (sscanf(line, "%llx-%llx ", &lo, &hi) == 2 && strchr(line, '-') && !strncmp(line + strspn(line, "0123456789abcdef"), "-", 1)) {
            if (in) break;
            in = (uintptr_t)lo == (uintptr_t)base;
            continue;
        }
        unsigned long long kb;
        if (in && sscanf(line, "Rss: %llu kB", &kb) == 1) rss = (size_t)kb * 1024u;
    }
    fclose(f);
    return rss;
}

int peft_buf_append(peft_buf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) return PEFT_ERR_NOMEM;
        b->data = p; b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int peft_buf_printf(peft_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return PEFT_ERR_INVALID;
    if ((size_t)n < sizeof tmp) return peft_buf_append(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return PEFT_ERR_NOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = peft_buf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

void peft_buf_free(peft_buf *b) { free(b->data); b->data = NULL; b->len = b->cap = 0; }

float peft_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000 | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t peft_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* round to nearest even; may carry into exp */
    return (uint16_t)h;
}

float peft_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t peft_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

size_t peft_dtype_elem_size(peft_dtype t) {
    switch (t) {
    case PEFT_DT_F32: case PEFT_DT_I32: return 4;
    case PEFT_DT_F16: case PEFT_DT_BF16: case PEFT_DT_I16: return 2;
    case PEFT_DT_I8: case PEFT_DT_U8: case PEFT_DT_BOOL: return 1;
    case PEFT_DT_I64: case PEFT_DT_F64: return 8;
    default: return 0;
    }
}

const char *peft_dtype_name(peft_dtype t) {
    static const char *const names[PEFT_DT_COUNT] = {
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K",
        "Q4_K", "Q5_K", "Q6_K", "Q8_K", "I8", "I16", "I32", "I64", "F64", "U8", "BOOL"};
    return ((unsigned)t < PEFT_DT_COUNT) ? names[t] : "?";
}

const char *peft_status_name(int s) {
    switch (s) {
    case PEFT_OK: return "ok";
    case PEFT_ERR_IO: return "I/O error";
    case PEFT_ERR_FORMAT: return "format error";
    case PEFT_ERR_UNSUPPORTED: return "unsupported";
    case PEFT_ERR_NOMEM: return "out of memory";
    case PEFT_ERR_INVALID: return "invalid argument";
    case PEFT_ERR_SHAPE: return "shape mismatch";
    case PEFT_ERR_NUMERIC: return "numeric error";
    default: return "unknown error";
    }
}

int peft_copy_file_if_exists(const char *src_dir, const char *dst_dir, const char *name, peft_err *err) {
    char *src = peft_path_join(src_dir, name, err), *dst = peft_path_join(dst_dir, name, err);
    int rc = (!src || !dst) ? PEFT_ERR_NOMEM : 0;
    if (!rc && peft_file_exists(src)) {
        char *data = NULL;
        size_t len = 0;
        rc = peft_read_file(src, &data, &len, err);
        if (!rc) rc = peft_write_file_atomic(dst, data, len, err);
        free(data);
    }
    free(src);
    free(dst);
    return rc;
}
