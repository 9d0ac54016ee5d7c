/* bench/lora_step.c — speed and memory of one LoRA training step of peft.c:
 * forward + backward (frozen base, input gradients only) + grad-norm clip +
 * AdamW update, on an HF folder (float32 safetensors), as `peft train` runs
 * it. bench/lora_step.sh drives it next to PyTorch + HF peft.
 *
 *   build/bench_lora_step MODEL_DIR [--batch 4] [--seq 256] [--steps 5]
 *                         [--warmup 1] [--threads 2] [--targets LIST]
 *                         [--compute f32|bf16] [--checkpoint-layers K]
 *
 * Targets default to q_proj,v_proj (Llama family) or c_attn (GPT-2); r 8,
 * alpha 16, no dropout. Inputs: B×T pseudo-random ids from a 64-bit LCG
 * (x = x·6364136223846793005 + 1442695040888963407, id = (x >> 33) % vocab,
 * x0 = 0x5EED; the same as bench/lora_step_torch.py, so the first loss
 * agrees), targets = the next token (the last position of each row has
 * none), positions 0..T-1, one segment per row.
 *
 * Also measures the machine's sgemm peak: cblas_sgemm 1024³ on the same
 * thread count (OpenBLAS threading), median of >= 10 calls, before loading.
 *
 * FLOPs counted per step (tokens = B·T):
 *   frozen linears (every block linear and the LM head):
 *       4·P_lin·tokens  (forward 2·P, input gradient 2·P; no weight grads)
 *   LoRA modules: 6·r·(in + out)·tokens  (forward 2, backward 4)
 *   attention, full T×T (causal half not subtracted):
 *       12·n_layer·(n_head·head_dim)·T·tokens  (QKᵀ and PV forward: 4;
 *       their backward: 8)
 *   elementwise work (norms, softmax, RoPE, activations, loss) not counted.
 * %peak = (FLOPs / median step time) / sgemm peak. With --compute bf16 (the
 * frozen products in bf16 on AMX or AVX512-BF16, peft_model_set_compute) the peak is that
 * of the bf16 GEMM, kern_bf16_gemm 1024³ on the same threads, and the
 * sgemm peak is printed beside it.
 *
 * Prints progress lines and one line for the driver:
 *   RESULT impl=peft.c model=... median_s=... tokens_per_s=... peak_rss_mib=...
 *          arena_mib=... loss0=... gflop_step=... sgemm_gflops=... pct_peak=...
 *          core=...
 * OpenBLAS 0.3.21 does not recognise Sapphire Rapids and falls back to its
 * SSE3 "Prescott" kernels; like the peft CLI, this binary then re-execs
 * itself with OPENBLAS_CORETYPE=SkylakeX (avx512f) or Haswell (avx2), unless
 * OPENBLAS_CORETYPE or PEFT_NO_BLAS_FIX is set. */
#include "peft.h"
#include "model/model.h"
#include "peft/lora.h"
#include "train/data.h"
#include "train/graph.h"
#include "train/optim.h"

#include "bench.h"
#include "core/core.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Provided by OpenBLAS; declared here in case <cblas.h> does not. */
void openblas_set_num_threads(int num_threads);
char *openblas_get_corename(void);



/* user + system CPU seconds of this process: unlike wall time, not inflated
 * when the hypervisor takes a core away (steal), so variants compare on a
 * shared machine; spinning OpenMP threads do count. */
static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

/* As src/cli/main.c: re-exec with a core type OpenBLAS can use. */
static void fix_blas_core(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv("PEFT_NO_BLAS_FIX")) return;
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "Prescott") != 0) return;
    __builtin_cpu_init();
    const char *want = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                       : __builtin_cpu_supports("avx2") ? "Haswell" : NULL;
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("PEFT_NO_BLAS_FIX", "1", 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "bench_lora_step: re-exec with OPENBLAS_CORETYPE=%s failed; slow kernels\n", want);
}

/* A 1024³ product for the peak measurements: C = A·Bᵀ, B as a bf16 pack
 * when bp is set. */
