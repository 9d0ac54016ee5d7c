/* bench/gemm.c — GFLOP/s of cblas_sgemm (the machine's peak) and of our
 * frozen-weight matmul path kern_matmul for F32, F16, Q8_0 and Q4_1 weights,
 * and, where the CPU has a bf16 unit, for bf16 compute (the weight packed as
 * bf16, --compute bf16), on 1 and 2 threads, at SmolLM2-135M shapes.
 *
 *   build-bench/bench_gemm [--quick] [--min-time S] [--threads LIST] [--filter TEXT]
 *
 * Every product is y (M, N) = x (M, K) · Wᵀ with W stored (N, K), i.e.
 * 2·M·N·K flops. The sgemm rows run one cblas_sgemm call with OpenBLAS's own
 * threading (openblas_set_num_threads); the kern rows run kern_matmul as the
 * library does: OpenBLAS on 1 thread, OpenMP splitting tiles of output rows.
 * "%peak" is against the better of sgemm 1024³ / 960³ on the same thread
 * count, "%sgemm" against
 * sgemm of the same shape and thread count. Times are the median of repeated
 * calls (at least 3, at least --min-time seconds). */
#include "peft.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"

#include "bench.h"
#include "core/core.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Provided by OpenBLAS; declared here in case <cblas.h> does not. */
void openblas_set_num_threads(int num_threads);

typedef struct {
    const char *name;
    int M, N, K;
} shape;



static double g_min_time = 0.3;

typedef struct {
    int M, N, K;
    const float *x, *w;
    float *y;
} sgemm_arg;

static int run_sgemm(void *p) {
    sgemm_arg *a = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->M, a->N, a->K, 1.0f, a->x, a->K,
                a->w, a->K, 0.0f, a->y, a->N);
    return 0;
}

typedef struct {
    int M;
    const float *x;
    const kern_weight *w;
    float *y, *scratch;
    int n_threads;
} kern_arg;

static int run_kern(void *p) {
    kern_arg *a = p;
    return kern_matmul(a->y, (int)a->w->rows, a->x, a->M, a->w, NULL, 0.0f, a->scratch,
                       a->n_threads);
}

