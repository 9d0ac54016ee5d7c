/* rope.c — rotary position embeddings, HF "rotate_half" pairing. */
#include "kernels/kernels.h"

#include <math.h>

void kern_rope_table(float *cos_t, float *sin_t, int n_pos, int half, const float *inv_freq) {
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            /* angle in double: positions up to 1e5 times frequencies near 1
             * lose digits in float */
            double a = (double)p * (double)inv_freq[i];
            cos_t[(size_t)p * half + i] = (float)cos(a);
            sin_t[(size_t)p * half + i] = (float)sin(a);
        }
}

void kern_rope(float *x, int ldx, const int32_t *pos, int T, int n_heads, int head_dim,
               int half, const float *cos_t, const float *sin_t, bool inverse, int n_threads) {
    const float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for num_threads(n_threads) schedule(static) if ((int64_t)T * n_heads * head_dim > 32768)
    for (int t = 0; t < T; t++) {
        const float *c = cos_t + (size_t)pos[t] * half, *s = sin_t + (size_t)pos[t] * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)t * ldx + (size_t)h * head_dim;
            /* (a, b) -> (a cos - b sin, b cos + a sin) for a = v[i], b = v[i + half] */
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], si = sgn * s[i];
                v[i] = a * c[i] - b * si;
                v[i + half] = b * c[i] + a * si;
            }
        }
    }
}