enum { PEAK_N = 1024 };
typedef struct {
    const float *a, *b;
    const uint16_t *bp;
    float *c, *scr;
    int n_threads;
} peak_job;

static int run_sgemm(void *arg) {
    const peak_job *j = arg;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, PEAK_N, PEAK_N, PEAK_N, 1.0f, j->a, PEAK_N, j->b, PEAK_N, 0.0f,
                j->c, PEAK_N);
    return 0;
}

static int run_bf16(void *arg) {
    const peak_job *j = arg;
    return kern_bf16_gemm(j->c, PEAK_N, j->a, PEAK_N, PEAK_N, PEAK_N, PEAK_N, j->bp, NULL, 0.0f, j->scr, j->n_threads);
}

/* GFLOP/s of a 1024³ product on n_threads, median of >= 10 calls and >= 1 s:
 * sgemm (OpenBLAS threading), or with bf16 kern_bf16_gemm on the CPU's bf16
 * unit (AMX or AVX512-BF16; 0 without either). */
static double gemm_peak(int n_threads, bool bf16) {
    const size_t nn = (size_t)PEAK_N * PEAK_N;
    if (bf16 && !kern_bf16_supported()) return 0;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
    float *row = malloc(PEAK_N * sizeof(float)), *scr = malloc((kern_bf16_scratch_floats(n_threads) + 1) * sizeof(float));
    uint16_t *bp = malloc(kern_bf16_pack_elems(PEAK_N, PEAK_N) * sizeof(uint16_t));
    double sec = -1;
    if (a && b && c && row && scr && bp) {
        uint64_t s = 12345;
        for (size_t i = 0; i < nn; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            a[i] = (float)((s >> 40) & 0xffff) / 65536.0f - 0.5f;
            b[i] = (float)((s >> 20) & 0xffff) / 65536.0f - 0.5f;
        }
        peak_job j = {a, b, NULL, c, scr, n_threads};
        if (bf16) {
            kern_weight w = {PEFT_DT_F32, PEAK_N, PEAK_N, b, false, NULL, NULL, 0, false};
            kern_bf16_pack_weight(&w, bp, NULL, row);
            j.bp = bp;
            sec = bench_median_s(run_bf16, &j, 10, 64, 1.0);
        } else {
            openblas_set_num_threads(n_threads);
            sec = bench_median_s(run_sgemm, &j, 10, 64, 1.0);
            openblas_set_num_threads(1);
        }
    }
    free(a); free(b); free(c); free(row); free(scr); free(bp);
    return sec > 0 ? 2.0 * PEAK_N * (double)PEAK_N * PEAK_N / sec * 1e-9 : 0;
}

static void usage(const char *p) {
    fprintf(stderr,
            "usage: %s MODEL_DIR [--batch 4] [--seq 256] [--steps 5] [--warmup 1] [--threads 2] "
            "[--targets LIST] [--compute f32|bf16] [--checkpoint-layers K]\n",
            p);
}