static void fill_random(float *v, size_t n, uint64_t *state, float scale) {
    for (size_t i = 0; i < n; i++) {
        /* xorshift64*: uniform in [-scale, scale) */
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        uint64_t r = *state * 0x2545F4914F6CDD1DULL;
        v[i] = scale * ((float)(r >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_gemm: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static double gflops(const shape *s, double sec) {
    return sec > 0 ? 2.0 * s->M * (double)s->N * s->K / sec * 1e-9 : 0.0;
}

int main(int argc, char **argv) {
    int quick = 0;
    const char *filter = NULL;
    int threads[4] = {1, 2}, n_thr = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--filter") && i + 1 < argc) {
            filter = argv[++i];
        } else if (!strcmp(argv[i], "--min-time") && i + 1 < argc) {
            g_min_time = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            /* comma-separated, e.g. 1,2,4 */
            n_thr = 0;
            for (char *tok = strtok(argv[++i], ","); tok && n_thr < 4; tok = strtok(NULL, ","))
                threads[n_thr++] = atoi(tok) > 0 ? atoi(tok) : 1;
        } else {
            fprintf(stderr,
                    "usage: %s [--quick] [--min-time S] [--threads 1,2] [--filter TEXT]\n"
                    "  --quick: M = 1 and 256 only, fewer shapes\n"
                    "  --filter: only shapes whose name contains TEXT (the peak is always run)\n",
                    argv[0]);
            return 2;
        }
    }
    if (quick && g_min_time > 0.1) g_min_time = 0.1;

    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = threads[n_thr - 1];
    peft_ctx *ctx = peft_init(&cp); /* as the CLI does: OpenBLAS on 1 thread */
    if (!ctx) return 1;

    /* SmolLM2-135M: d = 576, 9 heads of 64, 3 kv heads, ff 1536, vocab 49152. */
    static const struct {
        const char *name;
        int N, K;
    } lin[] = {
        {"attn_q/o 576x576", 576, 576},   {"attn_k/v 192x576", 192, 576},
        {"ffn_up 1536x576", 1536, 576},   {"ffn_down 576x1536", 576, 1536},
        {"lm_head 49152x576", 49152, 576},
    };
    const int n_lin = (int)(sizeof lin / sizeof lin[0]);
    const int Ms_full[] = {1, 256, 1024}, Ms_quick[] = {1, 256};
    const int *Ms = quick ? Ms_quick : Ms_full;
    const int n_M = quick ? 2 : 3;

    shape shapes[32];
    int n_shapes = 0;
    /* Peak references. 1024 is a power-of-two leading dimension (4 KiB row
     * stride), which costs OpenBLAS cache-set conflicts on some CPUs; 960 is
     * not. The peak is the better of the two. */
    shapes[n_shapes++] = (shape){"square 1024^3", 1024, 1024, 1024};
    shapes[n_shapes++] = (shape){"square 960^3", 960, 960, 960};
    const int n_peak_shapes = 2;
    for (int mi = 0; mi < n_M; mi++)
        for (int l = 0; l < n_lin; l++) {
            if (quick && l == 1) continue;
            if (filter && !strstr(lin[l].name, filter)) continue;
            shapes[n_shapes++] = (shape){lin[l].name, Ms[mi], lin[l].N, lin[l].K};
        }

    static const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_Q8_0, PEFT_DT_Q4_1};
    const int n_dt = 4;

    int maxM = 0, maxN = 0, maxK = 0;
    for (int s = 0; s < n_shapes; s++) {
        if (shapes[s].M > maxM) maxM = shapes[s].M;
        if (shapes[s].N > maxN) maxN = shapes[s].N;
        if (shapes[s].K > maxK) maxK = shapes[s].K;
    }
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    float *x = xmalloc((size_t)maxM * maxK * sizeof(float));
    float *y = xmalloc((size_t)maxM * maxN * sizeof(float));
    float *y_ref = xmalloc((size_t)maxM * maxN * sizeof(float));
    float *w32 = xmalloc((size_t)maxN * maxK * sizeof(float));
    void *wq = xmalloc((size_t)maxN * maxK * sizeof(float)); /* >= any quantized size */
    float *wdq = xmalloc((size_t)maxN * maxK * sizeof(float));
    memset(y, 0, (size_t)maxM * maxN * sizeof(float)); /* fault the pages in now */
    memset(y_ref, 0, (size_t)maxM * maxN * sizeof(float));
    memset(wq, 0, (size_t)maxN * maxK * sizeof(float));
    memset(wdq, 0, (size_t)maxN * maxK * sizeof(float));
    fill_random(x, (size_t)maxM * maxK, &rng, 1.0f);
    fill_random(w32, (size_t)maxN * maxK, &rng, 0.05f);
    int max_thr = 1;
    for (int i = 0; i < n_thr; i++)
        if (threads[i] > max_thr) max_thr = threads[i];
    float *scratch = xmalloc(kern_matmul_scratch_floats(maxK, max_thr) * sizeof(float));
    /* bf16 rows where the CPU has a bf16 unit (AMX or AVX512-BF16) */
    const bool bf16_unit = kern_bf16_supported();
    uint16_t *bpack = bf16_unit ? xmalloc(kern_bf16_pack_elems(maxK, maxN) * sizeof(uint16_t)) : NULL;

    /* Peak: sgemm 1024³ per thread count. */
    double peak[4] = {0};
    printf("# bench_gemm: y(M,N) = x(M,K)·W(N,K)^T, GFLOP/s = 2·M·N·K / median time\n");
    printf("# %%peak = vs the better of sgemm 1024^3 and 960^3 at the same thread count; "
           "%%sgemm = vs sgemm of the same shape\n");
    printf("# bf16 rows (--compute bf16): %s\n", bf16_unit ? kern_bf16_unit_name(kern_bf16_unit_detect())
                                                          : "none, this CPU has neither AMX-BF16 nor AVX512-BF16");
    printf("%-20s %5s %5s %5s  %-6s %3s  %9s %8s %7s %7s\n", "shape", "M", "N", "K", "path",
           "thr", "ms/call", "GFLOP/s", "%peak", "%sgemm");

    int fail = 0;
    for (int s = 0; s < n_shapes; s++) {
        const shape *sh = &shapes[s];
        double sg[4] = {0};
        for (int ti = 0; ti < n_thr; ti++) {
            openblas_set_num_threads(threads[ti]);
            sgemm_arg a = {sh->M, sh->N, sh->K, x, w32, y_ref};
            if (s == 0) { /* spin up clocks and OpenBLAS's threads first */
                double t0 = peft_time_s();
                while (peft_time_s() - t0 < 0.5) run_sgemm(&a);
            }
            double sec = bench_median_s(run_sgemm, &a, 3, 201, g_min_time);
            sg[ti] = gflops(sh, sec);
            if (s < n_peak_shapes && sg[ti] > peak[ti]) peak[ti] = sg[ti];
            printf("%-20s %5d %5d %5d  %-6s %3d  %9.3f %8.1f %6.1f%% %6.1f%%\n", sh->name, sh->M,
                   sh->N, sh->K, "sgemm", threads[ti], sec * 1e3, sg[ti],
                   100.0 * sg[ti] / peak[ti], 100.0);
            fflush(stdout);
        }
        openblas_set_num_threads(1);
        if (s == n_peak_shapes - 1)
            for (int ti = 0; ti < n_thr; ti++)
                printf("# sgemm peak, %d thread(s): %.1f GFLOP/s\n", threads[ti], peak[ti]);
        if (s < n_peak_shapes) continue; /* the square shapes are only the peak reference */
        for (int d = 0; d < n_dt; d++) {
            peft_dtype dt = dts[d];
            kern_weight kw = {dt, sh->N, sh->K, w32, false, NULL, NULL, 0, false};
            if (dt != PEFT_DT_F32) {
                size_t rb = kern_dtype_row_bytes(dt, sh->K);
                for (int r = 0; r < sh->N; r++) {
                    char *dst = (char *)wq + (size_t)r * rb;
                    if (kern_quant_row(dt, w32 + (size_t)r * sh->K, dst, sh->K) ||
                        kern_dequant_row(dt, dst, wdq + (size_t)r * sh->K, sh->K)) {
                        fprintf(stderr, "quantize %s failed\n", peft_dtype_name(dt));
                        return 1;
                    }
                }
                kw.data = wq;
            }
            /* Correctness check against sgemm on the dequantized weight. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, sh->M, sh->N, sh->K, 1.0f, x,
                        sh->K, dt == PEFT_DT_F32 ? w32 : wdq, sh->K, 0.0f, y_ref, sh->N);
            for (int ti = 0; ti < n_thr; ti++) {
                kern_arg a = {sh->M, x, &kw, y, scratch, threads[ti]};
                double sec = bench_median_s(run_kern, &a, 3, 201, g_min_time);
                if (sec < 0) {
                    fprintf(stderr, "kern_matmul failed for %s %s\n", sh->name,
                            peft_dtype_name(dt));
                    fail = 1;
                    continue;
                }
                double maxerr = 0.0;
                for (size_t i = 0; i < (size_t)sh->M * sh->N; i++) {
                    double e = fabs((double)y[i] - (double)y_ref[i]);
                    if (e > maxerr) maxerr = e;
                }
                if (maxerr > 1e-3) {
                    fprintf(stderr, "MISMATCH %s %s thr %d: max |diff| %.3g\n", sh->name,
                            peft_dtype_name(dt), threads[ti], maxerr);
                    fail = 1;
                }
                double gf = gflops(sh, sec);
                printf("%-20s %5d %5d %5d  %-6s %3d  %9.3f %8.1f %6.1f%% %6.1f%%\n", sh->name,
                       sh->M, sh->N, sh->K, peft_dtype_name(dt), threads[ti], sec * 1e3, gf,
                       100.0 * gf / peak[ti], sg[ti] > 0 ? 100.0 * gf / sg[ti] : 0.0);
                fflush(stdout);
            }
        }
        /* bf16 compute (--compute bf16): the f32 weight packed as bf16,
         * kern_matmul then runs kern_bf16_gemm on the CPU's bf16 unit.
         * Decoding (M <= KERN_MATVEC_MAX_T) keeps the stored weights. */
        if (bf16_unit && sh->M > KERN_MATVEC_MAX_T) {
            kern_weight kw = {PEFT_DT_F32, sh->N, sh->K, w32, false, NULL, NULL, 0, false};
            if (kern_bf16_pack_weight(&kw, bpack, NULL, wdq)) {
                fprintf(stderr, "bf16 pack failed for %s\n", sh->name);
                return 1;
            }
            kw.bf16_fwd = bpack;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, sh->M, sh->N, sh->K, 1.0f, x, sh->K, w32, sh->K, 0.0f,
                        y_ref, sh->N);
            double ymax = 0;
            for (size_t i = 0; i < (size_t)sh->M * sh->N; i++) ymax = fmax(ymax, fabs((double)y_ref[i]));
            for (int ti = 0; ti < n_thr; ti++) {
                kern_arg a = {sh->M, x, &kw, y, scratch, threads[ti]};
                double sec = bench_median_s(run_kern, &a, 3, 201, g_min_time);
                double maxerr = 0.0;
                for (size_t i = 0; sec >= 0 && i < (size_t)sh->M * sh->N; i++)
                    maxerr = fmax(maxerr, fabs((double)y[i] - (double)y_ref[i]));
                if (sec < 0 || maxerr > 2e-2 * ymax) { /* bf16 keeps 8 significant bits */
                    fprintf(stderr, "bf16 %s thr %d: %s, max |diff| %.3g of %.3g\n", sh->name, threads[ti],
                            sec < 0 ? "failed" : "MISMATCH", maxerr, ymax);
                    fail = 1;
                    continue;
                }
                double gf = gflops(sh, sec);
                printf("%-20s %5d %5d %5d  %-6s %3d  %9.3f %8.1f %6.1f%% %6.1f%%\n", sh->name, sh->M, sh->N, sh->K,
                       "bf16", threads[ti], sec * 1e3, gf, 100.0 * gf / peak[ti], sg[ti] > 0 ? 100.0 * gf / sg[ti] : 0.0);
                fflush(stdout);
            }
        }
    }
    free(bpack);
    free(x);
    free(y);
    free(y_ref);
    free(w32);
    free(wq);
    free(wdq);
    free(scratch);
    peft_free(ctx);
    return fail;
}
