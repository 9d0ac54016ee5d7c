/* test_bf16.c — the bfloat16 packs and the AMX GEMM.
 *
 * Oracle: the same product in double over the bf16-rounded operands (each
 * product of two bf16 values is exact in f32, so only the f32 summation
 * differs): error within 1e-5 of Σ|a·b|. Also: packs of every stored dtype
 * and layout equal the rounded dequantized weight; kern_matmul / kern_matmul_dx
 * with packs attached agree with the f32 path to bf16 precision; results are
 * bit-identical on 1, 2 and 3 threads. Skipped (with the reason) where the
 * CPU has no AMX-BF16. */
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "model/model.h"
#include "peft/lora.h"
#include "test.h"
#include "train/graph.h"

static float bf(float x) { return kern_bf16_to_f32(kern_f32_to_bf16(x)); }

static void rounding_is_nearest_even(void) {
    CHECK(kern_f32_to_bf16(1.0f) == 0x3f80);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0) */
    CHECK(kern_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);
    /* 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up */
    CHECK(kern_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);
    CHECK(kern_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(bf(1.0f + 1.0f / 128) == 1.0f + 1.0f / 128);
    CHECK(kern_bf16_to_f32(kern_f32_to_bf16(NAN)) != kern_bf16_to_f32(kern_f32_to_bf16(NAN)));
}

/* C (M, N) = beta·C + bias + A·B with B = Wᵀ (forward pack of W (N, K)). */
static double gemm_case(int M, int K, int N, bool use_bias, float beta, int threads, float *out) {
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)(M * 7919 + K * 31 + N));
    const int lda = K + 5, ldc = N + 3;
    float *w = malloc(sizeof(float) * (size_t)N * K), *a = malloc(sizeof(float) * (size_t)M * lda);
    float *bias = malloc(sizeof(float) * (size_t)N), *c = malloc(sizeof(float) * (size_t)M * ldc);
    float *c0 = malloc(sizeof(float) * (size_t)M * ldc), *row = malloc(sizeof(float) * (size_t)(N > K ? N : K));
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = peft_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)M * lda; i++) a[i] = peft_rng_normal(&rng);
    for (int i = 0; i < N; i++) bias[i] = peft_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)M * ldc; i++) c0[i] = c[i] = peft_rng_normal(&rng);
    uint16_t *pack = malloc(sizeof(uint16_t) * kern_bf16_pack_elems(K, N));
    kern_weight kw = {PEFT_DT_F32, N, K, w, false, NULL, NULL, 0};
    CHECK_OK(kern_bf16_pack_weight(&kw, pack, NULL, row));
    float *scratch = malloc(sizeof(float) * kern_bf16_scratch_floats(threads));
    CHECK_OK(kern_bf16_gemm(c, ldc, a, lda, M, K, N, pack, use_bias ? bias : NULL, beta, scratch, threads));
    double worst = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double s = (beta == 0.0f ? 0.0 : (double)beta * c0[(size_t)i * ldc + j]) + (use_bias ? bias[j] : 0.0), mag = fabs(s);
            for (int k = 0; k < K; k++) {
                const double p = (double)bf(a[(size_t)i * lda + k]) * bf(w[(size_t)j * K + k]);
                s += p;
                mag += fabs(p);
            }
            const double e = fabs(s - c[(size_t)i * ldc + j]) / (mag + 1e-30);
            if (e > worst) worst = e;
        }
        for (int j = N; j < ldc; j++) CHECK(c[(size_t)i * ldc + j] == c0[(size_t)i * ldc + j]); /* padding untouched */
    }
    if (out)
        for (int i = 0; i < M; i++) memcpy(out + (size_t)i * N, c + (size_t)i * ldc, sizeof(float) * (size_t)N);
    free(w); free(a); free(bias); free(c); free(c0); free(row); free(pack); free(scratch);
    return worst;
}

static void gemm_matches_reference_on_edges(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("this CPU (or this build) has no AMX-BF16: the bf16 path is not used here"); }
    const int shapes[][3] = {{1, 32, 32}, {5, 7, 3}, {33, 64, 40}, {128, 96, 256}, {130, 100, 290}, {257, 2100, 70}, {64, 4100, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int v = 0; v < 3; v++) {
            const bool use_bias = v == 1;
            const float beta = v == 0 ? 0.0f : v == 1 ? 1.0f : 0.5f;
            const int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
            const double e = gemm_case(M, K, N, use_bias, beta, 2, NULL);
            CHECK_MSG(e < 1e-5, "M=%d K=%d N=%d bias=%d beta=%g: rel err %g", M, K, N, use_bias, beta, e);
        }
}