int main(int argc, char **argv) {
    fix_blas_core(argv);
    const char *dir = NULL, *targets = NULL, *compute = "f32";
    int B = 4, T = 256, steps = 5, warmup = 1, nthr = 2, ckpt = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (i + 1 < argc && !strcmp(o, "--batch")) B = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(o, "--seq")) T = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(o, "--steps")) steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(o, "--warmup")) warmup = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(o, "--threads")) nthr = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(o, "--targets")) targets = argv[++i];
        else if (i + 1 < argc && !strcmp(o, "--compute")) compute = argv[++i];
        else if (i + 1 < argc && !strcmp(o, "--checkpoint-layers")) ckpt = atoi(argv[++i]);
        else if (o[0] != '-' && !dir) dir = o;
        else { usage(argv[0]); return 2; }
    }
    const bool bf16 = !strcmp(compute, "bf16");
    if (!dir || B < 1 || T < 2 || steps < 1 || warmup < 0 || nthr < 1 || ckpt < 0 || (!bf16 && strcmp(compute, "f32"))) {
        usage(argv[0]);
        return 2;
    }

    const char *core = openblas_get_corename();
    fprintf(stderr, "OpenBLAS core: %s (OPENBLAS_CORETYPE=%s)\n", core ? core : "?",
            getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    const double speak = gemm_peak(nthr, false), bpeak = bf16 ? gemm_peak(nthr, true) : 0;
    const double peak = bf16 ? bpeak : speak;
    fprintf(stderr, "sgemm 1024^3 on %d threads: %.1f GFLOP/s\n", nthr, speak);
    if (bf16) fprintf(stderr, "bf16 GEMM (%s) 1024^3 on %d threads: %.1f GFLOP/s\n", peft_compute_bf16_unit(), nthr, bpeak);

    peft_ctx_params cp = peft_ctx_default_params();
    cp.n_threads = nthr;
    peft_ctx *ctx = peft_init(&cp);
    if (!ctx) return 1;
    double t_load = peft_time_s();
    peft_model *m = peft_model_load(ctx, dir);
    if (!m) {
        fprintf(stderr, "bench_lora_step: %s\n", peft_last_error(ctx));
        return 1;
    }
    if (bf16 && peft_model_set_compute(m, PEFT_COMPUTE_BF16)) {
        fprintf(stderr, "bench_lora_step: %s\n", peft_last_error(ctx));
        return 1;
    }
    t_load = peft_time_s() - t_load;
    const model_config *c = &m->cfg;
    const bool gpt2 = c->arch == PEFT_ARCH_GPT2;
    if (!targets) targets = gpt2 ? "c_attn" : "q_proj,v_proj";

    peft_err err = {0};
    lora_config lc = lora_default_config(); /* r 8, alpha 16, dropout 0 */
    adapter *a = NULL;
    train_graph *g = NULL;
    adamw_state opt = {0};
    if (lora_parse_targets(m, targets, &lc.targets, &err) || lora_new(m, &lc, &a, &err) ||
        tg_new_opts(m, a, B, T, &(tg_options){.checkpoint_every = ckpt}, &g, &err) || adamw_init(&opt, a->n_params, &err)) {
        fprintf(stderr, "bench_lora_step: %s\n", err.msg);
        return 1;
    }

    /* the batch */
    const int N = B * T;
    int32_t *inputs = malloc((size_t)N * sizeof *inputs), *tgt = malloc((size_t)N * sizeof *tgt),
            *pos = malloc((size_t)N * sizeof *pos), *seg = calloc((size_t)N, sizeof *seg),
            *lens = malloc((size_t)B * sizeof *lens);
    if (!inputs || !tgt || !pos || !seg || !lens) return 1;
    uint64_t x = 0x5EED;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        inputs[i] = (int32_t)((x >> 33) % (uint64_t)c->vocab);
    }
    int n_targets = 0;
    for (int b = 0; b < B; b++) {
        lens[b] = T;
        for (int t = 0; t < T; t++) {
            pos[b * T + t] = t;
            tgt[b * T + t] = t + 1 < T ? inputs[b * T + t + 1] : -100;
            n_targets += t + 1 < T;
        }
    }
    data_batch batch = {.B = B, .T = T, .inputs = inputs, .targets = tgt, .positions = pos,
                        .segments = seg, .labels = NULL, .lengths = lens, .n_targets = n_targets,
                        .pad_id = 0};

    /* FLOPs per step (see the header) */
    double p_lin = (double)m->lm_head.rows * (double)m->lm_head.cols;
    for (int l = 0; l < c->n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            if (m->layers[l].lin[r].present)
                p_lin += (double)m->layers[l].lin[r].w.rows * (double)m->layers[l].lin[r].w.cols;
    double p_lora = 0;
    for (int i = 0; i < lora_of(a)->n_modules; i++) p_lora += (double)lora_of(a)->mods[i].r * (lora_of(a)->mods[i].in + lora_of(a)->mods[i].out);
    const double flop_lin = 4.0 * p_lin * N, flop_lora = 6.0 * p_lora * N;
    const double flop_attn = 12.0 * c->n_layer * (double)(c->n_head * c->head_dim) * T * N;
    const double flops = flop_lin + flop_lora + flop_attn;

    optim_params op = optim_default_params();
    op.lr = 1e-4f;
    op.max_grad_norm = 1.0f;
    fprintf(stderr,
            "model %s: %d layers, d %d, vocab %d; load %.2f s; LoRA %s: %d modules, %lld params; "
            "arena %.1f MiB; batch %d x %d, %d threads\n",
            c->arch_name, c->n_layer, c->d_model, c->vocab, t_load, targets, lora_of(a)->n_modules,
            (long long)a->n_params, tg_arena_bytes(g) / 1048576.0, B, T, nthr);

    double *times = malloc((size_t)steps * sizeof *times), *cpus = malloc((size_t)steps * sizeof *cpus);
    double loss0 = 0;
    for (int s = 0; s < warmup + steps; s++) {
        double t0 = peft_time_s(), c0 = cpu_s();
        memset(a->grads, 0, (size_t)a->n_params * sizeof(float));
        double ls = 0;
        int cnt = 0;
        int rc = tg_run(g, &batch, true, 1.0f / (float)n_targets, 0x1234 + (uint64_t)s, &ls, &cnt, &err);
        if (rc) {
            fprintf(stderr, "bench_lora_step: step %d: %s\n", s, err.msg);
            return 1;
        }
        double gn = grad_norm(a->grads, a->n_params);
        grad_clip(a->grads, a->n_params, gn, op.max_grad_norm);
        adamw_step(&opt, a->params, a->grads, op.lr, &op);
        double dt = peft_time_s() - t0, dc = cpu_s() - c0;
        if (s == 0) loss0 = ls / cnt;
        if (s >= warmup) { times[s - warmup] = dt; cpus[s - warmup] = dc; }
        fprintf(stderr, "peft.c %s step %d%s: %.3f s loss %.5f grad_norm %.4f\n", c->arch_name, s,
                s < warmup ? " (warmup)" : "", dt, ls / cnt, gn);
    }
    double ph[TG_N_PHASES];
    tg_phase_seconds(g, ph);
    const int n_all = warmup + steps;
    fprintf(stderr, "phases per step (mean of %d): linear fwd %.3f s, attention fwd %.3f, loss %.3f, linear bwd %.3f, "
            "attention bwd %.3f, other %.3f\n", n_all, ph[TG_PH_LIN_FWD] / n_all, ph[TG_PH_ATTN_FWD] / n_all,
            ph[TG_PH_LOSS] / n_all, ph[TG_PH_LIN_BWD] / n_all, ph[TG_PH_ATTN_BWD] / n_all, ph[TG_PH_OTHER] / n_all);
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    qsort(cpus, (size_t)steps, sizeof *cpus, cmp_double);
    const double med = times[steps / 2];
    printf("RESULT impl=peft.c model=%s B=%d T=%d steps=%d median_s=%.4f min_s=%.4f tokens_per_s=%.1f "
           "peak_rss_mib=%.1f arena_mib=%.1f loss0=%.5f trainable=%lld gflop_step=%.1f "
           "gflop_lin=%.1f gflop_lora=%.2f gflop_attn=%.1f sgemm_gflops=%.1f achieved_gflops=%.1f "
           "pct_peak=%.1f core=%s threads=%d compute=%s bf16_gflops=%.1f cpu_s=%.4f checkpoint_layers=%d\n",
           c->arch_name, B, T, steps, med, times[0], N / med, peak_rss_mib(),
           tg_arena_bytes(g) / 1048576.0, loss0, (long long)a->n_params, flops * 1e-9,
           flop_lin * 1e-9, flop_lora * 1e-9, flop_attn * 1e-9, speak, flops / med * 1e-9,
           100.0 * flops / med * 1e-9 / peak, core ? core : "?", nthr, compute, bpeak, cpus[steps / 2], ckpt);
    free(times);
    free(cpus);
    free(inputs);
    free(tgt);
    free(pos);
    free(seg);
    free(lens);
    adamw_free(&opt);
    tg_free(g);
    adapter_free(a);
    peft_model_free(m);
    peft_free(ctx);
    return 0;
}
