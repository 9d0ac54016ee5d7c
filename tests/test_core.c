/* test_core.c — half-precision conversion, RNG determinism, atomic writes. */
#include "core/core.h"
#include "test.h"
#include <unistd.h>

static void f16_round_trips_every_finite_half(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f) continue; /* inf/nan */
        float f = peft_f16_to_f32((uint16_t)h);
        uint16_t back = peft_f32_to_f16(f);
        if (back != h && !(f == 0.0f && (back & 0x7fff) == 0)) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_NEAR(peft_f16_to_f32(0x3c00), 1.0, 0);
    CHECK_NEAR(peft_f16_to_f32(0xc000), -2.0, 0);
    CHECK_NEAR(peft_f16_to_f32(0x0001), 5.960464477539063e-08, 1e-20);
    CHECK_EQ_INT(peft_f32_to_f16(65520.0f), 0x7c00); /* rounds to inf */
    CHECK_EQ_INT(peft_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00); /* tie to even */
}

static void bf16_rounds_to_nearest_even(void) {
    CHECK_NEAR(peft_bf16_to_f32(peft_f32_to_bf16(1.0f)), 1.0, 0);
    CHECK_EQ_INT(peft_f32_to_bf16(1.00390625f), 0x3f80);   /* exact tie -> even */
    CHECK_EQ_INT(peft_f32_to_bf16(1.01171875f), 0x3f82);   /* tie, odd -> up */
}

static void rng_is_deterministic(void) {
    peft_rng a, b;
    peft_rng_seed(&a, 42);
    peft_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) CHECK(peft_rng_u64(&a) == peft_rng_u64(&b));
    double mean = 0, var = 0;
    for (int i = 0; i < 20000; i++) { float x = peft_rng_normal(&a); mean += x; var += x * x; }
    mean /= 20000; var = var / 20000 - mean * mean;
    CHECK_NEAR(mean, 0.0, 0.05);
    CHECK_NEAR(var, 1.0, 0.05);
}

static void atomic_write_replaces_file(void) {
    char path[] = "/tmp/peft_test_atomic_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    peft_err err = {0};
    CHECK_OK(peft_write_file_atomic(path, "hello", 5, &err));
    char *data = NULL; size_t len = 0;
    CHECK_OK(peft_read_file(path, &data, &len, &err));
    CHECK_EQ_INT(len, 5);
    CHECK(data && memcmp(data, "hello", 5) == 0);
    free(data);
    unlink(path);
    CHECK(peft_write_file_atomic("/nonexistent-dir/x", "a", 1, &err) == PEFT_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent-dir/x") != NULL);
}

int main(void) {
    TEST_RUN(f16_round_trips_every_finite_half);
    TEST_RUN(bf16_rounds_to_nearest_even);
    TEST_RUN(rng_is_deterministic);
    TEST_RUN(atomic_write_replaces_file);
    TEST_MAIN_END();
}