static void gemm_does_not_depend_on_thread_count(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("no AMX-BF16 here"); }
    const int M = 300, K = 2200, N = 530;
    float *r1 = malloc(sizeof(float) * M * N), *r2 = malloc(sizeof(float) * M * N), *r3 = malloc(sizeof(float) * M * N);
    gemm_case(M, K, N, true, 1.0f, 1, r1);
    gemm_case(M, K, N, true, 1.0f, 2, r2);
    gemm_case(M, K, N, true, 1.0f, 3, r3);
    CHECK(memcmp(r1, r2, sizeof(float) * M * N) == 0);
    CHECK(memcmp(r1, r3, sizeof(float) * M * N) == 0);
    free(r1); free(r2); free(r3);
}

/* Packs of quantized, half and transposed weights hold the rounded
 * dequantized W, and kern_matmul / kern_matmul_dx with packs attached agree
 * with the f32 path to bf16 precision. */
static void packed_linears_match_the_f32_path(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("no AMX-BF16 here"); }
    const peft_dtype dts[] = {PEFT_DT_F32, PEFT_DT_F16, PEFT_DT_BF16, PEFT_DT_Q8_0, PEFT_DT_Q4_1};
    const int N = 96, K = 160, T = 70;
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++)
        for (int tr = 0; tr < 2; tr++) {
            const bool transposed = tr == 1;
            if (transposed && peft_dtype_elem_size(dts[d]) == 0) continue;
            peft_rng rng;
            peft_rng_seed(&rng, 11 + d);
            const int64_t rows = transposed ? K : N, cols = transposed ? N : K;
            const size_t rb = kern_dtype_row_bytes(dts[d], cols);
            float *wf = malloc(sizeof(float) * N * K), *wd = malloc(sizeof(float) * N * K);
            uint8_t *wq = malloc(rb * (size_t)rows);
            for (int i = 0; i < N * K; i++) wf[i] = peft_rng_normal(&rng) * 0.3f;
            for (int64_t r = 0; r < rows; r++) {
                CHECK_OK(kern_quant_row(dts[d], wf + r * cols, wq + r * rb, cols));
                CHECK_OK(kern_dequant_row(dts[d], wq + r * rb, wd + r * cols, cols));
            }
            kern_weight w = {dts[d], N, K, wq, transposed, NULL, NULL, 0};
            uint16_t *pf = malloc(2 * kern_bf16_pack_elems(K, N)), *pb = malloc(2 * kern_bf16_pack_elems(N, K));
            float *row = malloc(sizeof(float) * (N > K ? N : K));
            CHECK_OK(kern_bf16_pack_weight(&w, pf, pb, row));
            /* the packs hold the rounded weights at their documented places */
            const int64_t nkf = (K + 31) / 32, nkb = (N + 31) / 32;
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++) {
                    const float want = bf(transposed ? wd[(size_t)k * N + n] : wd[(size_t)n * K + k]);
                    const size_t of = ((size_t)(n >> 4) * nkf + (k >> 5)) * 512 + ((k & 31) >> 1) * 32 + (n & 15) * 2 + (k & 1);
                    const size_t ob = ((size_t)(k >> 4) * nkb + (n >> 5)) * 512 + ((n & 31) >> 1) * 32 + (k & 15) * 2 + (n & 1);
                    CHECK(kern_bf16_to_f32(pf[of]) == want);
                    CHECK(kern_bf16_to_f32(pb[ob]) == want);
                }
            float *x = malloc(sizeof(float) * T * K), *dy = malloc(sizeof(float) * T * N);
            float *y1 = malloc(sizeof(float) * T * N), *y2 = malloc(sizeof(float) * T * N);
            float *dx1 = calloc((size_t)T * K, sizeof(float)), *dx2 = calloc((size_t)T * K, sizeof(float));
            for (int i = 0; i < T * K; i++) x[i] = peft_rng_normal(&rng);
            for (int i = 0; i < T * N; i++) dy[i] = peft_rng_normal(&rng);
            float *scr = malloc(sizeof(float) * kern_matmul_scratch_floats(K > N ? K : N, 2));
            CHECK_OK(kern_matmul(y1, N, x, T, &w, NULL, 0.0f, scr, 2));
            CHECK_OK(kern_matmul_dx(dx1, dy, N, T, &w, scr, 2));
            kern_weight wp = w;
            wp.bf16_fwd = pf;
            wp.bf16_bwd = pb;
            CHECK_OK(kern_matmul(y2, N, x, T, &wp, NULL, 0.0f, scr, 2));
            CHECK_OK(kern_matmul_dx(dx2, dy, N, T, &wp, scr, 2));
            double ey = 0, edx = 0, sy = 0, sdx = 0;
            for (int i = 0; i < T * N; i++) { ey = fmax(ey, fabs(y1[i] - y2[i])); sy = fmax(sy, fabs(y1[i])); }
            for (int i = 0; i < T * K; i++) { edx = fmax(edx, fabs(dx1[i] - dx2[i])); sdx = fmax(sdx, fabs(dx1[i])); }
            /* bf16 keeps 8 significant bits: a few 2^-9 relative to the largest output */
            CHECK_MSG(ey < 2e-2 * sy && edx < 2e-2 * sdx, "%s transposed=%d: y err %g of %g, dx err %g of %g",
                      peft_dtype_name(dts[d]), transposed, ey, sy, edx, sdx);
            CHECK_MSG(ey > 0 || edx > 0, "the bf16 path must actually run (no difference from f32 at all)");
            free(wf); free(wd); free(wq); free(pf); free(pb); free(row); free(x); free(dy);
            free(y1); free(y2); free(dx1); free(dx2); free(scr);
        }
}

