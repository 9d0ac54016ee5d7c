/* bench.h — small helpers the benchmark programs share. */
#ifndef PEFT_BENCH_H
#define PEFT_BENCH_H

/* qsort comparator for doubles (medians of timings). */
static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
