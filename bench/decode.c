/* bench/decode.c — the products of one decoded token of SmolLM2-135M (30
 * layers of q, k, v, o, gate, up, down in Q4_1 and the tied Q8_0 LM head;
 * random weights, one buffer per layer so that memory traffic is a real
 * token's) through kern_matmul with T = 1: 8-bit activations (q8_act) vs
 * f32 activations, on 1 and N threads. Prints the fastest of the timed
 * tokens (the machine may be shared: the minimum is the least disturbed)
 * and the median.
 *
 *   bench_decode [threads (2)] [tokens (40)] */
#include "bench.h"
#include "kernels/kernels.h"
#include "kernels/qdot.h"
#include "kernels/quant.h"

#include <stdio.h>
#include <string.h>

enum { L = 30, D = 576, KV = 192, FF = 1536, VOCAB = 49152, NLIN = 7 };

typedef struct {
    kern_weight w[L][NLIN], head;
    float *x, *y, *scr;
    int nt;
} tok;

static int one_token(void *p) {
    tok *t = p;
    for (int l = 0; l < L; l++)
        for (int r = 0; r < NLIN; r++) {
            const kern_weight *w = &t->w[l][r];
            int rc = kern_matmul(t->y, (int)w->rows, t->x, 1, w, NULL, 0.0f, t->scr, t->nt);
            if (rc) return rc;
        }
    return kern_matmul(t->y, VOCAB, t->x, 1, &t->head, NULL, 0.0f, t->scr, t->nt);
}

static uint8_t *random_weight(peft_dtype dt, int64_t n, int64_t k, uint64_t seed) {
    const size_t rb = kern_dtype_row_bytes(dt, k);
    uint8_t *w = malloc(rb * (size_t)n);
    float *row = malloc(sizeof(float) * (size_t)k);
    peft_rng rng;
    peft_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < k; j++) row[j] = peft_rng_normal(&rng) * 0.02f;
        kern_quant_row(dt, row, w + (size_t)i * rb, k);
    }
    free(row);
    return w;
}

int main(int argc, char **argv) {
    const int nt = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 2 ? atoi(argv[2]) : 40;
    static const int64_t shape[NLIN][2] = {{D, D}, {KV, D}, {KV, D}, {D, D}, {FF, D}, {FF, D}, {D, FF}};
    static tok t;
    for (int l = 0; l < L; l++)
        for (int r = 0; r < NLIN; r++)
            t.w[l][r] = (kern_weight){PEFT_DT_Q4_1, shape[r][0], shape[r][1],
                                      random_weight(PEFT_DT_Q4_1, shape[r][0], shape[r][1], (uint64_t)(l * 8 + r)),
                                      false, NULL, NULL, 0, false};
    t.head = (kern_weight){PEFT_DT_Q8_0, VOCAB, D, random_weight(PEFT_DT_Q8_0, VOCAB, D, 99), false, NULL, NULL, 0, false};
    t.x = malloc(sizeof(float) * FF);
    t.y = malloc(sizeof(float) * VOCAB);
    t.scr = malloc(sizeof(float) * kern_matmul_scratch_floats(FF, nt));
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    for (int i = 0; i < FF; i++) t.x[i] = peft_rng_normal(&rng);
    printf("# SmolLM2-135M decode products (Q4_1 layers, Q8_0 head), unit %s\n",
           kern_qdot_unit_name(kern_qdot_unit_best()));
    for (int q8 = 0; q8 < 2; q8++)
        for (int th = 1; th <= nt; th += (nt > 1 ? nt - 1 : 1)) {
            for (int l = 0; l < L; l++)
                for (int r = 0; r < NLIN; r++) t.w[l][r].q8_act = q8;
            t.head.q8_act = q8;
            t.nt = th;
            double s[256];
            int n = reps > 256 ? 256 : reps;
            one_token(&t);
            for (int i = 0; i < n; i++) {
                double t0 = peft_time_s();
                if (one_token(&t)) { fprintf(stderr, "product failed\n"); return 1; }
                s[i] = peft_time_s() - t0;
            }
            qsort(s, (size_t)n, sizeof s[0], cmp_double);
            printf("%-14s threads %d: fastest %.2f ms/token (%.0f tokens/s), median %.2f ms\n",
                   q8 ? "8-bit x" : "f32 x", th, s[0] * 1e3, 1.0 / s[0], s[n / 2] * 1e3);
        }
    return 0;
}
