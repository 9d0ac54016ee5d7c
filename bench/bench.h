/* bench.h — small helpers the benchmark programs share. */
#ifndef PEFT_BENCH_H
#define PEFT_BENCH_H

#include "core/core.h"

#include <stdlib.h>

/* qsort comparator for doubles (medians of timings). */
static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs fn(arg) once to warm up, then until at least min_reps timed calls
 * and min_time seconds have passed (at most max_reps <= 256 calls), and
 * returns the median seconds per call; -1 when fn fails (non-zero). */
typedef int (*bench_fn)(void *arg);
static inline double bench_median_s(bench_fn fn, void *arg, int min_reps, int max_reps, double min_time) {
    double t[256];
    int n = 0;
    if (max_reps > 256) max_reps = 256;
    if (fn(arg)) return -1.0;
    double start = peft_time_s();
    while (n < max_reps && (n < min_reps || peft_time_s() - start < min_time)) {
        double t0 = peft_time_s();
        if (fn(arg)) return -1.0;
        t[n++] = peft_time_s() - t0;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    return t[n / 2];
}

#endif