/* A LoRA training step through the graph with bf16 compute against the same
 * step in f32 on the tiny fixtures (Llama with GQA and strided q/k/v
 * gradients; GPT-2 with transposed Conv1D weights; Q8_0 GGUF): the loss
 * within 1 %, the LoRA gradient within 5 % (in norm) — bf16 keeps 8
 * significant bits — and not identical (the bf16 path ran). */
static void training_step_in_bf16_follows_f32(void) {
    if (!kern_bf16_supported()) { TEST_SKIP_HW("no AMX-BF16 here"); }
    const char *models[] = {"tests/fixtures/models/tiny-llama", "tests/fixtures/models/tiny-gpt2",
                            "tests/fixtures/models/tiny-qwen2.q8_0.gguf"};
    for (int mi = 0; mi < 3; mi++) {
        peft_ctx_params cp = peft_ctx_default_params();
        cp.n_threads = 2;
        peft_ctx *ctx = peft_init(&cp);
        peft_model *m = peft_model_load(ctx, models[mi]);
        CHECK_MSG(m != NULL, "%s", models[mi]);
        if (!m) { peft_free(ctx); continue; }
        lora_config cfg = lora_default_config();
        cfg.r = 4;
        cfg.alpha = 8;
        cfg.init = LORA_INIT_GAUSSIAN;
        peft_err err = {0};
        adapter *a = NULL;
        CHECK_OK(lora_parse_targets(m, "all-linear", &cfg.targets, &err));
        CHECK_OK(lora_new(m, &cfg, &a, &err));
        peft_rng rng;
        peft_rng_seed(&rng, 7);
        for (int64_t k = 0; k < a->n_params; k++) a->params[k] = 0.2f * peft_rng_normal(&rng);
        enum { B = 2, T = 24 };
        static int32_t buf[6][B * T];
        data_batch b = {B, T, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], 0, 0, NULL, NULL, 0};
        for (int i = 0; i < B * T; i++) {
            b.inputs[i] = (int32_t)(peft_rng_u64(&rng) % (uint64_t)m->cfg.vocab);
            b.positions[i] = i % T;
            b.segments[i] = 0;
        }
        for (int i = 0; i < B * T; i++) {
            b.targets[i] = i % T == T - 1 ? -100 : b.inputs[i + 1];
            b.n_targets += b.targets[i] != -100;
        }
        for (int i = 0; i < B; i++) b.lengths[i] = T;
        float *g32 = malloc(sizeof(float) * (size_t)a->n_params);
        double l32 = 0, lbf = 0;
        int n = 0;
        for (int pass = 0; pass < 2; pass++) {
            CHECK_OK(peft_model_set_compute(m, pass ? PEFT_COMPUTE_BF16 : PEFT_COMPUTE_F32));
            train_graph *g = NULL;
            CHECK_OK(tg_new(m, a, B, T, &g, &err));
            memset(a->grads, 0, sizeof(float) * (size_t)a->n_params);
            CHECK_OK(tg_run(g, &b, true, 1.0f / (float)b.n_targets, 0, pass ? &lbf : &l32, &n, &err));
            if (!pass) memcpy(g32, a->grads, sizeof(float) * (size_t)a->n_params);
            tg_free(g);
        }
        double dn = 0, gn = 0;
        for (int64_t k = 0; k < a->n_params; k++) {
            dn += ((double)a->grads[k] - g32[k]) * ((double)a->grads[k] - g32[k]);
            gn += (double)g32[k] * g32[k];
        }
        const double rel = sqrt(dn / gn);
        CHECK_MSG(fabs(lbf - l32) < 1e-2 * fabs(l32) && rel < 5e-2 && lbf != l32,
                  "%s: loss f32 %.6f bf16 %.6f, gradient rel diff %.3g", models[mi], l32 / n, lbf / n, rel);
        printf("    %-40s loss f32 %.6f bf16 %.6f, LoRA gradient rel diff %.3g\n", models[mi], l32 / n, lbf / n, rel);
        free(g32);
        adapter_free(a);
        peft_model_free(m);
        peft_free(ctx);
    }
}

int main(void) {
    TEST_RUN(rounding_is_nearest_even);
    TEST_RUN(gemm_matches_reference_on_edges);
    TEST_RUN(gemm_does_not_depend_on_thread_count);
    TEST_RUN(packed_linears_match_the_f32_path);
    TEST_RUN(training_step_in_bf16_follows_f32);
    TEST_MAIN_END();
}
