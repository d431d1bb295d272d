/* peak_vnni.c: the int8 ceiling of one core of this CPU, against which the strip GEMM's prefill
 * GOP/s (bench_kernels.py) and llama.cpp's are read: back-to-back vpdpbusd zmm on 12 independent
 * accumulators (latency covered), best of many short runs (a shared host's preemptions drop out).
 * One vpdpbusd zmm = 64 int8 multiply-adds = 128 "ops" in bench_kernels' GOP/s (2 * rows * cols * n).
 *
 *     cc -O2 -march=native bench/peak_vnni.c -o /tmp/peak_vnni && /tmp/peak_vnni
 *
 * Needs AVX-512 VNNI (exits 2 without it). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512vnni"))) static double run(long iters) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5), acc[12];
    for (int k = 0; k < 12; ++k) acc[k] = _mm512_setzero_si512();
    const double t0 = now();
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
        for (int k = 0; k < 12; ++k) acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
        __asm__ volatile("" : "+v"(a));   /* keeps the loop from being folded */
    }
    const double t = now() - t0;
    int sink = 0;
    for (int k = 0; k < 12; ++k) sink += _mm512_reduce_add_epi32(acc[k]);
    return sink == 1 ? -t : t;
}

int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512vnni")) {
        fprintf(stderr, "peak_vnni: this CPU has no AVX-512 VNNI\n");
        return 2;
    }
    const long iters = 1000000;
    double best = 1e9;
    for (int rep = 0; rep < 300; ++rep) {
        const double t = run(iters);
        if (t < best) best = t;
    }
    const double instr = 12.0 * iters / best;
    printf("vpdpbusd zmm, one core: %.2f G/s = %.0f G int8 MAC/s = %.0f GOP/s (x cores for the machine)\n",
           instr / 1e9, instr * 64 / 1e9, instr * 128 / 1e9);
    return 0;
}
