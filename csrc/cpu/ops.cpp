// ops.cpp: see ops.h.
#include "cpu/ops.h"

#include <cmath>
#include <cstdlib>
#include <string>

#include "common.h"
#include "cpu/dispatch.h"

namespace lowbit::cpu {
namespace {

void axpy_f32_generic(float* y, float a, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void f16_to_f32_generic(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void f32_to_f16_generic(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

struct HotLoops {
    void (*axpy)(float*, float, const float*, int64_t);
    void (*to_f32)(const uint16_t*, float*, int64_t);
    void (*to_f16)(const float*, uint16_t*, int64_t);
    void (*silu)(const float*, const float*, float*, int64_t);
    void (*gelu)(const float*, const float*, float*, int64_t);
};

void silu_mul_generic(const float* gate, const float* up, float* out, int64_t n);
void gelu_tanh_mul_generic(const float* gate, const float* up, float* out, int64_t n);

// AVX2 when the CPU has it, unless LOWBIT_CPU=scalar asks for the portable loops (tests).
bool use_avx2() {
    const char* env = std::getenv("LOWBIT_CPU");
    return cpu_features().has_avx2_level() && !(env && std::string(env) == "scalar");
}

const HotLoops& hot_loops() {
    static const HotLoops h = [] {
        const bool avx2 = use_avx2();
        return avx2 ? HotLoops{avx2::axpy_f32, avx2::f16_to_f32_row, avx2::f32_to_f16_row, avx2::silu_mul,
                               avx2::gelu_tanh_mul}
                    : HotLoops{axpy_f32_generic, f16_to_f32_generic, f32_to_f16_generic, silu_mul_generic,
                               gelu_tanh_mul_generic};
    }();
    return h;
}

}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps) {
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};   // 8 lanes in double: vectorizable, and no 4-cycle add chain
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) part[k] += double(x[i + k]) * double(x[i + k]);
    double ss = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    for (; i < n; ++i) ss += double(x[i]) * double(x[i]);
    const float scale = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    if (w) for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
    else for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
}

void rope_cos_sin(double pos, const double* inv_freq, int64_t half, float* cos_sin, float mscale) {
    for (int64_t i = 0; i < half; ++i) {
        const double a = pos * inv_freq[i];
        cos_sin[2 * i] = float(std::cos(a) * double(mscale));
        cos_sin[2 * i + 1] = float(std::sin(a) * double(mscale));
    }
}

void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, bool neox, const float* cos_sin) {
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; ++h) {
        float* xh = x + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
            const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
            float* a = neox ? xh + i : xh + 2 * i;
            float* b = neox ? xh + i + half : xh + 2 * i + 1;
            const float x0 = *a, x1 = *b;
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

namespace {
void silu_mul_generic(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

void gelu_tanh_mul_generic(const float* gate, const float* up, float* out, int64_t n) {
    constexpr float kSqrt2OverPi = 0.79788456080286535588f;
    for (int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        out[i] = 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * up[i];
    }
}

}  // namespace

void silu_mul(const float* gate, const float* up, float* out, int64_t n) { hot_loops().silu(gate, up, out, n); }
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n) { hot_loops().gelu(gate, up, out, n); }

void add_inplace(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void axpy_f32(float* y, float a, const float* x, int64_t n) { hot_loops().axpy(y, a, x, n); }
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n) { hot_loops().to_f32(x, y, n); }
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) { hot_loops().to_f16(x, y, n); }

}  // namespace lowbit::cpu
